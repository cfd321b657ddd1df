"""`seabench fit`: the authors' script done right, for users who already have features."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import numpy as np

from orchestrator.errors import OrchestratorError
from orchestrator.features_io import load_feature_file

HELP = "Train one linear classifier (with or without SeA) on feature files and report test accuracy."

# flag -> (HeadConfig field, reference default from sea-method.md)
GRID_FLAGS: dict[str, tuple[str, float]] = {
    "lr": ("lr", 1.6),
    "wd": ("weight_decay", 1e-6),
    "eta": ("eta", 0.8),
    "alpha": ("alpha", 0.01),
    "lamda": ("lamda", 0.1),
    "delta": ("delta", 0.0),
}


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number or a comma list of numbers, got {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sea import METHODS

    parser.add_argument("--train", required=True, help=".npz or .pt file with 'features' (n x d) and 'labels'")
    parser.add_argument("--test", required=True, help="test features, same format")
    parser.add_argument("--val", help="validation features: enables selection over comma-list grids, "
                        "a refit on train+val and one test evaluation")
    parser.add_argument("--method", default="sea", choices=METHODS)
    for flag, (_field, default) in GRID_FLAGS.items():
        parser.add_argument(f"--{flag}", type=_float_list, default=[default],
                            help=f"(default {default}); a comma list is a grid (needs --val)")
    parser.add_argument("--c", type=_float_list, default=None,
                        help="logreg: inverse regularisation strengths to sweep (default: log-spaced)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OrchestratorError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return name


def _head_configs(args: argparse.Namespace) -> list:
    from sea import HeadConfig

    fields = [field for field, _ in GRID_FLAGS.values()]
    grids = [getattr(args, flag) for flag in GRID_FLAGS]
    return [HeadConfig(method=args.method, **dict(zip(fields, combo))) for combo in itertools.product(*grids)]


def _fit_reference(args, settings, train, test) -> dict:
    """No validation split: one configuration, last-epoch test accuracy (the authors' protocol)."""
    from sea import mean_per_class_accuracy, predict, top1_accuracy, train_heads

    x_train, y_train = train
    x_test, y_test = test
    if args.method == "logreg":
        raise OrchestratorError("--method logreg selects its regularisation on a validation split: pass --val")
    configs = _head_configs(args)
    if len(configs) > 1:
        raise OrchestratorError(
            f"{len(configs)} configurations given as comma lists, but no --val to choose among them; "
            "pass --val VAL (selection happens on validation, never on test) or give single values"
        )
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    result = train_heads(x_train, y_train, configs, settings, num_classes=num_classes, progress=not args.json)
    pred = predict(result.weights[0], x_test)
    return {
        "protocol": "reference (no selection, last-epoch test accuracy)",
        "config": configs[0].as_dict(),
        "test_top1": top1_accuracy(pred, y_test),
        "test_mean_per_class": mean_per_class_accuracy(pred, y_test, num_classes),
    }


def _fit_selected(args, settings, train, val, test) -> dict:
    from sea import select_and_refit

    candidates = "logreg" if args.method == "logreg" else _head_configs(args)
    if args.method == "logreg" and args.c is not None:
        candidates = ("logreg", tuple(args.c))
    result = select_and_refit(*train, *val, lambda: test, candidates, settings, metric="top1")
    best = result.best_config
    return {
        "protocol": "select on validation, refit on train+val, test once",
        "config": best.as_dict() if hasattr(best, "as_dict") else dict(best),
        "n_candidates": len(result.val_metrics),
        "val_top1": result.val_metrics[result.best_index]["top1"],
        "val_mean_per_class": result.val_metrics[result.best_index]["mean_per_class"],
        "test_top1": result.test_top1,
        "test_mean_per_class": result.test_mean_per_class,
    }


def run(args: argparse.Namespace) -> int:
    from sea import TrainSettings

    started = time.perf_counter()
    train = load_feature_file(args.train)
    test = load_feature_file(args.test)
    val = load_feature_file(args.val) if args.val else None
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, momentum=args.momentum,
                             schedule=args.schedule, seed=args.seed, device=_device(args.device),
                             bf16=args.bf16)
    if val is None:
        out = _fit_reference(args, settings, train, test)
    else:
        out = _fit_selected(args, settings, train, val, test)
    out = {"method": args.method, **out, "seed": args.seed, "epochs": args.epochs,
           "device": settings.device, "n_train": len(train[1]), "n_test": len(test[1]),
           "seconds": round(time.perf_counter() - started, 3)}
    if args.json:
        print(json.dumps(out, default=_json_default))
    else:
        _print_text(out)
    return 0


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _print_text(out: dict) -> None:
    print(f"method: {out['method']}   protocol: {out['protocol']}")
    print("config: " + ", ".join(f"{k}={v}" for k, v in out["config"].items()))
    if "val_top1" in out:
        print(f"validation: top-1 {out['val_top1']:.2f}%  mean per-class {out['val_mean_per_class']:.2f}%"
              f"  (best of {out['n_candidates']})")
    print(f"test: top-1 {out['test_top1']:.2f}%  mean per-class {out['test_mean_per_class']:.2f}%")
    print(f"{out['seconds']:.1f} s on {out['device']}", file=sys.stderr)
