"""The seed study's experiments: numbers in report.json equal direct ``run_attack`` calls and the sweep's v(S); results are reused."""

from __future__ import annotations

import json
import shutil

import pyarrow.compute as pc
import pytest
import yaml

from helpers import TINY, run_cli, tiny_args
from mia_tasks.attack_runs import run_attack
from mia_tasks.experiments import NASR_MAX_GRAD_PARAMS, Selection, nasr_options, nasr_too_big, selections
from mia_tasks.featurestore import Features, load_features
from mia_tasks.rundir import RunDir
from mia_tasks.splits import Splits

LAYERS = ["conv1", "conv2", "fc1", "fc2"]


def _load(out) -> tuple[Features, Splits]:
    rd = RunDir(str(out))
    hashes = yaml.safe_load((out / "config.yaml").read_text())["hashes"]
    members = rd.read_parquet("target/members.parquet").column("sample_id").to_numpy()
    return load_features(rd, hashes["features"]), Splits(members, rd.read_parquet("splits.parquet"))


def _same(saved: dict, direct: dict) -> None:
    """Every metric with its interval, and the ROC points, exactly equal (JSON floats round-trip exactly)."""
    direct = json.loads(json.dumps(direct))
    assert saved["metrics"] == direct["metrics"]
    assert saved["roc"] == direct["roc"]
    assert saved["n"] == 120 and saved["folds"] == 5 and saved["metrics"]["accuracy"]["resampling"]["replicates"] == 1000


@pytest.fixture(scope="module")
def paper_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run without experiments or report; then ``paper --experiment all`` and ``report``."""
    out = tmp_path_factory.mktemp("paper") / "run"
    shutil.copytree(tiny_run, out)
    for name in ("experiments", "plots"):  # the ROC plot's attacks stay: the report only reads them
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("report.json", "report.md", "report.html"):
        (out / name).unlink(missing_ok=True)
    paper = run_cli("paper", "--experiment", "all", *tiny_args(out))
    assert paper.returncode == 0, paper.stdout[-3000:] + paper.stderr[-3000:]
    report = run_cli("report", *tiny_args(out))
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    return out, paper.stdout, report.stdout


def test_paper_all_numbers_equal_direct_run_attack(paper_run):
    out, paper_stdout, report_stdout = paper_run
    assert "shapley: reusing" in paper_stdout
    assert "report.md" in report_stdout and "| conv1 | 1 |" in report_stdout  # path and headline table printed
    report = json.loads((out / "report.json").read_text())
    features, splits = _load(out)
    assert features.layers == LAYERS
    exps = report["experiments"]
    assert set(exps) == {"groups-grad-logistic", "groups-out-logistic", "single-layer-logistic"}
    for key, rec in exps.items():
        assert rec == json.loads((out / "experiments" / f"{key}.json").read_text())

    rows = exps["groups-grad-logistic"]["rows"]
    assert [r["grad"] for r in rows] == [LAYERS[-k:] for k in range(1, 5)]  # every suffix, last layer first
    for k, row in enumerate(rows, 1):
        _same(row["result"], run_attack("logistic", features, splits, LAYERS[-k:], ["grad"], C=1.0, seed=0, transform="signed-log"))

    rows = {r["label"]: r["result"] for r in exps["groups-out-logistic"]["rows"]}
    assert list(rows) == ["last-layer gradient", "+ last-layer output", "+ all outputs", "all gradients + all outputs"]
    _same(rows["last-layer gradient"], run_attack("logistic", features, splits, ["fc2"], ["grad"], transform="signed-log"))
    _same(rows["+ last-layer output"], run_attack("logistic", features, splits, ["fc2"], ["grad", "out"], transform="signed-log"))
    _same(rows["all gradients + all outputs"], run_attack("logistic", features, splits, LAYERS, ["grad", "out"], transform="signed-log"))
    # last-layer gradient + every layer's output is no layers x kinds product: drop the other gradients first
    names = features.table.column_names
    keep = [c for c in names if not (c.startswith("grad.") and not c.startswith("grad.fc2."))]
    view = Features(features.table.select(keep), features.layers, features.params, features.depths)
    _same(rows["+ all outputs"], run_attack("logistic", view, splits, LAYERS, ["grad", "out"], transform="signed-log"))

    for row, layer in zip(exps["single-layer-logistic"]["rows"], LAYERS):
        assert row["layers"] == [layer]
        _same(row["result"], run_attack("logistic", features, splits, [layer], ["grad"], transform="signed-log"))

    assert report["shapley"] == json.loads((out / "shapley.json").read_text())
    _same(report["attacks"]["logistic"], run_attack("logistic", features, splits, None, ["grad"], transform="signed-log"))
    _same(report["attacks"]["loss-threshold"], run_attack("loss-threshold", features, splits))
    single = {r["player"]: r["single"] for r in report["headline"]}
    assert single["conv2"] == exps["single-layer-logistic"]["rows"][1]["result"]["metrics"]["accuracy"]
    # a logistic row's accuracy is the sweep's v(S) of its feature set, interval included (same folds, same replicates)
    values = {v["coalition"]: v["accuracy"] for v in report["shapley"]["targets"][0]["values"]}
    for i, row in enumerate(exps["single-layer-logistic"]["rows"]):
        got = row["result"]["metrics"]["accuracy"]
        assert got["value"] == pytest.approx(values[1 << i]["value"], abs=1e-12)
        assert got["ci95"] == pytest.approx(values[1 << i]["ci95"], abs=1e-12)
    assert report["attacks"]["logistic"]["metrics"]["accuracy"]["value"] == pytest.approx(values[15]["value"], abs=1e-12)
    # the features table is untouched by the experiments
    assert pc.sum(features.table.column("member")).as_py() == 60


def test_paper_reuses_results_and_refits_on_new_settings(paper_run, capsys):
    """In-process (logistic needs no Ray): a rerun reuses every file; another attack.C refits and rewrites."""
    from flows.paper import paper_flow
    from flows import presets
    from mia_tasks.config import stage_hashes

    out = paper_run[0]
    features, splits = _load(out)
    rd = RunDir(str(out))
    cfg = presets.load(None, TINY + [f"output.dir={out}"])
    hashes = stage_hashes(cfg)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "experiments").iterdir()}
    records = paper_flow(cfg, rd, hashes, splits, features, "all", "logistic")
    assert capsys.readouterr().out.count("reusing") == 4
    assert {p.name: p.stat().st_mtime_ns for p in (out / "experiments").iterdir()} == before
    assert set(records) == {"groups-grad", "groups-out", "single-layer", "shapley"}

    cfg = presets.load(None, TINY + [f"output.dir={out}", "attack.C=0.05"])
    rec = paper_flow(cfg, rd, stage_hashes(cfg), splits, features, "single-layer", "logistic")["single-layer"]
    assert "reusing" not in capsys.readouterr().out
    _same(rec["rows"][0]["result"], run_attack("logistic", features, splits, ["conv1"], ["grad"], C=0.05, transform="signed-log"))
    assert json.loads((out / "experiments/single-layer-logistic.json").read_text())["key"] == rec["key"]


def test_selections_and_nasr_options():
    grad = selections("groups-grad", LAYERS)
    assert [s.grad for s in grad] == [["fc2"], ["fc1", "fc2"], ["conv2", "fc1", "fc2"], LAYERS] and not any(s.out for s in grad)
    single = selections("single-layer", LAYERS, ["grad", "out"])
    assert [(s.grad, s.out) for s in single] == [([l], [l]) for l in LAYERS]
    sel = selections("groups-out", LAYERS)[2]
    assert sel.layers(LAYERS) == LAYERS and sel.kinds() == ["grad", "out"]

    class A:
        nasr_epochs, nasr_lr, nasr_batch_size = 3, 0.01, 8

    opts = nasr_options(sel, A)
    assert opts["layers"] == ["fc2"] and opts["outputs"] == LAYERS and opts["use_loss"] is False and opts["epochs"] == 3
    assert nasr_too_big(Selection("big", grad=["a", "b"]), {"a": NASR_MAX_GRAD_PARAMS, "b": 1}).startswith("skipped")
    assert nasr_too_big(Selection("ok", grad=["a"]), {"a": NASR_MAX_GRAD_PARAMS}) is None


@pytest.mark.slow
def test_paper_nasr_groups_out(tiny_run, tmp_path):
    """The Nasr attack on the groups-out selections (Ray actors), 2 epochs: every row scored, saved and reported."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    args = tiny_args(out, "attack.nasr_epochs=2")
    proc = run_cli("paper", "--experiment", "groups-out", "--attack", "nasr", *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = json.loads((out / "experiments/groups-out-nasr.json").read_text())
    assert [r["grad"] for r in rec["rows"]] == [["fc2"], ["fc2"], ["fc2"], LAYERS]
    for row in rec["rows"]:
        m = row["result"]["metrics"]["accuracy"]
        assert m["n"] == 120 and 0 <= m["ci95"][0] <= m["value"] <= m["ci95"][1] <= 1 and row["result"]["layers"] == row["layers"]
    proc = run_cli("report", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "report.json").read_text())["experiments"]["groups-out-nasr"] == rec


def test_seed_shapley_is_the_seed_protocol_on_the_sweeps_players_and_the_report_shows_it(paper_run, capsys):
    """``paper --experiment seed-shapley``: the seed's protocol (mia_tasks.seed_protocol) on OUT's features, equal to a
    direct seed_sweep; reused on a rerun; the report shows it beside layerleak's own Shapley values."""
    import numpy as np

    from flows import presets
    from flows.paper import paper_flow
    from mia_tasks.config import stage_hashes
    from mia_tasks.seed_protocol import SeedProtocol, pool_scale, seed_sweep

    out = paper_run[0]
    features, splits = _load(out)
    rd = RunDir(str(out))
    cfg = presets.load(None, TINY + [f"output.dir={out}"])
    rec = paper_flow(cfg, rd, stage_hashes(cfg), splits, features, "seed-shapley")["seed-shapley"]
    assert "seed-shapley (the seed's protocol: 20 seeds" in capsys.readouterr().out
    cols = [[c for c in features.table.column_names if c.startswith(f"grad.{layer}.") and c not in features.constant]
            for layer in LAYERS]
    X = np.column_stack([features.matrix(group, splits.sample_ids) for group in cols])
    y = splits.member
    starts = np.cumsum([0, *map(len, cols)])
    direct = seed_sweep(X, y, [list(range(a, b)) for a, b in zip(starts[:-1], starts[1:])], SeedProtocol(), pool_scale(y, SeedProtocol()))
    assert rec["sizes"] == dict(zip(("train_members", "train_nonmembers", "eval_members", "eval_nonmembers"), direct["sizes"]))
    for metric in ("auc", "accuracy"):
        assert [rec[metric]["shapley"][p]["value"] for p in LAYERS] == pytest.approx(direct[metric]["shapley"].tolist(), abs=1e-12)
        assert sum(e["value"] for e in rec[metric]["shapley"].values()) == pytest.approx(rec[metric]["v_all"], abs=1e-9)  # v(∅) = 0
    paper_flow(cfg, rd, stage_hashes(cfg), splits, features, "seed-shapley")
    assert "seed-shapley: reusing" in capsys.readouterr().out
    report = run_cli("report", *tiny_args(out))
    assert report.returncode == 0, report.stderr[-2000:]
    md = (out / "report.md").read_text()
    assert "Shapley values under the seed's protocol" in md and "20 seeds, v(∅) = 0" in md
    assert "seed-shapley-logistic" in json.loads((out / "report.json").read_text())["experiments"]
