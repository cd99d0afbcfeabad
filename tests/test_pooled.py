"""Several targets pooled (mia_tasks.uncertainty.pooled): the pooled ROC's TPR at low FPR and AUC against plain
references (metrics.tpr_at_fpr, scikit-learn on concatenated or duplicated scores), the measurability rule on
pooled non-members, paired differences, and the two-way bootstrap's behaviour on a null and a signal."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mia_tasks.errors import LayerleakError
from mia_tasks.metrics import tpr_at_fpr
from mia_tasks.uncertainty.pooled import pooled_metrics, two_way_weights, weighted_tpr_at_fpr


def _population(T: int, n: int, seed: int = 0, signal: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Membership [T, n] (each target a random half) and scores: per-sample difficulty + signal on members."""
    rng = np.random.default_rng(seed)
    member = np.zeros((T, n), bool)
    for t in range(T):
        member[t, rng.choice(n, n // 2, replace=False)] = True
    difficulty = rng.normal(size=n)
    scores = difficulty[None, :] + rng.normal(size=(T, n)) + signal * member
    return member, scores


@pytest.mark.parametrize("fpr", [0.001, 0.01, 0.1])
def test_weighted_tpr_equals_the_plain_tpr_on_duplicated_samples(fpr):
    rng = np.random.default_rng(1)
    y = rng.random(3000) < 0.5
    s = np.round(rng.normal(size=3000) + y, 1)  # many ties: a threshold never splits them
    W = rng.integers(0, 4, size=(5, 3000)).astype(float)
    got = weighted_tpr_at_fpr(y, s, W, fpr)
    want = [tpr_at_fpr(np.repeat(y, w.astype(int)), np.repeat(s, w.astype(int)), fpr) for w in W]
    assert got == pytest.approx(want, abs=1e-12)
    assert weighted_tpr_at_fpr(y, s, np.ones((1, y.size)), fpr)[0] == pytest.approx(tpr_at_fpr(y, s, fpr), abs=1e-12)


def test_pooled_point_values_are_the_plain_metrics_of_the_concatenated_scores():
    member, scores = _population(T=12, n=200, signal=1.0)
    m = pooled_metrics({"a": scores, "b": -scores}, member, replicates=50, seed=0)
    y, s = member.ravel(), scores.ravel()
    assert m["pairs"] == 2400 and m["non_members"] == 1200 and m["targets"] == 12
    assert m["attacks"]["a"]["auc"]["value"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["attacks"]["a"]["tpr@1%"]["value"] == pytest.approx(tpr_at_fpr(y, s, 0.01), abs=1e-12)
    diff = m["differences"]["b - a"]["auc"]
    assert diff["value"] == pytest.approx(roc_auc_score(y, -s) - roc_auc_score(y, s), abs=1e-12)
    assert diff["ci95"][1] < 0  # b is a's mirror image: clearly worse in every replicate


def test_tpr_at_low_fpr_is_measurable_only_with_enough_pooled_non_members():
    member, scores = _population(T=2, n=200)
    m = pooled_metrics({"a": scores}, member, replicates=20)
    assert m["attacks"]["a"]["tpr@1%"]["value"] is None and not m["attacks"]["a"]["tpr@1%"]["measurable"]
    assert "needs >= 1000 pooled non-members, has 200" in m["attacks"]["a"]["tpr@1%"]["reason"]
    member, scores = _population(T=10, n=200)
    m = pooled_metrics({"a": scores}, member, replicates=20)
    assert m["attacks"]["a"]["tpr@1%"]["measurable"] and not m["attacks"]["a"]["tpr@0.1%"]["measurable"]


def test_identical_attacks_differ_by_exactly_zero():
    member, scores = _population(T=10, n=200, signal=0.5)
    d = pooled_metrics({"a": scores, "b": scores.copy()}, member, replicates=30)["differences"]["b - a"]
    assert d["auc"]["value"] == 0 and d["auc"]["ci95"] == [0, 0] and d["tpr@1%"]["ci95"] == [0, 0]


def test_two_way_bootstrap_covers_chance_on_a_null_and_excludes_it_on_a_signal():
    member, scores = _population(T=10, n=300, seed=3)
    null = pooled_metrics({"a": scores}, member, replicates=200, seed=1)["attacks"]["a"]
    assert null["auc"]["ci95"][0] < 0.5 < null["auc"]["ci95"][1]
    assert null["tpr@1%"]["ci95"][0] <= 0.01 <= null["tpr@1%"]["ci95"][1]
    member, scores = _population(T=10, n=300, seed=3, signal=1.5)
    sig = pooled_metrics({"a": scores}, member, replicates=200, seed=1)["attacks"]["a"]
    assert sig["auc"]["ci95"][0] > 0.7 and sig["tpr@1%"]["ci95"][0] > 0.01


def test_two_way_weights_redraw_targets_and_samples_with_replacement():
    Wt, Ws = two_way_weights(7, 50, replicates=40, seed=0)
    assert (Wt.sum(axis=1) == 7).all() and (Ws.sum(axis=1) == 50).all()
    assert (Wt == 0).any() and (Wt > 1).any()  # some targets left out, some drawn twice
    Wt1, _ = two_way_weights(1, 50, replicates=5, seed=0)
    assert (Wt1 == 1).all()  # one target: only the samples are resampled


@pytest.mark.parametrize("bad,match", [
    ({"a": np.zeros((2, 3))}, "do not fit membership"),
    ({"a": np.full((2, 4), np.nan)}, "NaN not allowed"),
    ({}, "no attack scores"),
])
def test_pooled_metrics_refuses_bad_input(bad, match):
    member = np.array([[True, False, True, False], [False, True, True, False]])
    with pytest.raises(LayerleakError, match=match):
        pooled_metrics(bad, member, replicates=5)


def test_the_report_shows_the_pooled_table_and_roc_of_an_attack_on_several_targets():
    from mia_tasks.attack_runs import _roc_points
    from mia_tasks.report.plots import make_plots
    from mia_tasks.report.targets import attack_targets_blocks
    from mia_tasks.rundir import PLOTS

    member, scores = _population(T=12, n=200, signal=1.0)
    pooled = pooled_metrics({"lira": scores, "loss-threshold": scores - 0.5 * member}, member, replicates=50,
                            baseline="loss-threshold")
    pooled["roc"] = {a: _roc_points(member.ravel(), s.ravel()) for a, s in (("lira", scores), ("loss-threshold", scores))}
    pooled["roc_measurable_from"] = 10 / pooled["non_members"]
    mean = {"auc": {"value": 0.7, "ci95": [0.6, 0.8], "n": 12}}
    attacks = {"lira": {"attack": "lira", "targets": {"count": 12, "between_targets": mean, "pooled": pooled}},
               "loss-threshold": {"attack": "loss-threshold",
                                  "targets": {"count": 12, "between_targets": mean,
                                              "pooled": {**pooled, "attacks": {"loss-threshold": pooled["attacks"]["loss-threshold"]},
                                                         "differences": {}}}}}
    (_, _, title), (_, text), (_, header, rows) = attack_targets_blocks(attacks)
    assert title == "Attacks on 12 targets" and "two-way bootstrap" in text and "1200 non-member scores" in text
    assert header == ["attack", "pooled auc", "pooled tpr@1%", "pooled tpr@0.1%", "mean of targets: auc",
                      "mean of targets: tpr@1%"]
    assert [r[0] for r in rows] == ["lira", "loss-threshold", "lira - loss-threshold"]  # the baseline once, with its mean
    assert rows[1][4] == "0.7000 [0.6000, 0.8000]" and rows[2][4] == "–"
    assert rows[0][2].startswith(f"{pooled['attacks']['lira']['tpr@1%']['value']:.4f}") and "not measurable" in rows[0][3]
    plots = make_plots({"attacks": attacks})
    assert plots[PLOTS["roc_pooled"]][:8] == b"\x89PNG\r\n\x1a\n"


def test_between_target_summary_gives_the_gain_beyond_the_baseline_with_a_t_interval():
    from scipy import stats

    from mia_tasks.between_targets import between_target_summary

    rng = np.random.default_rng(0)
    v_all, v_empty = 0.85 + rng.normal(0, 0.01, 6), 0.84 + rng.normal(0, 0.01, 6)
    auc_all, auc_base = 0.93 + rng.normal(0, 0.01, 6), 0.92 + rng.normal(0, 0.01, 6)
    blocks = [{"players": [{"player": "a", "shapley": {"value": v_all[t] - v_empty[t]}}], "leakage_detected": True,
               "v_all": {"value": v_all[t]}, "v_empty": {"value": v_empty[t]},
               "all_layers": {"auc": {"value": auc_all[t]}, "tpr@0.1%": {"value": None}},
               "baseline": {"auc": {"value": auc_base[t]}, "tpr@0.1%": {"value": None}}} for t in range(6)]
    s = between_target_summary(blocks)
    d = v_all - v_empty
    half = stats.t.ppf(0.975, 5) * d.std(ddof=1) / np.sqrt(6)
    assert s["gain"]["value"] == pytest.approx(d.mean()) and s["gain"]["ci95"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert s["all_layers_minus_baseline"]["auc"]["value"] == pytest.approx((auc_all - auc_base).mean())
    assert "tpr@0.1%" not in s["all_layers_minus_baseline"] and s["gain"]["n"] == 6


def test_pooled_bench_truth_is_the_plain_metric_of_a_large_population_and_the_smoke_run_reports_coverage(capsys):
    import json

    from flows.bench import pooled as bench
    from mia_tasks.metrics import auc

    scores, member = bench.simulate(np.random.default_rng(0), 4, 300)
    assert member.sum(axis=1).tolist() == [150] * 4 and scores["strong"].shape == (4, 300)
    # the strong attack separates better than the weak one on the same samples
    assert auc(member.ravel(), scores["strong"].ravel()) > auc(member.ravel(), scores["weak"].ravel())
    assert bench.main(["--json", "--quick", "--audits", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["audits"] == 2 and set(out["coverage"]) == {f"{a} {m}" for a in ("strong", "weak", "strong - weak")
                                                            for m in ("auc", "tpr@1%")}
    assert out["truth"]["strong - weak"]["auc"] == pytest.approx(out["truth"]["strong"]["auc"] - out["truth"]["weak"]["auc"])
    assert 0.7 < out["truth"]["strong"]["auc"] < 0.85 and all(0 <= c["value"] <= 1 for c in out["coverage"].values())
    assert bench.main(["--audits", "0"]) == 2
