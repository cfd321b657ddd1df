"""Fine-tuning on real Ray Train workers: 2 CPU workers (gloo) equal a single-process run of the same recipe
and seed, and a worker killed mid-training resumes from its checkpoint and finishes with the same result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orchestrator.config import FinetuneConfig
from orchestrator.finetune import Recipe, run_training, train_in_process

BACKBONE = "random:resnet10t@32"   # random init, BatchNorm: the per-worker statistics are part of the check
# float32 gradients summed in another order (DDP's all-reduce vs accumulation): equal to well below this
WEIGHT_TOLERANCE = 1e-4


def make_job(task, **recipe: object) -> dict:
    settings = {"lr": 0.05, "weight_decay": 1e-4, "seed": 3, "epochs": 3, "batch_size": 4, "image_size": 32, **recipe}
    return {"backbone": BACKBONE, "task": task.name, "root": None, "num_classes": task.num_classes,
            "recipe": Recipe(**settings).as_dict(), "threads": 1, "train_phase": "fit", "eval_phase": "val"}


def kill_once_after(epoch: int, marker: Path):
    """An after-epoch hook (pickled by value: a closure) that SIGKILLs worker 1 after `epoch` on the first
    attempt only, and logs (pid, rank, epoch) of every epoch either attempt finishes."""

    def hook(done: int, rank: int) -> None:
        import os
        import signal

        with open(f"{marker}.log", "a") as log:
            log.write(f"{os.getpid()} {rank} {done}\n")
        if rank == 1 and done == epoch and not marker.exists():
            import time

            time.sleep(3)   # the controller registers reported checkpoints when it polls: let it see epoch 2's
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


@pytest.fixture(scope="module")
def killed_run(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory):
    from fakedata import fake_task as _fake_task

    root = tmp_path_factory.mktemp("ft-ray")
    task = _fake_task(root / "task", classes=3, n_train=8, n_test=3, size=16)
    job = make_job(task)
    marker = root / "killed"
    ft = FinetuneConfig(num_workers=2, batch_size=4, max_failures=1)
    # killed after epoch 2, 3 s after its report: the controller has registered a checkpoint by then
    metrics, result = run_training({**job, "after_epoch": kill_once_after(2, marker)}, ft, str(root / "storage"),
                                   "ft-kill-test")
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / "state.pt", weights_only=True)
    return job, metrics, state, marker


def test_two_gloo_workers_equal_one_process_replaying_their_shares(killed_run) -> None:
    job, metrics, state, _ = killed_run
    local, weights = train_in_process(job, shards=2)
    assert set(weights) == set(state["model"])
    worst = max(float((state["model"][k].double() - weights[k].double()).abs().max()) for k in weights)
    assert worst < WEIGHT_TOLERANCE
    assert any(float(w.abs().max()) > 0 for k, w in weights.items() if k.startswith("head"))
    assert (metrics["steps"], metrics["epochs_run"]) == (local["steps"], local["epochs_run"]) == (12, 3)
    assert metrics["val_top1"] == local["val_top1"] and metrics["val_mean_per_class"] == local["val_mean_per_class"]
    assert metrics["train_loss"] == pytest.approx(local["train_loss"], rel=1e-4)
    assert metrics["n_eval"] == local["n_eval"] == 6   # validation predicted once, over both workers' shares


def test_a_killed_worker_resumes_from_an_epoch_checkpoint_and_finishes(killed_run) -> None:
    _, metrics, state, marker = killed_run
    assert marker.exists(), "the hook never killed worker 1"
    lines = [line.split() for line in Path(f"{marker}.log").read_text().splitlines()]
    first = {(pid, done) for pid, rank, done in lines if rank == "1" and pid == marker.read_text()}
    later = sorted(int(done) for pid, rank, done in lines if rank == "1" and pid != marker.read_text())
    assert first == {(marker.read_text(), "1"), (marker.read_text(), "2")}   # killed after epoch 2, first attempt
    assert later and later[0] in (2, 3) and later[-1] == 3, lines   # the restarted group began from a checkpoint
    assert state["epoch"] == 3 and metrics["epochs_run"] == 3
    # images/s counts both workers' shares (global batch 4) of the steps after the resume: epochs 2-3 or 3
    images = metrics["images_per_s"] * metrics["train_wall_s"]
    assert min(abs(images - 32), abs(images - 16)) < 1e-6 * images, (images, lines)


def test_single_process_shares_replay_is_not_the_same_as_one_big_batch(fake_task) -> None:
    # the equality above is not vacuous: BatchNorm over 2 shares of 2 differs from over 1 batch of 4
    job = make_job(fake_task, epochs=1)
    _, two = train_in_process(job, shards=2)
    _, one = train_in_process(job, shards=1)
    assert max(float((two[k].double() - one[k].double()).abs().max()) for k in one) > 1e-3
