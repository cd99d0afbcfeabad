"""OUT/scores.parquet (per-sample out-of-fold scores) and ``layerleak compare`` on real tiny runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from helpers import copy_run, run_cli, tiny_args


def test_scores_parquet_matches_attack_scores(tiny_run):
    df = pd.read_parquet(tiny_run / "scores.parquet")
    splits = pq.read_table(tiny_run / "splits.parquet")
    assert len(df) == splits.num_rows and df["sample_id"].is_unique
    assert {"split", "index", "label", "member", "loss", "score.logistic", "score.loss-threshold"} <= set(df.columns)
    n_train = int(json.loads(splits.schema.metadata[b"n_train"]))
    assert ((df["split"] == "train") == (df["sample_id"] < n_train)).all()
    assert (df["index"] == np.where(df["sample_id"] < n_train, df["sample_id"], df["sample_id"] - n_train)).all()
    for stem in ("logistic", "loss-threshold"):
        rec = json.loads((tiny_run / "attacks" / f"{stem}.json").read_text())
        assert rec["sample_ids"] == df["sample_id"].tolist()
        assert np.allclose(df[f"score.{stem}"], rec["scores"])
    report = json.loads((tiny_run / "report.json").read_text())
    top = report["most_exposed"]
    assert len(top) == 10 and top[0]["score"] == df["score.logistic"].max()


def test_compare_refuses_different_samples(tiny_run, tmp_path):
    other = tmp_path / "other"
    copy_run(tiny_run, other, [p.name for p in tiny_run.iterdir()])
    t = pq.read_table(other / "splits.parquet")
    pq.write_table(t.slice(1), other / "splits.parquet")
    proc = run_cli("compare", str(tiny_run), str(other))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "audited different samples" in lines[0], proc.stderr
    proc = run_cli("compare", str(tiny_run), str(tmp_path))
    assert proc.returncode == 2 and "not a layerleak run folder" in proc.stderr


def test_compare_run_with_itself_is_zero(tiny_run, tmp_path):
    proc = run_cli("compare", str(tiny_run), str(tiny_run), "--json", str(tmp_path / "c.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "c.json").read_text())
    e = res["attacks"]["logistic"]["auc"]
    assert e["diff"] == 0 and e["ci"] == [0.0, 0.0] and "shapley" in res
    assert "B-A" in proc.stdout


@pytest.mark.slow
def test_compare_run_with_its_defence(tiny_run, tmp_path):
    out = tmp_path / "run"
    copy_run(tiny_run, out, [p.name for p in tiny_run.iterdir()])
    proc = run_cli("defend", "--defence", "regularise", *tiny_args(out, "defence.weight_decay=0.05"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sub = next((out / "defences").iterdir())
    proc = run_cli("compare", str(out), str(sub))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "logistic" in proc.stdout and "auc" in proc.stdout and "[" in proc.stdout
