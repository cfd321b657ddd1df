"""`seabench fit`: the authors' script done right, for users who already have features.

Light on purpose: it imports sea, torch and numpy only (no tasks, timm, Ray or MLflow), and every
default is sea's own (`sea.HeadConfig`, `sea.TrainSettings`): there is no second copy here.
`python -m orchestrator.commands.fit ARGS` runs it without the rest of the CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Sequence

import numpy as np

from orchestrator.commands.features_io import load_feature_file
from orchestrator.errors import OrchestratorError

HELP = "Train one linear classifier (with or without SeA) on feature files and report test accuracy."

# flag -> HeadConfig field
GRID_FLAGS: dict[str, str] = {"lr": "lr", "wd": "weight_decay", "eta": "eta", "alpha": "alpha",
                              "lamda": "lamda", "delta": "delta"}
# flag -> TrainSettings field: how the heads are trained (L-BFGS logreg uses none of them)
TRAINING_FLAGS: dict[str, str] = {"epochs": "epochs", "batch_size": "batch_size", "momentum": "momentum",
                                  "schedule": "schedule", "bf16": "bf16"}


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number or a comma list of numbers, got {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _defaults(cls: type) -> dict[str, object]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sea import SCHEDULES, HeadConfig, TrainSettings
    from sea.curves import SELECT_ON, SELECTION_METRICS

    heads, training = _defaults(HeadConfig), _defaults(TrainSettings)
    parser.add_argument("--train", required=True, help=".npz or .pt file with 'features' (n x d) and 'labels'")
    parser.add_argument("--test", required=True, help="test features, same format")
    parser.add_argument("--val", help="validation features: enables selection over comma-list grids, "
                        "a refit on train+val and one test evaluation")
    parser.add_argument("--method", default=heads["method"], help="a head (linear, sea, fgsm, noise, mixup, "
                        "or one a --plugin registers) or logreg")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first: it registers methods (sea.register_method); repeatable")
    # None = not given: a knob the method does not use is then left alone instead of reported ignored
    for flag, name in GRID_FLAGS.items():
        parser.add_argument(f"--{flag}", type=_float_list, default=None,
                            help=f"(default {heads[name]}); a comma list is a grid (needs --val)")
    parser.add_argument("--c", type=_float_list, default=None,
                        help="logreg: inverse regularisation strengths to sweep (default: log-spaced)")
    parser.add_argument("--metric", choices=SELECTION_METRICS, default="top1",
                        help="validation metric that selects the configuration (default top1)")
    parser.add_argument("--select-on", choices=SELECT_ON, default="last_k",
                        help="selection statistic: the mean of the last k epochs' validation metric (last_k, "
                        "default) or the final epoch's (last)")
    parser.add_argument("--k", type=int, default=None, help="epochs averaged by last_k (default max(5, ⌈0.1·epochs⌉))")
    parser.add_argument("--refits", type=int, default=1,
                        help="refit the winner this many times with different batch orders; report the mean")
    parser.add_argument("--halving", type=int, default=None, metavar="FACTOR",
                        help="successive halving of the grid (needs --val): at rungs min_epochs·FACTOR^i < epochs "
                        "only the best 1/FACTOR of the heads go on (e.g. 3; default off)")
    parser.add_argument("--halving-min-epochs", type=int, default=None, metavar="N",
                        help="the first rung (default epochs // FACTOR^⌈log_FACTOR K⌉ for K candidates)")
    parser.add_argument("--epochs", type=int, default=None, help=f"(default {training['epochs']})")
    parser.add_argument("--batch-size", type=int, default=None, help=f"(default {training['batch_size']})")
    parser.add_argument("--momentum", type=float, default=None, help=f"(default {training['momentum']})")
    parser.add_argument("--schedule", choices=SCHEDULES, default=None, help=f"(default {training['schedule']})")
    parser.add_argument("--seed", type=int, default=training["seed"])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--bf16", action="store_true", default=None, help="bfloat16 GEMMs (pays on CUDA)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OrchestratorError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return name


def _ignored(args: argparse.Namespace) -> list[str]:
    """Flags given that do not apply to the method (so that no grid axis duplicates a head)."""
    from sea.methods import get_method

    used = set(get_method(args.method).knobs)
    flags = [f"--{flag}" for flag, name in GRID_FLAGS.items() if name not in used and getattr(args, flag) is not None]
    if args.method == "logreg":
        flags += [f"--{flag.replace('_', '-')}" for flag in (*TRAINING_FLAGS, "halving", "halving_min_epochs")
                  if getattr(args, flag) is not None]
    elif args.c is not None:
        flags.append("--c")
    return flags


def _settings(args: argparse.Namespace):
    from sea import TrainSettings

    given = {name: getattr(args, flag) for flag, name in TRAINING_FLAGS.items() if getattr(args, flag) is not None}
    return TrainSettings(**given, seed=args.seed, device=_device(args.device))


def _head_configs(args: argparse.Namespace) -> list:
    from sea import HeadConfig
    from sea.methods import get_method

    knobs = [(name, getattr(args, flag)) for flag, name in GRID_FLAGS.items()
             if name in get_method(args.method).knobs and getattr(args, flag) is not None]
    names = [name for name, _ in knobs]
    return [HeadConfig(method=args.method, **dict(zip(names, combo)))
            for combo in itertools.product(*(values for _, values in knobs))]


def _shown(config: object, method: str) -> dict:
    """The configuration as reported: the method's own knobs only."""
    from sea.methods import get_method

    if isinstance(config, dict):
        return {k: v for k, v in config.items() if k != "method"}
    return {k: getattr(config, k) for k in get_method(method).knobs}


def _num_classes(**splits: tuple | None) -> int:
    """C from every label given (train, val and test): a class present in any split gets a row of W."""
    from sea.validation import as_labels

    labels = [as_labels(split[1], name) for name, split in splits.items() if split is not None]
    return max(int(t.max()) for t in labels) + 1


def _fit_reference(args, settings, train, test, num_classes: int) -> dict:
    """No validation split: one configuration, last-epoch test accuracy (the authors' protocol)."""
    from sea import mean_per_class_accuracy, predict, top1_accuracy, train_heads

    if args.method == "logreg":
        raise OrchestratorError("--method logreg selects its regularisation on a validation split: pass --val")
    if args.halving is not None or args.halving_min_epochs is not None:
        raise OrchestratorError("--halving halves a grid selected on validation: pass --val VAL")
    configs = _head_configs(args)
    if len(configs) > 1:
        raise OrchestratorError(
            f"{len(configs)} configurations given as comma lists, but no --val to choose among them; "
            "pass --val VAL (selection happens on validation, never on test) or give single values"
        )
    result = train_heads(*train, configs, settings, num_classes=num_classes, progress=True)
    pred = predict(result.weights[0], test[0])
    return {
        "protocol": "reference (no selection, last-epoch test accuracy)",
        "config": _shown(configs[0], args.method),
        "test_top1": top1_accuracy(pred, test[1]),
        "test_mean_per_class": mean_per_class_accuracy(pred, test[1], num_classes),
    }


def _fit_selected(args, settings, train, val, test, num_classes: int) -> dict:
    from sea import select_and_refit

    candidates = "logreg" if args.method == "logreg" else _head_configs(args)
    if args.method == "logreg" and args.c is not None:
        candidates = ("logreg", tuple(args.c))
    heads = args.method != "logreg"
    # nothing here reads the per-epoch curve: only the epochs the selection reads are scored on validation
    protocol = {"select_on": args.select_on, "k": args.k, "refits": args.refits, "halving": _halving(args),
                "val_every_epoch": False} if heads else {}
    result = select_and_refit(*train, *val, lambda: test, candidates, settings, metric=args.metric,
                              num_classes=num_classes, progress=True, **protocol)
    best = result.val_metrics[result.best_index]
    configs = [{"c": m["c"]} for m in result.val_metrics] if args.method == "logreg" else candidates
    statistic = (f"mean of the last {result.select_k} epochs' validation {args.metric}" if result.select_on == "last_k"
                 else f"last-epoch validation {args.metric}") if heads else f"validation {args.metric}"
    extra = {} if not heads else {
        "select_on": result.select_on, "select_k": result.select_k, "val_spread": result.val_spread,
        "refit_noise": result.refit_noise,
        "test_selected_top1": result.selected_test_top1,
        "test_selected_mean_per_class": result.selected_test_mean_per_class,
        "refit_train_top1": result.refit_train_top1, "refits": result.refit_tests,
        "flags": ["refit_unstable"] if result.refit_unstable else []}
    if heads and result.rungs:
        extra["halving"] = {"factor": args.halving, "rungs": result.rungs, "head_epochs": sum(result.stopped_at),
                            "full_grid_head_epochs": len(result.stopped_at) * settings.epochs}
    return {
        "protocol": f"select on {statistic}, refit on train+val, test once",
        **extra,
        "config": _shown(result.best_config, args.method),
        "n_candidates": len(result.val_metrics),
        "val_top1": best["top1"],
        "val_mean_per_class": best["mean_per_class"],
        "test_top1": result.test_top1,
        "test_mean_per_class": result.test_mean_per_class,
        "candidates": [{"config": _shown(c, args.method), "val_top1": m["top1"],
                        "val_mean_per_class": m["mean_per_class"], **({"epochs_run": e} if heads else {})}
                       for c, m, e in itertools.zip_longest(configs, result.val_metrics, result.stopped_at)],
    }


def _halving(args: argparse.Namespace):
    """--halving / --halving-min-epochs as a sea.Halving (None: off); its errors name the flags."""
    from sea import Halving

    if args.halving is None:
        if args.halving_min_epochs is not None:
            raise OrchestratorError("--halving-min-epochs sets the first rung of --halving FACTOR: pass --halving too")
        return None
    return Halving(args.halving, args.halving_min_epochs, keys=("--halving", "--halving-min-epochs"))


def run(args: argparse.Namespace) -> int:
    from sea.methods import get_method, import_plugins

    started = time.perf_counter()
    import_plugins(args.plugin)
    if get_method(args.method).kind not in ("head", "probe"):
        raise OrchestratorError(f"--method {args.method} runs in a sweep (seabench run); fit trains heads and logreg")
    ignored = _ignored(args)
    if ignored:
        print(f"seabench fit: {', '.join(ignored)} {'does' if len(ignored) == 1 else 'do'} not apply to "
              f"--method {args.method}; ignored", file=sys.stderr)
    train = load_feature_file(args.train)
    test = load_feature_file(args.test)
    val = load_feature_file(args.val) if args.val else None
    num_classes = _num_classes(train=train, val=val, test=test)
    settings = _settings(args)
    if val is None:
        out = _fit_reference(args, settings, train, test, num_classes)
    else:
        out = _fit_selected(args, settings, train, val, test, num_classes)
    out = {"method": args.method, **out, "seed": args.seed, "device": settings.device,
           "n_train": len(train[1]), "n_test": len(test[1]), "num_classes": num_classes,
           "seconds": round(time.perf_counter() - started, 3)}
    if args.method != "logreg":
        out["epochs"] = settings.epochs
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
    if "halving" in out:
        h = out["halving"]
        print(f"halving: factor {h['factor']}, rungs at epochs {', '.join(map(str, h['rungs']))}: "
              f"{h['head_epochs']} head-epochs of the full grid's {h['full_grid_head_epochs']}")
    if "test_selected_top1" in out:
        print(f"selected head (train only), same test pass: top-1 {out['test_selected_top1']:.2f}%  mean per-class "
              f"{out['test_selected_mean_per_class']:.2f}%  (validation spread over the last {out['select_k']} "
              f"epochs {out['val_spread']:.2f} points)")
    if out.get("flags"):
        print("flags: " + ", ".join(out["flags"]) + " — the refit and the selected head disagree on test by more "
              "than the selected head's validation spread: the run is unstable at this configuration")
    print(f"{out['seconds']:.1f} s on {out['device']}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """`seabench fit` on its own: the same arguments, output and exit codes."""
    from sea.errors import SeaError

    parser = argparse.ArgumentParser(prog="seabench fit", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (SeaError, OrchestratorError) as exc:
        print(f"seabench fit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
