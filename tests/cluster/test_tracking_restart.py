"""A team's MLflow: the tracking server on PostgreSQL with its artifacts on S3 (moto's server), stopped in the
middle of a real `seabench run` — right after the first cell is logged — and started again 20 s later. No
cell is lost: every cell is FINISHED in MLflow, once, with its metrics and its artifacts on S3, and the run
succeeds (its report read back through the restarted server).

Two ways through the outage: MLflow's client retrying by itself with seabench's defaults (soak), and with
MLflow's retries off and seabench's retry window at 2 s, so that the cells finished while the server is down
are kept in memory and logged once it answers (seabench's backlog, orchestrator.tracking_retry)."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from clusterkit import (
    BUCKET,
    Sweep,
    cell_runs,
    driver_env,
    s3_objects,
    start_seabench,
    wait_until,
    write_config,
)
from fakedata import make_fake_imagefolder

pytestmark = pytest.mark.slow
RUN_TIMEOUT_S = 600
DOWN_S = 20
SEEDS = (0, 1, 2, 3)   # 8 cells, two at a time: cells finish while the server is down


@pytest.mark.parametrize("variant", [
    pytest.param("backlog", id="mlflow-retries-off-seabench-keeps-the-cells"),
    pytest.param("defaults", id="defaults", marks=pytest.mark.soak),
])
def test_a_tracking_server_restarted_mid_sweep_loses_no_cell(variant, tmp_path, s3_env, postgres, tracking_server):
    name = f"restart-{variant}"
    tracking = tracking_server.url
    make_fake_imagefolder(tmp_path / "task", classes=3, n_train=6, n_test=3, size=16)
    store = f"s3://{BUCKET}/{name}/features"
    sweep = Sweep(f"imagefolder:{tmp_path / 'task'}", seeds=SEEDS)
    config = write_config(tmp_path / "restart.yaml", sweep.config(name, store, num_cpus=2))
    env = driver_env(s3_env, tmp_path, local=True)
    if variant == "backlog":
        env.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "SEABENCH_TRACKING_RETRY_S": "2"})
    log = tmp_path / "driver.log"
    driver = start_seabench(["run", "--config", str(config), "--tracking-uri", tracking, "--out",
                             str(tmp_path / "report"), "--no-progress"], env, tmp_path, log)
    try:
        def a_cell_logged() -> bool:
            runs = cell_runs(tracking, name)
            return any(r.info.status == "FINISHED" for r in runs) or driver.poll() is not None

        wait_until(a_cell_logged, RUN_TIMEOUT_S, "a first cell logged", every=0.2)
        assert driver.poll() is None, log.read_text()[-3000:]
        logged_before = len(cell_runs(tracking, name))
        tracking_server.stop()
        time.sleep(DOWN_S)
        assert driver.poll() is None, "the driver ended while the tracking server was down:\n" + log.read_text()[-3000:]
        tracking_server.start()
        driver.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
        if tracking_server.process is None or tracking_server.process.poll() is not None:
            tracking_server.start()   # the next test module's server
    text = log.read_text()
    assert driver.returncode == 0, text[-5000:]
    assert "8 computed, 0 failed" in text, text[-3000:]
    assert logged_before < 8   # the others were logged through the outage

    runs = cell_runs(tracking, name)
    per_cell = Counter(r.data.tags["cell_id"] for r in runs)
    assert len(per_cell) == 8 and set(per_cell.values()) == {1} and {r.info.status for r in runs} == {"FINISHED"}
    assert all({"val_top1", "test_top1", "test_mean_per_class"} <= set(r.data.metrics) for r in runs)
    objects = s3_objects(s3_env, "mlflow-artifacts/")
    for run in runs:
        assert any(k.endswith(f"{run.info.run_id}/artifacts/candidates.csv") for k in objects), run.info.run_id
    if variant == "backlog":
        assert "kept in memory" in text and "answers again" in text
    assert (tmp_path / "report" / "results.csv").is_file()
