"""Faults on a live run: an extractor or fitter actor SIGKILLed mid-task is replaced and its work redone;
a truncated or foreign part found in OUT is reported and recomputed, never read as data.

Faults come from outside, as they would in production: the test finds the actor's worker process
(its title is ``ray::Extractor.__call__`` while it runs a shard) under the raylet of this session's
Ray head, freezes it, checks it is still mid-task, and SIGKILLs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import cmdline, copy_run, popen, run_cli, tiny_args


# --- processes, read from /proc (no psutil needed) ------------------------------------------------

def parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def actor_pids(title: str, gcs_port: int) -> list[int]:
    """Worker processes of actor class ``title`` that belong to the Ray cluster whose GCS listens on ``gcs_port``.

    Other engineers' clusters on this machine run their own raylets; only workers whose raylet was
    started with ``--gcs-address=...:<gcs_port>`` are ours.
    """
    gcs = re.compile(rf"--gcs[-_]address=\S+:{gcs_port}(\s|$)")
    out = []
    for pid in all_pids():
        if cmdline(pid).startswith(f"ray::{title}"):
            raylet = cmdline(parent(pid))
            if "raylet" in raylet and gcs.search(raylet):
                out.append(pid)
    return out


def kill_mid_task(proc: subprocess.Popen, title: str, method: str, gcs_port: int, seen: set[int], timeout: float = 240) -> int:
    """SIGKILL one ``title`` actor while it runs ``method``; returns its pid. ``seen`` collects every pid met."""
    busy = f"ray::{title}.{method}"
    deadline, pids, last_scan = time.time() + timeout, [], 0.0
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before a {title} could be killed mid-task:\n{proc.stdout.read()[-3000:]}")
        if time.time() - last_scan > 0.3:  # a full /proc scan is slow; in between, watch the known actors only
            pids, last_scan = actor_pids(title, gcs_port), time.time()
            seen.update(pids)
        for pid in pids:
            if cmdline(pid).startswith(busy):
                os.kill(pid, signal.SIGSTOP)  # frozen: the title can no longer change under us
                if cmdline(pid).startswith(busy):
                    os.kill(pid, signal.SIGKILL)
                    return pid
                os.kill(pid, signal.SIGCONT)
        time.sleep(0.001)
    proc.kill()
    pytest.fail(f"no {title} was seen running {method} within {timeout}s")


def watch_until_done(proc: subprocess.Popen, title: str, gcs_port: int, seen: set[int], timeout: float = 300) -> str:
    """Keep collecting ``title`` pids until the run ends; returns its output."""
    deadline = time.time() + timeout
    while proc.poll() is None:
        if time.time() > deadline:
            proc.kill()
            pytest.fail("the run did not finish after the kill")
        seen.update(actor_pids(title, gcs_port))
        time.sleep(0.2)
    return proc.stdout.read()


# --- runs ----------------------------------------------------------------------------------------


def gcs_port(ray_head: str) -> int:
    return int(ray_head.rsplit(":", 1)[1])


def assert_features_equal(out: Path, want_run: Path, rtol: float = 1e-5, atol: float = 1e-9) -> None:
    got = pd.read_parquet(out / "features").sort_values("sample_id").reset_index(drop=True)
    want = pd.read_parquet(want_run / "features").sort_values("sample_id").reset_index(drop=True)
    assert not got["sample_id"].duplicated().any()
    assert list(got.columns) == list(want.columns) and len(got) == len(want)
    np.testing.assert_allclose(got.drop(columns=["member"]).to_numpy(float), want.drop(columns=["member"]).to_numpy(float),
                               rtol=rtol, atol=atol)


def assert_sweep_complete(out: Path, want_run: Path) -> None:
    sweep = pd.read_parquet(out / "sweep")
    assert len(sweep) == 15 and not sweep.duplicated(["target", "coalition"]).any()
    assert set(sweep["coalition"]) == set(range(1, 16)) and set(sweep["target"]) == {0}
    assert json.loads((out / "shapley.json").read_text()) == json.loads((want_run / "shapley.json").read_text())


# --- actor faults --------------------------------------------------------------------------------

def test_extractor_killed_mid_shard_is_replaced(tiny_run, ray_head, tmp_path):
    out = tmp_path / "run"
    copy_run(tiny_run, out, ["config.yaml", "splits.parquet", "target"])
    proc = popen("extract", *tiny_args(out, "features.batch_size=1"))  # result-free: same hash, slower shards
    seen: set[int] = set()
    killed = kill_mid_task(proc, "Extractor", "__call__", gcs_port(ray_head), seen)
    log = watch_until_done(proc, "Extractor", gcs_port(ray_head), seen)
    assert proc.returncode == 0, log[-3000:]
    assert killed in seen and len(seen) >= 3, seen  # 2 actors, and a replacement for the killed one
    assert "120 samples in 5 parts (0 reused)" in log
    visible = sorted(p.name for p in (out / "features").iterdir() if not p.name.startswith("."))
    assert visible == [f"part-{i:05d}.parquet" for i in range(5)]  # a write cut short leaves only a hidden temporary
    # every sample once, with the uninterrupted run's values (batch 1 against 32: equal up to float32 noise)
    assert_features_equal(out, tiny_run, rtol=1e-4, atol=1e-5)


def test_fitter_killed_mid_chunk_is_replaced(tiny_run, ray_head, tmp_path):
    out = tmp_path / "run"
    copy_run(tiny_run, out, ["config.yaml", "splits.parquet", "target", "features"])
    proc = popen("sweep", *tiny_args(out, "sweep.chunk_size=1"))  # result-free: one coalition per task
    seen: set[int] = set()
    killed = kill_mid_task(proc, "Fitter", "fit", gcs_port(ray_head), seen)
    log = watch_until_done(proc, "Fitter", gcs_port(ray_head), seen)
    assert proc.returncode == 0, log[-3000:]
    # The replacement may fit its one retried chunk between two polls, so it need not be seen: that the
    # killed actor's chunk is in the complete table below is the proof that Ray redid it.
    assert killed in seen, seen
    assert "15 coalitions cross-fitted" in log
    visible = [p.name for p in (out / "sweep").iterdir() if not p.name.startswith(".")]
    assert len(visible) == 15  # one whole part per chunk; a write cut short leaves only a hidden temporary
    assert_sweep_complete(out, tiny_run)


# --- bad parts in OUT ----------------------------------------------------------------------------

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _make_foreign(path: Path) -> None:
    """Rewrite a part as another config would have made it: another hash, and zeros for every value."""
    table = pq.read_table(path)
    keys = {"sample_id", "label", "member", "coalition", "target"}
    zeros = pa.table({c: table.column(c) if c in keys else pa.array(np.zeros(table.num_rows)) for c in table.column_names})
    meta = {**table.schema.metadata, b"config_hash": json.dumps("0123456789abcdef").encode()}
    pq.write_table(zeros.replace_schema_metadata(meta), path)


def test_truncated_and_foreign_feature_parts_are_recomputed(tiny_run, ray_head, tmp_path):
    out = tmp_path / "run"
    copy_run(tiny_run, out, ["config.yaml", "splits.parquet", "target", "features"])
    feats = out / "features"
    _truncate(feats / "part-00001.parquet")
    _make_foreign(feats / "part-00003.parquet")
    kept = {p.name: p.stat().st_mtime_ns for p in feats.iterdir() if p.name not in ("part-00001.parquet", "part-00003.parquet")}
    proc = run_cli("extract", *tiny_args(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"part-00001\.parquet is unreadable .*; recomputing it", proc.stdout), proc.stdout
    assert "part-00003.parquet is made by another config or layerleak version (hash 0123456789abcdef); recomputing it" in proc.stdout
    assert "50 samples in 2 parts (3 reused)" in proc.stdout
    assert {n: (feats / n).stat().st_mtime_ns for n in kept} == kept  # good parts untouched
    assert_features_equal(out, tiny_run)  # the zeros of the foreign part were never read


def test_truncated_and_foreign_parts_of_reference_models_are_reported_and_recomputed(tiny_run, ray_head, tmp_path):
    """A reference model's damaged part (OUT/models/<k>/features) is named and recomputed as the target's is."""
    out = tmp_path / "run"
    copy_run(tiny_run, out, ["config.yaml", "splits.parquet", "target", "features"])
    args = tiny_args(out, "references.count=2")
    proc = run_cli("extract", *args)  # trains models 1 and 2, extracts their features
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "240 samples of 2 models in 10 parts" in proc.stdout, proc.stdout
    before = tmp_path / "before"
    for k in (1, 2):
        shutil.copytree(out / "models" / str(k) / "features", before / str(k) / "features")
    bad = {1: "part-00001.parquet", 2: "part-00003.parquet"}
    _truncate(out / "models" / "1" / "features" / bad[1])
    _make_foreign(out / "models" / "2" / "features" / bad[2])
    kept = {p: p.stat().st_mtime_ns for k in (1, 2) for p in (out / "models" / str(k) / "features").iterdir() if p.name != bad[k]}
    proc = run_cli("extract", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"extract: models/1/features/part-00001\.parquet is unreadable .*; recomputing it", proc.stdout), proc.stdout
    assert ("extract: models/2/features/part-00003.parquet is made by another config or layerleak version (hash 0123456789abcdef); "
            "recomputing it") in proc.stdout
    assert "all 5 parts present" in proc.stdout  # the target's parts are untouched
    assert "50 samples of 2 models in 2 parts" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    for k in (1, 2):
        assert_features_equal(out / "models" / str(k), before / str(k), rtol=0, atol=0)


def test_truncated_and_foreign_sweep_parts_are_refitted(tiny_run, ray_head, tmp_path):
    out = tmp_path / "run"
    copy_run(tiny_run, out, ["config.yaml", "splits.parquet", "target", "features", "sweep"])
    parts = sorted((out / "sweep").glob("part-*.parquet"))
    truncated, foreign = parts[1], parts[-1]
    n_bad = pq.read_table(truncated).num_rows + pq.read_table(foreign).num_rows
    _truncate(truncated)
    _make_foreign(foreign)  # accuracy 0 would move every Shapley value if it were read
    proc = run_cli("sweep", *tiny_args(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for bad in (truncated, foreign):
        assert f"sweep/{bad.name} is not a valid part" in proc.stdout, proc.stdout
    assert "made by another config or layerleak version (hash 0123456789abcdef)" in proc.stdout
    assert f"{15 - n_bad} of 15 (target, coalition)s present, fitting {n_bad}" in proc.stdout
    assert_sweep_complete(out, tiny_run)
