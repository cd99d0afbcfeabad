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


def _sweep_parts(run):
    """(table sorted by coalition, membership bool [n] in splits order, shapley.json)."""
    sweep = pd.read_parquet(run / "sweep").sort_values("coalition").reset_index(drop=True)
    y = pq.read_table(run / "splits.parquet").column("member").to_numpy(zero_copy_only=False).astype(bool)
    return sweep, y, json.loads((run / "shapley.json").read_text())


def test_sweep_table_complete_and_shapley_efficient(tiny_run):
    sweep, y, report = _sweep_parts(tiny_run)
    assert len(sweep) == 2 ** 4 - 1 and set(sweep["target"]) == {0}
    assert not sweep.duplicated(["target", "coalition"]).any() and set(sweep["coalition"]) == set(range(1, 16))
    assert report["method"] == "exact" and report["folds"] == 5 and len(report["targets"]) == 1
    block = report["targets"][0]
    phi = np.array([p["shapley"]["value"] for p in block["players"]])
    full = sweep.loc[sweep["coalition"] == 15, "accuracy"].item()
    np.testing.assert_allclose(phi.sum(), full - 0.5, atol=1e-12)  # efficiency
    assert block["v_all"]["value"] == pytest.approx(full, abs=1e-12) and block["v_all"]["n"] == y.size == 120
    assert all(p["shapley"]["ci95"][0] <= p["shapley"]["value"] <= p["shapley"]["ci95"][1] for p in block["players"])


def test_stored_correctness_reproduces_every_value(tiny_run):
    """Each row's bit-packed out-of-fold correctness gives its v(S) (point estimate) as shapley.json has it; stored
    scores (full coalition, single players) give the same bits; and the full coalition refitted directly from the
    features with the same folds gives the same bits again."""
    from mia_tasks.attack_data import attack_data
    from mia_tasks.featurestore import Features
    from mia_tasks.players import make_players, player_columns
    from mia_tasks.splits import Splits
    from mia_tasks.uncertainty import crossfit_coalitions

    sweep, y, report = _sweep_parts(tiny_run)
    values = {v["coalition"]: v["accuracy"]["value"] for v in report["targets"][0]["values"]}
    for row in sweep.itertuples():
        correct = np.unpackbits(np.frombuffer(row.correct, np.uint8), count=y.size).astype(bool)
        assert correct.mean() == pytest.approx(row.accuracy, abs=1e-12) == pytest.approx(values[row.coalition], abs=1e-12)
        single_or_full = row.coalition == 15 or (row.coalition & (row.coalition - 1)) == 0
        assert (row.scores is not None) == single_or_full
        if single_or_full:
            np.testing.assert_array_equal((np.frombuffer(row.scores, np.float32) >= 0) == y, correct)
    table = pq.read_table(tiny_run / "features")
    meta = json.loads(pq.read_schema(next((tiny_run / "features").glob("part-*.parquet"))).metadata[b"layers"])
    features = Features(table.sort_by("sample_id"), meta, {l: 1 for l in meta}, {l: 1 for l in meta}, ["grad.fc2.mean"])
    splits = Splits(np.array([]), pq.read_table(tiny_run / "splits.parquet"))
    cols = [c for pc in player_columns(make_players("layers", meta), ["grad"], features.constant) for c in pc]
    d = attack_data(features, splits, cols)
    cf = crossfit_coalitions(d["X"], d["y"], [np.arange(len(cols))], k=5, seed=0, C=1.0, transform="signed-log")
    full = sweep.loc[sweep["coalition"] == 15, "correct"].item()
    np.testing.assert_array_equal(cf.packed[0], np.frombuffer(full, np.uint8))


def test_bootstrap_intervals_match_a_direct_recomputation(tiny_run):
    """shapley.json's intervals recomputed from the stored parts alone: the same stratified replicates, each
    replicate's v(S) from the bits and its Shapley values by the O(L·2^L) formula (not the weight matrix)."""
    from mia_tasks.shapley import exact_shapley
    from mia_tasks.uncertainty import holm, stratified_weights

    sweep, y, report = _sweep_parts(tiny_run)
    block = report["targets"][0]
    how = block["v_all"]["resampling"]
    assert how["replicates"] == report["bootstrap"] == 1000 and how["unit"] == "audited sample" and how["seed"] == 0
    C = np.stack([np.unpackbits(np.frombuffer(c, np.uint8), count=y.size) for c in sweep["correct"]]).astype(float)
    W = stratified_weights(y, how["replicates"], how["seed"]).astype(float)
    V = np.hstack([np.full((W.shape[0], 1), 0.5), (W @ C.T) / W.sum(axis=1, keepdims=True)])  # [B, 16], v(∅) = 0.5
    phi = np.stack([exact_shapley(v) for v in V])
    lo, hi = np.quantile(phi, [0.025, 0.975], axis=0)
    for i, p in enumerate(block["players"]):
        assert p["shapley"]["ci95"] == pytest.approx([lo[i], hi[i]], abs=1e-12)
        assert p["excludes_zero"] == bool(lo[i] > 0 or hi[i] < 0)
    v_lo, v_hi = np.quantile(V[:, 1:], [0.025, 0.975], axis=0)
    for j, v in enumerate(block["values"]):
        assert v["accuracy"]["ci95"] == pytest.approx([v_lo[j], v_hi[j]], abs=1e-12)
    names = [p["player"] for p in block["players"]]
    d = {(x["a"], x["b"]): x for x in block["differences"]}
    assert len(d) == 6
    pvals = []
    for (a, b), x in d.items():
        diff = phi[:, names.index(a)] - phi[:, names.index(b)]
        assert x["difference"]["ci95"] == pytest.approx(np.quantile(diff, [0.025, 0.975]).tolist(), abs=1e-12)
        tail = min((1 + (diff <= 0).sum()), (1 + (diff >= 0).sum())) / (len(diff) + 1)
        tied = (np.abs(diff) < 1e-12).sum()  # replicates with no difference: either side of 0 by rounding
        assert abs(x["p_value"] - min(1.0, 2 * tail)) <= 2 * tied / (len(diff) + 1) + 1e-12
        pvals.append(x["p_value"])
    np.testing.assert_allclose([x["p_holm"] for x in d.values()], holm(pvals))


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
    assert len(before) < 15, "the sweep finished before the kill: nothing to resume"
    rerun = run_cli("sweep", *args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    present, total, fitting = map(int, re.search(r"(\d+) of (\d+) \(target, coalition\)s present, fitting (\d+)", rerun.stdout).groups())
    assert total == 15 and present >= len(before) and present + fitting == total  # only missing keys are fitted
    assert {p.name: p.stat().st_mtime_ns for p in parts() if p.name in before} == before
    sweep = pd.read_parquet(out / "sweep")
    assert len(sweep) == 15 and not sweep.duplicated(["target", "coalition"]).any()
    assert json.loads((out / "shapley.json").read_text()) == json.loads((tiny_run / "shapley.json").read_text())
