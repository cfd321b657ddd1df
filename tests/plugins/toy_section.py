"""A report section added from outside the report, as docs/extending.md says: one module with a `section`
function and one `register_section`. Loaded with `seabench report --plugin` (or a config's `plugins`).

"Cells per task": the finished cells of each task, as a table on the page and as cells_per_task.csv.
"""

from __future__ import annotations

import pandas as pd

from orchestrator.report.blocks import Heading, Para, Table, TableCell
from orchestrator.report.sections import ReportInputs, Section, SectionOutput, register_section


def section(inputs: ReportInputs) -> SectionOutput:
    counts = inputs.results.drop_duplicates("run_id").groupby("task").size()
    table = pd.DataFrame({"task": counts.index, "cells": counts.to_numpy()})
    rows = tuple((TableCell(r.task), TableCell(str(r.cells))) for r in table.itertuples(index=False))
    return SectionOutput([Heading("Cells per task"), Para(f"{int(counts.sum())} finished cells."),
                          Table(("task", "cells"), rows)], tables={"cells_per_task.csv": table.to_csv(index=False)})


register_section(Section("cells_per_task", section), after="cost", replace=True)
