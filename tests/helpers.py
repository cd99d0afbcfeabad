"""What several test modules share besides fixtures: the tiny config, running the CLI, copying a run, /proc.

Fixtures live in conftest.py; test modules import these helpers from here, never from each other.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A synthetic run small enough for unit tests: 4 classes of 8x8 images, a small CNN, 120 audited samples.
TINY = [
    "dataset.name=synthetic", "dataset.synthetic_train=240", "dataset.synthetic_test=80",
    "split.members=60", "split.nonmembers=60",
    "train.epochs=15", "train.batch_size=16", "features.shard_size=25", "features.batch_size=32",
    "ray.num_cpus=2", "ray.extract_actors=2", "ray.fit_actors=2", "sweep.chunk_size=4", "attack.C=1.0",
]


def tiny_args(out: Path, *extra: str) -> list[str]:
    """CLI arguments for the tiny config into ``out``, with ``extra`` KEY=VALUE overrides after TINY's."""
    args = ["--out", str(out)]
    for item in TINY + list(extra):
        args += ["--set", item]
    return args


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the ``layerleak`` command as a user would (joining the test cluster when one is up)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cli_cmd(*args), check=False, capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=timeout)


def popen(*args: str) -> subprocess.Popen:
    """Start the ``layerleak`` command in the background (stdout and stderr merged), e.g. to kill it mid-stage."""
    return subprocess.Popen(cli_cmd(*args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ))


def copy_run(src: Path, dst: Path, keep: list[str]) -> None:
    """A new run folder ``dst`` holding copies of ``keep`` (files or folders) from the run ``src``."""
    dst.mkdir(parents=True)
    for name in keep:
        (shutil.copytree if (src / name).is_dir() else shutil.copy2)(src / name, dst / name)


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmdline(pid: int) -> str:
    """The process title ('' once it is gone); Ray workers set it to ray::Class.method while they run one."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def stop_ray_head(port: int) -> None:
    """Stop only the Ray processes of the head on ``port`` (``ray stop`` would stop every Ray on the machine)."""
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
