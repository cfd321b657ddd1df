"""Speed of fine-tuning through Ray Train, measured side by side in one run on the same model and images.

Rows, all on the same backbone, task phase, transforms, recipe and number of optimiser steps:

- *bare*: a plain single-process PyTorch loop — the backbone + linear head, a shuffled DataLoader over the
  same images and transforms, SGD + the recipe's schedule, `loss.backward(); opt.step()` — nothing else;
- *Ray Train, 1 worker*: `orchestrator.finetune.run_training` with one TorchTrainer worker holding every
  core (its own seeded sampler, deterministic augmentation, an epoch checkpoint through `ray.train.report`);
- *Ray Train, W workers*: the same with W gloo DDP workers sharing the cores (one thread each).

For each: images/s of the training loop (from the model and data built to the last step: the first, warm-up
step included, and for Ray Train DDP's set-up and the checkpoint), and end to end (`trainer.fit()` wall: worker start-up, data, checkpoints,
validation). The ratio is Ray Train's images/s over the bare loop's; the target is ≥ 0.8 on CPU.

    python benchmarks/bench_finetune.py [--backbone efficientnet-lite0] [--task digits] [--image-size 64]
        [--steps 30] [--batch-size 32] [--workers 2] [--device cpu] [--json]

Needs the digits task (scikit-learn) and the backbone's weights package; a random-init backbone
(`random:resnet10t@32`) works anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def recipe(args: argparse.Namespace, steps: int) -> dict:
    from orchestrator.finetune import Recipe

    return Recipe(lr=0.01, weight_decay=1e-4, seed=0, epochs=None, steps=steps, batch_size=args.batch_size,
                  image_size=args.image_size,
                  precision="bf16" if args.device == "cuda" else "fp32").as_dict()


def bare_loop(args: argparse.Namespace, threads: int) -> dict:
    """The plain loop: no sampler seeding, no per-example augmentation seeds, no checkpoints, no Ray."""
    from orchestrator.finetune import build_net, build_phase
    from tasks import get_task

    torch.set_num_threads(threads)
    device = torch.device(args.device)
    spec = get_task(args.task)
    net, backbone = build_net(args.backbone, spec.num_classes, seed=0)
    net = net.to(device)
    data = build_phase(args.task, None, "fit", backbone, args.image_size, seed=0)
    data.augment = False   # the bare loop draws crops from torch's global RNG, as a plain script does
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    net.train()
    step, images = 0, 0
    began = time.perf_counter()   # as the worker's clock: model and data built, the first (warm-up) step included
    while step < args.steps:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = torch.nn.functional.cross_entropy(net(x).float(), y)
            loss.backward()
            optimizer.step()
            schedule.step()
            images += len(y)
            step += 1
            if step >= args.steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    return {"images_per_s": images / seconds, "train_s": seconds, "steps": step}


def ray_train(args: argparse.Namespace, workers: int, cpus: float, storage: str) -> dict:
    from orchestrator.config import FinetuneConfig
    from orchestrator.finetune import run_training
    from tasks import get_task

    spec = get_task(args.task)
    gpus = 1.0 if args.device == "cuda" else 0.0
    ft = FinetuneConfig(num_workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus, max_failures=0)
    job = {"backbone": args.backbone, "task": args.task, "root": None, "num_classes": spec.num_classes,
           "recipe": recipe(args, args.steps), "threads": max(1, int(cpus)), "workdir": os.getcwd(),
           "train_phase": "fit", "eval_phase": "val"}
    began = time.perf_counter()
    metrics, _ = run_training(job, ft, storage, f"bench-ft-{workers}w")
    wall = time.perf_counter() - began
    # the worker's own clock runs from its Run's construction (model and data built) to the last step
    return {"images_per_s": metrics["images_per_s"], "train_s": metrics["train_wall_s"], "steps": metrics["steps"],
            "fit_wall_s": wall, "end_to_end_images_per_s": metrics["steps"] * args.batch_size / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--task", default="digits")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import ray

    cores = os.cpu_count() or 1
    threads = 1 if args.device == "cuda" else cores
    ray.init(num_cpus=cores, num_gpus=1 if args.device == "cuda" else 0, include_dashboard=False,
             log_to_driver=False)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-ft-") as storage:
        rows["bare"] = bare_loop(args, threads)
        rows["ray_train_1"] = ray_train(args, 1, float(threads), storage)
        if args.device == "cpu" and args.workers > 1:
            rows[f"ray_train_{args.workers}"] = ray_train(args, args.workers, cores / args.workers, storage)
    ray.shutdown()
    bare = rows["bare"]["images_per_s"]
    for row in rows.values():
        row["ratio"] = row["images_per_s"] / bare
        if "end_to_end_images_per_s" in row:
            row["end_to_end_ratio"] = row["end_to_end_images_per_s"] / bare
    if args.json:
        print(json.dumps({"args": vars(args), "rows": rows}, indent=2))
        return
    print(f"{args.backbone} on {args.task} at {args.image_size} px, batch {args.batch_size}, {args.steps} steps, "
          f"{args.device}, {cores} cores")
    for name, row in rows.items():
        extra = (f"; end to end {row['end_to_end_images_per_s']:.1f} images/s ({row['end_to_end_ratio']:.2f}), "
                 f"fit() {row['fit_wall_s']:.1f} s" if "fit_wall_s" in row else "")
        print(f"  {name:<12} {row['images_per_s']:7.1f} images/s  ratio {row['ratio']:.2f}{extra}")


if __name__ == "__main__":
    main()
