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
    "ray.num_cpus=2", "ray.extract_actors=2", "ray.fit_actors=2", "sweep.chunk_size=4",
]


def tiny_args(out: Path, *extra: str) -> list[str]:
    args = ["--out", str(out)]
    for item in TINY + list(extra):
        args += ["--set", item]
    return args


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the installed ``layerleak`` command as a user would."""
    full_env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=full_env, timeout=timeout)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance for the in-process tests of the session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, logging_level="WARNING",
                 object_store_memory=300 * 1024 * 1024)
    yield ray
    ray.shutdown()
