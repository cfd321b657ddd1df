"""What a stage asks of an autoscaling cluster (orchestrator.capacity) and the per-node checks
(raycluster.on_each_node): durations, node types read from an autoscaler config, a node that left."""

from __future__ import annotations

import pytest
import yaml

from orchestrator.capacity import (
    NODE_TYPES_ENV,
    WAIT_ENV,
    node_types,
    parse_duration,
    shape,
    types_of,
    wait_seconds,
)
from orchestrator.errors import OrchestratorError
from orchestrator.raycluster import alive_nodes, on_each_node


@pytest.mark.parametrize(("text", "seconds"), [("1800", 1800.0), ("90s", 90.0), ("30m", 1800.0), ("1.5h", 5400.0),
                                               (" 2min ", 120.0)])
def test_durations_read_as_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5", "10d", "m30"])
def test_a_bad_duration_is_refused_with_the_forms_that_work(text):
    with pytest.raises(ValueError, match=r"give seconds .*30m"):
        parse_duration(text)


def test_the_wait_defaults_to_30_minutes_and_a_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.delenv(WAIT_ENV, raising=False)
    assert wait_seconds() == 1800.0
    monkeypatch.setenv(WAIT_ENV, "forever")
    with pytest.raises(OrchestratorError, match=r"\$SEABENCH_WAIT_FOR_NODES: 'forever' is not a duration"):
        wait_seconds()


def test_node_types_are_the_launchable_ones_and_the_head_and_unknown_where_the_cloud_decides():
    config = {"head_node_type": "head", "max_workers": 4,
              "available_node_types": {"head": {"resources": {"CPU": 0}, "max_workers": 0},
                                       "gpu": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 2},
                                       "off": {"resources": {"CPU": 64, "GPU": 8}, "max_workers": 0},
                                       "cpu": {"resources": {"CPU": 4, "memory": 1e9}}}}
    assert types_of(config) == {"head": {"CPU": 0.0}, "gpu": {"CPU": 8.0, "GPU": 1.0},
                                "cpu": {"CPU": 4.0, "memory": 1e9}}
    # AWS infers an instance type's resources when the config leaves them out: nothing can be refused then
    config["available_node_types"]["gpu"] = {"node_config": {"InstanceType": "g5.xlarge"}, "max_workers": 2}
    assert types_of(config) is None
    assert types_of({"provider": {"type": "aws"}}) is None
    assert shape({"CPU": 1.0, "GPU": 0.5, "memory": 1e9}) == "1 CPU, 0.5 GPU" and shape({"CPU": 0}) == "nothing"


def test_node_types_come_from_the_named_cluster_yaml_and_a_bad_one_is_an_error(tmp_path, monkeypatch):
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"head_node_type": "h", "available_node_types": {
        "h": {"resources": {"CPU": 2}}, "w": {"resources": {"CPU": 4, "GPU": 1}, "max_workers": 3}}}))
    monkeypatch.setenv(NODE_TYPES_ENV, str(path))
    assert node_types() == ({"h": {"CPU": 2.0}, "w": {"CPU": 4.0, "GPU": 1.0}}, str(path))
    monkeypatch.setenv(NODE_TYPES_ENV, str(tmp_path / "absent.yaml"))
    with pytest.raises(OrchestratorError, match=r"\$SEABENCH_NODE_TYPES=.*absent.yaml.*neither a readable Ray cluster YAML"):
        node_types()
    monkeypatch.setenv(NODE_TYPES_ENV, '{"available_node_types": {"w": {"resources": {"GPU": 2}}}}')   # KubeRay: inline
    assert node_types() == ({"w": {"GPU": 2.0}}, "$SEABENCH_NODE_TYPES")


def test_a_node_that_left_before_its_check_is_skipped_and_said_so(ray_cluster, capsys):
    """Ray lists a node that was just scaled down as alive for a few seconds; a task pinned to it is then
    unschedulable. The check skips it instead of failing the run; the live nodes still answer."""
    here = alive_nodes()[0]["NodeID"]
    gone = "ab" * 28
    assert on_each_node(parse_duration, "2m", nodes=[here, gone]) == {here: 120.0}   # importable by workers
    assert f"Ray node {gone} left the cluster before its check; skipped" in capsys.readouterr().err


def test_a_live_node_whose_check_fails_is_an_error_naming_it(ray_cluster):
    here = alive_nodes()[0]["NodeID"]
    with pytest.raises(OrchestratorError, match=rf"the check of Ray node {here} failed: ValueError: 'soon' is not a "
                                                r"duration"):
        on_each_node(parse_duration, "soon", nodes=[here])

