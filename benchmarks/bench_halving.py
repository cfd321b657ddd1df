"""Successive halving inside the K-batched pass (`seabench fit --halving 3`, `search.halving`): what it
saves and what it costs, measured side by side in one run.

1. Time — the user's tuning case of bench_sea.py (3 η × 3 lr, select on validation, refit on train + val,
   test once; synthetic n 20 000 × 768, C 100, fresh processes, start-up included): the published loop
   (bench_sea's plain one-process autograd loop), `fit --val` over the full K-batched grid, and the same
   with `--halving 3` (rungs 1, 3, 9 of 10 epochs: 22 head-epochs instead of 90). The full-grid `fit`
   already scores validation only at the epochs selection reads; `val_curve` times that in-process
   against a validation pass every epoch (issue #22, 3b).
2. Quality — on real features (EfficientNet-Lite0 on digits from the demo's feature store when present,
   and scikit-learn's digits pixels), over training seeds: how often the halved grid selects the full
   grid's configuration, and the refit's test top-1 difference (halved − full).

    python benchmarks/bench_halving.py [--tune-epochs 10] [--seeds 10] [--epochs 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sea import ROOT, TUNE_ETAS, TUNE_LRS, _split_files, _wall, synthetic_features

STORE = ROOT / "features"


def tuning_times(args: argparse.Namespace) -> dict:
    """Fresh processes: the published loop, fit over the full grid, fit --halving 3 (module and CLI)."""
    fit_module = [sys.executable, "-m", "orchestrator.commands.fit"]
    seabench = str(Path(sys.executable).with_name("seabench"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _split_files(folder, args.tune_n, args.d, args.classes)
        fit_args = ["--train", str(folder / "train.npz"), "--val", str(folder / "val.npz"), "--test",
                    str(folder / "test.npz"), "--method", "sea", "--eta", ",".join(map(str, TUNE_ETAS)),
                    "--lr", ",".join(map(str, TUNE_LRS)), "--epochs", str(args.tune_epochs), "--batch-size",
                    str(args.batch), "--device", args.device, "--json"]
        plain_cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_sea.py"), "--plain-tuning", tmp,
                     "--tune-epochs", str(args.tune_epochs), "--batch", str(args.batch), "--device", args.device]
        runs = {"plain": plain_cmd, "fit_full": [*fit_module, *fit_args],
                "fit_halving": [*fit_module, *fit_args, "--halving", "3"],
                "seabench_fit_halving": [seabench, "fit", *fit_args, "--halving", "3"]}
        seconds, outputs = {}, {}
        for name, cmd in runs.items():
            seconds[name], out = _wall(cmd, args.threads)
            outputs[name] = json.loads(out.splitlines()[-1])
    results = {name: {"config": o["config"], "test_top1": o["test_top1"]} for name, o in outputs.items()}
    return {"tune_n": args.tune_n, "tune_epochs": args.tune_epochs, "seconds": seconds, "results": results,
            "halving": outputs["fit_halving"]["halving"],
            "halving_vs_plain": seconds["plain"] / seconds["fit_halving"],
            "seabench_halving_vs_plain": seconds["plain"] / seconds["seabench_fit_halving"],
            "full_vs_plain": seconds["plain"] / seconds["fit_full"],
            "halving_vs_full": seconds["fit_full"] / seconds["fit_halving"]}


def val_curve_cost(args: argparse.Namespace) -> dict:
    """In-process, same data as the timing: the full grid scoring validation every epoch vs only where read."""
    from sea import HeadConfig, TrainSettings, select_and_refit

    x, y = synthetic_features(args.tune_n, args.d, args.classes, seed=1)
    cut = [int(0.6 * len(y)), int(0.8 * len(y))]
    (xt, xv, xs), (yt, yv, ys) = np.split(x, cut), np.split(y, cut)
    grid = [HeadConfig(method="sea", lr=lr, eta=eta) for lr in TUNE_LRS for eta in TUNE_ETAS]
    settings = TrainSettings(epochs=args.tune_epochs, batch_size=args.batch, device=args.device)
    best = {True: float("inf"), False: float("inf")}
    for _ in range(2):   # interleaved, best of 2
        for every in (True, False):
            began = time.perf_counter()
            select_and_refit(xt, yt, xv, yv, lambda: (xs, ys), grid, settings, val_every_epoch=every)
            best[every] = min(best[every], time.perf_counter() - began)
    return {"every_epoch_s": best[True], "read_only_s": best[False], "saving": 1 - best[False] / best[True]}


def real_splits() -> dict[str, tuple]:
    """name -> (fit, val, test): a stratified 20 % of train (seed 0) is validation, as the protocol carves."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    sources = {}
    if (STORE / "index" / "efficientnet-lite0__digits__train.json").exists():
        from orchestrator.extract import FeatureStore

        store = FeatureStore(str(STORE))
        sources["lite0-digits"] = (store.load("efficientnet-lite0", "digits", "train"),
                                   store.load("efficientnet-lite0", "digits", "test"))
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32) + 0.5
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    sources["digits-pixels"] = ((x_tr, y_tr), (x_te, y_te))
    out = {}
    for name, ((x_tr, y_tr), test) in sources.items():
        x_fit, x_val, y_fit, y_val = train_test_split(np.asarray(x_tr, np.float32), np.asarray(y_tr), test_size=0.2,
                                                      random_state=0, stratify=y_tr)
        out[name] = ((x_fit, y_fit), (x_val, y_val), (np.asarray(test[0], np.float32), np.asarray(test[1])))
    return out


def quality(args: argparse.Namespace) -> dict:
    """Per real feature set and grid, over seeds: same selection as the full grid, test top-1 difference."""
    from sea import Halving, HeadConfig, TrainSettings, head_epochs, select_and_refit

    grids = {"sea 3 eta x 3 lr": [HeadConfig(method="sea", lr=lr, eta=eta) for lr in TUNE_LRS for eta in TUNE_ETAS],
             "linear 4 lr x 3 wd x 3 lamda": [HeadConfig(method="linear", lr=lr, weight_decay=wd, lamda=lam)
                                               for lr in (0.4, 0.8, 1.6, 3.2) for wd in (1e-6, 1e-5, 1e-4)
                                               for lam in (0.05, 0.1, 0.2)]}
    out = {}
    for data_name, (fit, val, test) in real_splits().items():
        for grid_name, grid in grids.items():
            same, diffs, secs = [], [], {"full": 0.0, "halving": 0.0}
            for seed in range(args.seeds):
                settings = TrainSettings(epochs=args.epochs, batch_size=args.batch, seed=seed, device=args.device)
                picked = {}
                for name, halving in (("full", None), ("halving", Halving(3))):
                    began = time.perf_counter()
                    picked[name] = select_and_refit(*fit, *val, lambda test=test: test, grid, settings, halving=halving,
                                                    val_every_epoch=False)
                    secs[name] += time.perf_counter() - began
                same.append(picked["halving"].best_index == picked["full"].best_index)
                diffs.append(picked["halving"].test_top1 - picked["full"].test_top1)
            out[f"{data_name} | {grid_name}"] = {
                "n_fit": len(fit[1]), "dim": fit[0].shape[1], "k": len(grid), "seeds": args.seeds,
                "rungs": picked["halving"].rungs, "head_epochs": head_epochs(len(grid), args.epochs, 3),
                "full_head_epochs": len(grid) * args.epochs, "same_selection": sum(same) / len(same),
                "test_diff_mean": statistics.mean(diffs), "test_diff_min": min(diffs),
                "test_diff_sd": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                "full_seconds": secs["full"], "halving_seconds": secs["halving"]}
    return out


def print_report(out: dict) -> None:
    t = out.get("tuning")
    if t:
        s, r = t["seconds"], t["results"]
        print(f"tuning: 3 eta x 3 lr, n={t['tune_n']} (60/20/20) d 768 C 100, epochs={t['tune_epochs']}, fresh "
              f"processes, start-up included; halving factor 3, rungs {t['halving']['rungs']}: "
              f"{t['halving']['head_epochs']} of {t['halving']['full_grid_head_epochs']} head-epochs")
        print(f"  published loop (plain autograd, one process)   {s['plain']:7.2f} s  test top-1 {r['plain']['test_top1']:.2f}")
        print(f"  fit --val, full K-batched grid                 {s['fit_full']:7.2f} s  test top-1 "
              f"{r['fit_full']['test_top1']:.2f}  {t['full_vs_plain']:.2f}x the loop")
        print(f"  fit --val --halving 3                          {s['fit_halving']:7.2f} s  test top-1 "
              f"{r['fit_halving']['test_top1']:.2f}  {t['halving_vs_plain']:.2f}x the loop (target >= 5), "
              f"{t['halving_vs_full']:.2f}x the full grid")
        print(f"  seabench fit --val --halving 3                 {s['seabench_fit_halving']:7.2f} s  "
              f"{t['seabench_halving_vs_plain']:.2f}x the loop")
    v = out.get("val_curve")
    if v:
        print(f"validation only where read (full grid, in-process): {v['read_only_s']:.2f} s vs every epoch "
              f"{v['every_epoch_s']:.2f} s: {100 * v['saving']:.1f} % saved")
    for name, q in out.get("quality", {}).items():
        print(f"quality {name} (fit {q['n_fit']} x {q['dim']}, K {q['k']}, {q['seeds']} seeds, rungs {q['rungs']}, "
              f"{q['head_epochs']}/{q['full_head_epochs']} head-epochs): same selection {100 * q['same_selection']:.0f} %, "
              f"test top-1 halved - full {q['test_diff_mean']:+.2f} (sd {q['test_diff_sd']:.2f}, worst "
              f"{q['test_diff_min']:+.2f}); in-process {q['halving_seconds']:.1f} s vs {q['full_seconds']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--tune-n", type=int, default=20_000)
    parser.add_argument("--tune-epochs", type=int, default=10, help="timing (0: skip it and the val-curve row)")
    parser.add_argument("--seeds", type=int, default=10, help="quality: training seeds (0: skip it)")
    parser.add_argument("--epochs", type=int, default=30, help="quality: epochs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict = {"threads": torch.get_num_threads(), "device": args.device}
    if args.tune_epochs:
        out["tuning"] = tuning_times(args)
        out["val_curve"] = val_curve_cost(args)
    if args.seeds:
        out["quality"] = quality(args)
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        print()
    else:
        print_report(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
