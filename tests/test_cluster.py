"""Cluster operation: the launcher configs validate against Ray's schema, safe defaults hold, a three-node
cluster gives the single-node results, and ``ray job submit`` runs the audit end to end.

The multi-node and job tests start clusters of their own, never the session's ``ray_head``: the
multi-node driver runs in a subprocess (its own ``ray.init``), and the job test's head runs under
``ray start --block`` with its own temp dir and ports, so stopping it means killing exactly that
process tree (``ray stop`` would stop every Ray instance on the machine).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from helpers import ROOT, TINY, cmdline, copy_run, free_port, run_cli, tiny_args
from mia_tasks.errors import LayerleakError
from mia_tasks.models import build
from mia_tasks.rundir import RunDir
from flows.bench.load import descendants

# Environment for clusters a test starts itself: no token auth (loopback only), and Ray's switch that
# keeps a single machine's node address at 127.0.0.1 (else Ray swaps in the routable IP).
LOOPBACK_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, **LOOPBACK_ENV, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), **extra}


# --- the launcher configs ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-local.yaml"])
def test_cluster_config_validates_against_ray_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / name).read_text())
    cfg = prepare_config(copy.deepcopy(raw))  # what `ray up` does: merge the provider's defaults
    validate_config(cfg)  # Ray's ray-schema.json plus its own cross-checks; raises on any error
    assert any("pip install" in c and "-e" in c and "layerleak" in c for c in cfg["setup_commands"])
    assert any(remote.rstrip("/").endswith("layerleak") and local == "." for remote, local in cfg["file_mounts"].items())
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])  # jobs reach it through `ray dashboard`
    assert all("RAY_AUTH_MODE=token" in c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c)
    if raw["provider"]["type"] == "aws":
        types = cfg["available_node_types"]
        head, workers = types[cfg["head_node_type"]], [t for n, t in types.items() if n != cfg["head_node_type"]]
        assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
        assert workers and all(w["resources"]["GPU"] >= 1 and w["min_workers"] <= w["max_workers"] for w in workers)
    else:
        assert raw["provider"]["type"] == "local" and raw["provider"]["worker_ips"]
        assert "--num-gpus=0" in " ".join(cfg["head_start_ray_commands"])  # extraction goes to the GPU workers


def test_cluster_config_validation_is_not_vacuous():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["worker.gpu"]["min_workers"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(raw)
    bad["head_node_type"] = "no.such.type"
    with pytest.raises(ValueError):
        validate_config(prepare_config(bad))


# --- safe defaults -------------------------------------------------------------------------------

def _listening(pids: set[int]) -> list[tuple[int, ipaddress._BaseAddress, int]]:
    """(pid, address, port) of every listening TCP socket the given processes hold, from /proc/net/tcp{,6}."""
    owner = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    owner[int(link[8:-1])] = pid
        except OSError:
            continue
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A" or int(f[9]) not in owner:  # 0A: LISTEN
                continue
            hexaddr, hexport = f[1].split(":")
            raw = bytes.fromhex(hexaddr)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # kernel words are little-endian
            out.append((owner[int(f[9])], ipaddress.ip_address(raw), int(hexport, 16)))
    return out


def _is_loopback(ip) -> bool:
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


LOCAL_INSTANCE = """
import json, os, sys
import ray
from flows.runtime import init_ray
from mia_tasks.config import RayConfig
init_ray(RayConfig(num_cpus=1))
pid = ray.get(ray.remote(lambda: os.getpid()).remote())  # a worker process too
node = ray._private.worker.global_worker.node
print(json.dumps({"node_ip": ray.nodes()[0]["NodeManagerAddress"], "gcs": node.gcs_address,
                  "webui": node.address_info.get("webui_url"), "nodes": len(ray.nodes()),
                  "auth": os.environ.get("RAY_AUTH_MODE")}), flush=True)
sys.stdin.readline()
"""


def test_local_instance_listens_on_loopback_only_without_dashboard(ray_head, tmp_path):
    """With RAY_ADDRESS unset, init_ray starts its own instance (never the `ray start` head the session runs) on
    127.0.0.1, with token authentication on and no Ray variable set: the token is made on first use."""
    drop = ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    proc = subprocess.Popen([sys.executable, "-c", LOCAL_INSTANCE], cwd=ROOT, env={**env, "HOME": str(tmp_path)},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()[-3000:]
        info = json.loads(line)
        sockets = _listening({proc.pid, *descendants(proc.pid)})
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)
    assert info["node_ip"] == "127.0.0.1" and info["nodes"] == 1
    assert info["gcs"].rsplit(":", 1)[1] != ray_head.rsplit(":", 1)[1]  # a new instance, not the session's head
    assert not info["webui"]  # no dashboard
    assert info["auth"] == "token" and (tmp_path / ".ray" / "auth_token").stat().st_size > 0
    assert len({pid for pid, _, _ in sockets}) >= 3, sockets  # GCS, raylet, the workers: the check sees them
    exposed = [(pid, cmdline(pid)[:60], str(ip), port) for pid, ip, port in sockets if not _is_loopback(ip)]
    assert not exposed, exposed


@pytest.mark.parametrize("rel", ["../outside.json", "features/../../outside", "/etc/passwd", "a/../../../tmp/x"])
def test_run_dir_refuses_paths_outside_out(tmp_path, rel):
    rd = RunDir(tmp_path / "out")
    with pytest.raises(LayerleakError, match="outside OUT"):
        rd.write_text(rel, "x")
    assert not (tmp_path / "outside.json").exists() and not (tmp_path / "outside").exists()
    assert rd.path("features/../sweep/part.parquet") == str(tmp_path / "out" / "sweep" / "part.parquet")


class _Payload:
    """Unpickling this creates a file: stands in for code a malicious checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_checkpoint_never_runs_unless_trusted(tmp_path):
    marker = tmp_path / "payload-ran"
    model = build("cnn", 4, in_channels=1, input_size=8)  # fits the tiny synthetic data
    torch.save({"state_dict": model.state_dict(), "extra": _Payload(marker)}, tmp_path / "ck.pt")
    args = [*tiny_args(tmp_path / "out"), "--set", f"model.checkpoint={tmp_path / 'ck.pt'}"]
    proc = run_cli("train", *args)
    assert proc.returncode == 2 and not marker.exists()
    assert proc.stderr.strip().splitlines()[-1].startswith("layerleak: error: checkpoint ")
    assert "model.trust_checkpoint=true" in proc.stderr
    trusted = run_cli("train", *args, "--set", "model.trust_checkpoint=true")  # the user's explicit opt-in
    assert marker.exists(), trusted.stderr[-2000:]  # the payload is real: only weights_only stopped it


# --- a head and two GPU workers on one machine ---------------------------------------------------

def multinode_driver(out: str, result: str) -> None:
    """Run in a subprocess: start a 3-node cluster, extract and sweep through it, write what happened to ``result``."""
    import ray
    from ray._private.utils import get_ray_address_file
    from ray.cluster_utils import Cluster

    from flows import presets
    from flows.extract import extract_flow
    from flows.sweep import sweep_flow
    from flows.train import train_flow
    from mia_tasks.featurestore import load_features
    from mia_tasks.target import layer_table, load_target

    address_file = Path(get_ray_address_file(None))
    old_address = address_file.read_text() if address_file.exists() else None  # Cluster overwrites it; put it back
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False,
                                                             "dashboard_agent_listen_port": free_port(),  # not the shared 52365
                                                             "object_store_memory": 100 * 2 ** 20})
    try:
        workers = [cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=100 * 2 ** 20) for _ in range(2)]
        ray.init(address=cluster.address)
        cfg = presets.load(None, TINY + [f"output.dir={out}"])
        rd = RunDir(out)
        hashes = rd.prepare(cfg)
        data, splits, _ = train_flow(cfg, rd, hashes)  # the target is reused from OUT
        layers = layer_table(load_target(cfg, rd, data), data, cfg.features.layers)
        records = extract_flow(cfg, rd, hashes, splits.table, layers)
        sweep_flow(cfg, rd, hashes, splits, load_features(rd, hashes["features"]))
        Path(result).write_text(json.dumps({"records": records, "workers": [w.node_id for w in workers],
                                            "head": cluster.head_node.node_id, "gpus": ray.cluster_resources().get("GPU", 0)}))
    finally:
        ray.shutdown()
        cluster.shutdown()
        if old_address is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(old_address)


def test_three_node_cluster_matches_single_node(tiny_run, tmp_path):
    out, result = tmp_path / "run", tmp_path / "result.json"
    copy_run(tiny_run, out, ["config.yaml", "splits.parquet", "target"])
    code = f"from test_cluster import multinode_driver; multinode_driver({str(out)!r}, {str(result)!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    info = json.loads(result.read_text())
    assert info["gpus"] == 2
    records = info["records"]
    assert sorted(r["shard"] for r in records) == [0, 1, 2, 3, 4]
    assert {r["node"] for r in records} == set(info["workers"])  # extractors on both workers, none on the head
    want_device = "cpu" if not torch.cuda.is_available() else "cuda"
    assert {r["device"].split(":")[0] for r in records} == {want_device}  # GPU declared, CUDA absent: CPU fallback
    got = pd.read_parquet(out / "features").sort_values("sample_id").reset_index(drop=True)
    want = pd.read_parquet(tiny_run / "features").sort_values("sample_id").reset_index(drop=True)
    assert list(got.columns) == list(want.columns) and not got["sample_id"].duplicated().any()
    assert (got["member"] == want["member"]).all()
    np.testing.assert_allclose(got.drop(columns=["member"]).to_numpy(float), want.drop(columns=["member"]).to_numpy(float),
                               rtol=1e-5, atol=1e-9)  # same shards and batches as the single-node run
    assert json.loads((out / "shapley.json").read_text()) == json.loads((tiny_run / "shapley.json").read_text())


# --- ray job submit against a head of our own ----------------------------------------------------

def _stop_tree(root: subprocess.Popen, temp_dir: str) -> None:
    """Kill the head's processes only: the `ray start --block` tree, plus anything naming its temp dir."""
    pids = set(descendants(root.pid)) | {root.pid}
    pids |= {int(d) for d in os.listdir("/proc") if d.isdigit() and temp_dir in cmdline(int(d))}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + 10
        while time.time() < deadline and any(os.path.exists(f"/proc/{p}") and cmdline(p) for p in pids):
            time.sleep(0.2)
    root.wait(timeout=30)


@pytest.mark.slow
def test_ray_job_submit_end_to_end(tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="llj-", dir="/tmp")  # short: Ray's unix socket paths live under it
    gcs, dash, client, agent = (free_port() for _ in range(4))
    head_log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                             "--num-cpus=2", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                             f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
                             f"--temp-dir={temp_dir}", "--disable-usage-stats", "--object-store-memory=200000000"],
                            env=_env(), stdout=head_log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/version", timeout=2).read()
                break
            except OSError:
                assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
                assert time.time() < deadline, "the dashboard never answered"
                time.sleep(1)
        out = tmp_path / "job-run"
        excludes = json.dumps({"excludes": [".git", "runs", "**/__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info"]})
        job = subprocess.run(["ray", "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
                              "--runtime-env-json", excludes, "--", "python", "-m", "flows.cli", "run", *tiny_args(out)],
                             env=_env(), capture_output=True, text=True, timeout=900)
        log = job.stdout + job.stderr
        assert job.returncode == 0 and "succeeded" in log, log[-5000:]
        assert "[layerleak] run done" in log
        shapley = json.loads((out / "shapley.json").read_text())
        assert shapley["method"] == "exact" and [p["player"] for p in shapley["targets"][0]["players"]] == ["conv1", "conv2", "fc1", "fc2"]
        assert (out / "report.json").is_file()
        assert not list(out.rglob("*.tmp"))
    finally:
        _stop_tree(head, temp_dir)
        head_log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not [d for d in os.listdir("/proc") if d.isdigit() and temp_dir in cmdline(int(d))]  # nothing of it left
