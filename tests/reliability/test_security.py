"""Security: no pickle, safe YAML, names that cannot escape the store, escaped reports, no open ports."""

from __future__ import annotations

import ipaddress
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.commands.cli import main
from orchestrator.errors import OrchestratorError
from orchestrator.extract.manifest import FeatureKey
from orchestrator.extract.store import FeatureStore
from orchestrator.report.build import build_report
from orchestrator.sweep.cells import Cell
from orchestrator.sweep.tracking import SweepTracker
from orchestrator.sweep.trial import CellOutcome
from tasks import BackboneSpec, TaskError, build_backbone


class RunsCode:
    """Unpickling this runs `touch <marker>`: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_whose_pickle_runs_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": RunsCode(marker)}, path,
               pickle_module=pickle)
    spec = BackboneSpec("evil", "resnet18", f"file:{path}", input_size=32, model_kwargs=(("num_classes", 0),))
    with pytest.raises(TaskError, match=r"refusing to load"):
        build_backbone(spec)
    assert not marker.exists()


def test_a_feature_file_whose_pickle_runs_code_is_refused_and_the_code_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil_pt, evil_npz, good = tmp_path / "evil.pt", tmp_path / "evil.npz", tmp_path / "good.npz"
    torch.save({"features": RunsCode(marker), "labels": torch.zeros(2)}, evil_pt, pickle_module=pickle)
    np.savez(evil_npz, features=np.array([RunsCode(marker)], dtype=object), labels=np.zeros(1))
    np.savez(good, features=np.ones((4, 3), np.float32), labels=np.array([0, 1, 0, 1]))
    for evil in (evil_pt, evil_npz):
        assert main(["fit", "--train", str(evil), "--test", str(good)]) == 2
        assert evil.name in capsys.readouterr().err and not marker.exists()


def test_yaml_tags_that_would_build_python_objects_are_refused_unrun(tmp_path, capsys):
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\nbackbones: [a]\ntasks: [digits]\n")
    assert main(["run", "--config", str(config)]) == 2
    assert "not valid YAML" in capsys.readouterr().err and not marker.exists()
    good = tmp_path / "good.yaml"
    good.write_text("name: t\nbackbones: [a]\ntasks: [digits]\n")
    assert main(["run", "--config", str(good), "--set", f"name=!!python/object/apply:os.system ['touch {marker}']"]) == 2
    assert "not valid YAML" in capsys.readouterr().err and not marker.exists()


@pytest.mark.parametrize(("backbone", "task", "split"), [
    ("../../../outside", "digits", "train"),
    ("/etc", "digits", "train"),
    ("bb", "..", "train"),
    ("bb", "digits", "../../escape"),
    ("bb", "a/b", "train"),
    ("random:../../x@32", "imagefolder:/../../etc/passwd", "train"),
    ("ensemble:../a+/b", "imagefolder:../../../x", "test"),
])
def test_names_that_become_paths_cannot_leave_the_store(tmp_path, backbone, task, split):
    root = (tmp_path / "store").resolve()
    key = FeatureKey(backbone, "0" * 64, "-", {}, "pooled", task, split, "0" * 16, "float32")
    try:
        unit = key.unit_path()
    except OrchestratorError as exc:
        assert "cannot name a store folder" in str(exc)
        return
    store = FeatureStore(root)
    for relative in (unit, f"index/{key.pointer_name()}"):
        target = Path(store.path(relative)).resolve()
        assert target.is_relative_to(root) and ".." not in Path(relative).parts


def test_every_string_from_mlflow_is_escaped_in_the_report(tmp_path):
    """Backbone, task, method-free strings: tags and a failed cell's error come from MLflow, i.e. from
    whoever could write to the tracking store; none may become markup in the HTML or the Markdown."""
    hostile_backbone = '<img src=x onerror="alert(1)">'
    hostile_task = "t<script>alert(2)</script>"
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "hostile")
    tracker.start()
    for method, value in (("linear", 70.0), ("sea", 72.0)):
        for seed in (0, 1):
            outcome = CellOutcome(f"{hostile_backbone}|{hostile_task}|{method}|{seed}", {"lr": 0.8},
                                  {"test_top1": value + seed, "test_mean_per_class": value, "val_top1": value},
                                  {"skipped_images": "3", "primary_metric": "top1"})
            tracker.log_cell(Cell(hostile_backbone, hostile_task, method, seed), outcome)
    tracker.log_failed(Cell(hostile_backbone, hostile_task, "fgsm", 0), "ValueError: <svg onload=alert(3)> & co")
    tracker.finish()
    paths = build_report("hostile", tmp_path / "report", tracker.tracking_uri)
    assert (paths.n_failed, paths.skipped_images) == (1, 3)
    html = (tmp_path / "report" / "leaderboard.html").read_text()
    md = (tmp_path / "report" / "leaderboard.md").read_text()
    for text in (html, md):
        assert "<script" not in text and "<svg" not in text
        assert text.count("<img") == text.count('<img src="data:image/png;base64,')   # only the plots
        assert "&lt;svg onload=alert(3)&gt; &amp; co" in text and "&lt;script&gt;alert(2)&lt;/script&gt;" in text
        assert "Skipped images" in text
    assert "onerror=&quot;alert(1)&quot;" in html


# ---------------------------------------------------------------- listening sockets

_PROBE = """
import json, os, ray
from orchestrator.raycluster import init_ray
init_ray(num_cpus=1)  # exactly what `seabench run` / `extract` do without --address

@ray.remote
class Probe:
    def pid(self):
        return os.getpid()

actor = Probe.remote()
ray.get([actor.pid.remote(), ray.put(1)])
print("PIDS", json.dumps([os.getpid()]))
import sys; sys.stdout.flush()
input()  # keep the cluster up until the test has read the sockets
ray.shutdown()
"""


def _listening() -> dict[int, tuple[str, int]]:
    """socket inode -> (ip, port) of every TCP socket in LISTEN state (IPv4 and IPv6)."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_ip)
            # /proc stores each 32-bit word in host (little-endian) order
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            out[int(fields[9])] = (str(ipaddress.ip_address(words)), int(hex_port, 16))
    return out


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def _sockets_of(pids: set[int]) -> list[dict]:
    listening = _listening()
    rows = []
    for pid in pids:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in listening:
                ip, port = listening[int(link[8:-1])]
                rows.append({"pid": pid, "process": comm, "cmd": cmd, "ip": ip, "port": port})
    return rows


RAY_CORE = ("gcs_server", "raylet")


def _is_ray_core(row: dict, driver: int) -> bool:
    return (row["process"] in RAY_CORE or row["cmd"].startswith("ray::") or row["process"].startswith("ray::")
            or row["pid"] == driver)   # the driver's listener is its embedded Ray core worker


@pytest.fixture(scope="module")
def local_cluster_sockets():
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc to list listening sockets")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    child = subprocess.Popen([sys.executable, "-c", _PROBE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = ""
        while not line.startswith("PIDS"):
            line = child.stdout.readline()
            assert line or child.poll() is None, "the probe exited before starting Ray"
        driver = json.loads(line.split(" ", 1)[1])[0]
        rows = _sockets_of(_descendants(driver))
    finally:
        child.stdin.write("\n")
        child.stdin.close()
        child.wait(timeout=60)
    assert rows, "no listening socket found at all: the probe is broken"
    return driver, rows


def test_seabench_opens_no_server_and_ray_starts_no_dashboard_or_client_server(local_cluster_sockets):
    driver, rows = local_cluster_sockets
    foreign = [r for r in rows if not _is_ray_core(r, driver)]
    assert not foreign, f"processes other than Ray's core listen: {foreign}"
    ports = {r["port"] for r in rows}
    assert not ports & {8265, 10001, 5000, 8080}, "dashboard, Ray client, MLflow or metrics port open"


@pytest.mark.xfail(strict=True, reason="Ray 2.60's GCS, raylet and core-worker gRPC servers bind all interfaces "
                   "even for a local cluster, and ray.init replaces a loopback _node_ip_address with the machine's "
                   "address (services.resolve_ip_for_localhost); upstream work to bind the node IP: "
                   "ray-project/ray#59852. Firewall those ports on a shared host. When this passes, drop the caveat "
                   "from README.")
def test_every_listening_socket_of_a_local_run_is_on_loopback(local_cluster_sockets):
    _, rows = local_cluster_sockets
    exposed = [r for r in rows if not ipaddress.ip_address(r["ip"]).is_loopback]
    assert not exposed, f"listening beyond loopback: {exposed}"
