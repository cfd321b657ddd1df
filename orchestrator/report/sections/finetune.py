"""Section "SeA vs fine-tuning": where the fine-tuning numbers come from (the sweep's own finetune cells, or the
external CSV), and the comparison in full (`report.reference` computes it)."""

from __future__ import annotations

from orchestrator.report.blocks import NA, Heading, Para, Table, TableCell, interval, num
from orchestrator.report.evidence.claims import finetune_label
from orchestrator.report.sections.base import ReportInputs, SectionOutput
from orchestrator.report.stats import FinetuneComparison


def section(inputs: ReportInputs) -> SectionOutput:
    return SectionOutput(finetune_blocks(inputs.board.finetune, finetune_label(inputs.evidence)))


def _difference_rows(comparison: FinetuneComparison) -> tuple:
    merged = comparison.differences.merge(comparison.table, on=["task", "backbone"])
    return tuple(
        (TableCell(r.task), TableCell(r.backbone), TableCell(r.metric), TableCell(str(r.n)), TableCell(num(r.sea)),
         TableCell(num(r.finetune)), TableCell(num(r.mean, True)), TableCell(interval(r.ci_low, r.ci_high)),
         TableCell("yes" if r.within else "no", bool(r.within)))
        for r in merged.itertuples(index=False))


def _external_rows(comparison: FinetuneComparison) -> tuple:
    return tuple(
        (TableCell(r.task), TableCell(r.backbone), TableCell(r.metric), TableCell(num(r.sea)), TableCell(num(r.finetune)),
         TableCell(num(r.gap, True)), TableCell(NA if r.within is None else ("yes" if r.within else "no")))
        for r in comparison.table.itertuples(index=False))


def finetune_blocks(comparison: FinetuneComparison | None, label: str = "") -> list:
    """The report's fine-tuning section: where the fine-tuning numbers come from, and the comparison in full;
    `label` (e.g. "under-trained (20 of 5 000 steps): a check of the machinery, not a verdict") heads it."""
    if comparison is None:
        return []
    blocks: list = [Heading("SeA vs fine-tuning")]
    if label and comparison.source == "sweep":
        blocks.append(Para(f"{label[0].upper()}{label[1:]}.", strong=True))
    external = comparison if comparison.source == "external" else comparison.external
    if comparison.source == "sweep":
        blocks += [
            Para(f"Source: this sweep's own finetune cells (the backbone + a linear head trained on the images with "
                 f"Ray Train), under the same tasks, splits, seeds and selection rule as SeA. SeA is within 1 point "
                 f"of (or above) fine-tuning on {comparison.within} of {comparison.compared} tasks (a task counts when "
                 "the mean paired difference of each of its backbones is ≥ −1 point).", strong=True),
            Table(("task", "backbone", "metric", "paired seeds", "SeA", "fine-tuning", "SeA − FT", "95 % CI",
                   "within 1 point"), _difference_rows(comparison),
                  caption="Test, mean over the paired seeds; SeA − FT: mean of the per-seed differences, t-interval")]
    if external is not None:
        counted = "decides the claim above" if comparison.source == "external" else "shown beside, not counted"
        blocks += [Para(f"External reference (the CSV given with --reference): another recipe on other splits, without "
                        f"seeds — {counted}."),
                   Table(("task", "backbone", "compared on", "SeA", "fine-tuning (external)", "SeA − FT", "within 1 point"),
                         _external_rows(external), caption="SeA (test, mean over seeds) vs the external reference")]
    return blocks
