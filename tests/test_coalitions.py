"""The batched coalition fitter against scikit-learn, one coalition at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from threadpoolctl import threadpool_limits

from mia_tasks.attacks import AttackData, LogisticAttack
from mia_tasks.coalitions import (
    COALITION_METRICS, _Coalitions, _Problem, batched_metrics, coalition_mask, fit_coalitions, fit_one_sklearn, standardise,
)
from mia_tasks.errors import LayerleakError
from mia_tasks.metrics import attack_metrics

PLAYERS, PER_PLAYER = 6, 7


def synthetic(n: int = 2000, players: int = PLAYERS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correlated features on wildly different scales; a membership signal planted in some players."""
    rng = np.random.default_rng(seed)
    d = players * PER_PLAYER
    y = rng.permutation(np.arange(n) % 2)
    X = rng.normal(size=(n, d)) @ (np.eye(d) + 0.3 * rng.normal(size=(d, d)))
    strength = np.linspace(0.0, 0.6, players)
    for p in range(players):
        X[:, p * PER_PLAYER:(p + 1) * PER_PLAYER] += strength[p] * y[:, None] * rng.normal(size=PER_PLAYER)
    X = X * 10.0 ** rng.uniform(-3, 3, size=d) + rng.normal(scale=100.0, size=d)
    return X, y


def player_cols(mask: int) -> np.ndarray:
    return np.concatenate([np.arange(p * PER_PLAYER, (p + 1) * PER_PLAYER) for p in range(PLAYERS) if mask >> p & 1])


def sklearn_reference(Xt, yt, Xe, ye, cols, C=1.0):
    """scikit-learn end to end: its own fit, its decision scores, its metrics."""
    Zt, Ze = standardise(Xt[:, cols], Xe[:, cols])
    with threadpool_limits(1):  # BLAS threads only slow these small fits down (8x CPU on 2 shared cores)
        model = LogisticRegression(C=C, tol=1e-8, max_iter=10000).fit(Zt, yt)
    s = model.decision_function(Ze)
    fpr, tpr, _ = roc_curve(ye, s, drop_intermediate=False)
    return {
        "coef": model.coef_.ravel(), "intercept": model.intercept_[0], "accuracy": np.mean((s >= 0) == ye),
        "auc": roc_auc_score(ye, s), "tpr@1%": tpr[fpr <= 0.01 + 1e-12].max(), "tpr@0.1%": tpr[fpr <= 0.001 + 1e-12].max(),
    }


@pytest.fixture(scope="module")
def data():
    X, y = synthetic()
    tr = np.arange(len(y)) < len(y) // 2
    return X[tr], y[tr], X[~tr], y[~tr]


@pytest.fixture(scope="module")
def coalitions():
    """Every player coalition (63) and 12 random column subsets."""
    rng = np.random.default_rng(1)
    cols = [player_cols(m) for m in range(1, 2**PLAYERS)]
    d = PLAYERS * PER_PLAYER
    cols += [np.sort(rng.choice(d, size=rng.integers(1, d + 1), replace=False)) for _ in range(12)]
    return cols


@pytest.fixture(scope="module")
def fitted(data, coalitions):
    return fit_coalitions(*data, coalitions, return_params=True)


def assert_matches_sklearn(got: dict, k: int, ref: dict, n_eval_pos: int, n_eval_neg: int) -> None:
    """Accuracy exactly; AUC and TPRs up to one eval pair / one member whose scores nearly tie: both
    fits are only as exact as scikit-learn's tolerance (coefficients agree to ~1e-6)."""
    assert got["accuracy"][k] == ref["accuracy"], k
    assert abs(got["auc"][k] - ref["auc"]) <= 1.0 / (n_eval_pos * n_eval_neg) + 1e-12, k
    for key in ("tpr@1%", "tpr@0.1%"):
        assert abs(got[key][k] - ref[key]) <= 1.0 / n_eval_pos + 1e-12, (k, key)


def test_matches_sklearn_on_every_coalition(data, coalitions, fitted):
    assert fitted["converged"].all()
    ye = data[3]
    exact = 0
    for k, cols in enumerate(coalitions):
        ref = sklearn_reference(*data, cols)
        assert_matches_sklearn(fitted, k, ref, int(ye.sum()), int((1 - ye).sum()))
        exact += all(fitted[key][k] == pytest.approx(ref[key], abs=1e-12) for key in ("auc", "tpr@1%", "tpr@0.1%"))
        np.testing.assert_allclose(fitted["coef"][k][cols], ref["coef"], atol=1e-4, rtol=1e-4)
        assert fitted["intercept"][k] == pytest.approx(ref["intercept"], abs=1e-4)
        assert np.all(np.delete(fitted["coef"][k], cols) == 0.0)
    assert exact >= 0.9 * len(coalitions)


def test_solution_is_the_optimum(data, coalitions, fitted):
    """The gradient of scikit-learn's (mean) objective vanishes at the returned weights."""
    Xt, yt, _, _ = data
    Zt, _ = standardise(Xt, Xt)
    for k in range(0, len(coalitions), 7):
        w, b = fitted["coef"][k], fitted["intercept"][k]
        r = 1.0 / (1.0 + np.exp(-(Zt @ w + b))) - yt
        grad_w = (Zt.T @ r + w) / len(yt)
        grad_w[np.delete(np.arange(len(w)), coalitions[k])] = 0.0
        assert np.abs(grad_w).max() < 1e-8
        assert abs(r.mean()) < 1e-8


def test_metrics_match_attack_metrics(data, coalitions, fitted):
    """The batched metrics are mia_tasks.metrics.attack_metrics on this fitter's own scores."""
    Xt, yt, Xe, ye = data
    _, Ze = standardise(Xt, Xe)
    for k in range(0, len(coalitions), 5):
        ref = attack_metrics(ye, Ze @ fitted["coef"][k] + fitted["intercept"][k], threshold=0.0)
        for key in COALITION_METRICS:
            assert fitted[key][k] == pytest.approx(ref[key], abs=1e-12), (k, key)


@pytest.mark.parametrize("seed", range(6))
def test_batched_metrics_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 3000))
    y = rng.permutation(np.arange(n) % 2 == 0) if seed % 2 else rng.random(n) < rng.uniform(0.1, 0.9)
    y[:2] = [True, False]
    Z = rng.normal(size=(8, n))
    Z[1] = np.round(Z[1], 1)  # many ties
    Z[2] = 0.0  # all tied, at the threshold
    Z[3] = np.where(y, 1.0, -1.0)  # perfect
    Z[4] = np.where(y, -1.0, 1.0)  # perfectly wrong
    Z[5, : n // 2] = 3.0  # a big tie at the top
    Z[6] = np.round(Z[6] * 3) + y * 0.5  # ties straddling the classes
    got = batched_metrics(torch.as_tensor(Z), torch.as_tensor(y))
    for r in range(len(Z)):
        ref = attack_metrics(y, Z[r], threshold=0.0)
        fpr, tpr, _ = roc_curve(y, Z[r], drop_intermediate=False)
        assert float(got["auc"][r]) == pytest.approx(roc_auc_score(y, Z[r]), abs=1e-12)
        assert float(got["tpr@1%"][r]) == pytest.approx(tpr[fpr <= 0.01 + 1e-12].max(), abs=1e-12)
        assert float(got["tpr@0.1%"][r]) == pytest.approx(tpr[fpr <= 0.001 + 1e-12].max(), abs=1e-12)
        for key in COALITION_METRICS:
            assert float(got[key][r]) == pytest.approx(ref[key], abs=1e-12), (r, key)


def test_standardisation_uses_attack_train_only(data):
    Xt, yt, Xe, ye = data
    cols = [player_cols(0b101101), player_cols(0b000010)]
    a = fit_coalitions(Xt, yt, Xe, ye, cols, return_params=True)
    b = fit_coalitions(Xt, yt, Xe * 1e6 + 1e3, ye, cols, return_params=True)
    np.testing.assert_array_equal(a["coef"], b["coef"])
    np.testing.assert_array_equal(a["intercept"], b["intercept"])


def test_degenerate_columns_do_not_break_newton():
    """Separable data, duplicated / collinear / constant columns, a tiny and a huge C."""
    rng = np.random.default_rng(2)
    n = 400
    y = np.arange(n) % 2
    X = rng.normal(size=(n, 6))
    X[:, 0] += 6.0 * y  # separates the classes
    X[:, 1] = X[:, 2]
    X[:, 3] = 2.0
    X[:, 4] = 3.0 * X[:, 5] - 1.0
    tr = rng.permutation(n) < n // 2
    cols = [[0], [1, 2], [3], [4, 5], [0, 1, 2, 3, 4, 5], [1, 3, 4]]
    for C in (1e-3, 1.0, 1e3):
        got = fit_coalitions(X[tr], y[tr], X[~tr], y[~tr], cols, C=C, return_params=True)
        assert got["converged"].all()
        for k, c in enumerate(cols):
            ref = sklearn_reference(X[tr], y[tr], X[~tr], y[~tr], np.array(c), C=C)
            assert got["accuracy"][k] == ref["accuracy"]
            np.testing.assert_allclose(got["coef"][k][c], ref["coef"], atol=1e-3 * max(1.0, np.abs(ref["coef"]).max()))


def test_non_finite_features_as_the_logistic_attack():
    rng = np.random.default_rng(3)
    X, y = synthetic(n=600, players=2, seed=3)
    X[rng.integers(0, 600, 20), rng.integers(0, 14, 20)] = np.nan
    X[5, 3], X[9, 8] = np.inf, -np.inf
    tr = rng.permutation(600) < 300
    cols = [np.arange(14), np.arange(7, 14)]
    got = fit_coalitions(X[tr], y[tr], X[~tr], y[~tr], cols, return_params=True)
    names = [f"c{i}" for i in range(14)]
    for k, c in enumerate(cols):
        sub = [names[i] for i in c]
        attack = LogisticAttack(tol=1e-10, max_iter=100000)
        attack.fit(AttackData(X[tr][:, c], sub, y[tr], np.arange(300), np.zeros(300)))
        np.testing.assert_allclose(got["coef"][k][c], attack.model_.coef_.ravel(), atol=1e-6)
        scores = attack.score(AttackData(X[~tr][:, c], sub, y[~tr], np.arange(300), np.zeros(300)))
        assert got["accuracy"][k] == attack_metrics(y[~tr], scores)["accuracy"]


def test_hessian_is_the_autograd_hessian(data):
    Xt, yt = data[0][:300], data[1][:300]
    Zt, _ = standardise(Xt, Xt)
    pb = _Problem(Zt, yt.astype(np.float64), 2.0, torch.device("cpu"), 1 << 30)
    mask = np.zeros((2, Zt.shape[1]), dtype=bool)
    mask[0, [3, 8, 9]] = True
    mask[1, :5] = True
    co = _Coalitions(mask, Zt.shape[1], torch.device("cpu"))
    W = torch.as_tensor(np.random.default_rng(4).normal(scale=0.3, size=co.idx.shape)) * co.real
    H = co.hessian(pb.data_hessian(co.full(W) @ pb.data[torch.float64]["X1T"], co.idx))
    for k in range(2):
        def objective(w):
            full = torch.zeros(Zt.shape[1] + 2, dtype=w.dtype).scatter(0, co.scatter_to[k], w)[: Zt.shape[1] + 1]
            z = full @ pb.data[torch.float64]["X1T"]
            y = torch.as_tensor(yt, dtype=z.dtype)
            return 2.0 * (torch.nn.functional.softplus(z) - y * z).sum() + 0.5 * (w * w * co.reg[k]).sum()
        ref = torch.autograd.functional.hessian(objective, W[k].clone())
        real = co.real[k] > 0
        ref[~real, :] = 0.0
        ref[:, ~real] = 0.0
        ref[~real, ~real] = 1.0
        torch.testing.assert_close(H[k], ref, rtol=1e-5, atol=1e-4)


def test_blockwise_products_and_small_chunks_agree(data, coalitions, fitted):
    few = coalitions[::9]
    got = fit_coalitions(*data, few, return_params=True, memory_bytes=8 << 20, max_chunk=3)
    np.testing.assert_allclose(got["coef"], fitted["coef"][::9], atol=1e-6)  # both within tol of the optimum
    for key in COALITION_METRICS:
        np.testing.assert_array_equal(got[key], fitted[key][::9])


def test_column_lists_and_masks_are_the_same_request(data):
    d = data[0].shape[1]
    cols = [np.array([0, 5, 9]), np.arange(d)]
    assert np.array_equal(coalition_mask(cols, d), coalition_mask(coalition_mask(cols, d), d))
    a = fit_coalitions(*data, cols)
    b = fit_coalitions(*data, coalition_mask(cols, d))
    for key in COALITION_METRICS:
        np.testing.assert_array_equal(a[key], b[key])


def test_bad_requests_are_clear_errors(data):
    Xt, yt, Xe, ye = data
    with pytest.raises(LayerleakError, match="no feature columns"):
        fit_coalitions(Xt, yt, Xe, ye, [[0], []])
    with pytest.raises(LayerleakError, match="names column"):
        fit_coalitions(Xt, yt, Xe, ye, [[Xt.shape[1]]])
    with pytest.raises(LayerleakError, match="both members and non-members"):
        fit_coalitions(Xt, np.zeros_like(yt), Xe, ye, [[0]])
    with pytest.raises(LayerleakError, match="C must be > 0"):
        fit_coalitions(Xt, yt, Xe, ye, [[0]], C=0.0)
    with pytest.raises(LayerleakError, match="feature columns"):
        fit_coalitions(Xt, yt, Xe[:, :3], ye, [[0]])


def test_fit_one_sklearn_is_the_reference(data):
    cols = player_cols(0b110000)
    ref = sklearn_reference(*data, cols)
    one = fit_one_sklearn(*data, cols)
    np.testing.assert_allclose(one["coef"], ref["coef"])
    for key in ("accuracy", "auc", "tpr@1%", "tpr@0.1%"):
        assert one[key] == pytest.approx(ref[key], abs=1e-12)


@pytest.mark.slow
def test_matches_sklearn_on_400_coalitions_of_10_players():
    X, y = synthetic(n=3000, players=10, seed=5)
    tr = np.arange(3000) < 1500
    rng = np.random.default_rng(6)
    masks = rng.choice(np.arange(1, 2**10), size=400, replace=False)
    cols = [np.concatenate([np.arange(p * 7, p * 7 + 7) for p in range(10) if m >> p & 1]) for m in masks]
    got = fit_coalitions(X[tr], y[tr], X[~tr], y[~tr], cols, return_params=True)
    assert got["converged"].all()
    ye = y[~tr]
    for k, c in enumerate(cols):
        assert_matches_sklearn(got, k, sklearn_reference(X[tr], y[tr], X[~tr], ye, c), int(ye.sum()), int((1 - ye).sum()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(data, coalitions, fitted):
    got = fit_coalitions(*data, coalitions, device="cuda", return_params=True)
    assert got["converged"].all()
    np.testing.assert_allclose(got["coef"], fitted["coef"], atol=1e-6)
    ne = len(data[3])
    for key in COALITION_METRICS:
        # Both solutions sit within ~1e-9 of the optimum: at most one near-tied eval score may flip.
        np.testing.assert_allclose(got[key], fitted[key], atol=1.5 / (ne / 2) ** 2 if key == "auc" else 1.5 / ne * 2)


def test_a_column_penalty_equals_scikit_learn_on_a_rescaled_column(data):
    """A per-column penalty p_j is scikit-learn's uniform penalty on column j scaled by 1/sqrt(p_j): the same fitted
    scores, coefficient j scaled back. p_j = 0 (the sweep's baseline score) is the limit of a huge scale."""
    Xt, yt, Xe, ye = data
    cols = np.arange(6)
    penalty = np.ones(Xt.shape[1])
    penalty[[1, 4]] = [0.25, 0.01]
    got = fit_coalitions(Xt, yt, Xe, ye, [cols], C=0.01, return_params=True, penalty=penalty)
    Zt, Ze = standardise(Xt[:, cols], Xe[:, cols])
    scale = 1 / np.sqrt(penalty[cols])
    with threadpool_limits(1):
        model = LogisticRegression(C=0.01, tol=1e-10, max_iter=100000).fit(Zt * scale, yt)
    np.testing.assert_allclose(got["coef"][0, cols], model.coef_.ravel() * scale, rtol=1e-4, atol=1e-6)
    ref = model.decision_function(Ze * scale)
    assert got["auc"][0] == pytest.approx(roc_auc_score(ye, ref), abs=1e-9)
    penalty[4] = 1e-9
    tiny = fit_coalitions(Xt, yt, Xe, ye, [cols], C=0.01, return_params=True, penalty=penalty)
    penalty[4] = 0.0
    free = fit_coalitions(Xt, yt, Xe, ye, [cols], C=0.01, return_params=True, penalty=penalty)
    np.testing.assert_allclose(free["coef"], tiny["coef"], rtol=1e-5, atol=1e-7)
    assert abs(free["coef"][0, 4]) > abs(got["coef"][0, 4])  # less shrinkage
    with pytest.raises(LayerleakError, match="penalty must be"):
        fit_coalitions(Xt, yt, Xe, ye, [cols], penalty=-penalty)
