"""The sweep's fine-tuning cells, trained while the heads' Tuner runs, on the same cluster.

Each pending `finetune` cell is a Ray task on the driver's node (`orchestrator.finetune.finetune_cell`: a
Tuner of TorchTrainers), holding no CPU of its own — its Ray Train worker groups ask for theirs — so that
the feature-based cells' trials and the fine-tuning workers share the cluster's resources as Ray schedules
them. At most `search.max_concurrent_cells` of them run at once (each is a Tune driver process on the
head node). A background thread keeps that many running; the driver's main thread logs finished cells to
MLflow (only it ever logs) as soon as the heads' Tuner has returned, then the rest as they finish.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.config import SweepConfig
from orchestrator.sweep.cells import Cell
from orchestrator.sweep.trial import CellOutcome

_DONE = object()


def _finetune_task(cfg: SweepConfig, cell: Cell, storage: str, workdir: str) -> CellOutcome:
    from orchestrator.finetune import finetune_cell

    os.chdir(workdir)   # the driver's: relative data_root, store, tune_dir, finetune.storage mean what they meant there
    return CellOutcome(cell.cell_id, **finetune_cell(cfg, cell.backbone, cell.task, cell.seed, storage))


def _reason(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)   # a RayTaskError carries the task's own exception
    exc = cause if isinstance(cause, BaseException) else exc
    return f"{type(exc).__name__}: {exc}"


class FinetuneCells:
    """Started with the cells before the heads' Tuner; `log_all` (after it) logs every outcome as it comes."""

    def __init__(self, cfg: SweepConfig, cells: Sequence[Cell], storage: str) -> None:
        self.cfg, self.cells, self.storage, self.workdir = cfg, list(cells), storage, os.getcwd()
        self.results: queue.Queue[Any] = queue.Queue()
        self.running: dict[Any, Cell] = {}
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> FinetuneCells:
        if self.cells:
            self.thread = threading.Thread(target=self._run, name="seabench-finetune", daemon=True)
            self.thread.start()
        return self

    def _run(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        try:
            # the Tuners' folders are on the driver's node: their tasks run there
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            remote = ray.remote(_finetune_task).options(num_cpus=0, max_retries=0, scheduling_strategy=here)
            waiting, limit = list(self.cells), self.cfg.search.max_concurrent_cells
            while (waiting or self.running) and not self.stopping.is_set():
                while waiting and len(self.running) < limit:
                    cell = waiting.pop(0)
                    self.running[remote.remote(self.cfg, cell, self.storage, self.workdir)] = cell
                ready, _ = ray.wait(list(self.running), num_returns=1, timeout=1.0)
                for ref in ready:
                    cell = self.running.pop(ref)
                    try:
                        self.results.put((cell, ray.get(ref), None))
                    except Exception as exc:  # OrchestratorError, TrainingFailedError, …: logged as failed
                        self.results.put((cell, None, _reason(exc)))
        except Exception as exc:  # the thread itself failed (Ray gone): every cell not yet reported fails
            for cell in self.running.values():
                self.results.put((cell, None, _reason(exc)))
        finally:
            self.results.put(_DONE)

    def log_all(self, on_outcome: Callable[[Cell, CellOutcome], None],
                on_failure: Callable[[Cell, str], None]) -> None:
        """Block until every cell has finished, logging each from this (the driver's) thread; Ctrl-C cancels."""
        if self.thread is None:
            return
        try:
            while True:
                try:
                    item = self.results.get(timeout=1.0)   # a timed wait: Ctrl-C is seen within a second
                except queue.Empty:
                    continue
                if item is _DONE:
                    break
                cell, outcome, error = item
                if error is None:
                    on_outcome(cell, outcome)
                else:
                    on_failure(cell, error)
        except KeyboardInterrupt:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancel the running cells (their Tune drivers' trials and Ray Train workers die with them)."""
        import ray

        self.stopping.set()
        for ref in list(self.running):
            ray.cancel(ref, force=True)
