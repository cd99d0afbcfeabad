"""mia_tasks.uncertainty: every fast path against a plain reference (sklearn, scipy, mia_tasks.shapley)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from mia_tasks.attacks import AttackData, LogisticAttack
from mia_tasks.coalitions import fit_one_sklearn
from mia_tasks.errors import LayerleakError
from mia_tasks.metrics import tpr_at_fpr
from mia_tasks.shapley import exact_shapley, value_table
from mia_tasks.transforms import SignedLog
from mia_tasks.uncertainty import (
    SweepBootstrap,
    between_targets,
    bootstrap_metrics,
    bootstrap_p_value,
    bootstrap_sweep,
    clopper_pearson,
    combine_targets,
    crossfit_attack,
    crossfit_coalitions,
    holm,
    pack_correct,
    params_depth_test,
    ranking_stability,
    shapley_weight_matrix,
    stratified_folds,
    stratified_weights,
    tpr_at_fpr_entry,
    unpack_correct,
    value_entries,
    verdicts,
    weighted_auc,
)
from mia_tasks.uncertainty.bootstrap import linear_metric, resampling
from mia_tasks.uncertainty.crossfit import training_rows


def _labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % 2)


def _data(n: int = 120, d: int = 4, seed: int = 0) -> AttackData:
    rng = np.random.default_rng(seed)
    y = _labels(n, seed)
    X = np.exp(rng.normal(size=(n, d)) + 0.8 * y[:, None])  # heavy-tailed, so signed-log medians matter
    return AttackData(X, [f"f{i}" for i in range(d)], y, np.arange(100, 100 + n), np.zeros(n))


# --- cross-fitting ---------------------------------------------------------------------------------

def test_folds_are_balanced_by_membership_and_seeded():
    y = _labels(103)
    folds = stratified_folds(y, k=5, seed=3)
    sizes = np.bincount(folds, minlength=5)
    members = np.bincount(folds[y == 1], minlength=5)
    assert sizes.max() - sizes.min() <= 1 and members.max() - members.min() <= 1
    assert np.array_equal(folds, stratified_folds(y, k=5, seed=3))
    assert not np.array_equal(folds, stratified_folds(y, k=5, seed=3, repeat=1))
    with pytest.raises(LayerleakError, match="needs >= 5 members"):
        stratified_folds(np.r_[np.ones(3), np.zeros(50)], k=5)
    with pytest.raises(LayerleakError, match="both members and non-members"):
        stratified_folds(np.ones(10), k=2)


class _SpyAttack:
    """Records which sample ids it was fitted on and refuses to score any of them."""

    fitted: list[set[int]] = []

    def fit(self, train: AttackData) -> "_SpyAttack":
        self.seen = set(train.sample_ids.tolist())
        _SpyAttack.fitted.append(self.seen)
        self.threshold_ = 0.0
        return self

    def score(self, data: AttackData) -> np.ndarray:
        assert not self.seen & set(data.sample_ids.tolist()), "a sample was scored by a model that saw it"
        return np.zeros(len(data))


def test_crossfit_scores_no_sample_with_a_model_that_saw_it():
    data = _data()
    _SpyAttack.fitted = []
    cf = crossfit_attack(_SpyAttack, data, k=4, repeats=2, seed=1)
    assert cf.folds.shape == (2, len(data)) and len(_SpyAttack.fitted) == 8
    for r in range(2):
        for j in range(4):  # each fold's model was fitted on exactly its training folds, j+1 (mod 4) by default
            assert _SpyAttack.fitted[4 * r + j] == set(data.sample_ids[cf.folds[r] == (j + 1) % 4].tolist())
    _SpyAttack.fitted = []
    crossfit_attack(_SpyAttack, data, k=4, seed=1, training_folds=3)
    for j in range(4):  # the textbook design: every other fold
        assert _SpyAttack.fitted[j] == set(data.sample_ids[cf.folds[0] != j].tolist())


@pytest.mark.parametrize("k", [3, 5, 8])
def test_default_training_folds_are_non_reciprocal(k):
    folds = np.arange(k)
    trains = np.array([[training_rows(folds, j, k)[i] for i in range(k)] for j in range(k)])  # trains[j, i]: fold i trains j
    assert not trains.diagonal().any() and not (trains & trains.T).any()
    assert trains.sum(axis=1).tolist() == [(k - 1) // 2] * k
    assert training_rows(folds, 0, k, k - 1).tolist() == [False] + [True] * (k - 1)
    with pytest.raises(LayerleakError, match="training_folds"):
        training_rows(folds, 0, k, k)


class _Memoriser:
    """A 'transform' that looks samples up: perfect on rows it was fitted on, blind elsewhere."""

    def fit(self, train: AttackData) -> "_Memoriser":
        self.known = dict(zip(train.sample_ids.tolist(), train.y.tolist()))
        self.threshold_ = 0.5
        return self

    def score(self, data: AttackData) -> np.ndarray:
        return np.array([self.known.get(i, 0.5) for i in data.sample_ids.tolist()], dtype=float)


def test_a_leaking_fit_gains_nothing_out_of_fold():
    data = _data()
    leaked = _Memoriser().fit(data)
    assert roc_auc_score(data.y, leaked.score(data)) == 1.0  # what fitting on the scored rows would give
    cf = crossfit_attack(_Memoriser, data, k=5, seed=0)
    assert roc_auc_score(data.y, cf.scores) == 0.5


def test_crossfit_attack_matches_a_fold_by_fold_reference():
    data = _data()
    cf = crossfit_attack(lambda: LogisticAttack(C=0.5, transform="signed-log", tol=1e-8), data, k=3, seed=2)
    for j in range(3):
        test = cf.folds[0] == j
        ref = LogisticAttack(C=0.5, transform="signed-log", tol=1e-8).fit(data.subset(training_rows(cf.folds[0], j, 3)))
        np.testing.assert_allclose(cf.scores[test], ref.score(data.subset(test)))
    assert np.array_equal(cf.correct, (cf.scores >= 0) == data.y.astype(bool))


def test_crossfit_coalitions_match_sklearn_with_transforms_fitted_in_training_folds():
    data = _data(n=160, d=6, seed=4)
    X, y = data.X, data.y
    cols = [[0, 1], [2, 3, 4], [0, 1, 2, 3, 4, 5]]
    cc = crossfit_coalitions(X, y, cols, k=4, seed=5, transform="signed-log", training_folds=3, keep_models=True)
    assert [m["fold"] for m in cc.models] == [0, 1, 2, 3] and cc.models[0]["coef"].shape == (3, 6)
    assert cc.scores.dtype == np.float32 and cc.scores.shape == (3, 160) and cc.packed.shape == (3, 20)
    ref = np.empty((3, 160))
    leaky = np.empty((3, 160))
    everywhere = SignedLog().fit(X)  # medians from all rows, held-out fold included: what must not happen
    for j in range(4):
        test = cc.folds[0] == j
        t = SignedLog().fit(X[~test])
        for i, c in enumerate(cols):
            ref[i, test] = fit_one_sklearn(t.transform(X[~test]), y[~test], t.transform(X[test]), y[test], c)["scores"]
            leaky[i, test] = fit_one_sklearn(everywhere.transform(X[~test]), y[~test], everywhere.transform(X[test]),
                                             y[test], c)["scores"]
    np.testing.assert_allclose(cc.scores, ref, atol=2e-4, rtol=1e-4)
    assert np.abs(leaky - ref).max() > 1e-2  # the test would notice medians fitted on the held-out fold
    assert np.array_equal(cc.correct(), (ref >= 0) == y.astype(bool))


def test_repeats_redraw_folds_and_average():
    data = _data(n=80, d=2)
    one = crossfit_coalitions(data.X, data.y, [[0], [0, 1]], k=4, seed=0)
    two = crossfit_coalitions(data.X, data.y, [[0], [0, 1]], k=4, seed=0, repeats=2)
    assert np.array_equal(two.folds[0], one.folds[0]) and not np.array_equal(two.folds[1], two.folds[0])
    assert two.scores.shape == one.scores.shape and not np.allclose(two.scores, one.scores)


def test_pack_roundtrip():
    rng = np.random.default_rng(0)
    scores, y = rng.normal(size=(5, 37)), _labels(37)
    assert np.array_equal(unpack_correct(pack_correct(scores, y), 37), (scores >= 0) == y.astype(bool))


# --- bootstrap -------------------------------------------------------------------------------------

def _expanded(W_row: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(W_row.size), W_row.astype(np.int64))


def test_weights_are_stratified_and_seeded():
    y = _labels(51)
    W = stratified_weights(y, replicates=30, seed=1)
    assert np.all(W[:, y == 1].sum(axis=1) == (y == 1).sum()) and np.all(W[:, y == 0].sum(axis=1) == (y == 0).sum())
    assert np.array_equal(W, stratified_weights(y, replicates=30, seed=1))
    assert (W == 0).mean() == pytest.approx(np.exp(-1), abs=0.05)  # a bootstrap leaves ~1/e of the samples out


def test_bootstrap_metrics_equal_a_loop_over_replicates():
    rng = np.random.default_rng(2)
    y = _labels(90)
    scores = np.round(rng.normal(size=90) + 0.7 * y, 1)  # rounded: ties
    W = stratified_weights(y, replicates=40, seed=3)
    ref = {k: [] for k in ("accuracy", "balanced_accuracy", "far", "auc")}
    for b in range(40):
        idx = _expanded(W[b])
        yb, sb = y[idx], scores[idx]
        ref["accuracy"].append(accuracy_score(yb, sb >= 0))
        ref["balanced_accuracy"].append(balanced_accuracy_score(yb, sb >= 0))
        ref["far"].append(((sb >= 0) & (yb == 0)).sum() / (yb == 0).sum())
        ref["auc"].append(roc_auc_score(yb, sb))
    np.testing.assert_allclose(weighted_auc(y, scores, W), ref["auc"], rtol=1e-12)
    correct = ((scores >= 0) == y)[None, :]
    np.testing.assert_allclose(linear_metric(W, correct, y, "accuracy")[:, 0], ref["accuracy"], rtol=1e-6)
    np.testing.assert_allclose(linear_metric(W, correct, y, "balanced_accuracy")[:, 0], ref["balanced_accuracy"], rtol=1e-6)
    out = bootstrap_metrics(y, scores, weights=W)
    for key, vals in ref.items():
        np.testing.assert_allclose(out[key]["ci95"], np.quantile(vals, [0.025, 0.975]), rtol=1e-6)
    assert out["accuracy"]["value"] == accuracy_score(y, scores >= 0)
    assert out["auc"]["value"] == pytest.approx(roc_auc_score(y, scores))
    assert out["accuracy"]["n"] == 90 and out["accuracy"]["resampling"]["replicates"] == 40
    assert out["accuracy"]["resampling"]["unit"] == "audited sample"
    assert out["tpr@1%"]["measurable"] is False and out["tpr@1%"]["value"] is None


def test_shapley_weight_matrix_equals_exact_shapley():
    rng = np.random.default_rng(0)
    for L in range(1, 7):
        tables = rng.random((3, 1 << L))
        np.testing.assert_allclose(tables @ shapley_weight_matrix(L), [exact_shapley(t) for t in tables], atol=1e-12)


def test_bootstrap_sweep_equals_a_loop_with_sklearn_and_exact_shapley():
    rng = np.random.default_rng(5)
    L, n, B = 3, 60, 12
    y = _labels(n, 1)
    masks = rng.permutation(np.arange(1, 1 << L))  # rows in any order
    correct = rng.random((masks.size, n)) < 0.5 + 0.1 * np.bitwise_count(masks)[:, None]
    base = rng.random(n) < 0.55
    W = stratified_weights(y, B, seed=7)
    for metric, score in (("accuracy", accuracy_score), ("balanced_accuracy", balanced_accuracy_score)):
        sb = bootstrap_sweep(np.packbits(correct, axis=1), masks, y, L, weights=W, metric=metric, empty_correct=base)
        for b in [None, *range(B)]:
            idx = np.arange(n) if b is None else _expanded(W[b])
            # a correct prediction is the label itself, a wrong one its opposite
            vals = [score(y[idx], np.where(c[idx], y[idx], 1 - y[idx])) for c in correct]
            table = value_table(masks, vals, L, empty=score(y[idx], np.where(base[idx], y[idx], 1 - y[idx])))
            got_v = sb.values if b is None else sb.replicates[b]
            got_phi = sb.shapley if b is None else sb.shapley_replicates[b]
            np.testing.assert_allclose(got_v, table, rtol=1e-6)
            np.testing.assert_allclose(got_phi, exact_shapley(table), atol=1e-6)
    rows = value_entries(sb)
    assert [r["coalition"] for r in rows] == list(range(8)) and rows[5]["value"] == sb.values[5]
    assert rows[5]["ci95"] == list(np.quantile(sb.replicates[:, 5], [0.025, 0.975])) and rows[5]["n"] == n
    with pytest.raises(LayerleakError, match="exactly once"):
        bootstrap_sweep(np.packbits(correct[1:], axis=1), masks[1:], y, L)


def test_bootstrap_p_value():
    assert bootstrap_p_value(np.full((99, 1), 0.3))[0] == pytest.approx(2 / 100)
    assert bootstrap_p_value(np.linspace(-1, 1, 101)[:, None])[0] == 1.0


# --- low FPR ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (17, 400), (1, 1000)])
def test_clopper_pearson_equals_scipy_exact(k, n):
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    np.testing.assert_allclose(clopper_pearson(k, n), (ref.low, ref.high), atol=1e-12)


def test_tpr_at_fpr_only_where_measurable():
    rng = np.random.default_rng(0)
    y = _labels(2400)
    scores = rng.normal(size=2400) + y
    e = tpr_at_fpr_entry(y, scores, 0.01)  # 1,200 non-members >= 10 / 0.01
    assert e["measurable"] and e["value"] == tpr_at_fpr(y, scores, 0.01)
    k = round(e["value"] * 1200)
    assert e["ci95"] == list(clopper_pearson(k, 1200)) and e["ci95"][0] <= e["value"] <= e["ci95"][1]
    small = tpr_at_fpr_entry(y[:500], scores[:500], 0.01)
    assert small == {"value": None, "ci95": None, "n": int(y[:500].sum()), "fpr": 0.01, "measurable": False,
                     "reason": f"not measurable (needs >= 1000 non-members, has {int((y[:500] == 0).sum())})"}


# --- verdicts --------------------------------------------------------------------------------------

def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.02, 0.9]), [0.04, 0.9])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1, then kept monotone


def _sweep(shapley_reps: np.ndarray) -> SweepBootstrap:
    y = _labels(100)
    return SweepBootstrap(np.zeros(1 << shapley_reps.shape[1]), np.zeros((shapley_reps.shape[0], 1 << shapley_reps.shape[1])),
                          np.median(shapley_reps, axis=0), shapley_reps, 100, "accuracy", resampling(y, shapley_reps.shape[0], 0))


def _auc(lo: float, hi: float) -> dict:
    return {"value": (lo + hi) / 2, "ci95": [lo, hi], "n": 100, "resampling": {}}


def test_no_leakage_means_no_player_claim():
    rng = np.random.default_rng(0)
    reps = np.column_stack([rng.normal(0.05, 0.005, 500), rng.normal(0.0, 0.005, 500),
                            rng.normal(-0.03, 0.005, 500), rng.normal(0.01, 0.001, 500)])
    v = verdicts(_sweep(reps), list("abcd"), _auc(0.48, 0.53), _auc(0.49, 0.51), params=[1e3, 1e4, 1e5, 1e2], depth=[1, 2, 3, 4])
    assert v["leakage_detected"] is False and v["statement"].startswith("no measurable leakage")
    assert [p["excludes_zero"] for p in v["players"]] == [True, False, True, True]  # the intervals alone would
    assert v["players_flagged"] == [] and not any(d["significant"] for d in v["differences"])
    assert v["params_depth"]["tested"] is False
    w = verdicts(_sweep(reps), list("abcd"), _auc(0.55, 0.6))
    assert w["leakage_detected"] is True and w["players_flagged"] == ["a", "c", "d"]
    assert len(w["differences"]) == 6 and all(d["significant"] for d in w["differences"] if "b" in (d["a"], d["b"]))
    assert w["players"][0]["shapley"]["ci95"][0] > 0.03 and w["players"][0]["shapley"]["n"] == 100


def test_params_depth_joint_test():
    depth = np.arange(6.0)
    params = 10.0 ** np.array([3, 5, 4, 6, 2, 5])
    linked = 0.01 * np.log10(params) + 0.02 * depth
    t = params_depth_test(linked, params, depth)
    assert t["tested"] and t["r_squared"] == pytest.approx(1.0) and "all 720 permutations" in t["permutations"]
    assert t["p_value"] <= 2 / 720 and t["std_coef_depth"] > 0 and t["std_coef_log10_params"] > 0
    noise = params_depth_test(np.random.default_rng(1).normal(size=9), 10.0 ** np.arange(9), np.arange(9.0) % 3,
                              n_permutations=999, seed=2)
    assert noise["tested"] and noise["p_value"] > 0.05 and "999 random" in noise["permutations"]
    assert params_depth_test([0.1, 0.2, 0.3, 0.4], [10, 100, 1000, 1e4], [1, 2, 3, 4])["tested"] is False  # collinear


# --- several targets -------------------------------------------------------------------------------

def test_between_targets_t_interval():
    v = [0.61, 0.58, 0.64, 0.6]
    e = between_targets(v)
    ref = stats.t.interval(0.95, 3, loc=np.mean(v), scale=stats.sem(v))
    np.testing.assert_allclose(e["ci95"], ref) and e["n"] == 4 and e["resampling"]["unit"] == "target"
    assert between_targets([0.6])["ci95"] is None
    both = combine_targets([{"auc": {"value": 0.6}, "tpr@1%": {"value": None}}, {"auc": {"value": 0.62}, "tpr@1%": {"value": 0.1}}])
    assert list(both) == ["auc"] and both["auc"]["value"] == pytest.approx(0.61)


def test_ranking_stability():
    same = ranking_stability(np.array([[0.1, 0.3, 0.2], [0.2, 0.5, 0.3], [0.0, 0.9, 0.1]]))
    assert same["kendall_w"] == pytest.approx(1.0) and same["mean_pairwise_spearman"] == pytest.approx(1.0)
    flipped = ranking_stability(np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]))
    assert flipped["kendall_w"] == pytest.approx(0.0) and flipped["mean_pairwise_spearman"] == pytest.approx(-1.0)


# --- the calibration benchmark (smoke size) --------------------------------------------------------

def test_calibration_bench_smoke(capsys):
    from flows.bench import calibration

    assert calibration.main(["--json", "--quick", "--audits", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("shapley_coverage", "auc_coverage", "null_detected_rate", "null_player_flag_rate"):
        assert 0.0 <= out[key] <= 1.0
    assert out["audits"] == 1 and out["detail"]["shapley_coverage"]["n"] == 4
    assert calibration.main(["--audits", "0"]) == 2
