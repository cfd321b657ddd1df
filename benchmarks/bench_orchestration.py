"""Orchestration at the paper's shape: the driver's cost per cell, resume and report, on tiny synthetic features.

The paper's sweep is 11 tasks × 4 backbones × 7 methods × 3 seeds = 924 cells. Each size runs in its own
process, against its own real `mlflow server` on 127.0.0.1 (SQLite backend and artifact folder in a
temporary directory), on a local Ray of --num-cpus CPUs:

1. the sweep, exactly as `seabench run` runs it (`run_sweep`: one Tune trial per head cell, the
   fine-tuning cells as Ray tasks beside the Tuner, every cell logged to MLflow by the driver);
2. the resume: the same sweep again, with nothing left to compute (fingerprints, the lease, the scan
   of the finished runs);
3. the report (`build_report`: every run, candidate table and SeA/linear prediction file read back).

Compute is negligible on purpose: d = 8 features, 3 rows per class, one epoch, one candidate per head
method. The finetune method trains a backbone on images with Ray Train; the synthetic tasks have no
images, so its cells run through the sweep's real fine-tuning path (FinetuneCells: a Ray task per cell on
the driver's node, logged from the driver) with a stand-in body: a linear head on the cell's features
(`run_cell` with method linear), tagged `standin=linear-head`. Their numbers are a linear probe's.

Printed per size: driver CPU seconds (this process, all threads; Ray's own processes excluded) and wall
seconds per cell, MLflow writes (POST requests to the server) per second of sweep, the resume's and the
report's seconds, and the driver's peak RSS; then how each grows from the smallest size to the largest.

    python benchmarks/bench_orchestration.py                    # 44, 231 and 924 cells
    python benchmarks/bench_orchestration.py --cells 44,231 --json out.json
    python benchmarks/bench_orchestration.py --smoke            # 8 cells, the CI smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "kits")]
# the repo first (its sea/, not tests/sea/), then the synthetic-feature writer and the cluster tests' kit

from clusterkit import mlflow_server  # noqa: E402 - the tests' real `mlflow server` on 127.0.0.1

PAPER_TASKS = ("aircraft", "caltech101", "cars", "cifar10", "cifar100", "cub200", "dtd", "flowers102",
               "food101", "pets", "sun397")
BACKBONES = ("synth-a", "synth-b", "synth-c", "synth-d")
METHODS = ("linear", "sea", "fgsm", "noise", "mixup", "logreg", "finetune")
SEEDS = (0, 1, 2)
# cells -> (tasks, backbones, methods, seeds): subsets of the paper's shape
SHAPES = {
    8: (PAPER_TASKS[3:5], BACKBONES[:1], ("linear", "sea", "finetune", "logreg"), (0,)),
    44: (PAPER_TASKS, BACKBONES, ("sea",), (0,)),
    231: (PAPER_TASKS, BACKBONES[:1], METHODS, SEEDS),
    924: (PAPER_TASKS, BACKBONES, METHODS, SEEDS),
}
GOALS = {"cpu_per_cell": 0.3, "resume_s": 60.0, "report_s": 120.0, "rss_mb": 2048.0}   # at 924 cells


def count_requests() -> Counter:
    """Count the HTTP requests of this process by method (MLflow's client goes through requests.Session)."""
    import requests

    counts: Counter = Counter()
    original = requests.Session.request

    def request(self, method, url, *args, **kwargs):   # requests' own signature
        counts[str(method).upper()] += 1
        return original(self, method, url, *args, **kwargs)

    requests.Session.request = request
    return counts


def write_store(root: Path, tasks: tuple[str, ...], backbones: tuple[str, ...], dim: int) -> None:
    from synthstore import write_task

    from tasks import get_task

    for b, backbone in enumerate(backbones):
        for task in tasks:
            spec = get_task(task)
            n = 3 * spec.num_classes   # the carve keeps ≥ 2 rows of a class in fit
            sizes = {"train": n, "test": spec.num_classes} | ({"val": spec.num_classes} if "val" in spec.stored_splits else {})
            write_task(str(root), backbone, task, sizes, spec.num_classes, dim=dim, seed=b)


def register_backbones(backbones) -> None:
    """The synthetic names as registry entries (random-init ResNet-10t): a fine-tuning cell's recipe is its
    backbone's timm family's, so the sweep resolves it (and keys the cell by it) from the registry."""
    from tasks import BackboneSpec, register_backbone

    for name in backbones:
        register_backbone(BackboneSpec(name, "resnet10t", "random:0", input_size=16, model_kwargs=(("num_classes", 0),),
                                       note="bench_orchestration's synthetic backbone (features only)"))


def _standin_finetune(cfg, cell, key, workdir):   # FinetuneCells' task signature
    """A fine-tuning cell's stand-in body: a linear head on the cell's stored features (see the docstring)."""
    from orchestrator.sweep import Cell, run_cell, trial_context

    os.chdir(workdir)
    outcome = run_cell(Cell(cell.backbone, cell.task, "linear", cell.seed), trial_context(cfg))
    outcome.cell_id = cell.cell_id
    outcome.tags["standin"] = "linear-head"
    return outcome


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def run_size(cells: int, num_cpus: int, dim: int, profile: Path | None) -> dict:
    """One size, in this process: sweep, resume, report; the measurements as a dict."""
    import cProfile

    import ray

    from orchestrator.config import load_config
    from orchestrator.report import build_report
    from orchestrator.sweep import FinetuneCells, run_sweep

    tasks, backbones, methods, seeds = SHAPES[cells]
    FinetuneCells.task = staticmethod(_standin_finetune)  # the driver's real FinetuneCells path, a cheap body
    root = Path(tempfile.mkdtemp(prefix=f"bench-orch-{cells}-"))
    out: dict = {"cells": cells, "shape": f"{len(tasks)}×{len(backbones)}×{len(methods)}×{len(seeds)}"}
    try:
        write_store(root / "store", tasks, backbones, dim)
        register_backbones(backbones)
        with mlflow_server(root) as url:
            cfg = load_config(data={
                "name": f"bench-orch-{cells}", "backbones": list(backbones), "tasks": list(tasks),
                "methods": list(methods), "seeds": list(seeds), "store": str(root / "store"), "tracking_uri": url,
                "num_cpus": num_cpus, "trainer": {"epochs": 1, "batch_size": 64},
                "grid": {"lr": [0.8], "weight_decay": [1e-6], "lamda": [0.1], "eta": [0.2], "alpha": [0.05],
                         "c": [1.0]},
                "resources": {"cpu": 1}, "max_failures": 0, "tune_dir": str(root / "tune")})
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            requests = count_requests()
            phases = {}
            for phase, call in (("sweep", lambda: run_sweep(cfg, cfg.tasks, progress=False)),
                                ("resume", lambda: run_sweep(cfg, cfg.tasks, progress=False)),
                                ("report", lambda: build_report(cfg.name, root / "report", url))):
                requests.clear()
                profiler = cProfile.Profile() if profile else None
                wall0, cpu0 = time.perf_counter(), time.process_time()
                if profiler:
                    profiler.enable()
                result = call()
                if profiler:
                    profiler.disable()
                    profiler.dump_stats(str(profile / f"{cells}-{phase}.prof"))
                phases[phase] = {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0,
                                 "requests": dict(requests), "rss_mb": rss_mb(), "result": result}
            ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    sweep, resume, report = phases["sweep"], phases["resume"], phases["report"]
    summary = sweep["result"]
    writes = sum(n for m, n in sweep["requests"].items() if m != "GET")
    out.update(
        completed=summary.completed, failed=len(summary.failed), resumed_skipped=resume["result"].skipped,
        sweep_wall_s=sweep["wall_s"], sweep_cpu_s=sweep["cpu_s"], trial_s=summary.trial_seconds,
        cpu_per_cell=sweep["cpu_s"] / cells, wall_per_cell=sweep["wall_s"] / cells,
        mlflow_writes=writes, mlflow_reads=sweep["requests"].get("GET", 0), writes_per_s=writes / sweep["wall_s"],
        resume_s=resume["wall_s"], resume_cpu_s=resume["cpu_s"], resume_requests=sum(resume["requests"].values()),
        report_s=report["wall_s"], report_cpu_s=report["cpu_s"], report_requests=sum(report["requests"].values()),
        report_cells=int(report["result"].n_cells), rss_sweep_mb=sweep["rss_mb"], rss_mb=report["rss_mb"])
    return out


ROWS = (("shape (tasks×backbones×methods×seeds)", "shape", "{}"), ("cells computed / failed", None, ""),
        ("sweep wall s", "sweep_wall_s", "{:.1f}"), ("Σ trial compute s", "trial_s", "{:.1f}"),
        ("driver CPU s", "sweep_cpu_s", "{:.1f}"), ("driver CPU s / cell", "cpu_per_cell", "{:.3f}"),
        ("wall s / cell", "wall_per_cell", "{:.3f}"), ("MLflow writes (POST)", "mlflow_writes", "{}"),
        ("MLflow writes / s", "writes_per_s", "{:.1f}"), ("resume s (0 to compute)", "resume_s", "{:.1f}"),
        ("report s", "report_s", "{:.1f}"), ("driver peak RSS MB", "rss_mb", "{:.0f}"))


def table(results: list[dict]) -> str:
    lines = [f"{'cells':<40}" + "".join(f"{r['cells']:>12}" for r in results)]
    for label, key, fmt in ROWS:
        cells = [f"{r['completed']}/{r['failed']}" if key is None else fmt.format(r[key]) for r in results]
        lines.append(f"{label:<40}" + "".join(f"{c:>12}" for c in cells))
    if len(results) > 1:
        first, last = results[0], results[-1]
        lines.append(f"growth {first['cells']} → {last['cells']} cells (×{last['cells'] / first['cells']:.1f}):")
        for key in ("cpu_per_cell", "wall_per_cell", "writes_per_s", "resume_s", "report_s", "rss_mb"):
            steps = " → ".join(f"{r[key]:.3g}" for r in results)
            lines.append(f"  {key:<16} {steps}  (×{last[key] / first[key]:.2f})" if first[key] else f"  {key} {steps}")
    return "\n".join(lines)


def goals(result: dict) -> str:
    checks = [("driver CPU s / cell", result["cpu_per_cell"], GOALS["cpu_per_cell"]),
              ("resume s", result["resume_s"], GOALS["resume_s"]), ("report s", result["report_s"], GOALS["report_s"]),
              ("driver peak RSS MB", result["rss_mb"], GOALS["rss_mb"])]
    return "\n".join(f"goal at {result['cells']} cells: {name} {value:.3g} ≤ {goal:g}: {'met' if value <= goal else 'MISSED'}"
                     for name, value, goal in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="44,231,924", help=f"comma list of sizes among {sorted(SHAPES)}")
    parser.add_argument("--smoke", action="store_true", help="8 cells only (the CI smoke test)")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of each phase into this folder")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)   # internal: run one size in this process
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_size(args.one, args.num_cpus, args.dim, args.profile)))
        return 0
    sizes = [8] if args.smoke else [int(s) for s in args.cells.split(",")]
    unknown = [s for s in sizes if s not in SHAPES]
    if unknown:
        parser.error(f"--cells {unknown}: sizes are {sorted(SHAPES)}")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    results = []
    for size in sizes:   # each size in a fresh process: its own CPU time, peak RSS, Ray and MLflow server
        command = [sys.executable, __file__, "--one", str(size), "--num-cpus", str(args.num_cpus), "--dim", str(args.dim),
                   *(["--profile", str(args.profile)] if args.profile else [])]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-6000:], sep="\n", file=sys.stderr)
            return 1
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{size} cells done: sweep {results[-1]['sweep_wall_s']:.0f} s", file=sys.stderr, flush=True)
    print(f"orchestration benchmark: {args.num_cpus} CPUs for Ray, {os.cpu_count()} cores on the machine, "
          f"load average {os.getloadavg()[0]:.1f}; real mlflow server (SQLite) on 127.0.0.1")
    print(table(results))
    print(goals(results[-1]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if all(r["failed"] == 0 and r["completed"] == r["cells"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
