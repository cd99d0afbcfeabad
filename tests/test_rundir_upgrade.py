"""OUT across layerleak versions and attack variants: a folder whose results an older code version made (another
CODE_VERSIONS entry, e.g. the feature schema) is upgraded, not refused as another config, while another config is
still refused; calibrated and uncalibrated logistic results live side by side and the report reads both."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from flows.presets import load
from helpers import TINY, run_cli, tiny_args
from mia_tasks import config as config_module
from mia_tasks.config import Config, OutputConfig, stage_hashes
from mia_tasks.errors import LayerleakError
from mia_tasks.rundir import (LOCK, RunDir, attack_calibration, attack_result, default_attack_stem, feature_part,
                              sweep_part)
from mia_tasks.schema import SCHEMA_VERSION

OLD_SCHEMA = SCHEMA_VERSION - 1
KEPT = ("splits.parquet", "target/members.parquet", "target/model.pt", "target/metrics.json")


def _snapshot(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and str(p.relative_to(folder)) not in skip}


def _old_hashes(cfg: Config, monkeypatch) -> dict[str, str]:
    """The stage hashes an older release (feature schema OLD_SCHEMA) computed for ``cfg``."""
    with monkeypatch.context() as m:
        m.setitem(config_module.CODE_VERSIONS, "feature_schema", OLD_SCHEMA)
        return stage_hashes(cfg)


def _as_older_release(out: Path, monkeypatch) -> str:
    """Rewrite OUT as the previous release wrote it: config.yaml with the hashes of feature schema OLD_SCHEMA and no
    code versions, and every features and sweep part and shapley.json stamped with those hashes. Returns the old
    features hash."""
    tree = yaml.safe_load((out / "config.yaml").read_text())
    cfg = RunDir(str(out)).saved_config()
    old = _old_hashes(cfg, monkeypatch)
    assert old["features"] != stage_hashes(cfg)["features"] and old["splits"] == stage_hashes(cfg)["splits"]
    tree.pop("code_versions", None)
    tree["hashes"] = old
    (out / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    for folder, stage in (("features", "features"), ("sweep", "sweep")):
        for path in (out / folder).glob("*.parquet"):
            table = pq.read_table(path)
            meta = {**table.schema.metadata, b"config_hash": json.dumps(old[stage]).encode()}
            pq.write_table(table.replace_schema_metadata(meta), path)
    if (out / "shapley.json").exists():
        rec = json.loads((out / "shapley.json").read_text())
        (out / "shapley.json").write_text(json.dumps({**rec, "config_hash": old["sweep"]}))
    return old["features"]


# --- prepare: another code version is no other config ------------------------------------------------------

def _fake_outputs(rd: RunDir) -> None:
    for rel in KEPT:
        rd.write_bytes(rel, b"made before")
    rd.write_bytes(feature_part(0), b"old schema")
    rd.write_bytes(sweep_part(0, 0, 3), b"old schema")


def test_prepare_accepts_outputs_of_an_older_code_version_and_refuses_another_config(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    rd = RunDir(str(out))
    cfg = Config()
    with monkeypatch.context() as m:  # an older release: its config.yaml carries its hashes, no code versions
        m.setitem(config_module.CODE_VERSIONS, "feature_schema", OLD_SCHEMA)
        rd.write_text("config.yaml", yaml.safe_dump({"hashes": stage_hashes(cfg), **cfg.to_dict()}, sort_keys=False))
    _fake_outputs(rd)
    outputs = _snapshot(out, ("config.yaml",))

    other = tmp_path / "other"  # another config on the old folder: refused, nothing written
    shutil.copytree(out, other)
    before = _snapshot(other)
    with pytest.raises(LayerleakError, match=r"holds splits outputs made with another config \(changed: seed\); "
                                             r"use a new --out, or delete OUT/splits\.parquet"):
        RunDir(str(other)).prepare(Config(seed=7))
    assert _snapshot(other) == before

    hashes = rd.prepare(cfg)
    said = capsys.readouterr().out
    now = ", ".join(f"{k} now {v}" for k, v in config_module.CODE_VERSIONS.items())  # no versions recorded: all named
    assert (f"OUT {out}: its features, sweep outputs were made by another layerleak version ({now}), not another "
            f"config; they are made again, the rest is kept") in said
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["hashes"] == hashes == stage_hashes(cfg) and saved["code_versions"] == dict(config_module.CODE_VERSIONS)
    assert _snapshot(out, ("config.yaml",)) == outputs  # prepare removes nothing; the stages replace what is outdated
    assert rd.saved_config() == dataclasses.replace(cfg, output=OutputConfig(dir=str(out)))

    # a folder of this version upgraded later names both versions; another config is refused as before
    with monkeypatch.context() as m:
        m.setitem(config_module.CODE_VERSIONS, "feature_schema", SCHEMA_VERSION + 1)
        rd.prepare(cfg)
        assert f"(feature_schema {SCHEMA_VERSION}, now {SCHEMA_VERSION + 1})" in capsys.readouterr().out
        with pytest.raises(LayerleakError, match=r"holds splits outputs made with another config \(changed: seed"):
            rd.prepare(Config(seed=7))


def test_prepare_refuses_when_this_code_cannot_read_the_recorded_config(tmp_path, monkeypatch):
    """No proof that only the code changed (config.yaml names a key this code does not know): refused as before."""
    rd = RunDir(str(tmp_path / "run"))
    cfg = Config()
    with monkeypatch.context() as m:
        m.setitem(config_module.CODE_VERSIONS, "feature_schema", OLD_SCHEMA)
        tree = {"hashes": stage_hashes(cfg), **cfg.to_dict()}
    tree["features"]["gone_setting"] = 3
    rd.write_text("config.yaml", yaml.safe_dump(tree, sort_keys=False))
    _fake_outputs(rd)
    with pytest.raises(LayerleakError, match="holds features outputs made with another config"):
        rd.prepare(cfg)


# --- end to end: the features of an older schema are made again, the splits and target kept -----------------

def test_an_older_feature_schema_is_recomputed_and_another_seed_still_refused(tiny_run, ray_head, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    old_features = _as_older_release(out, monkeypatch)
    kept = {rel: ((out / rel).read_bytes(), (out / rel).stat().st_mtime_ns) for rel in KEPT}

    proc = run_cli("extract", *tiny_args(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "features, sweep outputs were made by another layerleak version (feature_schema now" in proc.stdout, proc.stdout
    assert "reusing" in proc.stdout  # the target
    assert {rel: ((out / rel).read_bytes(), (out / rel).stat().st_mtime_ns) for rel in KEPT} == kept  # byte-identical, not rewritten
    cfg = RunDir(str(out)).saved_config()
    new = stage_hashes(cfg)
    parts = sorted((out / "features").glob("*.parquet"))
    assert len(parts) == 5
    for path in parts:  # every part made again by this schema, with the same values
        meta = json.loads(pq.read_schema(path).metadata[b"config_hash"])
        assert meta == new["features"] != old_features
        again, first = pq.read_table(path), pq.read_table(tiny_run / "features" / path.name)
        assert again.column_names == first.column_names
        for c in first.column_names:
            np.testing.assert_allclose(again.column(c).to_numpy(), first.column(c).to_numpy(), rtol=1e-5, atol=1e-6)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["hashes"]["features"] == new["features"] and saved["code_versions"] == dict(config_module.CODE_VERSIONS)

    before = _snapshot(out, (LOCK,))  # another seed on the upgraded OUT: one line, nothing changed
    proc = run_cli("extract", *tiny_args(out, "seed=7"))
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        f"layerleak: error: OUT {out} holds splits outputs made with another config (changed: seed); use a new --out, "
        f"or delete OUT/splits.parquet"]
    assert _snapshot(out, (LOCK,)) == before


# --- calibrated and uncalibrated logistic results side by side -------------------------------------------------

def test_calibrated_logistic_results_have_their_own_names():
    kinds = ["grad"]
    plain = attack_result("logistic", None, kinds, kinds)
    assert plain == attack_result("logistic", None, kinds, kinds, "none") == "attacks/logistic.json"
    names = {plain}
    for cal in ("offline", "online"):
        for layers, picked in ((None, kinds), (["fc1", "fc2"], ["grad", "loss"])):
            rel = attack_result("logistic", layers, picked, kinds, cal)
            assert rel.startswith(f"attacks/logistic-calibrated-{cal}") and attack_calibration(rel) == cal
            assert rel != attack_result("logistic", layers, picked, kinds)
            names.add(rel)
    assert len(names) == 5
    assert attack_calibration(attack_result("logistic", ["fc1"], ["grad", "loss"], kinds)) == "none"
    assert attack_result("loss-threshold", None, kinds, kinds, "offline") == "attacks/loss-threshold.json"  # logistic only
    assert default_attack_stem("logistic", "online") == "logistic-calibrated-online" and default_attack_stem("lira") == "lira"


def test_report_reads_calibrated_and_uncalibrated_logistic_results(tiny_run, tmp_path):
    """Both files in OUT: the report (a pure reader, no Ray) shows each under its own name; a file whose name and
    recorded calibration disagree, or made with other settings, is left out; the defence comparison counts the
    calibrated one."""
    from flows.report import gather
    from mia_tasks.report.defences import _strongest

    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    plain = json.loads((out / "attacks/logistic.json").read_text())
    calibrated = {**plain, "settings": {**plain["settings"], "calibration": "offline"},
                  "metrics": {**plain["metrics"], "auc": {**plain["metrics"]["auc"], "value": 0.99}}}
    (out / "attacks/logistic-calibrated-offline.json").write_text(json.dumps(calibrated))
    (out / "attacks/logistic-calibrated-online.json").write_text(json.dumps(calibrated))  # says offline inside
    rd = RunDir(str(out))
    cfg = load(None, [*TINY, f"output.dir={out}"])  # OUT's config (its sweep is uncalibrated)
    found = gather(cfg, rd, stage_hashes(cfg))
    assert found["attacks"]["logistic"] == plain and found["attacks"]["logistic-calibrated-offline"] == calibrated
    assert found["ignored"] == ["attacks/logistic-calibrated-online.json"]
    assert _strongest(found["attacks"]) == "logistic-calibrated-offline"
    # a config with references (as calibration needs): the uncalibrated file records none, the calibrated one 4
    cfg4 = load(None, [*TINY, "references.count=4", f"output.dir={out}"])
    with4 = {**calibrated, "settings": {**calibrated["settings"], "references": 4}}
    (out / "attacks/logistic-calibrated-offline.json").write_text(json.dumps(with4))
    found = gather(cfg4, rd, stage_hashes(cfg4))
    assert found["attacks"]["logistic"] == plain and found["attacks"]["logistic-calibrated-offline"] == with4
    other_c = {**calibrated, "settings": {**calibrated["settings"], "C": 0.5}}  # calibrated, with another C
    (out / "attacks/logistic-calibrated-offline.json").write_text(json.dumps(other_c))
    found = gather(cfg, rd, stage_hashes(cfg))
    assert "logistic-calibrated-offline" not in found["attacks"] and found["attacks"]["logistic"] == plain
    assert "attacks/logistic-calibrated-offline.json" in found["ignored"]

