"""orchestrator.sweep.cells: the cell plan."""

from __future__ import annotations

from orchestrator.config import load_config
from orchestrator.sweep.cells import Cell, plan_cells


def test_cells_are_planned_task_major() -> None:
    cfg = load_config(data={"name": "p", "backbones": ["a", "b"], "tasks": ["digits"], "seeds": [0, 1]})
    cells = plan_cells(cfg, ["digits", "dtd"])
    assert len(cells) == 2 * 2 * 2 * 2 and cells[0] == Cell("a", "digits", "linear", 0)
    assert Cell.from_id(cells[-1].cell_id) == cells[-1]
