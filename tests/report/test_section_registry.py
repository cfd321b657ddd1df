"""orchestrator.report.sections: a report section is one module registered in an ordered list. A toy section
(tests/plugins/toy_section.py, loaded with `seabench report --plugin`) appears in its place in every page, writes
its table and is escaped like the rest; a section that would write outside the report is refused before
anything is written."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
from report_fixture import TASK_XSS, make_sweep

from orchestrator.commands.cli import main
from orchestrator.errors import OrchestratorError
from orchestrator.report import build_report
from orchestrator.report.blocks import Heading
from orchestrator.report.sections import (
    Section,
    SectionOutput,
    register_section,
    sections,
    unregister_section,
)

TOY = Path(__file__).resolve().parents[1] / "plugins" / "toy_section.py"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture
def registered():
    """The toy section, loaded as `seabench report --plugin` loads it; gone again after the test."""
    yield
    unregister_section("cells_per_task")
    for name in [m for m in sys.modules if m.startswith("sea_plugin_toy_section_")]:
        sys.modules.pop(name)


def test_a_plugin_section_appears_in_its_place_with_its_table(sweep, tmp_path, registered, capsys):
    assert main(["report", "--experiment", sweep.experiment, "--tracking-uri", sweep.tracking_uri,
                 "--out", str(tmp_path), "--plugin", str(TOY)]) == 0
    assert str(tmp_path / "cells_per_task.csv") in capsys.readouterr().out
    assert [s.name for s in sections()] == ["finetune", "sensitivity", "cost", "cells_per_task", "sources"]
    md = (tmp_path / "leaderboard.md").read_text()
    assert md.index("## Cost") < md.index("## Cells per task") < md.index("## Sources")
    table = pd.read_csv(tmp_path / "cells_per_task.csv")
    results = pd.read_csv(tmp_path / "results.csv")
    assert dict(zip(table["task"], table["cells"])) == results.drop_duplicates("run_id").groupby("task").size().to_dict()
    html = (tmp_path / "leaderboard.html").read_text()
    assert "Cells per task" in html and TASK_XSS not in html          # its task names are escaped like the rest


def test_without_it_the_report_has_no_such_section(sweep, tmp_path):
    md = build_report(sweep.experiment, tmp_path, tracking_uri=sweep.tracking_uri).leaderboard_md.read_text()
    assert "Cells per task" not in md and not (tmp_path / "cells_per_task.csv").exists()


@pytest.mark.parametrize("name", ["../outside.csv", "results.csv", "table.txt"])
def test_a_section_table_outside_its_own_file_is_refused_before_anything_is_written(sweep, tmp_path, name):
    register_section(Section("bad", lambda inputs: SectionOutput([Heading("Bad")], tables={name: "a\n1\n"})))
    try:
        with pytest.raises(OrchestratorError, match="report section table"):
            build_report(sweep.experiment, tmp_path / "out", tracking_uri=sweep.tracking_uri)
    finally:
        unregister_section("bad")
    assert not (tmp_path / "out").exists() and not (tmp_path / "outside.csv").exists()


def test_registry_refuses_a_duplicate_an_unknown_anchor_and_removing_a_built_in():
    with pytest.raises(OrchestratorError, match="already registered"):
        register_section(Section("cost", "tests:section"))
    with pytest.raises(OrchestratorError, match="after='nope' is unknown"):
        register_section(Section("toy", "tests:section"), after="nope")
    with pytest.raises(OrchestratorError, match="built in"):
        unregister_section("sources")
    assert [s.name for s in sections()] == ["finetune", "sensitivity", "cost", "sources"]
