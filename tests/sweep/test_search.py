"""orchestrator.sweep.search: search mode (random / Optuna, ASHA) of a sweep."""

from __future__ import annotations

from pathlib import Path

from sweepkit import TINY_GRID, make_config, runs_by_cell

from orchestrator.sweep.driver import run_sweep
from orchestrator.sweep.search import searcher


def test_random_search_uses_a_seeded_basic_variant_generator(tmp_path: Path) -> None:
    from ray.tune.search.basic_variant import BasicVariantGenerator

    cfg = make_config(tmp_path, "unused", search={"algorithm": "random"})
    assert isinstance(searcher(cfg, 0), BasicVariantGenerator)


def test_optuna_search_with_asha_selects_on_validation_and_logs_the_cell(
        ray_cluster: None, store: str, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, store, methods=["sea", "logreg"],
                      search={"algorithm": "optuna", "num_samples": 3, "asha": True, "grace_period": 1},
                      grid={**TINY_GRID, "lr": [0.4, 3.2]})
    summary = run_sweep(cfg, cfg.all_tasks, progress=False)
    assert (summary.completed, summary.failed) == (2, [])
    (run,) = runs_by_cell(cfg)["bb|digits|sea|0"]
    assert run.data.tags["search"] == "optuna+asha" and 1 <= int(run.data.params["n_candidates"]) <= 3
    assert 0.4 <= float(run.data.params["lr"]) <= 3.2 and "test_top1" in run.data.metrics


DRIVER = """
import sys
import ray
from orchestrator.config import load_config
from orchestrator.sweep.driver import run_sweep
ray.init(address=sys.argv[1])
cfg = load_config(data={data!r})
run_sweep(cfg, cfg.all_tasks, progress=False)
"""


def test_interrupted_search_logs_nothing_as_finished_and_resumes(
        ray_cluster: None, store: str, tmp_path: Path) -> None:
    """Ctrl-C in the middle of concurrent searches: no cell is logged from a partial search; a rerun
    searches the rest and every cell ends with one FINISHED run of all its trials."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import ray

    search = {"algorithm": "random", "num_samples": 3, "max_concurrent_cells": 4}
    cfg = make_config(tmp_path, store, methods=["linear", "sea"], seeds=[0, 1], search=search,
                      trainer={"epochs": 20, "batch_size": 16})
    data = {**cfg.to_dict(), "grid": {**TINY_GRID, "lr": [0.4, 3.2]}}
    cfg = type(cfg).from_dict(data)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                         os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", DRIVER.format(data=data), ray.get_runtime_context().gcs_address],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Tune writes a trial's result.json live only in the node's session folder (the sweep's storage gets a copy
    # when the search ends): the first epoch reported there means the searches are running and none has ended
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    pattern = f"artifacts/*/{cfg.name}-search-*/driver_artifacts/*/result.json"
    earlier = set(session.glob(pattern))   # another test's searches of a sweep of the same name
    try:
        deadline = time.monotonic() + 300
        while not any(p.stat().st_size for p in set(session.glob(pattern)) - earlier):
            assert child.poll() is None, f"the driver exited early with {child.returncode}"
            assert time.monotonic() < deadline, "no search trial reported in time"
            time.sleep(0.1)
        child.send_signal(signal.SIGINT)   # Ctrl-C while the searches run
        child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    before = {cell: runs for cell, runs in runs_by_cell(cfg).items()
              if any(r.info.status == "FINISHED" for r in runs)}
    assert len(before) < 4, "every search finished before the interruption: the test proves nothing"
    for runs in before.values():   # whatever was logged is a whole search
        assert all(r.data.params["n_candidates"] == "3" for r in runs if r.info.status == "FINISHED")

    summary = run_sweep(cfg, cfg.all_tasks, progress=False)
    assert (summary.skipped, summary.completed, summary.failed) == (len(before), 4 - len(before), [])
    after = runs_by_cell(cfg)
    assert len(after) == 4 and all(len(v) == 1 and v[0].info.status == "FINISHED" for v in after.values())
    assert all(v[0].data.params["n_candidates"] == "3" for v in after.values())
