"""Two fine-tuning cells of a tiny ViT in one process, through the sweep's path (`finetune_cell`: a Tune Tuner
of TorchTrainers selecting on validation, then the refit): each runs MAE's recipe, and afterwards the process
has its own SIGINT handler back and no TrainController of theirs is alive. Ray Train's `fit()` in a main thread
installs a handler that holds its TrainController and turns Ctrl-C into an abort of that (finished) run."""

from __future__ import annotations

import signal
import time

import pytest

from orchestrator.config import load_config
from orchestrator.finetune import finetune_cell

VIT = "random:test_vit@32"   # timm's 6-block test ViT: the vision_transformer family, MAE's recipe


def _controllers() -> set[str]:
    """Alive Ray Train controller actors, from the GCS (tests start no dashboard for the state API)."""
    from ray._private.state import actors

    return {i for i, a in actors().items() if a["State"] == "ALIVE" and "TrainController" in a["ActorClassName"]}


@pytest.fixture(scope="module")
def two_cells(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory):
    from fakedata import fake_task

    root = tmp_path_factory.mktemp("vit-cells")
    task = fake_task(root / "task", classes=3, n_train=4, n_test=2, size=16)
    cfg = load_config(data={
        "name": "vit-cells", "backbones": [VIT], "tasks": [task.name], "methods": ["finetune"], "seeds": [0, 1],
        "store": str(root / "store"), "tune_dir": str(root / "tune"),
        "finetune": {"epochs": 1, "batch_size": 4, "image_size": 32, "max_failures": 0,
                     "recipes": {VIT: {"lr": [1e-3], "warmup_steps": 2}}}})
    before = _controllers()

    def ours(signum: int, frame: object) -> None:   # a handler of this process's own, to find again
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, ours)
    try:
        outcomes = [finetune_cell(cfg, VIT, task.name, seed) for seed in (0, 1)]
        handler = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    return outcomes, handler is ours, before


def test_each_cell_ran_maes_recipe_on_the_vit(two_cells) -> None:
    outcomes, _, _ = two_cells
    for outcome in outcomes:
        params, metrics, tags = outcome["params"], outcome["metrics"], outcome["tags"]
        assert (params["recipe"], params["optimizer"], params["layer_decay"], params["warmup_steps"]) == \
            ("mae", "adamw", 0.65, 2)
        assert (params["label_smoothing"], params["drop_path"], params["n_candidates"]) == (0.1, 0.1, 1)
        assert params["optimizer_lr"] == pytest.approx(1e-3 * 4 / 256)   # base lr × batch / 256
        assert params["optimizer_weight_decay"] == 0.05 and "Masked Autoencoders" in tags["recipe"]
        # one epoch of the 9 fit images (3 of 12 carved for validation) in batches of 4: 2 steps, refit 3
        assert [c["epochs_run"] for c in outcome["candidates"]] == [1] and metrics["steps_run"] == 3
        assert metrics["steps_budget"] == 5000 and tags["flags"] == "under_trained"
        pred, label = outcome["predictions"]["pred"], outcome["predictions"]["label"]
        assert len(pred) == 6 and set(pred) <= {0, 1, 2} and sorted(label) == [0, 0, 1, 1, 2, 2]
        assert metrics["test_top1"] == pytest.approx(100 * sum(p == y for p, y in zip(pred, label)) / 6)


def test_after_two_cells_the_process_has_its_own_sigint_handler(two_cells) -> None:
    _, restored, _ = two_cells
    assert restored, "Ray Train / Tune left their SIGINT handler installed"


def test_no_train_controller_outlives_its_cell(two_cells) -> None:
    _, _, before = two_cells
    deadline = time.monotonic() + 30   # an actor goes once its last handle does: within a few seconds
    while left := _controllers() - before:
        assert time.monotonic() < deadline, f"TrainController actors outlived their runs: {left}"
        time.sleep(0.5)


def test_own_signals_restores_the_handler_however_the_block_ends() -> None:
    from orchestrator.finetune.trainer import own_signals

    def mine(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGINT, mine)
    try:
        with pytest.raises(RuntimeError), own_signals():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            raise RuntimeError("fit failed")
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)
