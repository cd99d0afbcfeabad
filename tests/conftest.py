"""Shared fixtures: a real local Ray runtime (loopback, token authentication on) and a tiny run made once;
helpers are in helpers.py."""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import free_port, run_cli, stop_ray_head, tiny_args

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

# Token authentication stays on, as Ray 2.60 has it by default, with a token of the test session's own
# (never the user's ~/.ray/auth_token). The head, the CLI runs and in-process drivers all read it.
_TOKEN = Path(tempfile.mkdtemp(prefix="layerleak-test-auth-")) / "auth_token"
_TOKEN.write_text(secrets.token_hex(32))
os.environ["RAY_AUTH_TOKEN_PATH"] = str(_TOKEN)
os.environ["RAY_AUTH_MODE"] = "token"


@pytest.fixture(scope="session")
def ray_head():
    """A real Ray head node on loopback, shared by the session's CLI runs (RAY_ADDRESS) and in-process tests."""
    import ray

    port = free_port()
    # Ray's single-machine switch keeps every server on 127.0.0.1 (on Linux it would use the routable IP).
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    start = subprocess.run(["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                            "--include-dashboard=false", "--disable-usage-stats", "--object-store-memory=400000000",
                            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"],
                           capture_output=True, text=True, env=env, timeout=120)
    if start.returncode != 0:  # say why once, instead of every test erroring on a missing cluster
        stop_ray_head(port)
        pytest.exit(f"the test session's Ray head did not start (exit {start.returncode}):\n{start.stderr[-4000:]}"
                    f"\n{start.stdout[-2000:]}", returncode=3)
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
