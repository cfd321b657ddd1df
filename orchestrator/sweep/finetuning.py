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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from orchestrator.config import SweepConfig
from orchestrator.errors import OrchestratorError
from orchestrator.sweep.cells import Cell
from orchestrator.sweep.trial import CellOutcome

_DONE = object()


def _finetune_task(cfg: SweepConfig, cell: Cell, key: str, workdir: str) -> CellOutcome:
    from orchestrator.finetune import finetune_cell

    os.chdir(workdir)   # the driver's: relative data_root, store, finetune.storage mean what they meant there
    return CellOutcome(cell.cell_id, **finetune_cell(cfg, cell.backbone, cell.task, cell.seed, key))


class FinetuneCells:
    """Started with the cells before the heads' Tuner; `log_all` (after it) logs every outcome as it comes.
    `task` is a cell's body, run as a Ray task on the driver's node (benchmarks/bench_orchestration.py puts a
    cheap stand-in there to time the driver's path without Ray Train)."""

    task = staticmethod(_finetune_task)

    def __init__(self, cfg: SweepConfig, cells: Sequence[Cell], fingerprints: Mapping[str, str]) -> None:
        # a cell's fingerprint names its runs: a rerun of an interrupted cell resumes them (finetune/storage.py)
        self.cfg, self.cells, self.keys, self.workdir = cfg, list(cells), dict(fingerprints), os.getcwd()
        self.results: queue.Queue[Any] = queue.Queue()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> FinetuneCells:
        if self.cells:
            self.thread = threading.Thread(target=self._run, name="seabench-finetune", daemon=True)
            self.thread.start()
        return self

    def _run(self) -> None:
        from orchestrator.raycluster import on_driver_node, task_error

        calls = [(cell, (self.cfg, cell, self.keys.get(cell.cell_id, ""), self.workdir)) for cell in self.cells]
        try:
            for cell, outcome, error in on_driver_node(self.task, calls, self.cfg.search.max_concurrent_cells,
                                                       self.stopping):
                self.results.put((cell, outcome, None if error is None else task_error(error)))
        except Exception as exc:  # the thread itself failed (Ray gone): the cells not reported are not run
            self.results.put((None, None, task_error(exc)))
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
                if cell is None:
                    raise OrchestratorError(f"fine-tuning cells: {error}")
                if error is None:
                    on_outcome(cell, outcome)
                else:
                    on_failure(cell, error)
        except KeyboardInterrupt:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancel the running cells (their Tune drivers' trials and Ray Train workers die with them): the
        thread sees `stopping` within a second and cancels them on its way out."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
