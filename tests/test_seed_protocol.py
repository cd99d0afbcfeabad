"""The seed's protocol reproduced against a plain reference: scikit-learn saga logistic regression on min-max
scaled features, the best accuracy over every threshold of the evaluation set, exact Shapley by permutations
with v(∅) = 0."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mia_tasks.errors import LayerleakError
from mia_tasks.seed_protocol import SeedProtocol, best_threshold_accuracy, seed_splits, seed_sweep


def _table(n: int = 600, seed: int = 0):
    """Three players of two columns each: player 0 carries membership strongly, player 1 weakly, player 2 none."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.6
    X = rng.normal(size=(n, 6))
    X[:, 0] += 1.2 * y
    X[:, 2] += 0.4 * y
    return X, y, [[0, 1], [2, 3], [4, 5]]


def _plain_best_accuracy(y, s):
    best = 0.0
    for t in [-np.inf, *sorted(set(s)), np.inf]:
        best = max(best, float(np.mean((s >= t) == y)))
    return best


def _plain_value(X, y, cols, protocol, seed, scale):
    train, test = seed_splits(y, protocol, seed, scale)
    A = X[:, cols]
    lo, hi = A[train].min(0), A[train].max(0)
    A = (A - lo) / np.where(hi > lo, hi - lo, 1.0)
    lr = LogisticRegression(solver="saga", tol=1e-4, max_iter=200, random_state=seed).fit(A[train], y[train])
    s = lr.decision_function(A[test])
    return roc_auc_score(y[test], s), _plain_best_accuracy(y[test], s)


def _plain_shapley(v: dict, L: int, empty: float) -> list[float]:
    phi = [0.0] * L
    for order in itertools.permutations(range(L)):
        have = frozenset()
        for p in order:
            before = v[have] if have else empty
            phi[p] += v[have | {p}] - before
            have = have | {p}
    return [x / math.factorial(L) for x in phi]


def test_best_threshold_accuracy_is_the_best_over_every_threshold():
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = rng.random(40) < 0.5
        s = np.round(rng.normal(size=40) + y, 1)  # ties
        assert best_threshold_accuracy(y, s) == pytest.approx(_plain_best_accuracy(y, s), abs=1e-12)


def test_seed_splits_are_disjoint_imbalanced_draws_of_the_protocols_sizes():
    y = np.r_[np.ones(300, bool), np.zeros(200, bool)]
    train, test = seed_splits(y, SeedProtocol(), seed=3, scale=0.01)  # 150 + 50 train, 50 + 50 eval
    assert not set(train) & set(test)
    assert (y[train].sum(), (~y[train]).sum(), y[test].sum(), (~y[test]).sum()) == (150, 50, 50, 50)
    with pytest.raises(LayerleakError, match="lower its scale"):
        seed_splits(y, SeedProtocol(), seed=0, scale=0.1)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("empty", [0.0, None])
def test_seed_sweep_matches_sklearn_and_permutation_shapley(empty):
    X, y, players = _table()
    protocol = SeedProtocol(seeds=3, empty=empty)
    scale = 0.012  # 180 + 60 train, 60 + 60 eval, as 15k/5k/5k/5k
    got = seed_sweep(X, y, players, protocol, scale)
    L, empty_value = len(players), (0.5 if empty is None else 0.0)
    plain = {m: {} for m in ("auc", "accuracy")}
    for r in range(1, L + 1):
        for S in itertools.combinations(range(L), r):
            cols = [c for p in S for c in players[p]]
            vals = np.array([_plain_value(X, y, cols, protocol, s, scale) for s in range(protocol.seeds)]).mean(0)
            plain["auc"][frozenset(S)], plain["accuracy"][frozenset(S)] = vals
    for metric in ("auc", "accuracy"):
        for S, v in plain[metric].items():
            assert got[metric]["values"][sum(1 << p for p in S)] == pytest.approx(v, abs=1e-9)
        np.testing.assert_allclose(got[metric]["shapley"], _plain_shapley(plain[metric], L, empty_value), atol=1e-9)
        assert got[metric]["values"][0] == empty_value
    phi = got["auc"]["shapley"]
    assert phi[0] == phi.max()  # the strong player leads
    if empty == 0.0:  # v(∅) = 0 gives every player about 0.5 / L more than chance does
        assert phi.sum() == pytest.approx(got["auc"]["values"][-1], abs=1e-9)
