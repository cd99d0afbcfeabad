"""Bad input met mid-pipeline: one `layerleak: error:` line, a non-zero exit, no half-written file, and
nothing computed before lost. (Config and dataset mistakes caught before any work: tests/test_cli.py.)"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from helpers import copy_run, run_cli, tiny_args


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except the resolved config (rewritten by each command)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "config.yaml"}


def _one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The single `layerleak: error:` line, last on stderr (progress bars aside), with no traceback."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [l.strip() for l in re.split(r"[\r\n]", proc.stderr) if l.strip()]
    errors = [l for l in lines if l.startswith("layerleak: error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Unhandled error" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _no_temporaries(root: Path) -> None:
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_too_many_players_for_an_exact_sweep(tiny_run, tmp_path):
    out = tmp_path / "run"
    copy_run(tiny_run, out, ["config.yaml", "splits.parquet", "target", "features"])
    before = _snapshot(out)
    proc = run_cli("sweep", *tiny_args(out, "sweep.max_exact_players=2"))
    _one_error_line(proc, "4 players is too many for an exact sweep", "sweep.max_exact_players=2",
                    "group layers into players (--set sweep.players=groups)", "estimate by sampling (--set sweep.method=sampled)")
    assert _snapshot(out) == before  # features, target and splits untouched; no sweep part written
    _no_temporaries(out)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_where_there_is_none(tiny_run, tmp_path):
    out = tmp_path / "run"
    copy_run(tiny_run, out, ["config.yaml", "splits.parquet", "target"])
    for made in ("model.pt", "metrics.json"):  # the target to train again
        (out / "target" / made).unlink()
    before = _snapshot(out)
    proc = run_cli("train", *tiny_args(out, "train.device=cuda"))
    _one_error_line(proc, "train.device=cuda but the Ray cluster offers no GPU", "train.device=auto or cpu")
    assert _snapshot(out) == before  # the splits kept, no model written
    _no_temporaries(out)


def test_unreachable_ray_address_fails_fast(tiny_run, tmp_path):
    out = tmp_path / "run"
    copy_run(tiny_run, out, ["config.yaml", "splits.parquet", "target"])
    before = _snapshot(out)
    start = time.perf_counter()
    proc = run_cli("extract", *tiny_args(out), env={"RAY_ADDRESS": "127.0.0.1:1"})
    wall = time.perf_counter() - start
    _one_error_line(proc, "no Ray cluster answers at 127.0.0.1:1", "unset it to run locally")
    assert wall < 60, f"{wall:.0f}s: ray.init alone would retry for minutes"
    assert _snapshot(out) == before and not (out / "features").exists()


def test_out_below_a_regular_file(tmp_path):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder\n")
    proc = run_cli("run", "--out", str(blocker / "run"))
    _one_error_line(proc, f"cannot create {blocker / 'run'}", "choose a writable --out")
    assert blocker.read_text() == "not a folder\n"
    _no_temporaries(tmp_path)


def test_read_only_out(tiny_run, tmp_path):
    """OUT that cannot be written even by root (immutable attribute); tests run as root, so chmod would not do."""
    out = tmp_path / "run"
    copy_run(tiny_run, out, ["config.yaml", "splits.parquet", "target"])
    before = _snapshot(out)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        proc = run_cli("extract", *tiny_args(out))
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)
    _one_error_line(proc, f"cannot write {out / '.layerleak'}", "choose a writable --out")  # its marker, the first write
    assert _snapshot(out) == before
    _no_temporaries(out)


def test_unwritable_features_folder_fails_inside_the_actors_with_one_line(tiny_run, tmp_path):
    """The write fails in the extractor actors: the error crosses Ray and still reaches the user as one line."""
    out = tmp_path / "run"
    copy_run(tiny_run, out, ["config.yaml", "splits.parquet", "target"])
    (out / "features").write_text("a file where the features folder should be\n")
    before = _snapshot(out)
    proc = run_cli("extract", *tiny_args(out))
    _one_error_line(proc, f"cannot create {out / 'features'}", "choose a writable --out")
    assert _snapshot(out) == before
    _no_temporaries(out)


def test_more_fitters_than_cpus_is_capped_not_a_hang(tiny_run, ray_head, tmp_path):
    """ray.fit_actors=4 on the 2-CPU head: two actors could never be placed and ActorPool would wait on them forever."""
    out = tmp_path / "run"
    copy_run(tiny_run, out, ["config.yaml", "splits.parquet", "target", "features"])
    proc = run_cli("sweep", *tiny_args(out, "ray.fit_actors=4"), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep: ray.fit_actors=4 but the cluster has 2 CPUs; starting 2 actors" in proc.stdout
    assert json.loads((out / "shapley.json").read_text()) == json.loads((tiny_run / "shapley.json").read_text())
