"""Analysis-only settings (config.ANALYSIS_KEYS: attack.bootstrap, attack.folds) change on an existing OUT without the
user deleting anything: OUT is accepted and exactly the outputs they affect are made again."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from helpers import copy_run, run_cli, tiny_args


def _sweep_parts(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "sweep").glob("*.parquet"))}


def test_bootstrap_and_folds_redo_what_they_affect_and_keep_the_rest(ray_head, tiny_run, tmp_path):
    out = tmp_path / "run"
    copy_run(tiny_run, out, [".layerleak", "config.yaml", "splits.parquet", "target", "features", "sweep", "attacks",
                             "shapley.json"])
    features = {p.name: p.stat().st_mtime_ns for p in (out / "features").glob("*.parquet")}
    parts = _sweep_parts(out)
    shapley = json.loads((out / "shapley.json").read_text())

    proc = run_cli("run", *tiny_args(out, "attack.bootstrap=200"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _sweep_parts(out) == parts  # the coalitions' fits do not read the bootstrap: kept as they are
    redone = json.loads((out / "shapley.json").read_text())
    assert redone["bootstrap"] == 200 and shapley["bootstrap"] == 1000
    t0, r0 = shapley["targets"][0], redone["targets"][0]
    assert [p["shapley"]["value"] for p in t0["players"]] == [p["shapley"]["value"] for p in r0["players"]]
    assert [p["shapley"]["ci95"] for p in t0["players"]] != [p["shapley"]["ci95"] for p in r0["players"]]
    report = json.loads((out / "report.json").read_text())
    assert report["attacks"]["logistic"]["metrics"]["auc"]["resampling"]["replicates"] == 200

    proc = run_cli("run", *tiny_args(out, "attack.bootstrap=200", "attack.folds=3"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "attack.folds changed" in proc.stdout and "made again" in proc.stdout
    assert json.loads((out / "shapley.json").read_text())["folds"] == 3
    assert all(pq.read_metadata(out / "sweep" / n).metadata[b"config_hash"] != pq.read_metadata(tiny_run / "sweep" / n).metadata[b"config_hash"]
               for n in parts)  # refitted with three folds
    assert {p.name: p.stat().st_mtime_ns for p in (out / "features").glob("*.parquet")} == features  # features kept

    proc = run_cli("run", *tiny_args(out, "attack.bootstrap=200", "attack.folds=3", "attack.C=0.5"))
    assert proc.returncode == 2 and "another config" in proc.stderr  # a fitted setting still needs a new OUT
