"""The Ray flows end to end on a tiny audit: features and sweep tables, resume after SIGKILL of the driver."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from helpers import copy_run, popen, run_cli, tiny_args
from mia_tasks.schema import CONSTANT_COLUMNS_KEY, STATS


def test_features_read_as_one_table(tiny_run):
    splits = pq.read_table(tiny_run / "splits.parquet")
    table = pads.dataset(str(tiny_run / "features"), format="parquet").to_table()
    df = pd.read_parquet(tiny_run / "features")
    assert table.num_rows == len(df) == splits.num_rows == 120
    assert sorted(df["sample_id"]) == sorted(splits.column("sample_id").to_pylist())
    part_meta = pq.read_schema(next((tiny_run / "features").glob("part-*.parquet"))).metadata
    meta = json.loads(part_meta[b"layers"])
    assert meta == ["conv1", "conv2", "fc1", "fc2"]
    # fc2's output is the logits: its gradient mean is 0 by construction, stored as an exact zero and marked
    assert json.loads(part_meta[CONSTANT_COLUMNS_KEY.encode()]) == ["grad.fc2.mean"]
    assert (df["grad.fc2.mean"] == 0).all() and (df["grad.fc1.mean"] != 0).all()
    for layer in meta:
        for kind in ("grad", "out"):
            cols = [f"{kind}.{layer}.{s}" for s in STATS]
            assert set(cols) <= set(df.columns)
            assert np.isfinite(df[cols].to_numpy()).all()
    want = splits.to_pandas().set_index("sample_id")["member"]
    assert (df.set_index("sample_id")["member"].reindex(want.index) == want).all()
    assert (df["grad.fc2.l2"] >= 0).all() and (df["loss"] >= 0).all()


def test_sweep_table_complete_and_shapley_efficient(tiny_run):
    sweep = pd.read_parquet(tiny_run / "sweep")
    assert len(sweep) == (2 ** 4 - 1) * 2
    assert not sweep.duplicated(["coalition", "repeat"]).any()
    assert set(sweep["coalition"]) == set(range(1, 16))
    report = json.loads((tiny_run / "shapley.json").read_text())
    assert report["method"] == "exact" and report["repeats"] == 2
    per_repeat = np.array([p["per_repeat"] for p in report["players"]])  # [players, repeats]
    full = sweep[sweep["coalition"] == 15].sort_values("repeat")["accuracy"].to_numpy()
    np.testing.assert_allclose(per_repeat.sum(axis=0), full - 0.5, atol=1e-12)  # efficiency, per repeat


def _kill_when(proc, ready, timeout=240):
    start = time.time()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed: {proc.stdout.read()[-2000:]}")
        if time.time() - start > timeout:
            proc.kill()
            pytest.fail("nothing written in time")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_extract_resumes_after_driver_sigkill(tiny_run, tmp_path):
    out = tmp_path / "run"
    copy_run(tiny_run, out, ["config.yaml", "splits.parquet", "target"])
    args = tiny_args(out, "features.batch_size=1")  # a result-free setting: same config hash, slower extraction
    proc = popen("extract", *args)
    parts = lambda: sorted((out / "features").glob("part-*.parquet")) if (out / "features").exists() else []
    _kill_when(proc, lambda: len(parts()) >= 1)
    time.sleep(2)  # let actors the dead driver left behind finish or be reaped
    before = {p.name: p.stat().st_mtime_ns for p in parts()}
    assert len(before) < 5, "extraction finished before the kill: nothing to resume"
    rerun = run_cli("extract", *args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    reused = int(re.search(r"\((\d+) reused\)", rerun.stdout).group(1))
    assert reused >= len(before)
    assert {p.name: p.stat().st_mtime_ns for p in parts() if p.name in before} == before  # finished parts untouched
    got = pd.read_parquet(out / "features").sort_values("sample_id").reset_index(drop=True)
    want = pd.read_parquet(tiny_run / "features").sort_values("sample_id").reset_index(drop=True)
    assert list(got.columns) == list(want.columns)
    # Batch size 1 against 32: the float32 target rounds differently, so equal up to float32 noise.
    np.testing.assert_allclose(got.drop(columns=["member"]).to_numpy(float), want.drop(columns=["member"]).to_numpy(float), rtol=1e-4, atol=1e-5)


def test_sweep_resumes_after_driver_sigkill(tiny_run, tmp_path):
    out = tmp_path / "run"
    copy_run(tiny_run, out, ["config.yaml", "splits.parquet", "target", "features"])
    args = tiny_args(out, "sweep.chunk_size=1")  # one coalition per part: many parts, same results
    proc = popen("sweep", *args)
    parts = lambda: sorted((out / "sweep").glob("part-*.parquet")) if (out / "sweep").exists() else []
    _kill_when(proc, lambda: len(parts()) >= 3)
    time.sleep(2)
    before = {p.name: p.stat().st_mtime_ns for p in parts()}
    assert len(before) < 30, "the sweep finished before the kill: nothing to resume"
    rerun = run_cli("sweep", *args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    present, total, fitting = map(int, re.search(r"(\d+) of (\d+) \(coalition, repeat\) keys present, fitting (\d+)", rerun.stdout).groups())
    assert total == 30 and present >= len(before) and present + fitting == total  # only missing keys are fitted
    assert {p.name: p.stat().st_mtime_ns for p in parts() if p.name in before} == before
    sweep = pd.read_parquet(out / "sweep")
    assert len(sweep) == 30 and not sweep.duplicated(["coalition", "repeat"]).any()
    assert json.loads((out / "shapley.json").read_text()) == json.loads((tiny_run / "shapley.json").read_text())
