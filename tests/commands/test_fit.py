"""`seabench fit` on feature files: reference protocol, selection protocol, and bad input."""

from __future__ import annotations

import argparse
import io
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from orchestrator.commands.cli import main


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    """Real data, no download: scikit-learn's digits pixels as 64-d features."""
    root = tmp_path_factory.mktemp("digits")
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32) + 0.5  # no all-zero rows
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    x_tr, x_va, y_tr, y_va = train_test_split(x_tr, y_tr, test_size=0.2, random_state=0, stratify=y_tr)
    np.savez(root / "train.npz", features=x_tr, labels=y_tr)
    np.savez(root / "val.npz", features=x_va, labels=y_va)
    torch.save({"features": torch.from_numpy(x_te), "labels": torch.from_numpy(y_te)}, root / "test.pt")
    return root


def _fit_json(capsys, *argv: str) -> dict:
    assert main(["fit", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_fit_reference_protocol_reports_last_epoch_test_accuracy(digits_files, capsys):
    out = _fit_json(capsys, "--train", str(digits_files / "train.npz"), "--test", str(digits_files / "test.pt"),
                    "--method", "linear", "--epochs", "10", "--lr", "0.8")
    for key in ("test_top1", "test_mean_per_class", "method", "config", "seconds"):
        assert key in out
    assert out["method"] == "linear"
    assert out["config"]["lr"] == 0.8
    assert out["test_top1"] > 85.0
    assert "reference" in out["protocol"]


def test_fit_sea_defaults_are_the_reference_defaults(digits_files, capsys):
    out = _fit_json(capsys, "--train", str(digits_files / "train.npz"), "--test", str(digits_files / "test.pt"),
                    "--method", "sea", "--epochs", "2")
    cfg = out["config"]
    assert (cfg["eta"], cfg["alpha"], cfg["lamda"], cfg["delta"], cfg["lr"], cfg["weight_decay"]) == (
        0.8, 0.01, 0.1, 0.0, 1.6, 1e-6)
    assert np.isfinite(out["test_top1"])


def test_fit_with_val_selects_over_grid_and_is_deterministic(digits_files, capsys):
    argv = ["--train", str(digits_files / "train.npz"), "--val", str(digits_files / "val.npz"),
            "--test", str(digits_files / "test.pt"), "--method", "sea", "--eta", "0.1,0.4",
            "--lr", "0.4,1.6", "--epochs", "5", "--seed", "3"]
    first = _fit_json(capsys, *argv)
    second = _fit_json(capsys, *argv)
    assert first["n_candidates"] == 4
    assert first["config"]["eta"] in (0.1, 0.4) and first["config"]["lr"] in (0.4, 1.6)
    assert first["test_top1"] == second["test_top1"] and first["config"] == second["config"]
    assert first["test_top1"] > 80.0


def test_fit_logreg_selects_regularisation_on_val(digits_files, capsys):
    out = _fit_json(capsys, "--train", str(digits_files / "train.npz"), "--val", str(digits_files / "val.npz"),
                    "--test", str(digits_files / "test.pt"), "--method", "logreg", "--c", "0.1,1,10")
    assert out["n_candidates"] == 3
    assert out["test_top1"] > 85.0


def test_fit_grid_without_val_is_refused(digits_files, capsys):
    code = main(["fit", "--train", str(digits_files / "train.npz"), "--test", str(digits_files / "test.pt"),
                 "--lr", "0.4,0.8"])
    assert code == 2
    assert "--val" in capsys.readouterr().err


def test_fit_refuses_pickled_feature_files(tmp_path, digits_files, capsys):
    bad = tmp_path / "bad.pt"
    # an arbitrary object (not a tensor) can only be restored by running pickle's code paths
    torch.save({"features": argparse.Namespace(x=1), "labels": [0]}, bad, pickle_module=pickle)
    code = main(["fit", "--train", str(bad), "--test", str(digits_files / "test.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "bad.pt" in err and "pickle" in err


def test_fit_names_the_missing_key(tmp_path, digits_files, capsys):
    bad = tmp_path / "nolabels.npz"
    np.savez(bad, features=np.ones((3, 4), np.float32))
    code = main(["fit", "--train", str(bad), "--test", str(digits_files / "test.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "nolabels.npz" in err and "labels" in err


def test_fit_names_a_missing_file(tmp_path, digits_files, capsys):
    code = main(["fit", "--train", str(tmp_path / "absent.npz"), "--test", str(digits_files / "test.pt")])
    assert code == 2 and "absent.npz" in capsys.readouterr().err


def test_fit_passes_bad_features_to_sea_validation(tmp_path, digits_files, capsys):
    bad = tmp_path / "nan.npz"
    x = np.ones((10, 64), np.float32)
    x[3, 5] = np.nan
    np.savez(bad, features=x, labels=np.arange(10) % 2)
    code = main(["fit", "--train", str(bad), "--test", str(digits_files / "test.pt"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "finite" in err.lower()


def _files(root) -> list[str]:
    return ["--train", str(root / "train.npz"), "--test", str(root / "test.pt")]


def test_fit_selects_on_the_metric_asked_for(digits_files, capsys):
    out = _fit_json(capsys, *_files(digits_files), "--val", str(digits_files / "val.npz"), "--method", "linear",
                    "--lr", "0.01,0.4,1.6", "--epochs", "3", "--metric", "mean_per_class")
    assert "mean_per_class" in out["protocol"] and len(out["candidates"]) == 3
    scores = [c["val_mean_per_class"] for c in out["candidates"]]
    assert out["config"] == out["candidates"][scores.index(max(scores))]["config"]
    assert out["val_mean_per_class"] == max(scores)


def test_knobs_that_do_not_apply_are_ignored_with_one_line_and_never_duplicate_heads(digits_files, capsys):
    assert main(["fit", *_files(digits_files), "--val", str(digits_files / "val.npz"), "--method", "linear",
                 "--eta", "0.1,0.4", "--alpha", "0.05", "--lr", "0.4,0.8", "--epochs", "2", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.splitlines()[-1])
    err = [line for line in captured.err.splitlines() if "ignored" in line]
    assert out["n_candidates"] == 2 and set(out["config"]) == {"lr", "weight_decay", "lamda", "delta"}
    assert err == ["seabench fit: --eta, --alpha do not apply to --method linear; ignored"]


def test_logreg_ignores_the_sgd_knobs_with_one_line(digits_files, capsys):
    assert main(["fit", *_files(digits_files), "--val", str(digits_files / "val.npz"), "--method", "logreg",
                 "--c", "1", "--epochs", "5", "--lr", "0.4", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.splitlines()[-1])["config"] == {"c": 1.0}
    assert "seabench fit: --lr, --epochs do not apply to --method logreg; ignored" in captured.err.splitlines()


def test_fit_sizes_c_from_every_label_given(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    y = np.arange(60) % 3
    np.savez(tmp_path / "train.npz", features=x, labels=y)
    np.savez(tmp_path / "val.npz", features=x[:30], labels=y[:30])
    np.savez(tmp_path / "test.npz", features=x[:10], labels=np.full(10, 4))      # a class train never had
    for extra in ([], ["--val", str(tmp_path / "val.npz")]):
        out = _fit_json(capsys, "--train", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz"),
                        "--method", "linear", "--epochs", "1", *extra)
        assert out["num_classes"] == 5 and 0.0 <= out["test_top1"] <= 100.0


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("extra", [["--method", "sea"], ["--method", "sea", "--val", "VAL", "--lr", "0.4,0.8"],
                                   ["--method", "logreg", "--val", "VAL", "--c", "0.1,1"]],
                         ids=["reference", "selection", "logreg"])
def test_every_path_shows_a_progress_bar_on_a_terminal(digits_files, monkeypatch, extra):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = [str(digits_files / "val.npz") if a == "VAL" else a for a in extra]
    assert main(["fit", *_files(digits_files), "--epochs", "2", *argv, "--json"]) == 0
    bars = terminal.getvalue()
    assert ("2/2" in bars and "epoch" in bars) if extra[1] == "sea" else ("2/2" in bars and "logreg" in bars)


def test_fit_imports_neither_tasks_timm_ray_nor_mlflow(digits_files):
    code = ("import sys\nfrom orchestrator.commands.fit import main\n"
            f"assert main({_files(digits_files)!r} + ['--val', {str(digits_files / 'val.npz')!r}, '--lr', '0.4,0.8', "
            "'--epochs', '1', '--json']) == 0\n"
            "print(sorted(m for m in ('tasks', 'timm', 'ray', 'mlflow', 'pyarrow', 'pandas', 'torchvision') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_seabench_entry_point_imports_only_the_fit_verb(digits_files):
    """`seabench fit` through orchestrator.commands.cli: the other verbs (Ray, MLflow, timm) are not imported."""
    code = ("import sys\nfrom orchestrator.commands.cli import main\n"
            f"assert main(['fit', *{_files(digits_files)!r}, '--epochs', '1', '--json']) == 0\n"
            "print(sorted(m for m in ('tasks', 'timm', 'ray', 'mlflow', 'pyarrow', 'pandas', 'torchvision', "
            "'orchestrator.commands.run') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
    bad = subprocess.run([sys.executable, "-m", "orchestrator.commands.cli", "fit", "--train", str(digits_files / "nope.npz"),
                          "--test", str(digits_files / "nope.npz")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "seabench fit: error:" in bad.stderr and "nope.npz" in bad.stderr


def test_fit_json_has_the_selected_heads_test_score_and_the_stability_flag(digits_files, capsys):
    common = ["--train", str(digits_files / "train.npz"), "--val", str(digits_files / "val.npz"),
              "--test", str(digits_files / "test.pt"), "--method", "sea", "--lr", "0.4,1.6", "--eta", "0.2",
              "--epochs", "6", "--batch-size", "64"]
    out = _fit_json(capsys, *common, "--k", "3", "--refits", "2")
    assert out["select_on"] == "last_k" and out["select_k"] == 3 and "last 3 epochs" in out["protocol"]
    assert 0 < out["test_selected_top1"] <= 100 and 0 < out["refit_train_top1"] <= 100
    assert len(out["refits"]) == 2 and out["flags"] in ([], ["refit_unstable"])
    assert out["test_top1"] == pytest.approx(np.mean([r["top1"] for r in out["refits"]]))
    unstable = (out["test_selected_top1"] - out["test_top1"]) > max(out["val_spread"], out["refit_noise"])
    assert out["flags"] == (["refit_unstable"] if unstable else [])
    last = _fit_json(capsys, *common, "--select-on", "last")
    assert last["select_k"] == 1 and "last-epoch validation" in last["protocol"]
    assert main(["fit", *common, "--k", "9"]) == 2
    assert "k=9 is more than the 6 training epochs" in capsys.readouterr().err


def test_fit_halving_selects_among_the_survivors_and_lists_where_each_candidate_stopped(digits_files, capsys):
    grid = [*_files(digits_files), "--val", str(digits_files / "val.npz"), "--method", "sea", "--lr", "0.001,0.01,0.8",
            "--eta", "0.1,0.2,0.4", "--epochs", "10", "--schedule", "cosine", "--batch-size", "64"]
    full = _fit_json(capsys, *grid)
    halved = _fit_json(capsys, *grid, "--halving", "3")
    assert halved["halving"] == {"factor": 3, "rungs": [1, 3, 9], "head_epochs": 22, "full_grid_head_epochs": 90}
    ran = [c["epochs_run"] for c in halved["candidates"]]
    assert sorted(ran) == [1] * 6 + [3] * 2 + [10] and all(c["epochs_run"] == 10 for c in full["candidates"])
    winner = ran.index(10)
    assert halved["candidates"][winner]["config"] == halved["config"] == full["config"]
    assert halved["test_top1"] == full["test_top1"] and "halving" not in full
    assert main(["fit", *grid, "--halving", "3", "--halving-min-epochs", "2"]) == 0
    assert "halving: factor 3, rungs at epochs 2, 6: " in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--halving", "1"], "--halving=1 is invalid"),
    (["--halving", "3", "--halving-min-epochs", "4"], "--halving-min-epochs=4 leaves no rung"),
    (["--halving", "3", "--halving-min-epochs", "0"], "--halving-min-epochs=0 is invalid"),
    (["--halving-min-epochs", "2"], "pass --halving too"),
])
def test_fit_refuses_bad_halving_naming_the_flag(digits_files, capsys, extra, message):
    code = main(["fit", *_files(digits_files), "--val", str(digits_files / "val.npz"), "--method", "linear",
                 "--lr", "0.1,0.4", "--epochs", "4", *extra])
    assert code == 2 and message in capsys.readouterr().err


def test_fit_halving_needs_a_validation_split(digits_files, capsys):
    assert main(["fit", *_files(digits_files), "--method", "linear", "--epochs", "2", "--halving", "3"]) == 2
    assert "pass --val" in capsys.readouterr().err
