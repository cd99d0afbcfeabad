"""The report: files after ``layerleak run``, valid images in report.html, intervals and verdicts in order."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pytest

from helpers import run_cli, tiny_args
from mia_tasks.featurestore import Features
from mia_tasks.report import build_report, headline_text, make_plots, render_html, render_markdown
from mia_tasks.sweeptable import shapley_report, sweep_rows, target_block
from mia_tasks.uncertainty import pack_correct

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _strict_json(text: str):
    def bad(name):
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=bad)


def _assert_png(data: bytes) -> None:
    import matplotlib.image

    assert data[:8] == PNG_MAGIC
    img = matplotlib.image.imread(io.BytesIO(data), format="png")  # decodes the whole image
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def test_run_writes_report_with_valid_images(tiny_run):
    for name in ("report.json", "report.md", "report.html"):
        assert (tiny_run / name).is_file(), name
    report = _strict_json((tiny_run / "report.json").read_text())
    assert report["shapley"] == json.loads((tiny_run / "shapley.json").read_text())
    target = json.loads((tiny_run / "target/metrics.json").read_text())
    assert report["target"]["test_accuracy"] == target["test_accuracy"]
    assert set(report["versions"]) >= {"python", "torch", "numpy", "sklearn", "ray", "layerleak"}
    assert all(report["versions"][k] for k in ("python", "torch", "numpy", "sklearn", "ray"))
    assert {"logistic", "loss-threshold"} <= set(report["attacks"])
    assert {"groups-grad-logistic", "groups-out-logistic", "single-layer-logistic"} <= set(report["experiments"])
    # verdicts first, in order; one target; every player says whether its interval excludes zero
    assert isinstance(report["leakage_detected"], bool) and len(report["targets"]) == 1
    assert [v["step"] for v in report["verdicts"]][0] == "leakage"
    assert all(isinstance(p["excludes_zero"], bool) and len(p["shapley"]["ci95"]) == 2 for p in report["targets"][0]["players"])
    for m in report["attacks"]["logistic"]["metrics"].values():
        assert set(m) >= {"value", "ci95", "n"}
    # 60 non-members: TPR at 1% FPR needs 1,000, so it is not measured, and says so
    assert report["attacks"]["logistic"]["metrics"]["tpr@1%"]["reason"] == "not measurable (needs >= 1000 non-members, has 60)"

    md = (tiny_run / "report.md").read_text()
    md_images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"plots/shapley.png", "plots/single_layer.png", "plots/groups.png", "plots/roc.png"} <= set(md_images)
    for rel in md_images:
        _assert_png((tiny_run / rel).read_bytes())
    assert "| conv1 | 1 |" in md and report["conclusion"]["verdict"].upper() in md
    for text in ("## Verdicts", "Pairwise differences of Shapley values", "p (Holm)", "not measurable (needs >= 1000 non-members",
                 "bootstrap stratified by membership"):
        assert text in md, text
    assert md.index("## Verdicts") < md.index("## Headline")
    assert re.search(r"\| conv1 \| 1 \| 320 \| -?\d\.\d{4} \[-?\d\.\d{4}, -?\d\.\d{4}\] \| (yes|no) \|", md)

    page = (tiny_run / "report.html").read_text()
    srcs = re.findall(r"<img[^>]*\ssrc=\"([^\"]+)\"", page)
    assert len(srcs) == len(md_images)
    for src in srcs:
        if src.startswith("data:"):
            assert src.startswith("data:image/png;base64,")
            _assert_png(base64.b64decode(src.split(",", 1)[1], validate=True))
        else:
            _assert_png((tiny_run / src).read_bytes())
    assert "<table>" in page and "http" not in page.replace("<!DOCTYPE html>", "")  # nothing fetched from elsewhere
    for text in ("<h2>Verdicts</h2>", "Pairwise differences of Shapley values", "not measurable (needs &gt;= 1000 non-members"):
        assert text in page, text


def _synthetic_shapley(signal: float, seed: int = 0, n: int = 400) -> dict:
    """shapley.json for three players from made-up out-of-fold scores: player 0 carries ``signal``, the others
    nothing and little weight; a coalition's score is the sum of its players' (so the full coalition leaks iff
    player 0 does)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2 == 0
    per_player = rng.normal(size=(3, n)) * np.array([1, 0.01, 0.01])[:, None] + signal * np.array([1, 0, 0])[:, None] * (2 * y - 1)
    masks = np.arange(1, 8)
    scores = np.stack([per_player[[i for i in range(3) if (m >> i) & 1]].sum(axis=0) for m in masks])
    table = sweep_rows(0, masks, scores, pack_correct(scores, y), y, 3)
    rows = {int(r["coalition"]): r for r in table.to_pylist()}
    names = ["l0", "l1", "l2"]
    features = Features(pa.table({"sample_id": np.arange(n)}), names, {"l0": 100, "l1": 1000, "l2": 10}, {"l0": 1, "l1": 2, "l2": 3})
    block = target_block(rows, y, {l: [l] for l in names}, features, per_player[0] - 0.1, bootstrap=300, seed=seed)

    class Cfg:
        class sweep:
            kinds, baseline = ["grad"], "none"

        class attack:
            folds, bootstrap = 5, 300

    return shapley_report([block], Cfg, "h")


def _report(shapley: dict) -> dict:
    layers = [{"name": f"l{i}", "depth": i + 1, "params": p} for i, p in enumerate((100, 1000, 10))]
    return build_report({"model": {"arch": "cnn"}, "dataset": {"name": "synthetic"}}, {"config": "c", "features": "f"}, None,
                        layers, shapley, {}, {})


def test_report_from_shapley_alone_renders_and_is_strict_json():
    """A leaking player: leakage detected, that player flagged, the verdicts in order; NaN never reaches report.json."""
    report = _report(_synthetic_shapley(signal=1.0))
    _strict_json(json.dumps(report))
    assert report["leakage_detected"] is True
    assert [v["step"] for v in report["verdicts"]] == ["leakage", "players", "differences", "params_depth"]
    assert "not testable" in report["verdicts"][3]["statement"]  # 3 players: too few for the joint test
    players = {p["player"]: p for p in report["targets"][0]["players"]}
    assert players["l0"]["flagged"] and players["l0"]["excludes_zero"] and players["l0"]["shapley"]["ci95"][0] > 0
    assert not players["l1"]["flagged"] and not players["l2"]["flagged"]
    diffs = {(d["a"], d["b"]): d for d in report["targets"][0]["differences"]}
    assert diffs[("l0", "l1")]["significant"] and not diffs[("l1", "l2")]["significant"]
    assert report["conclusion"]["verdict"] == "untested"  # 3 players: too few for the joint test
    plots = make_plots(report)
    assert set(plots) == {"plots/shapley.png"}
    for png in plots.values():
        _assert_png(png)
    md = render_markdown(report, list(plots))
    assert "LEAKAGE DETECTED" in md and "flagged after Holm's correction over 3 players (alpha 0.05): l0." in md
    assert render_html(report, plots).count("data:image/png;base64,") == 1
    assert "| l2 | 3 | 10 |" in headline_text(report)


def test_no_leakage_means_no_per_layer_claim():
    """No signal anywhere: the all-layer AUC interval holds 0.5, so the report says so and flags nothing, whatever
    a player's own interval shows; the Shapley chart says there is no per-layer claim."""
    report = _report(_synthetic_shapley(signal=0.0, seed=3))
    assert report["leakage_detected"] is False and report["targets"][0]["all_layers"]["auc"]["ci95"][0] <= 0.5
    assert [v["step"] for v in report["verdicts"]] == ["leakage", "players"]
    assert report["verdicts"][0]["statement"].startswith("no measurable leakage")
    assert not any(p["flagged"] for p in report["targets"][0]["players"])
    assert not any(d["significant"] for d in report["targets"][0]["differences"])
    assert report["conclusion"]["verdict"] == "untested"
    md = render_markdown(report, list(make_plots(report)))
    assert "NO MEASURABLE LEAKAGE" in md and "No player is flagged" in md


def test_report_shows_only_results_of_the_configs_settings(tiny_run, tmp_path):
    """A changed attack.C: the report, a pure reader, refuses without a sweep made with it (and names the command);
    'layerleak run' then refits what C changes (the sweep, the logistic attack) and reuses the loss baseline (no C).
    (The sweep made with the old C must go first: OUT refuses to mix sweeps of two configs.)"""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    shutil.rmtree(out / "sweep")
    (out / "shapley.json").unlink()
    before = {name: json.loads((out / f"attacks/{name}.json").read_text()) for name in ("logistic", "loss-threshold")}
    assert before["logistic"]["settings"]["C"] == 1.0
    proc = run_cli("report", *tiny_args(out, "attack.C=0.05"))
    assert proc.returncode == 2 and f"run 'layerleak sweep --out {out}'" in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads((out / "attacks/logistic.json").read_text()) == before["logistic"]  # nothing fitted
    proc = run_cli("run", *tiny_args(out, "attack.C=0.05"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    after = {name: json.loads((out / f"attacks/{name}.json").read_text()) for name in ("logistic", "loss-threshold")}
    assert after["logistic"]["settings"]["C"] == 0.05
    assert after["logistic"]["metrics"] != before["logistic"]["metrics"]
    assert after["loss-threshold"] == before["loss-threshold"]
    report = json.loads((out / "report.json").read_text())
    assert report["attacks"]["logistic"]["settings"]["C"] == 0.05
    assert report["shapley"] == json.loads((out / "shapley.json").read_text())


# A target that does not leak: 4,000 members seen once (one epoch), 2,000 test images to measure it on.
NO_LEAK = ["dataset.synthetic_train=4400", "dataset.synthetic_test=2000", "split.members=4000", "split.nonmembers=400",
           "split.audit=200", "train.epochs=1", "train.batch_size=64"]


@pytest.mark.slow
def test_a_target_that_does_not_leak_gets_no_per_layer_claim(ray_head, tmp_path):
    """Issue 13, must show 2: train - test accuracy below 0.02; the report says "no measurable leakage" and flags
    no player, in report.json, report.md and report.html."""
    out = tmp_path / "run"
    proc = run_cli("run", *tiny_args(out, *NO_LEAK), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    target = json.loads((out / "target/metrics.json").read_text())
    assert abs(target["train_accuracy"] - target["test_accuracy"]) < 0.02, target
    report = json.loads((out / "report.json").read_text())
    assert report["leakage_detected"] is False and report["targets"][0]["all_layers"]["auc"]["ci95"][0] <= 0.5
    assert not any(p["flagged"] for p in report["targets"][0]["players"])
    assert not any(d["significant"] for d in report["targets"][0]["differences"])
    assert report["conclusion"]["verdict"] == "untested"
    for name in ("report.md", "report.html"):
        text = (out / name).read_text()
        assert "NO MEASURABLE LEAKAGE" in text and "No player is flagged" in text, name


@pytest.mark.parametrize("checkpoint,refs,says", [("target.pt", 16, True), (None, 16, False), ("target.pt", 0, False)])
def test_report_says_calibration_assumes_a_similarly_trained_pretrained_target(checkpoint, refs, says):
    from helpers import ROOT
    from mia_tasks.config import load_config

    cfg = load_config(ROOT / "flows" / "configs" / "default.yaml", [f"references.count={refs}"]).to_dict()
    cfg["model"]["checkpoint"] = checkpoint
    report = build_report(cfg, {"config": "c", "features": "f"}, None, [], None, {}, {})
    md = render_markdown(report, [])
    assert ("Calibrated attacks (LiRA, RMIA, calibrated features) assume the target was trained similarly" in md) == says
    if says:
        assert "its 16 reference models were trained here with this config's recipe (40 epochs, batch 32, lr 0.05" in md


def test_paired_difference_is_a_plain_loop_over_the_same_replicates():
    """The report's 'beyond the baseline' figure: attack a minus attack b, per replicate, with sklearn's weighted AUC."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from mia_tasks.uncertainty.bootstrap import paired_difference, percentile_interval, resampling, stratified_weights

    rng = np.random.default_rng(4)
    y = np.r_[np.ones(40, bool), np.zeros(40, bool)]
    a, b = rng.normal(size=80) + 0.8 * y, rng.normal(size=80) + 0.3 * y
    W = stratified_weights(y, 60, seed=2)
    got = paired_difference(y, a, b, W, resampling(y, 60, 2))
    acc = [np.average((a >= 0) == y, weights=w) - np.average((b >= 0) == y, weights=w) for w in W]
    auc = [roc_auc_score(y, a, sample_weight=w) - roc_auc_score(y, b, sample_weight=w) for w in W]
    assert got["accuracy"]["value"] == pytest.approx(np.mean((a >= 0) == y) - np.mean((b >= 0) == y), abs=1e-12)
    assert got["auc"]["value"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b), abs=1e-12)
    np.testing.assert_allclose(got["accuracy"]["ci95"], percentile_interval(np.array(acc)), atol=1e-9)
    np.testing.assert_allclose(got["auc"]["ci95"], percentile_interval(np.array(auc)), atol=1e-9)
    assert got["auc"]["resampling"]["paired"] and got["auc"]["resampling"]["seed"] == 2


def _block(detected: bool, significant: dict[tuple[str, str], float], values: dict[str, float]) -> dict:
    e = lambda v: {"value": v, "ci95": [v - 0.01, v + 0.01], "n": 100}  # noqa: E731
    diffs = [{"a": a, "b": b, "difference": e(values[a] - values[b]), "significant": frozenset((a, b)) in {frozenset(k) for k in significant}}
             for i, a in enumerate(values) for b in list(values)[i + 1:]]
    return {"leakage_detected": detected, "verdicts": {"attack_auc": e(0.7 if detected else 0.51)},
            "all_layers": {"auc": e(0.7)}, "baseline": {"attack": "loss-threshold"},
            "players": [{"player": p, "shapley": e(v)} for p, v in values.items()], "differences": diffs,
            "beyond_baseline": {"accuracy": e(0.05), "auc": {"value": 0.01, "ci95": [-0.02, 0.04], "n": 100}}}


def test_the_plain_answer_says_no_leakage_cannot_rank_or_which_layer_leaks_most():
    from mia_tasks.report.answer import plain_answer

    values = {"conv1": 0.01, "fc1": 0.02, "fc2": 0.08}
    none = plain_answer(_block(False, {}, values))
    assert len(none) == 1 and none[0].startswith("No measurable leakage") and "(n = 100)" in none[0]
    tied = plain_answer(_block(True, {}, values))
    assert tied[0].startswith("Leakage detected") and tied[1].startswith("The audit cannot rank the layers")
    assert "the gradients add leakage: accuracy +0.050 [+0.040, +0.060]" in tied[2]
    top = plain_answer(_block(True, {("fc2", "conv1"): 1, ("fc2", "fc1"): 1}, values))
    assert top[1].startswith("fc2 leaks most")
    part = plain_answer(_block(True, {("fc2", "conv1"): 1}, values))
    assert "significantly above conv1 but not distinguishable from fc1" in part[1]
    assert plain_answer(_block(True, {}, values), "membership looks wrong") == ["membership looks wrong"]
