"""The report's sections after the leaderboard, one module each, built in the order of one registry.

Layer: below `report.build` (which builds every registered section before writing anything) and above the
model (`data`, `sources`, `stats`, `reference`, `evidence`) and the rendering pieces (`blocks`, `plots`). A new
section is one module with a `section(inputs: ReportInputs) -> SectionOutput` function and one
`register_section` (docs/extending.md).
"""

from __future__ import annotations

import re

from orchestrator.errors import OrchestratorError
from orchestrator.report.sections.base import ReportInputs, Section, SectionOutput

_SECTIONS: list[Section] = [
    Section("finetune", "orchestrator.report.sections.finetune:section"),        # SeA vs fine-tuning
    Section("sensitivity", "orchestrator.report.sections.sensitivity:section"),  # the paper's ablations
    Section("cost", "orchestrator.report.sections.cost:section"),                # compute per cell and unit
    Section("sources", "orchestrator.report.sections.provenance:section"),       # the experiments read
]
BUILT_IN = frozenset(s.name for s in _SECTIONS)


def sections() -> tuple[Section, ...]:
    return tuple(_SECTIONS)


def register_section(section: Section, *, after: str | None = None, replace: bool = False) -> Section:
    """Add a section at the end (or right after the section `after`); replace=True redefines one in place."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", str(section.name)):
        raise OrchestratorError(f"report section {section.name!r}: a name is a lower-case identifier")
    names = [s.name for s in _SECTIONS]
    if section.name in names:
        if not replace:
            raise OrchestratorError(f"report section {section.name!r} is already registered; pass replace=True")
        _SECTIONS[names.index(section.name)] = section
        return section
    if after is not None and after not in names:
        raise OrchestratorError(f"report section after={after!r} is unknown; registered: {', '.join(names)}")
    _SECTIONS.insert(names.index(after) + 1 if after else len(_SECTIONS), section)
    return section


def unregister_section(name: str) -> None:
    if name in BUILT_IN:
        raise OrchestratorError(f"report section {name!r} is built in and cannot be unregistered")
    _SECTIONS[:] = [s for s in _SECTIONS if s.name != name]


__all__ = ["BUILT_IN", "ReportInputs", "Section", "SectionOutput", "register_section", "sections",
           "unregister_section"]
