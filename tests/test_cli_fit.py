"""`seabench fit` on feature files: reference protocol, selection protocol, and bad input."""

from __future__ import annotations

import argparse
import json
import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from orchestrator.cli import main


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
