"""The one GPU check (issue #22 item 5, #21 item 6): every CUDA-only path and the paper's costs in one command
of at most 8 minutes on one GPU, written to one JSON. Run it whenever a task is lent a GPU:

    python benchmarks/gpu_check.py --out gpu-check.json [--device cuda|cpu] [--budget-s 480] [--smoke]

`--smoke` (CI, on CPU) runs the same code at tiny shapes. The JSON: `machine` (torch, CUDA, GPU and memory,
CPUs, python, date, git commit), `ok`, `failed`, `seconds`, and `parts`, each {"status": "ok" | "skipped" |
"failed", "seconds", figures; "reason" if skipped, "error" if failed, "not_run": what of it needs CUDA}:

- cuda_tests: pytest (a subprocess) over every test that skips without CUDA: passed / failed / skipped;
- trainer: `sea.train_heads` float32 vs bf16 head-epochs/s, and per method bf16's max relative weight
  difference and accuracy gap on tests/sea/test_trainer.py's problem, against its tolerances;
- protocol_cell: one SeA cell at the paper's shape (configs/paper.yaml's 432-head grid and trainer, 100 epochs,
  on 5 784 × 1 280 seeded synthetic fit features, 101 classes) by `sea.select_and_refit`, the full grid and
  `Halving(3)`: seconds, head-epochs, same selection or not, test top-1;
- extraction: images/s of a random-init ViT-B/16 at 224 px on random uint8 images as the extraction actor
  runs it (channels-last, bf16 autocast on CUDA, float16 features to the host; no decoding or resizing);
- finetune: images/s of the real loop (`orchestrator.finetune.run_training`: Ray Train, one worker, bf16 and
  NCCL on a GPU, gloo on CPU, checked by an all-reduce in the worker), of bench_finetune's bare loop on the
  same images, and of the net's steps alone; `cell`: one paper fine-tuning cell's training (paper.yaml's finetune
  section) at the real loop's rate; `cell_cost_ratio`: that over protocol_cell's seconds.

The JSON is written atomically whatever fails; the exit status is 1 if any part failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "kits"), str(ROOT / "tests" / "sea"), str(ROOT / "benchmarks")]   # fakedata, the bf16 test, bench_finetune


@dataclass(frozen=True)
class Shapes:
    """`overrides` of configs/paper.yaml give a grid of grid_size heads; a fine-tuning epoch holds all ft_steps
    (ft_classes × ft_per_class fake images); needs_scale × NEEDS_S: the least budget each part starts with."""

    overrides: tuple[str, ...]
    grid_size: int
    rows: int
    dim: int
    classes: int
    trainer_heads: int
    trainer_epochs: int
    extract_backbone: str
    extract_batches: int
    ft_backbone: str
    ft_size: int
    ft_batch: int
    ft_steps: int
    ft_classes: int
    ft_per_class: int
    needs_scale: float


VIT_B16 = "random:vit_base_patch16_224@224"
FULL = Shapes(overrides=(), grid_size=432, rows=5784, dim=1280, classes=101, trainer_heads=48, trainer_epochs=5,
              extract_backbone=VIT_B16, extract_batches=30, ft_backbone=VIT_B16, ft_size=224, ft_batch=64,
              ft_steps=150, ft_classes=101, ft_per_class=125, needs_scale=1.0)
SMOKE = Shapes(overrides=("grid.lr=[0.8, 1.6, 3.2]", "grid.weight_decay=[1.0e-5]", "grid.lamda=[0.1]",
                          "grid.eta=[0.2, 0.4, 0.8]", "grid.alpha=[0.01]", "trainer.epochs=4", "trainer.batch_size=64",
                          "extraction.batch_size=8"),
               grid_size=9, rows=200, dim=32, classes=10, trainer_heads=4, trainer_epochs=2,
               extract_backbone="random:resnet10t@32", extract_batches=3, ft_backbone="random:resnet10t@32",
               ft_size=32, ft_batch=8, ft_steps=4, ft_classes=4, ft_per_class=12, needs_scale=0.02)
NEEDS_S = {"cuda_tests": 60, "trainer": 30, "extraction": 30, "protocol_cell": 150, "finetune": 90}
NEEDS_CUDA = "needs CUDA (this machine has none)"
ONLY_CUDA_TESTS = """import sys, pytest
class OnlyCuda:
    def pytest_collection_modifyitems(self, config, items):
        keep = [i for i in items if "cuda" in i.name.lower()
                or any("cuda" in str(m.kwargs.get("reason", "")).lower() for m in i.iter_markers("skipif"))]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep
sys.exit(pytest.main(sys.argv[1:], plugins=[OnlyCuda()]))"""


@dataclass
class Context:
    device: str
    shapes: Shapes
    deadline: float                            # time.perf_counter() at which the budget is spent
    results: dict[str, dict[str, Any]]         # the parts run so far

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def config(self) -> Any:
        from orchestrator.config import load_config

        return load_config(ROOT / "configs" / "paper.yaml", self.shapes.overrides)

    def timed(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        """(seconds, fn()): the device's queue drained before and after."""
        import torch

        sync = torch.cuda.synchronize if self.cuda else (lambda: None)
        sync()
        began = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - began, out


def cuda_tests(ctx: Context) -> dict[str, Any]:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                   if p.name != "test_gpu_check.py" and re.search(r"cuda\.is_available|needs CUDA", p.read_text()))
    run = subprocess.run([sys.executable, "-c", ONLY_CUDA_TESTS, "-q", "-rs", "-p", "no:cacheprovider", *files],
                         cwd=ROOT, capture_output=True, text=True, check=False,
                         timeout=max(30.0, min(300.0, ctx.deadline - time.perf_counter())))
    tail = (run.stdout + run.stderr).strip().splitlines() or [""]
    counts = dict.fromkeys(("passed", "failed", "skipped", "error", "deselected"), 0)
    for n, what in re.findall(r"(\d+) (passed|failed|skipped|error|deselected)", tail[-1]):
        counts[what] = int(n)
    reasons = sorted({line.rsplit(": ", 1)[-1] for line in tail if line.startswith("SKIPPED")})
    out: dict[str, Any] = {"files": files, **counts, "skip_reasons": reasons, "returncode": run.returncode}
    if counts["failed"] or counts["error"] or run.returncode not in (0, 5):
        return {**out, "status": "failed", "error": "\n".join(tail[-30:])}
    if not counts["passed"]:
        why = "; ".join(reasons) or "none selected"
        return {**out, "status": "skipped", "reason": f"{counts['skipped']} CUDA test(s) skipped here: {why}"}
    return out


def synthetic_splits(s: Shapes, seed: int = 0) -> list[tuple[Any, Any]]:
    """(fit, val, test): seeded class means + noise, a hard but learnable problem."""
    import torch

    g = torch.Generator().manual_seed(seed)
    means = torch.randn(s.classes, s.dim, generator=g)
    labels = [torch.randperm(n, generator=g) % s.classes for n in (s.rows, s.rows // 4, s.rows // 4)]
    return [(means[y] + 0.3 * s.dim ** 0.5 * torch.randn(len(y), s.dim, generator=g), y) for y in labels]


def sea_grid(ctx: Context) -> tuple[Any, list, Any]:
    """(config, the SeA grid as the sweep builds it, the cell's TrainSettings on this device)."""
    from orchestrator.sweep import candidate_configs, head_configs
    from sea import TrainSettings

    cfg = ctx.config()
    grid = head_configs("sea", candidate_configs(cfg, "sea"))
    if len(grid) != ctx.shapes.grid_size:
        raise RuntimeError(f"the SeA grid has {len(grid)} heads, expected {ctx.shapes.grid_size}")
    t = cfg.trainer
    return cfg, grid, TrainSettings(epochs=t.epochs, batch_size=t.batch_size, momentum=t.momentum,
                                    schedule=t.schedule, device=ctx.device, bf16=t.bf16)


def trainer(ctx: Context) -> dict[str, Any]:
    from test_trainer import BF16_ACCURACY_POINTS, BF16_HEADS, BF16_WEIGHT_TOLERANCE, _bf16_problem, _rel

    from sea import TrainSettings, predict, train_heads

    _, grid, cell = sea_grid(ctx)
    (x, y), _, _ = synthetic_splits(ctx.shapes)
    heads, epochs, c = grid[: ctx.shapes.trainer_heads], ctx.shapes.trainer_epochs, ctx.shapes.classes
    out: dict[str, Any] = {"timed": f"{len(heads)} SeA heads × {epochs} epochs on {list(x.shape)}"}
    if not ctx.cuda:
        out["not_run"] = {"bf16": f"{NEEDS_CUDA}: on CPU bf16 runs but does not pay (timed on CUDA only; CI checks its tolerance on CPU)"}
    for name in ("float32", "bf16") if ctx.cuda else ("float32",):
        settings = dataclasses.replace(cell, epochs=epochs, bf16=name == "bf16")
        train_heads(x[:256], y[:256], heads, dataclasses.replace(settings, epochs=1), c)   # warm-up
        out[f"{name}_head_epochs_per_s"] = len(heads) * epochs / ctx.timed(lambda s=settings: train_heads(x, y, heads, s, c))[0]
    if not ctx.cuda:
        return out
    (xb, yb), (xt, yt) = _bf16_problem()
    settings = TrainSettings(epochs=2, batch_size=64, device="cuda")
    f32, b16 = (train_heads(xb, yb, BF16_HEADS, dataclasses.replace(settings, bf16=b)).weights for b in (False, True))
    rel: dict[str, float] = {}
    gap: dict[str, float] = {}
    for k, head in enumerate(BF16_HEADS):
        rel[head.method] = max(rel.get(head.method, 0.0), _rel(b16[k], f32[k]))
        acc = [float((predict(w[k], xt) == yt).double().mean()) * 100 for w in (f32, b16)]
        gap[head.method] = max(gap.get(head.method, 0.0), abs(acc[1] - acc[0]))
    within = all(rel[m] < BF16_WEIGHT_TOLERANCE[m] and gap[m] <= BF16_ACCURACY_POINTS for m in rel)
    out.update(bf16_speedup=out["bf16_head_epochs_per_s"] / out["float32_head_epochs_per_s"], bf16_max_rel_diff=rel,
               bf16_tolerance=BF16_WEIGHT_TOLERANCE, bf16_accuracy_gap_points=gap, bf16_within_tolerance=within)
    return out if within else {**out, "status": "failed", "error": "bf16 outside tests/sea/test_trainer.py's tolerances"}


def protocol_cell(ctx: Context) -> dict[str, Any]:
    from sea import Halving, select_and_refit

    cfg, grid, settings = sea_grid(ctx)
    fit, val, test = synthetic_splits(ctx.shapes)
    p, c = cfg.protocol, ctx.shapes.classes
    # warm-up (allocator, kernels, thread pools): the first timed run would pay for both otherwise
    few = (fit[0][:256], fit[1][:256])   # validated on themselves: 256 rows need not hold every class
    select_and_refit(*few, *few, lambda: test, grid, dataclasses.replace(settings, epochs=2), num_classes=c)
    out: dict[str, Any] = {"heads": len(grid), "epochs": settings.epochs, "batch_size": settings.batch_size,
                           "fit": list(fit[0].shape), "classes": c, "bf16": settings.bf16}
    for name, halving in (("full", None), ("halving", Halving(3))):
        seconds, r = ctx.timed(lambda h=halving: select_and_refit(
            *fit, *val, lambda: test, grid, settings, num_classes=c, select_on=p.select_on, k=p.k, refits=p.refits,
            halving=h))
        out[name] = {"seconds": seconds, "head_epochs": sum(r.stopped_at) or len(grid) * r.stopped_epoch,
                     "rungs": r.rungs, "best_index": r.best_index, "test_top1": r.test_top1,
                     "phase_seconds": {k: v for k, v in r.phase_seconds.items() if not k.endswith("_cpu")}}
    return {**out, "full_over_halving": out["full"]["seconds"] / out["halving"]["seconds"],
            "same_selection": out["full"]["best_index"] == out["halving"]["best_index"]}


def extraction(ctx: Context) -> dict[str, Any]:
    import torch

    import tasks

    batch, n = ctx.config().extraction.batch_size, ctx.shapes.extract_batches
    backbone = tasks.build_backbone(ctx.shapes.extract_backbone)
    backbone.model.to(ctx.device, memory_format=torch.channels_last)   # as the extraction actor holds it
    size = backbone.preprocessing["input_size"][-1]
    mean, std = (torch.tensor(backbone.preprocessing[k], device=ctx.device).view(1, 3, 1, 1) for k in ("mean", "std"))
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    images = images.pin_memory() if ctx.cuda else images

    def batches(count: int) -> None:
        for _ in range(count):
            x = images.to(ctx.device, non_blocking=True).float().div_(255).sub_(mean).div_(std)
            backbone.features(x.contiguous(memory_format=torch.channels_last)).float().cpu().numpy().astype("float16")

    with torch.inference_mode(), torch.autocast(ctx.device, dtype=torch.bfloat16, enabled=ctx.cuda):
        batches(3)
        seconds, _ = ctx.timed(lambda: batches(n))
    out = {"backbone": ctx.shapes.extract_backbone, "image_size": size, "batch_size": batch, "batches": n,
           "precision": "bf16-autocast" if ctx.cuda else "float32", "images_per_s": n * batch / seconds}
    return out if ctx.cuda else {**out, "not_run": {"bf16-autocast": NEEDS_CUDA}}


def backend_probe(path: str) -> Callable[[int, int], None]:
    """An after-epoch hook (a closure: Ray pickles it by value) that writes the worker's process-group backend
    and the sum of an all-reduce of ones through it (on the GPU for NCCL, whose communicator starts lazily)."""

    def hook(epoch: int, rank: int) -> None:
        import json

        import torch
        import torch.distributed as dist

        backend, total = dist.get_backend() if dist.is_initialized() else "none", None
        if backend != "none":
            ones = torch.ones(1, device="cuda" if backend == "nccl" else "cpu")
            dist.all_reduce(ones)
            total = float(ones.item())
        with open(path, "w") as f:
            json.dump({"backend": backend, "all_reduce": total}, f)

    return hook


def compute_rate(ctx: Context, steps: int) -> float:
    """Images/s of the fine-tuning net's steps alone: one batch of random tensors already on the device."""
    import torch
    from torch.nn import functional as F

    from orchestrator.finetune import build_net

    s = ctx.shapes
    net = build_net(s.ft_backbone, s.ft_classes, seed=0)[0].to(ctx.device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(s.ft_batch, 3, s.ft_size, s.ft_size, device=ctx.device)
    y = torch.randint(s.ft_classes, (s.ft_batch,), device=ctx.device)

    def run(count: int) -> None:
        for _ in range(count):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=ctx.cuda):
                loss = F.cross_entropy(net(x).float(), y)
            loss.backward()
            optimizer.step()

    run(3)
    return steps * s.ft_batch / ctx.timed(lambda: run(steps))[0]


def finetune(ctx: Context) -> dict[str, Any]:
    import bench_finetune
    import ray
    import torch
    from fakedata import make_fake_imagefolder

    from orchestrator.config import FinetuneConfig
    from orchestrator.finetune import backbone_recipe, run_training

    s, cores, threads = ctx.shapes, os.cpu_count() or 1, torch.get_num_threads()
    cpus = min(4, cores)   # the paper's cpus_per_worker, where there are that many
    with tempfile.TemporaryDirectory(prefix="gpu-check-ft-") as tmp:
        make_fake_imagefolder(Path(tmp, "images"), s.ft_classes, s.ft_per_class, 1, size=16)
        args = argparse.Namespace(backbone=s.ft_backbone, task=f"imagefolder:{tmp}/images", image_size=s.ft_size,
                                  steps=s.ft_steps, batch_size=s.ft_batch, device=ctx.device)
        probe = Path(tmp, "backend")
        job = {"backbone": args.backbone, "task": args.task, "root": None, "num_classes": s.ft_classes,
               "recipe": bench_finetune.recipe(args, args.steps), "threads": cpus, "workdir": os.getcwd(),
               "train_phase": "fit", "eval_phase": "val", "after_epoch": backend_probe(str(probe))}
        ft = FinetuneConfig(num_workers=1, cpus_per_worker=float(cpus), gpus_per_worker=float(ctx.cuda), max_failures=0)
        ray.init(address="local", num_cpus=cores, num_gpus=int(ctx.cuda), include_dashboard=False, log_to_driver=False)
        try:
            bare = bench_finetune.bare_loop(args, cpus)
            fit_s, (metrics, _) = ctx.timed(lambda: run_training(job, ft, str(Path(tmp, "storage")), "gpu-check-ft"))
            group = json.loads(probe.read_text())
        finally:
            ray.shutdown()
            torch.set_num_threads(threads)
    out: dict[str, Any] = {
        "backbone": s.ft_backbone, "image_size": s.ft_size, "batch_size": s.ft_batch, "steps": int(metrics["steps"]),
        "epochs": int(metrics["epochs_run"]), "precision": job["recipe"]["precision"], **group,
        "images_per_s": metrics["images_per_s"], "bare_images_per_s": bare["images_per_s"],
        "compute_images_per_s": compute_rate(ctx, s.ft_steps), "fit_wall_s": fit_s}
    out["ray_over_bare"] = out["images_per_s"] / out["bare_images_per_s"]
    if not ctx.cuda:
        out["not_run"] = {"nccl": f"{NEEDS_CUDA}: gloo on CPU", "bf16": f"{NEEDS_CUDA}: autocast is CUDA only"}
    elif group != {"backend": "nccl", "all_reduce": 1.0}:
        out.update(status="failed", error=f"the Ray Train worker's process group: {group}, not NCCL summing 1 GPU")
    paper = backbone_recipe(ctx.config().finetune, s.ft_backbone)   # the recipe paper.yaml runs for this backbone
    runs, keys = len(paper.candidates()) + 1, dict(paper.keys)
    cell_s = runs * keys["steps"] * keys["batch_size"] / out["images_per_s"]
    out["cell"] = {"recipe": paper.name, "runs": runs, "steps": keys["steps"], "batch_size": keys["batch_size"],
                   "estimated_s": cell_s,
                   "counts": "training steps at images_per_s on this one device; evaluation, Ray start-up not counted"}
    sea = ctx.results.get("protocol_cell", {})
    if sea.get("status") == "ok":
        out["cell_cost_ratio"] = {k: cell_s / sea[k]["seconds"] for k in ("full", "halving")}
    return out


Part = Callable[[Context], dict[str, Any]]
PARTS: dict[str, Part] = {"cuda_tests": cuda_tests, "trainer": trainer, "extraction": extraction,
                          "protocol_cell": protocol_cell, "finetune": finetune}


def run_parts(parts: dict[str, Part], ctx: Context) -> dict[str, dict[str, Any]]:
    """Each part in turn, never raising: its figures and status; a part the budget left cannot hold is skipped."""
    for name, part in parts.items():
        left, needs = ctx.deadline - time.perf_counter(), NEEDS_S.get(name, 0) * ctx.shapes.needs_scale
        began = time.perf_counter()
        if left < needs:
            ctx.results[name] = {"status": "skipped", "reason": f"budget: {left:.0f} s left, the part needs ~{needs:.0f} s"}
        else:
            try:
                out = part(ctx)
                ctx.results[name] = {"status": out.pop("status", "ok"), **out}
            except Exception as exc:   # recorded; the check goes on with the next part
                ctx.results[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                     "traceback": traceback.format_exc(limit=-6)}
        ctx.results[name]["seconds"] = time.perf_counter() - began
        print(f"{name:<14} {ctx.results[name]['status']:<8} {ctx.results[name]['seconds']:7.1f} s", flush=True)
    return ctx.results


def machine(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
                            "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), gpus=torch.cuda.device_count())
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                            check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a temporary file beside `path`, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


def main(argv: list[str] | None = None, parts: dict[str, Part] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget-s", type=float, default=480.0)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, the same code (CI, on CPU)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    ctx = Context(args.device, SMOKE if args.smoke else FULL, began + args.budget_s, {})
    head = {"machine": machine(args.device), "smoke": args.smoke, "budget_s": args.budget_s}
    try:
        run_parts(PARTS if parts is None else parts, ctx)
    finally:   # written even if interrupted
        failed = [name for name, r in ctx.results.items() if r["status"] == "failed"]
        write_json(args.out, {**head, "ok": not failed, "failed": failed, "seconds": time.perf_counter() - began,
                              "parts": ctx.results})
    print(f"{args.out}: {'FAILED ' + ', '.join(failed) if failed else 'ok'} in {time.perf_counter() - began:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
