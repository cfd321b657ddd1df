"""One report from several sweeps: which experiments, how their cells combine, where each number came from.

Each experiment is read by `load_experiment` on its own; the frames are concatenated with a `source`
column (the experiment's name). Two results for the same (backbone, task, method, seed) from
different experiments are a conflict: refused, with both experiments and runs named, unless the
caller ranks them (`prefer`: experiment names and/or "newest", tried in order).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from orchestrator.errors import OrchestratorError
from orchestrator.report.data import ExperimentData, tracking_client
from orchestrator.runs import CELL_ROLE, CELL_TAGS, role_filter, search_runs

NEWEST = "newest"  # the rule "the most recently started run wins"
CELL = list(CELL_TAGS)
CONFLICT_COLUMNS = ["backbone", "task", "method", "seed", "source", "run_id", "rejected", "rule"]
MAX_LISTED = 10


def resolve_experiments(tracking_uri: Any, names: Sequence[str] = (), patterns: Sequence[str] = ()) -> list[str]:
    """The experiments to report: `names` in their order, then every active experiment matching a
    shell-style pattern (sorted); a pattern that matches nothing is an error listing what exists."""
    chosen = list(dict.fromkeys(names))
    if patterns:
        existing = sorted(e.name for e in tracking_client(tracking_uri).search_experiments())
        for pattern in patterns:
            matched = [n for n in existing if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                raise OrchestratorError(
                    f"--experiment-pattern {pattern!r} matches no MLflow experiment at {tracking_uri}; "
                    f"existing experiments: {', '.join(existing) or '(none)'}")
            chosen += [n for n in matched if n not in chosen]
    if not chosen:
        raise OrchestratorError("no experiment to report: pass --experiment NAME (repeatable) or --experiment-pattern GLOB")
    return chosen


def cell_runs(tracking_uri: Any, experiments: Sequence[str]) -> dict[str, object]:
    """run_id -> MLflow run of every cell run of these experiments (their metrics, tags, start times)."""
    client = tracking_client(tracking_uri)
    runs: dict[str, object] = {}
    for name in experiments:
        found = client.get_experiment_by_name(name)
        if found is not None:
            runs.update({r.info.run_id: r for r in search_runs(client, found.experiment_id, role_filter(CELL_ROLE))})
    return runs


@dataclass(frozen=True)
class Sources:
    """Where the numbers came from: the experiments in order, their parent runs, the conflicts resolved."""

    experiments: tuple[str, ...]
    parents: dict[str, str | None]
    conflicts: pd.DataFrame  # CONFLICT_COLUMNS: the winning run, the experiments it beat, the deciding rule


def _check_prefer(prefer: Sequence[str], experiments: Sequence[str]) -> None:
    unknown = [p for p in prefer if p != NEWEST and p not in experiments]
    if unknown:
        raise OrchestratorError(
            f"--prefer {', '.join(map(repr, unknown))}: not among the reported experiments "
            f"({', '.join(experiments)}); give one of them, or {NEWEST!r}")


def _winner(rows: pd.DataFrame, prefer: Sequence[str], start: Mapping[str, int]) -> tuple[int, str] | None:
    """Index of the winning row and the rule that chose it; None when no rule decides."""
    for rule in prefer:
        if rule == NEWEST:
            times = rows["run_id"].map(lambda r: start.get(r, 0))
            if (times == times.max()).sum() == 1:
                return int(times.idxmax()), NEWEST
        elif (rows["source"] == rule).any():
            return int(rows.index[rows["source"] == rule][0]), f"--prefer {rule}"
    return None


def _conflict_error(unresolved: list[pd.DataFrame], prefer: Sequence[str]) -> OrchestratorError:
    lines = []
    for rows in unresolved[:MAX_LISTED]:
        r = rows.iloc[0]
        where = " and ".join(f"experiment {s!r} (run {run})" for s, run in zip(rows["source"], rows["run_id"]))
        lines.append(f"  cell {r.backbone}|{r.task}|{r.method}|{r.seed}: results in {where}")
    more = f"\n  … and {len(unresolved) - MAX_LISTED} more" if len(unresolved) > MAX_LISTED else ""
    names = sorted({s for rows in unresolved for s in rows["source"]})
    tried = f" (--prefer {' '.join(prefer)} did not decide them)" if prefer else ""
    return OrchestratorError(
        f"{len(unresolved)} cell(s) have results in more than one experiment{tried}:\n" + "\n".join(lines) + more
        + "\nSay which wins: " + " or ".join(f"--prefer {n}" for n in names)
        + f" (that experiment's result; repeat --prefer to rank several), or --prefer {NEWEST} (the most "
        "recently started run), or leave one of the experiments out")


def _deduplicate(results: pd.DataFrame, prefer: Sequence[str], start: Mapping[str, int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = results.drop_duplicates([*CELL, "source"])[[*CELL, "source", "run_id"]].reset_index(drop=True)
    keep, conflicts, unresolved = [], [], []
    for _, rows in runs.groupby(CELL, sort=True):
        if len(rows) == 1:
            keep.append(rows.iloc[0]["run_id"])
            continue
        chosen = _winner(rows, prefer, start)
        if chosen is None:
            unresolved.append(rows)
            continue
        index, rule = chosen
        win = rows.loc[index]
        keep.append(win["run_id"])
        rejected = ", ".join(rows.loc[rows.index != index, "source"])
        conflicts.append({**{c: win[c] for c in CELL}, "source": win["source"], "run_id": win["run_id"],
                          "rejected": rejected, "rule": rule})
    if unresolved:
        raise _conflict_error(unresolved, prefer)
    kept = results[results["run_id"].isin(set(keep))].reset_index(drop=True)
    return kept, pd.DataFrame(conflicts, columns=CONFLICT_COLUMNS)


def combine(datas: Sequence[ExperimentData], prefer: Sequence[str] = (),
            start_times: Mapping[str, int] | None = None) -> tuple[ExperimentData, Sources]:
    """One ExperimentData (with `source` columns) from several; raises on unresolved conflicts."""
    names = [d.experiment for d in datas]
    _check_prefer(prefer, names)
    results = pd.concat([d.results.assign(source=d.experiment) for d in datas], ignore_index=True)
    results, conflicts = _deduplicate(results, prefer, start_times or {})
    results = results.sort_values(["task", "backbone", "method", "seed", "split", "metric"], ignore_index=True)
    failed = pd.concat([d.failed.assign(source=d.experiment) for d in datas], ignore_index=True)
    done = set(map(tuple, results[CELL].drop_duplicates().itertuples(index=False)))
    failed = failed[pd.Series([tuple(r) not in done for r in failed[CELL].itertuples(index=False)], index=failed.index,
                              dtype=bool)]
    failed = failed.drop_duplicates(CELL, keep="last").sort_values([*CELL, "source"], ignore_index=True)
    skipped = pd.concat([d.skipped for d in datas], ignore_index=True)
    if len(skipped):
        skipped = skipped.groupby(["backbone", "task"], as_index=False)["skipped_images"].max()
    modes = {d.mode for d in datas if d.mode}
    mode = modes.pop() if len(modes) == 1 else ("mixed" if modes else "")
    single = len(datas) == 1
    data = ExperimentData(" + ".join(names), results, failed, datas[0].parent_run_id if single else None, mode,
                          skipped.reset_index(drop=True), sum(d.superseded for d in datas))
    return data, Sources(tuple(names), {d.experiment: d.parent_run_id for d in datas}, conflicts)
