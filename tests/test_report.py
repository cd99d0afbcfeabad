"""The report: files after ``layerleak run``, valid images in report.html, and the Spearman test of the seed's claim."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import run_cli, tiny_args
from mia_tasks.report import (ALPHA, build_report, conclusion, headline_text, make_plots, render_html, render_markdown,
                              spearman, verdict)

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
    assert [c["n"] for c in report["correlations"]] == [4, 4, 4, 4]
    assert all(c["verdict"].startswith("inconclusive (n too small") for c in report["correlations"])  # 4 layers
    assert report["conclusion"]["verdict"] == "inconclusive"

    md = (tiny_run / "report.md").read_text()
    md_images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"plots/shapley.png", "plots/single_layer.png", "plots/groups.png", "plots/roc.png"} <= set(md_images)
    for rel in md_images:
        _assert_png((tiny_run / rel).read_bytes())
    assert "| conv1 | 1 |" in md and "INCONCLUSIVE" in md

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


@settings(max_examples=20, deadline=None)
@given(st.integers(3, 7), st.integers(0, 2**31 - 1))
def test_spearman_matches_scipy(n, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.permutation(n) * 1.5 + 1, rng.normal(size=n)
    got = spearman(x, y)
    assert got["rho"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    def rank_corr(a, axis=-1):  # Spearman = Pearson of ranks; vectorised over permutations of x against fixed y
        return scipy.stats.pearsonr(scipy.stats.rankdata(a, axis=axis), scipy.stats.rankdata(np.broadcast_to(y, a.shape), axis=axis),
                                    axis=axis).statistic

    # exact: all n! pairings; two-sided as P(|rho*| >= |rho|), the symmetric definition the report uses
    ref = scipy.stats.permutation_test((x,), lambda a, axis=-1: np.abs(rank_corr(a, axis)), permutation_type="pairings",
                                       n_resamples=np.inf, vectorized=True, alternative="greater")
    assert got["p"] == pytest.approx(ref.pvalue, abs=1e-9)
    assert got["n"] == n and got["p_method"].startswith("exact")


def test_spearman_verdicts():
    four = spearman([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4])
    assert four["rho"] == pytest.approx(1.0) and four["p"] == pytest.approx(2 / 24) and four["min_p"] == pytest.approx(2 / 24)
    assert scipy.stats.spearmanr([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4]).pvalue < ALPHA  # why the exact p is used
    assert verdict(four).startswith("inconclusive (n too small")
    six = spearman(range(6), [0.0, 0.1, 0.3, 0.2, 0.5, 0.6])
    assert six["p"] < ALPHA and verdict(six) == "supported"
    assert verdict(spearman(range(6), [0.6, 0.5, 0.3, 0.2, 0.1, 0.0])).startswith("contradicted")
    assert verdict(spearman(range(6), [0.3, 0.1, 0.6, 0.0, 0.5, 0.2])).startswith("not supported")
    assert verdict(spearman(range(6), [0.2] * 6)).startswith("undefined")
    big = spearman(range(12), np.arange(12) ** 2)
    assert big["p_method"].startswith("t approximation") and big["p"] == pytest.approx(scipy.stats.spearmanr(range(12), np.arange(12) ** 2).pvalue)
    tests = [{"leakage": "Shapley value", "against": a, **six, "verdict": verdict(six)} for a in ("params", "depth")]
    assert conclusion(tests)["verdict"] == "supported"
    tests[1]["verdict"] = "not supported (no significant correlation)"
    assert conclusion(tests)["verdict"] == "not supported"


def _player(name, depth, params, value):
    return {"player": name, "layers": [name], "depth": float(depth), "params": params, "shapley": value, "std": 0.01,
            "per_repeat": [value - 0.01, value + 0.01]}


def test_report_from_shapley_alone_renders_and_is_strict_json():
    """Six layers, leakage rising with depth and size: the claim is supported; NaN never reaches report.json."""
    layers = [{"name": f"l{i}", "depth": i + 1, "params": 100 * (i + 1)} for i in range(6)]
    shapley = {"config_hash": "h", "method": "exact", "metric": "accuracy", "kinds": ["grad"], "repeats": 2, "v_empty": 0.5,
               "v_all": {"mean": 0.7, "std": 0.01}, "coalitions": 126,
               "players": [_player(l["name"], l["depth"], l["params"], 0.01 * (i + 1)) for i, l in enumerate(layers)]}
    attack = {"layers": [], "kinds": ["loss"], "metrics": {"accuracy": {"mean": 0.6, "std": float("nan"), "n": 2}},
              "roc": [{"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.7, 1.0]}]}
    report = build_report({"model": {"arch": "cnn"}, "dataset": {"name": "synthetic"}}, {"config": "c", "features": "f"}, None,
                          layers, shapley, {}, {"loss-threshold": attack})
    _strict_json(json.dumps(report))
    assert report["attacks"]["loss-threshold"]["metrics"]["accuracy"]["std"] is None
    assert report["conclusion"]["verdict"] == "supported"
    assert [c["rho"] for c in report["correlations"]] == [pytest.approx(1.0)] * 2
    plots = make_plots(report)
    assert set(plots) == {"plots/shapley.png", "plots/roc.png"}
    for png in plots.values():
        _assert_png(png)
    md = render_markdown(report, list(plots))
    assert "![" in md and "single_layer" not in md and "SUPPORTED" in md
    assert render_html(report, plots).count("data:image/png;base64,") == 2
    assert "| l5 | 6 | 600 |" in headline_text(report)


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
    assert after["logistic"]["per_repeat"] != before["logistic"]["per_repeat"]
    assert after["loss-threshold"] == before["loss-threshold"]
    report = json.loads((out / "report.json").read_text())
    assert report["attacks"]["logistic"]["settings"]["C"] == 0.05
    assert report["shapley"] == json.loads((out / "shapley.json").read_text())
