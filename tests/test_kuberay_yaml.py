"""kuberay.yaml: every RayJob / RayCluster document is valid under the KubeRay operator's own CRD schemas
(strictly: an unknown field is an error, where the API server would drop it silently), and the
documents fit together (the service account, the MLflow Service, the entry point, the environment)."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from envnames import needed_on_workers

REPO = Path(__file__).resolve().parents[1]
KUBERAY_YAML = REPO / "kuberay.yaml"
CRDS = REPO.parent / "shared" / "data" / "kuberay-crds"


def _strict(node: Any) -> Any:
    """The CRD's OpenAPI schema as jsonschema reads it: int-or-string fields accept both, and an object
    with declared properties (and no x-kubernetes-preserve-unknown-fields) rejects others."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items()}
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _crd(filename: str) -> tuple[str, str, dict]:
    path = CRDS / filename
    if not path.exists():
        pytest.skip(f"KubeRay CRDs not found at {CRDS} (../shared/data/kuberay-crds)")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))   # safe; C for speed
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"], _strict(schema)


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(KUBERAY_YAML.read_text()) if d]


@pytest.fixture(scope="module")
def schemas() -> dict[str, tuple[str, jsonschema.Draft7Validator]]:
    out = {}
    for filename in ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml"):
        api, kind, schema = _crd(filename)
        out[kind] = (api, jsonschema.Draft7Validator(schema))
    return out


def _one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in kuberay.yaml, found {len(found)}"
    return found[0]


def _ray_cluster_specs(docs: list[dict]) -> list[dict]:
    specs = [d["spec"] for d in docs if d["kind"] == "RayCluster"]
    return specs + [d["spec"]["rayClusterSpec"] for d in docs if d["kind"] == "RayJob"]


def test_every_ray_document_validates_against_the_kuberay_crds(docs, schemas):
    ray_docs = [d for d in docs if d["kind"] in schemas]
    assert any(d["kind"] == "RayJob" for d in ray_docs)
    for doc in ray_docs:
        api, schema = schemas[doc["kind"]]
        assert doc["apiVersion"] == api, doc["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
        schema.validate(doc["spec"])
    for spec in _ray_cluster_specs(docs):   # a RayJob's cluster is checked as a RayCluster too
        schemas["RayCluster"][1].validate(spec)


def test_the_strict_check_catches_a_misspelt_field_and_a_wrong_type(docs, schemas):
    job = copy.deepcopy(_one(docs, "RayJob"))
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 8
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        schemas["RayJob"][1].validate(job["spec"])
    job = copy.deepcopy(_one(docs, "RayJob"))
    job["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"] = "yes"
    with pytest.raises(jsonschema.ValidationError):
        schemas["RayJob"][1].validate(job["spec"])


def test_a_cpu_head_for_the_driver_and_a_gpu_group_autoscaled_from_zero(docs):
    cluster = _one(docs, "RayJob")["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    gpu = [g for g in cluster["workerGroupSpecs"]
           if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu and all(g["minReplicas"] == 0 < g["maxReplicas"] for g in gpu)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"ray[tune]=={cluster["rayVersion"]}"' in pyproject
    assert f"rayproject/ray:{cluster['rayVersion']}-py311" in (REPO / "Dockerfile").read_text()


def test_the_entry_point_is_a_valid_autoscaling_seabench_run_against_the_mlflow_service(docs):
    from orchestrator.commands.cli import build_parser

    job = _one(docs, "RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "seabench"
    args = build_parser("run").parse_args(argv[1:])
    assert args.command == "run" and args.autoscaling and args.store.startswith("s3://")
    assert (REPO / args.config).is_file()   # the image's working directory is this checkout
    service = _one(docs, "Service", "seabench-mlflow")
    port = service["spec"]["ports"][0]["port"]
    assert args.tracking_uri == f"http://seabench-mlflow:{port}"
    assert service["spec"]["type"] == "ClusterIP" and _one(docs, "Service", "seabench-postgres")["spec"]["type"] == "ClusterIP"


def test_every_ray_pod_runs_as_the_s3_service_account_with_the_seabench_environment(docs):
    account = _one(docs, "ServiceAccount", "seabench")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    needed = needed_on_workers()
    cluster = _one(docs, "RayJob")["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        assert pod["spec"]["serviceAccountName"] == "seabench"
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert needed <= set(env), f"missing on a Ray pod: {sorted(needed - set(env))}"
        assert env["SEABENCH_AUTOSCALING"] == "1"


def test_mlflow_is_backed_by_postgresql_with_artifacts_on_s3(docs):
    secret = _one(docs, "Secret", "seabench-mlflow-db")["stringData"]
    uri = secret["MLFLOW_BACKEND_STORE_URI"]
    assert uri.startswith("postgresql+psycopg://") and "@seabench-postgres:5432/" in uri
    assert uri.endswith("/" + secret["POSTGRES_DB"]) and f"//{secret['POSTGRES_USER']}:" in uri
    deployment = _one(docs, "Deployment", "seabench-mlflow")
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert _one(docs, "Service", "seabench-mlflow")["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    container = pod["spec"]["containers"][0]
    command = " ".join(container["args"])
    assert '--backend-store-uri "$MLFLOW_BACKEND_STORE_URI"' in command
    assert re.search(r"--artifacts-destination s3://\S+", command) and "--serve-artifacts" in command
    assert "psycopg" in command
    assert {"secretRef": {"name": "seabench-mlflow-db"}} in container["envFrom"]
    pyproject = (REPO / "pyproject.toml").read_text()
    version = container["image"].rsplit(":v", 1)[1]
    assert f'"mlflow=={version}"' in pyproject
    postgres = _one(docs, "StatefulSet", "seabench-postgres")["spec"]["template"]
    assert _one(docs, "Service", "seabench-postgres")["spec"]["selector"].items() <= postgres["metadata"]["labels"].items()


def test_the_driver_knows_the_gpu_group_as_the_autoscaler_does(docs):
    """KubeRay's autoscaler reads the RayCluster, not a file the driver can see: SEABENCH_NODE_TYPES states the
    groups for seabench's up-front shape check, and must agree with the worker groups' limits and replicas."""
    from orchestrator.capacity import types_of

    cluster = _one(docs, "RayJob")["spec"]["rayClusterSpec"]
    env = {e["name"]: e.get("value") for e in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    stated = yaml.safe_load(env["SEABENCH_NODE_TYPES"])
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(stated["available_node_types"]) - {stated["head_node_type"]} == set(groups)
    for name, group in groups.items():
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        declared = stated["available_node_types"][name]
        assert declared["resources"] == {"CPU": float(limits["cpu"]), "GPU": float(limits.get("nvidia.com/gpu", 0))}
        assert declared["max_workers"] == group["maxReplicas"]
    head = stated["available_node_types"][stated["head_node_type"]]
    assert head["resources"]["CPU"] == float(cluster["headGroupSpec"]["rayStartParams"]["num-cpus"])
    assert types_of(stated) is not None
