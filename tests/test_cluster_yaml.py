"""cluster.yaml is a valid Ray cluster-launcher config with a scalable GPU worker type that installs seabench."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from envnames import needed_on_workers
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA.read_text())


def test_validates_against_rays_schema_as_written(config, schema):
    jsonschema.validate(config, schema)


def test_validates_after_ray_fills_in_provider_defaults(config):
    # the same steps `ray up` takes before launching anything (offline: no AWS calls)
    validate_config(prepare_config(copy.deepcopy(config)))


def test_schema_check_is_strict_enough_to_catch_a_typo(config, schema):
    broken = {**copy.deepcopy(config), "max_wokers": 3}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_has_a_cpu_head_and_a_gpu_worker_type_with_worker_bounds(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))
    gpu_types = {name: t for name, t in types.items() if t["node_config"]["InstanceType"].startswith(("g5", "g6", "p"))}
    assert gpu_types, "no GPU worker node type"
    for node_type in gpu_types.values():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"]
        assert node_type["max_workers"] >= 1


def test_setup_commands_install_seabench_with_its_cloud_extra_from_the_synced_repo(config):
    commands = " ; ".join(config["setup_commands"])
    assert 'pip install "$HOME/seabench[cloud]"' in commands
    assert "~/seabench" in config["file_mounts"]  # the checkout the install reads
    pyproject = (CLUSTER_YAML.parent / "pyproject.toml").read_text()
    assert "cloud = [" in pyproject and '"s3fs==' in pyproject  # s3:// stores, from the extra


def test_mlflow_and_the_dashboard_listen_on_loopback_only(config):
    commands = " ; ".join(config["head_start_ray_commands"])
    assert "mlflow server --host 127.0.0.1" in commands and "--dashboard-host=127.0.0.1" in commands
    assert "0.0.0.0" not in CLUSTER_YAML.read_text()


def test_the_documented_run_tells_seabench_the_cluster_autoscales():
    assert "--autoscaling" in CLUSTER_YAML.read_text()


def test_ssh_is_never_opened_to_the_internet_by_rays_default_security_group(config):
    """Ray's AWS bootstrap creates a group with SSH from 0.0.0.0/0 for every node type without
    SecurityGroupIds; with a group on each type its own code leaves them alone (no AWS call made)."""
    from ray.autoscaler._private.aws.config import _configure_security_group

    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"].get("SecurityGroupIds"), f"{name} would get Ray's SSH-from-anywhere group"
    configured = _configure_security_group(copy.deepcopy(config))
    assert configured["available_node_types"] == config["available_node_types"]
    text = CLUSTER_YAML.read_text()
    assert "--port 22 --cidr 203.0.113.0/24" in text and "--source-group $SG" in text   # documented rules


def test_workers_get_an_instance_profile_for_s3(config):
    types = config["available_node_types"]
    for name, node_type in types.items():
        if name != config["head_node_type"]:   # Ray gives the head its own ray-autoscaler-v1 profile
            assert node_type["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name


def test_every_node_gets_the_seabench_environment_the_code_reads(config):
    """Each SEABENCH_* variable that the package reads on a worker is set in every container."""
    import re

    options = " ".join(config["docker"]["run_options"])
    assert not config["docker"].get("worker_run_options") and not config["docker"].get("head_run_options")
    given = set(re.findall(r"--env (SEABENCH_[A-Z_]+)=", options))
    needed = needed_on_workers()
    assert needed <= given, f"not set on the nodes: {sorted(needed - given)}"
