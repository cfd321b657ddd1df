"""Preemption within a cell: the node running a head trial is removed (no grace) right after the
trial's first checkpoint reached Tune; Tune restarts the trial on another node, which resumes the cell from
that checkpoint instead of redoing its grid, and logs what an uninterrupted run of the cell computes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from clusterkit import add_worker, driver_env, ray_cluster, wait_until
from synthstore import write_task

pytestmark = pytest.mark.slow
RUN_TIMEOUT_S = 600

# the driver, in its own process: a Tune callback hands the trial's pid to the test at the first checkpoint
# and holds Tune's loop until the test has removed that trial's node; afterwards, the cell uninterrupted
DRIVER = """
import json, sys, time
from pathlib import Path
import torch
from ray import tune
from orchestrator.config import load_config
from orchestrator.sweep.cells import Cell
from orchestrator.sweep.driver import run_sweep, store_uri, trial_context
from orchestrator.sweep.fingerprint import current_keys
from orchestrator.sweep.trial import run_cell

folder, cfg = Path(sys.argv[1]), load_config(data=json.loads(sys.argv[2]))

class Preempt(tune.Callback):
    done = False
    def on_trial_save(self, iteration, trials, trial, **info):
        if not self.done:
            self.done = True
            (folder / "pid").write_text(json.dumps([trial.last_result["pid"], trial.last_result["checkpoint_epoch"]]))
            while not (folder / "ack").exists():
                time.sleep(0.1)

summary = run_sweep(cfg, cfg.all_tasks, progress=False, extra_callbacks=[Preempt()])
torch.set_num_threads(1)   # as in the 1-CPU trial
cell = Cell("bb", "digits", "sea", 0)
fresh = run_cell(cell, trial_context(cfg, current_keys(store_uri(cfg), [cell])))
(folder / "out.json").write_text(json.dumps({"completed": summary.completed, "failed": summary.failed,
                                             "fresh": fresh.metrics, "params": fresh.params}))
"""


def _node_of(cluster, pid: int):
    """The worker node whose raylet started process `pid` (a raylet is its workers' parent)."""
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    (node,) = [n for n in cluster.worker_nodes if n.all_processes["raylet"][0].process.pid == parent]
    return node


def test_a_node_lost_mid_cell_resumes_the_cell_from_its_checkpoint_on_another_node(tmp_path):
    from mlflow import MlflowClient

    store = str(tmp_path / "store")
    write_task(store, "bb", "digits", {"train": 400, "test": 60}, 10, dim=16)
    config = {"name": "preempt", "backbones": ["bb"], "tasks": ["digits"], "methods": ["sea"], "seeds": [0],
              "store": store, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
              "trainer": {"epochs": 12, "batch_size": 16, "checkpoint_every": 4}, "max_failures": 1,
              "grid": {"lr": [0.4, 0.8, 1.6], "weight_decay": [1e-6], "lamda": [0.1], "eta": [0.2, 0.8],
                       "alpha": [0.05]}, "resources": {"cpu": 1}}
    with ray_cluster({}, workers=2) as cluster:
        config["address"] = cluster.address
        log = (tmp_path / "driver.log").open("w")
        driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path), json.dumps(config)],
                                  env=driver_env({}, tmp_path), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: (tmp_path / "pid").exists() or driver.poll() is not None, RUN_TIMEOUT_S,
                       "the trial's first checkpoint")
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            pid, epoch = json.loads((tmp_path / "pid").read_text())
            # no tune_dir on a cluster: the checkpoint is in this run's folder beside the (shared) store
            (checkpoint,) = (tmp_path / "store-tune").rglob("cell.pt")
            assert checkpoint.relative_to(tmp_path / "store-tune").parts[0].startswith("preempt-")
            lost = _node_of(cluster, pid)
            cluster.remove_node(lost, allow_graceful=False)
            add_worker(cluster)   # its replacement
            (tmp_path / "ack").write_text("")
            driver.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait(timeout=30)
    assert driver.returncode == 0, (tmp_path / "driver.log").read_text()[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert epoch == 4 and out["completed"] == 1 and out["failed"] == []
    assert list((tmp_path / "store-tune").iterdir()) == []   # the run's folder went with the sweep
    client = MlflowClient(config["tracking_uri"])
    (experiment,) = [e for e in client.search_experiments() if e.name == "preempt"]
    (run,) = client.search_runs([experiment.experiment_id], "tags.`seabench.role` = 'cell'")
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["attempts"] == "2" and tags["ray_node"] != lost.node_id
    assert metrics["resumed_from_epoch"] == 4 and tags["resumed_phase"] == "select"
    for name in ("val_top1", "test_top1", "test_selected_top1", "refit_train_top1"):
        assert metrics[name] == out["fresh"][name], name
    assert {k: run.data.params[k] for k in out["params"]} == {k: str(v) for k, v in out["params"].items()}
