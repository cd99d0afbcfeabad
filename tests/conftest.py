"""Shared fixtures: a real local Ray runtime (loopback, auth off) and tiny configs that run in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

ROOT = Path(__file__).resolve().parent.parent

# A synthetic run small enough for unit tests: 4 classes of 8x8 images, a small CNN, 2 repeats.
TINY = [
    "dataset.name=synthetic", "dataset.synthetic_train=240", "dataset.synthetic_test=80",
    "split.members=60", "split.nonmembers=60", "split.attack_train=30", "split.attack_eval=30", "split.repeats=2",
    "train.epochs=15", "train.batch_size=16", "features.shard_size=25", "features.batch_size=32",
    "ray.num_cpus=2", "ray.extract_actors=2", "ray.fit_actors=2", "sweep.chunk_size=4", "attack.C=1.0",
]


def tiny_args(out: Path, *extra: str) -> list[str]:
    args = ["--out", str(out)]
    for item in TINY + list(extra):
        args += ["--set", item]
    return args


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the ``layerleak`` command as a user would (joining the test cluster when one is up)."""
    full_env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    return subprocess.run(cli_cmd(*args), capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=timeout)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_ray_head(port: int) -> None:
    """Stop only the Ray processes of the head on ``port`` (``ray stop`` would stop every Ray on the machine)."""
    import signal

    from flows.bench.load import descendants

    needles = (f"127.0.0.1:{port}", f"--gcs_server_port={port}")
    matched: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmd for n in needles):
            matched.add(int(proc.name))
    for pid in list(matched):  # their descendants too (workers rename themselves)
        matched.update(descendants(pid))
    for pid in matched:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture(scope="session")
def ray_head():
    """A real Ray head node on loopback, shared by the session's CLI runs (RAY_ADDRESS) and in-process tests."""
    import ray

    port = _free_port()
    # Ray's single-machine switch keeps every server on 127.0.0.1 (on Linux it would use the routable IP).
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    subprocess.run(["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats", "--object-store-memory=400000000",
                    f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}"],
                   check=True, capture_output=True, env=env, timeout=120)
    address = f"127.0.0.1:{port}"
    old = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = address
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # drivers joining it stay on loopback too
    try:
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        stop_ray_head(port)
        if old is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = old


@pytest.fixture(scope="session")
def tiny_run(ray_head, tmp_path_factory):
    """A complete tiny audit (train, extract, sweep) made once through the CLI; tests read it, never change it."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    proc = run_cli("run", *tiny_args(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out
