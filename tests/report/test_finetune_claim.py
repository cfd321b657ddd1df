"""orchestrator.report.reference: the fine-tuning claim from the sweep's own finetune cells (paired per seed,
with t-intervals), and the CSV reference labelled external."""

from __future__ import annotations

import pandas as pd
import pytest
from scipy import stats

from orchestrator.report.reference import compare_to_finetuning, finetune_claim, load_reference
from orchestrator.report.sections.finetune import finetune_blocks


def results(values: dict[tuple[str, str, str, int], float]) -> pd.DataFrame:
    """The report's long table: (task, backbone, method, seed) -> test top-1 (the primary metric)."""
    rows = [{"backbone": b, "task": t, "method": m, "seed": s, "metric": "top1", "split": "test", "value": v,
             "run_id": f"{t}{b}{m}{s}", "primary": True} for (t, b, m, s), v in values.items()]
    return pd.DataFrame(rows)


SEA = {"digits": [90.0, 91.0, 92.0], "dtd": [60.0, 61.0, 62.0]}
FT = {"digits": [90.5, 91.0, 92.9], "dtd": [64.0, 63.0, 65.5]}   # digits: −0.47 (within); dtd: −3.17


def sweep_results() -> pd.DataFrame:
    values = {(t, "bb", m, s): v for t in SEA for m, table in (("sea", SEA), ("finetune", FT))
              for s, v in enumerate(table[t])}
    values[("digits", "bb", "linear", 0)] = 80.0
    return results(values)


def test_the_claim_counts_tasks_from_the_sweeps_own_cells_paired_by_seed() -> None:
    claim = finetune_claim(sweep_results())
    assert claim is not None and claim.source == "sweep" and claim.external is None
    assert (claim.within, claim.compared) == (1, 2)
    diffs = claim.differences.set_index("task")
    for task in SEA:
        paired = [a - b for a, b in zip(SEA[task], FT[task])]
        low, high = stats.t.interval(0.95, 2, loc=sum(paired) / 3, scale=pd.Series(paired).std() / 3 ** 0.5)
        assert diffs.loc[task, "n"] == 3 and diffs.loc[task, "mean"] == pytest.approx(sum(paired) / 3)
        assert (diffs.loc[task, "ci_low"], diffs.loc[task, "ci_high"]) == (pytest.approx(low), pytest.approx(high))
    table = claim.table.set_index("task")
    assert table.loc["digits", "within"] and not table.loc["dtd", "within"]
    assert table.loc["dtd", "finetune"] == pytest.approx(sum(FT["dtd"]) / 3)


def test_a_task_counts_only_when_every_backbone_is_within_one_point() -> None:
    values = {("digits", b, m, s): v for b, offset in (("bb", 0.0), ("cc", 3.0)) for s in range(2)
              for m, v in (("sea", 90.0 + s), ("finetune", 90.0 + s + offset))}
    claim = finetune_claim(results(values))
    assert (claim.within, claim.compared) == (0, 1) and len(claim.table) == 2


def test_seeds_run_by_one_method_only_are_not_paired() -> None:
    values = {("digits", "bb", "sea", 0): 90.0, ("digits", "bb", "finetune", 0): 89.5,
              ("digits", "bb", "sea", 1): 10.0}          # seed 1 has no finetune result
    claim = finetune_claim(results(values))
    row = claim.table.iloc[0]
    assert (row["sea"], row["finetune"], row["gap"], claim.within) == (90.0, 89.5, 0.5, 1)


def test_without_finetune_cells_a_csv_decides_and_is_labelled_external(tmp_path) -> None:
    data = sweep_results()
    data = data[data["method"] != "finetune"]
    ref = tmp_path / "ft.csv"
    ref.write_text("task,top1\ndigits,91.5\ndtd,70\n")
    claim = finetune_claim(data, load_reference(ref))
    assert claim.source == "external" and (claim.within, claim.compared) == (1, 2)
    text = " ".join(b.text for b in finetune_blocks(claim) if hasattr(b, "text"))
    assert "External reference" in text and "decides the claim above" in text
    assert finetune_claim(data) is None and finetune_blocks(None) == []


def test_with_both_the_sweep_decides_and_the_csv_is_shown_but_not_counted(tmp_path) -> None:
    ref = tmp_path / "ft.csv"
    ref.write_text("task,top1\ndigits,50\ndtd,50\n")    # would put SeA within on both tasks
    data = sweep_results()
    claim = finetune_claim(data, load_reference(ref))
    assert claim.source == "sweep" and (claim.within, claim.compared) == (1, 2)
    expected = compare_to_finetuning(data, load_reference(ref))
    assert (claim.external.within, claim.external.compared) == (expected.within, expected.compared) == (2, 2)
    pd.testing.assert_frame_equal(claim.external.table, expected.table)
    blocks = finetune_blocks(claim)
    paras = [b.text for b in blocks if type(b).__name__ == "Para"]
    assert paras[0].startswith("Source: this sweep's own finetune cells") and "1 of 2 tasks" in paras[0]
    assert "External reference" in paras[1] and "not counted" in paras[1]
    tables = [b for b in blocks if type(b).__name__ == "Table"]
    assert [c.text for c in tables[0].rows[0]][:4] == ["digits", "bb", "top1", "3"]
    assert "95 % CI" in tables[0].header and "fine-tuning (external)" in tables[1].header
