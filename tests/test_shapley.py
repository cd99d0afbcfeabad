"""Exact and sampled Shapley values against the textbook permutation formula."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mia_tasks.errors import LayerleakError
from mia_tasks.shapley import (
    EMPTY_VALUE, exact_shapley, popcount, sampled_shapley, value_table, with_empty,
)


def permutation_shapley(values: np.ndarray) -> np.ndarray:
    """φ_i = mean over all L! orders of v(players before i, and i) − v(players before i)."""
    n_players = int(np.log2(len(values)))
    perms = np.array(list(itertools.permutations(range(n_players))), dtype=np.int64)
    bits = np.int64(1) << perms
    after = np.cumsum(bits, axis=1)
    contrib = values[after] - values[after - bits]
    phi = np.zeros(n_players)
    np.add.at(phi, perms.ravel(), contrib.ravel())
    return phi / len(perms)


def random_game(n_players: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return with_empty(rng.uniform(0.4, 1.0, size=2**n_players - 1))


@pytest.mark.parametrize("n_players", range(1, 9))
def test_exact_equals_permutation_formula(n_players):
    for seed in range(2):
        v = random_game(n_players, seed)
        np.testing.assert_allclose(exact_shapley(v), permutation_shapley(v), rtol=1e-12, atol=1e-14)


games = st.integers(1, 7).flatmap(
    lambda n: st.lists(st.floats(-1.0, 1.0), min_size=2**n, max_size=2**n).map(np.array))


@settings(max_examples=20, deadline=None)
@given(games, games)
def test_axioms(v, u):
    n_players = int(np.log2(len(v)))
    phi = exact_shapley(v)
    assert phi.sum() == pytest.approx(v[-1] - v[0], abs=1e-9)  # efficiency
    if len(u) == len(v):
        np.testing.assert_allclose(exact_shapley(v + u), phi + exact_shapley(u), atol=1e-9)  # additivity
    masks = np.arange(len(v))
    # Null player: make player 0 add nothing anywhere.
    null = v.copy()
    null[masks & 1 == 1] = null[masks[masks & 1 == 1] ^ 1]
    assert exact_shapley(null)[0] == pytest.approx(0.0, abs=1e-12)
    if n_players >= 2:
        # Symmetry: a game that depends on players 0 and 1 only through how many of them are in S.
        sym = v.copy()
        swapped = (masks & ~3) | ((masks & 1) << 1) | ((masks & 2) >> 1)
        sym = (sym + sym[swapped]) / 2
        phi_sym = exact_shapley(sym)
        assert phi_sym[0] == pytest.approx(phi_sym[1], abs=1e-12)


def test_known_game():
    """v(S) = 0.5 + 0.1·|S ∩ {0}| + 0.2·[1, 2 both in S]: φ = (0.1, 0.1, 0.1)."""
    masks = np.arange(8)
    v = 0.5 + 0.1 * (masks & 1) + 0.2 * ((masks & 6) == 6)
    np.testing.assert_allclose(exact_shapley(v), [0.1, 0.1, 0.1])


def test_value_table_from_rows_in_any_order():
    rng = np.random.default_rng(0)
    full = random_game(4, 1)
    masks = rng.permutation(np.arange(1, 16))
    np.testing.assert_array_equal(value_table(masks, full[masks], 4), full)
    assert value_table(masks, full[masks], 4)[0] == EMPTY_VALUE
    with pytest.raises(LayerleakError, match="have no value"):
        value_table(masks[1:], full[masks[1:]], 4)
    with pytest.raises(LayerleakError, match="more than once"):
        value_table(np.r_[masks, masks[0]], np.r_[full[masks], 0.7], 4)
    with pytest.raises(LayerleakError, match="outside"):
        value_table(np.r_[masks, 0], np.r_[full[masks], 0.5], 4)
    np.testing.assert_array_equal(value_table(np.r_[masks, 0], np.r_[full[masks], 0.5], 4, empty=None), full)
    with pytest.raises(LayerleakError, match="2\\^L"):
        exact_shapley(np.ones(6))
    with pytest.raises(LayerleakError, match="2\\^L"):
        with_empty(np.ones(6))

def test_popcount():
    masks = np.arange(5000, dtype=np.int64)
    assert np.array_equal(popcount(masks), [bin(m).count("1") for m in masks])


# ---------------------------------------------------------------------------- sampled estimator

WEIGHTS = np.array([0.9, -0.3, 0.5, 0.0, 1.2, 0.2, -0.1, 0.7, 0.4, 0.05])


def logistic_game(masks: np.ndarray) -> np.ndarray:
    """An attack-accuracy-like game on 10 players: σ(Σ w_i + interactions), v(∅) = σ(0) = 0.5."""
    bits = (np.asarray(masks)[:, None] >> np.arange(10)) & 1
    z = bits @ WEIGHTS + 0.8 * bits[:, 0] * bits[:, 4] - 0.6 * bits[:, 2] * bits[:, 7] * bits[:, 8]
    return 1.0 / (1.0 + np.exp(-z))


EXACT10 = exact_shapley(logistic_game(np.arange(2**10)))


class Recorder:
    def __init__(self):
        self.calls: list[np.ndarray] = []

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        assert masks.dtype == np.int64
        self.calls.append(masks.copy())
        return logistic_game(masks)


def test_sampled_within_its_standard_errors():
    rec = Recorder()
    est = sampled_shapley(rec, 10, max_permutations=400, seed=0)
    assert est.n_permutations == 400
    assert np.all(np.abs(est.values - EXACT10) <= 3 * est.stderr)
    assert np.all(est.stderr < 0.02)
    asked = np.concatenate(rec.calls)
    assert len(np.unique(asked)) == len(asked)  # each coalition evaluated once
    np.testing.assert_array_equal(np.sort(np.r_[asked, 0]), est.evaluated_masks)
    np.testing.assert_allclose(est.evaluated_values, logistic_game(est.evaluated_masks))


def test_sampled_evaluates_only_what_its_orders_need():
    rec = Recorder()
    est = sampled_shapley(rec, 10, max_permutations=20, batch=10, seed=3)
    n_asked = sum(len(c) for c in rec.calls)
    assert len(rec.calls) == 2  # one batched call per round
    assert n_asked <= 20 * 9 < 2**10 - 1  # the full set and v(∅) are never asked twice; ∅ never
    assert 0 not in np.concatenate(rec.calls)
    assert est.evaluated_masks.size == n_asked + 1


def test_standard_errors_are_calibrated():
    """Across seeds, about 68% / 95% of the estimates lie within 1 / 2 standard errors."""
    runs = [sampled_shapley(logistic_game, 10, max_permutations=120, seed=s) for s in range(15)]
    live = EXACT10 != 0.0  # player 3 is a null player: every estimate is 0 (to rounding), stderr too
    assert all(np.all(np.abs(r.values[~live]) < 1e-15) and np.all(r.stderr[~live] < 1e-15) for r in runs)
    z = np.concatenate([(r.values[live] - EXACT10[live]) / r.stderr[live] for r in runs])
    assert 0.5 <= np.mean(np.abs(z) <= 1) <= 0.85
    assert np.mean(np.abs(z) <= 2) >= 0.85


def test_sampled_is_deterministic_for_a_seed():
    a = sampled_shapley(logistic_game, 10, max_permutations=64, seed=7)
    b = sampled_shapley(logistic_game, 10, max_permutations=64, seed=7)
    c = sampled_shapley(logistic_game, 10, max_permutations=64, seed=8)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.evaluated_masks, b.evaluated_masks)
    assert not np.array_equal(a.values, c.values)


def test_stopping_rule():
    loose = sampled_shapley(logistic_game, 10, max_permutations=5000, tol=0.02, batch=16, seed=1)
    assert loose.n_permutations < 5000
    assert loose.n_permutations >= 32  # min_permutations
    assert np.all(loose.stderr < 0.02)
    tighter = sampled_shapley(logistic_game, 10, max_permutations=5000, tol=0.005, batch=16, seed=1)
    assert tighter.n_permutations > loose.n_permutations
    capped = sampled_shapley(logistic_game, 10, max_permutations=48, tol=1e-9, batch=16, seed=1)
    assert capped.n_permutations == 48


def test_without_antithetic_and_with_evaluated_empty_set():
    asked = []

    def fn(masks):
        asked.append(masks)
        return logistic_game(masks)

    est = sampled_shapley(fn, 10, max_permutations=300, antithetic=False, seed=2, empty_value=None)
    assert 0 in np.concatenate(asked)
    assert np.all(np.abs(est.values - EXACT10) <= 4 * est.stderr)
    assert est.values.sum() == pytest.approx(logistic_game(np.array([1023]))[0] - 0.5)  # efficiency holds per order


def test_sampled_small_game_converges_to_exact():
    v = random_game(3, 5)
    est = sampled_shapley(lambda m: v[m], 3, max_permutations=600, seed=0)
    np.testing.assert_allclose(est.values, exact_shapley(v), atol=4 * est.stderr.max() + 1e-12)
    assert math.isfinite(est.stderr.max())


def test_sampled_rejects_bad_value_fn():
    with pytest.raises(LayerleakError, match="returned"):
        sampled_shapley(lambda m: np.zeros(len(m) + 1), 4, max_permutations=4)
    with pytest.raises(LayerleakError, match="non-finite"):
        sampled_shapley(lambda m: np.full(len(m), np.nan), 4, max_permutations=4)
