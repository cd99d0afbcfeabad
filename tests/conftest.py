"""Shared fixtures: a real local Ray runtime (loopback, auth off) and a tiny run made once; helpers are in helpers.py."""

from __future__ import annotations

import os
import subprocess

import pytest

from helpers import free_port, run_cli, stop_ray_head, tiny_args

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_head():
    """A real Ray head node on loopback, shared by the session's CLI runs (RAY_ADDRESS) and in-process tests."""
    import ray

    port = free_port()
    # Ray's single-machine switch keeps every server on 127.0.0.1 (on Linux it would use the routable IP).
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    subprocess.run(["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats", "--object-store-memory=400000000",
                    f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"],
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
