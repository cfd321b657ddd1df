"""Sweep efficiency on Ray Tune: a synthetic 44-cell sweep (11 paper tasks × 4 backbones, one method).

Synthetic features are written to a temporary feature store; the sweep then runs exactly as
`seabench run` runs it (one Tune trial per cell, MLflow logging from the driver into a temporary SQLite
store). Printed:

* efficiency = Σ trial compute time / (sweep wall time × CPUs): the share of the cluster's cores that
  did training rather than waiting on Ray start-up, scheduling or MLflow. Target ≥ 0.6 on 2 cores.
* trials per minute, and the same ratio over the whole run including Ray start-up.

    python benchmarks/bench_sweep.py                 # 2 CPUs, the defaults below
    python benchmarks/bench_sweep.py --epochs 5 --n-train 1000 --num-cpus 4
    python benchmarks/bench_sweep.py --epochs 20 --checkpoint-every 0,5   # what preemption checkpoints cost
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "kits")]  # the repo, then the synthetic-feature writer

PAPER_TASKS = ("aircraft", "caltech101", "cars", "cifar10", "cifar100", "cub200", "dtd", "flowers102",
               "food101", "pets", "sun397")
BACKBONES = ("synth-a", "synth-b", "synth-c", "synth-d")


def write_store(root: Path, n_train: int, n_test: int, dim: int) -> None:
    from synthstore import write_task

    from tasks import get_task

    for b, backbone in enumerate(BACKBONES):
        for task in PAPER_TASKS:
            spec = get_task(task)
            sizes = {"train": n_train, "test": n_test} | ({"val": n_train // 4} if "val" in spec.stored_splits else {})
            write_task(str(root / "store"), backbone, task, sizes, spec.num_classes, dim=dim, seed=b)


def sweep_once(root: Path, args: argparse.Namespace, every: int) -> tuple:
    """One sweep of the synthetic store with trainer.checkpoint_every=`every` (its own MLflow store and Tune
    folder: the fingerprint leaves checkpoint_every out, so a shared store would reuse the first run's cells)."""
    import ray

    from orchestrator.config import load_config
    from orchestrator.sweep import run_sweep

    run = root / f"every-{every}"
    cfg = load_config(data={
        "name": "bench-sweep", "backbones": list(BACKBONES), "tasks": list(PAPER_TASKS), "methods": [args.method],
        "seeds": [0], "store": str(root / "store"), "tracking_uri": f"sqlite:///{run / 'mlflow.db'}",
        "num_cpus": args.num_cpus, "trainer": {"epochs": args.epochs, "batch_size": 256, "checkpoint_every": every},
        "grid": {"lr": [0.8, 1.6], "weight_decay": [1e-6], "lamda": [0.1], "eta": [0.2, 0.8], "alpha": [0.05]},
        "resources": {"cpu": 1}, "max_failures": 0, "tune_dir": str(run / "tune")})
    t1 = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    t_ray = time.perf_counter() - t1
    summary = run_sweep(cfg, cfg.tasks, progress=False)
    total = time.perf_counter() - t1
    ray.shutdown()
    return summary, t_ray, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--method", default="sea")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--checkpoint-every", default="10",
                        help="trainer.checkpoint_every; a comma list runs the sweep once per value, side by side "
                        "(e.g. --epochs 20 --checkpoint-every 0,5: what preemption checkpoints cost)")
    args = parser.parse_args(argv)
    values = [int(v) for v in args.checkpoint_every.split(",")]

    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    results = {}
    try:
        t0 = time.perf_counter()
        write_store(root, args.n_train, args.n_test, args.dim)
        t_store = time.perf_counter() - t0
        for every in values:
            results[every] = sweep_once(root, args, every)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"synthetic sweep: {len(PAPER_TASKS)} tasks × {len(BACKBONES)} backbones × {args.method}, "
          f"n_train={args.n_train}, d={args.dim}, {args.epochs} epochs, 4 configs per cell, {args.num_cpus} CPUs; "
          f"store written in {t_store:.1f} s")
    ok = True
    for every, (summary, t_ray, total) in results.items():
        cells = summary.completed
        ok &= cells == len(PAPER_TASKS) * len(BACKBONES)
        efficiency = summary.trial_seconds / (summary.seconds * args.num_cpus)
        overall = summary.trial_seconds / (total * args.num_cpus)
        print(f"checkpoint_every={every}: {cells} cells ({len(summary.failed)} failed); Ray start-up {t_ray:.1f} s; "
              f"sweep wall {summary.seconds:.1f} s; Σ trial compute {summary.trial_seconds:.1f} s; mean trial "
              f"{summary.trial_seconds / max(cells, 1):.2f} s")
        print(f"  efficiency Σ compute / (wall × CPUs) = {efficiency:.2f}  (target ≥ 0.6); including Ray start-up: "
              f"{overall:.2f}; trials per minute: {cells / summary.seconds * 60:.1f}")
    if len(values) > 1:
        base = results[values[0]][0].seconds
        for every in values[1:]:
            print(f"sweep wall, checkpoint_every={every} / checkpoint_every={values[0]}: "
                  f"{results[every][0].seconds / base:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
