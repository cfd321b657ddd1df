"""One fine-tuning run on a Ray Train worker (`train_loop_per_worker`), or in this process (`train_in_process`).

Both execute the same steps. A step takes one global batch: the sampler (a seeded DistributedSampler) gives
worker r its share, each share's loss is a mean, DDP averages the workers' gradients, and stochastic layers
(dropout, drop-path) draw from a seed of (seed, step, worker). `train_in_process(job, shards=k)` replays the
k shares of every step one after the other in a single process, accumulating gradients / k and keeping
BatchNorm's running statistics of worker 0's share (DDP broadcasts worker 0's buffers) — the same numbers as
k Ray Train workers on CPU, up to float summation order (SyncBatchNorm, whose statistics span the workers,
runs on GPU workers only). Each epoch ends with a report (its curve point: loss, lr, images/s, a candidate's
validation, which ASHA reads) and a checkpoint through `ray.train.report`; a restarted worker group resumes
from `ray.train.get_checkpoint()` and, all randomness seeded by position, continues as if nothing happened.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from orchestrator.finetune.images import build_phase
from orchestrator.finetune.net import build_net
from orchestrator.finetune.optim import build_optimizer, build_schedule, training_loss
from orchestrator.finetune.recipe import Recipe, mix_seed
from sea.methods import import_plugins

STATE_FILE = "state.pt"


def _autocast(recipe: Recipe, device: torch.device) -> Any:
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=recipe.precision == "bf16" and device.type == "cuda")


def _buffers(module: nn.Module) -> list[torch.Tensor]:
    return [b.detach().clone() for b in module.buffers()]


def _restore(module: nn.Module, saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for buffer, value in zip(module.buffers(), saved):
            buffer.copy_(value)


class Run:
    """The state of one run on one process: model, optimiser, schedule, progress and its clocks."""

    def __init__(self, job: dict[str, Any], rank: int, world: int, device: torch.device) -> None:
        torch.set_num_threads(max(1, int(job.get("threads", 1))))
        if job.get("workdir") and os.path.isdir(job["workdir"]):
            os.chdir(job["workdir"])   # relative data roots and image folders mean what they meant to the driver
        import_plugins(job.get("plugins", ()))   # a plugin's task or backbone is known on this worker too
        self.job, self.rank, self.world, self.device = job, rank, world, device
        self.recipe = Recipe(**job["recipe"])
        self.net, self.backbone = build_net(job["backbone"], job["num_classes"], self.recipe.seed,
                                            self.recipe.drop_path)
        self.train_set = build_phase(job["task"], job["root"], job["train_phase"], self.backbone,
                                     self.recipe.image_size, self.recipe.seed)
        self.total = self.recipe.total_steps(len(self.train_set), world)
        self.epochs = self.recipe.epochs_for(len(self.train_set), world)
        self.epoch = self.step = self.resumed_step = 0   # resumed_step: where this attempt began
        self.losses: list[float] = []
        self.curve: list[dict[str, float]] = []     # one point per epoch
        self.eval_s, self.eval_set = 0.0, None      # seconds spent evaluating; the eval phase, built once
        self.cpu_before = 0.0                       # CPU seconds of earlier attempts, all workers
        self.began, self.cpu0, self.images = time.perf_counter(), time.process_time(), 0

    def loader(self, rank: int) -> tuple[DataLoader, DistributedSampler]:
        sampler = DistributedSampler(self.train_set, num_replicas=self.world, rank=rank, shuffle=True,
                                     seed=self.recipe.seed, drop_last=False)
        loader = DataLoader(self.train_set, batch_size=self.recipe.batch_size // self.world, sampler=sampler,
                            drop_last=True, num_workers=self.recipe.loader_workers)
        return loader, sampler

    def optimiser(self, module: nn.Module) -> None:
        """The recipe's optimiser over `module` (the FinetuneNet, not its DDP wrapper: groups go by name)."""
        self.optimizer = build_optimizer(self.recipe, module)
        self.schedule = build_schedule(self.recipe, self.optimizer, self.total)

    def state(self, module: nn.Module, cpu_total: float) -> dict[str, Any]:
        return {"model": module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "epoch": self.epoch, "step": self.step,
                "losses": list(self.losses), "curve": list(self.curve), "cpu_s": cpu_total}

    def load(self, state: dict[str, Any]) -> None:
        """Model weights first (before DDP wraps the model); optimiser and schedule in `load_progress`."""
        self.net.load_state_dict(state["model"])
        self.epoch, self.step, self.resumed_step, self.losses, self.cpu_before = (
            state["epoch"], state["step"], state["step"], list(state["losses"]), float(state["cpu_s"]))
        self.curve = list(state.get("curve", []))

    def train_epoch(self, model: nn.Module, shares: list[tuple[int, DataLoader, DistributedSampler]]) -> float:
        """One epoch (or what is left of `total` steps); `shares` are (worker rank, loader, sampler) this
        process computes: its own under DDP, all k of them in process."""
        self.train_set.epoch = self.epoch
        for _, _, sampler in shares:
            sampler.set_epoch(self.epoch)
        module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        model.train()
        losses = []
        for batches in zip(*(loader for _, loader, _ in shares)):
            if self.step >= self.total:
                break
            self.optimizer.zero_grad(set_to_none=True)
            kept = None
            for (rank, _, _), (images, labels) in zip(shares, batches):
                images, labels = images.to(self.device), labels.to(self.device)
                torch.manual_seed(mix_seed(self.recipe.seed, self.step, rank))
                with _autocast(self.recipe, self.device):
                    value = training_loss(self.recipe, model(images).float(), labels)
                (value / len(shares)).backward()
                losses.append(float(value.detach()))
                self.images += len(labels)
                if len(shares) > 1 and rank == 0:
                    kept = _buffers(module)
            if kept is not None:
                _restore(module, kept)
            self.optimizer.step()
            self.schedule.step()
            self.step += 1
        self.epoch += 1
        return float(np.mean(losses)) if losses else math.nan

    def evaluate(self, module: nn.Module, ranks: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Predictions of worker `ranks`' strided shares of the eval phase, with their example indices."""
        if self.eval_set is None:   # a candidate validates after every epoch
            self.eval_set = build_phase(self.job["task"], self.job["root"], self.job["eval_phase"], self.backbone,
                                        self.recipe.image_size, self.recipe.seed)
        phase, self.eval_targets = self.eval_set, self.eval_set.targets
        index = np.concatenate([np.arange(r, len(phase), self.world) for r in ranks])
        loader = DataLoader(Subset(phase, index.tolist()), batch_size=max(self.recipe.batch_size, 64),
                            num_workers=self.recipe.loader_workers)
        module.eval()
        preds = []
        with torch.inference_mode(), _autocast(self.recipe, self.device):
            for images, _ in loader:
                preds.append(module(images.to(self.device)).float().argmax(1).cpu().numpy())
        return index, np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)

    def lr(self) -> float:
        """The largest learning rate of the optimiser's groups now (the head's, under layer-wise decay)."""
        return max(float(group["lr"]) for group in self.optimizer.param_groups)

    def scores(self, index: np.ndarray, pred: np.ndarray) -> dict[str, float]:
        """The eval phase's top-1 and mean per-class accuracy (percent) of predictions `pred` of rows `index`."""
        from sea import mean_per_class_accuracy, top1_accuracy

        order = np.argsort(index)
        pred, y, phase = torch.as_tensor(pred[order]), torch.as_tensor(self.eval_targets[index[order]]), self.job["eval_phase"]
        return {f"{phase}_top1": top1_accuracy(pred, y),
                f"{phase}_mean_per_class": mean_per_class_accuracy(pred, y, self.job["num_classes"])}

    def attempt(self) -> dict[str, int]:
        """Which call of the cell trains this run (`job["invocation"]`) and the step this attempt resumed from."""
        return {"invocation": int(self.job.get("invocation", 0)), "resumed_from_step": self.resumed_step}

    def metrics(self, index: np.ndarray, pred: np.ndarray, eval_s: float, cpu_total: float) -> dict[str, Any]:
        order = np.argsort(index)
        return {**self.scores(index, pred), "curve": list(self.curve),
                "epochs_run": self.epoch, "steps": self.step, "train_loss": self.losses[-1] if self.losses else math.nan,
                "train_wall_s": self.train_s, "eval_wall_s": eval_s, "cpu_s": cpu_total,
                "images_per_s": self.images / self.train_s if self.train_s > 0 else math.nan,
                "n_train": len(self.train_set), "n_eval": len(index), **self.attempt(),
                # the test phase's predictions travel to the cell's record (a report pairs them with the heads')
                **({"predictions": {"index": index[order].tolist(), "label": self.eval_targets[index[order]].tolist(),
                                    "pred": pred[order].tolist()}} if self.job["eval_phase"] == "test" else {})}


def train_in_process(job: dict[str, Any], shards: int = 1) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The run without Ray, replaying `shards` workers' shares per step; returns (metrics, final weights)."""
    run = Run(job, 0, shards, torch.device("cpu"))
    run.optimiser(run.net)
    shares = [(rank, *run.loader(rank)) for rank in range(shards)]
    while run.epoch < run.epochs and run.step < run.total:
        run.losses.append(run.train_epoch(run.net, shares))
    run.train_s = time.perf_counter() - run.began
    began = time.perf_counter()
    index, pred = run.evaluate(run.net, list(range(shards)))
    metrics = run.metrics(index, pred, time.perf_counter() - began, time.process_time() - run.cpu0)
    return metrics, run.net.state_dict()


def _all_sum(value: float, world: int) -> float:
    if world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(tensor)
    return float(tensor.item())


def _evaluate_all(run: Run, module: nn.Module, rank: int, world: int) -> tuple[np.ndarray, np.ndarray, list[str], float]:
    """Every worker's share of the eval phase, gathered on each: (indices, predictions, nodes, seconds)."""
    import ray
    began = time.perf_counter()
    if world > 1:   # every worker evaluates with worker 0's BatchNorm statistics, as DDP trains with them
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, 0)
    index, pred = run.evaluate(module, [rank])
    mine = (index, pred, ray.get_runtime_context().get_node_id())
    gathered: list[Any] = [None] * world
    if world > 1:
        torch.distributed.all_gather_object(gathered, mine)
    else:
        gathered = [mine]
    index, pred = (np.concatenate([g[i] for g in gathered]) for i in (0, 1))
    return index, pred, sorted({g[2] for g in gathered}), time.perf_counter() - began


def train_loop_per_worker(job: dict[str, Any]) -> dict[str, Any]:
    """The Ray Train worker: DDP (gloo on CPU, NCCL on GPU), a report and a checkpoint per epoch (validated after
    each epoch when `job["validate_each_epoch"]`), test/val at the end; returns the final metrics (worker 0's
    return value is `ray.train.Result.return_value`)."""
    import ray
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    run = Run(job, rank, world, ray.train.torch.get_device())
    checkpoint = ray.train.get_checkpoint()
    saved = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
        run.load(saved)
    if run.recipe.sync_batchnorm and world > 1 and run.device.type == "cuda":   # BN over the global batch
        run.net = nn.SyncBatchNorm.convert_sync_batchnorm(run.net)   # (PyTorch has none on CPU: per share there)
    model = ray.train.torch.prepare_model(run.net)
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    run.optimiser(module)
    if saved is not None:
        run.optimizer.load_state_dict(saved["optimizer"])
        run.schedule.load_state_dict(saved["schedule"])
    loader, sampler = run.loader(rank)
    shares = [(rank, ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False), sampler)]
    after_epoch: Callable[[int, int], None] | None = job.get("after_epoch")
    validate, last = bool(job.get("validate_each_epoch")), None
    while run.epoch < run.epochs and run.step < run.total:
        began, images = time.perf_counter(), run.images
        loss = _all_sum(run.train_epoch(model, shares), world) / world
        run.losses.append(loss)
        point = {"epoch": run.epoch, "step": run.step, "train_loss": loss, "lr": run.lr(),
                 "images_per_s": _all_sum(run.images - images, world) / max(time.perf_counter() - began, 1e-9)}
        if validate:   # the candidate's validation curve: what ASHA (finetune.asha) stops a candidate on
            last = _evaluate_all(run, module, rank, world)
            run.eval_s += last[3]
            point.update(run.scores(last[0], last[1]))
        run.curve.append(point)
        cpu_total = run.cpu_before + _all_sum(time.process_time() - run.cpu0, world)
        # enough for a candidate that ASHA stops here to be scored and costed like one that finishes
        progress = {**point, **run.attempt(), "epochs_run": run.epoch, "steps": run.step, "cpu_s": cpu_total, "curve_point": 1,
                    "train_wall_s": time.perf_counter() - run.began - run.eval_s, "eval_wall_s": run.eval_s}
        with tempfile.TemporaryDirectory(prefix="seabench-ft-") as folder:
            if rank == 0:
                torch.save(run.state(module, cpu_total), Path(folder) / STATE_FILE)
            ray.train.report(progress, checkpoint=ray.train.Checkpoint.from_directory(folder) if rank == 0 else None)
        if after_epoch is not None:
            after_epoch(run.epoch, rank)
    run.train_s = time.perf_counter() - run.began - run.eval_s
    if last is None:   # the final model not validated yet (or a test phase: read once, here)
        last = _evaluate_all(run, module, rank, world)
        run.eval_s += last[3]
    index, pred, nodes, _ = last
    cpu_total = run.cpu_before + _all_sum(time.process_time() - run.cpu0, world)
    run.images = int(_all_sum(run.images, world))   # images/s of the whole worker group, not worker 0's share
    return {**run.metrics(index, pred, run.eval_s, cpu_total), "nodes": nodes}   # the Ray nodes the workers ran on
