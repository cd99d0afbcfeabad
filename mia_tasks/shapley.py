"""Shapley values of layers (players) from the attack accuracy v(S) of every coalition S.

Coalitions are bitmasks: bit i set = player i in S. A value table holds v(S) at index S for all 2^L
masks. The seed study's convention: the empty coalition is a coin flip, v(∅) = ``EMPTY_VALUE`` = 0.5.

    table = value_table(rows["coalition"], rows["accuracy"], n_players=L)   # raises if a mask is missing
    phi = exact_shapley(table)                                              # O(L·2^L)
    est = sampled_shapley(fit_masks, L, max_permutations=2000, tol=0.002, seed=0)  # large L
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import LayerleakError

EMPTY_VALUE = 0.5


def popcount(masks: np.ndarray) -> np.ndarray:
    """Number of set bits of each (non-negative) int64 mask."""
    m = np.asarray(masks, dtype=np.int64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(m).astype(np.int64)
    out = np.zeros(m.shape, dtype=np.int64)
    m = m.copy()
    while m.any():
        out += m & 1
        m >>= 1
    return out


def _n_players(n_values: int) -> int:
    n_players = n_values.bit_length() - 1
    if n_values < 1 or n_values != 1 << n_players:
        raise LayerleakError(f"a value table needs 2^L entries (one per coalition), got {n_values}")
    return n_players


def with_empty(values_without_empty: np.ndarray, empty: float = EMPTY_VALUE) -> np.ndarray:
    """Full table from v(S) for masks 1 .. 2^L-1 in order: prepends v(∅) = ``empty``."""
    v = np.asarray(values_without_empty, dtype=np.float64).ravel()
    _n_players(v.size + 1)
    return np.concatenate([[empty], v])


def value_table(masks: np.ndarray, values: np.ndarray, n_players: int, empty: float | None = EMPTY_VALUE) -> np.ndarray:
    """The 2^L table of v(S) from (mask, value) rows in any order.

    With ``empty`` set, v(∅) is that value and the rows must not contain mask 0; with ``empty=None``
    mask 0 must be among the rows. A missing, repeated or out-of-range mask is a LayerleakError.
    """
    masks = np.asarray(masks, dtype=np.int64).ravel()
    values = np.asarray(values, dtype=np.float64).ravel()
    if masks.shape != values.shape:
        raise LayerleakError(f"value_table: {masks.size} coalitions but {values.size} values")
    if not 0 <= n_players <= 30:
        raise LayerleakError(f"value_table: n_players must lie in [0, 30] for an exact table, got {n_players}")
    size = 1 << n_players
    lo = 0 if empty is None else 1
    bad = masks[(masks < lo) | (masks >= size)]
    if bad.size:
        raise LayerleakError(f"value_table: coalition {int(bad[0])} is outside [{lo}, {size}) for {n_players} players")
    table = np.full(size, np.nan)
    seen = np.zeros(size, dtype=bool)
    if np.unique(masks).size != masks.size:
        uniq, counts = np.unique(masks, return_counts=True)
        raise LayerleakError(f"value_table: coalition {int(uniq[counts > 1][0])} appears more than once")
    table[masks] = values
    seen[masks] = True
    if empty is not None:
        table[0] = empty
        seen[0] = True
    missing = np.flatnonzero(~seen)
    if missing.size:
        raise LayerleakError(
            f"value_table: {missing.size} of {size} coalitions have no value, e.g. {missing[:5].tolist()}; "
            "finish the sweep first")
    if np.isnan(table).any():
        raise LayerleakError(f"value_table: coalition {int(np.flatnonzero(np.isnan(table))[0])} has a NaN value")
    return table


def _weights(n_players: int) -> np.ndarray:
    """|S|!(L-|S|-1)!/L! for |S| = 0 .. L-1, as 1 / (L · C(L-1, |S|))."""
    return np.array([1.0 / (n_players * math.comb(n_players - 1, s)) for s in range(n_players)])


def exact_shapley(values: np.ndarray) -> np.ndarray:
    """Exact Shapley values of the L players from the full 2^L table ``values[mask] = v(S)``.

    φ_i = Σ_{S ∌ i} |S|!(L-|S|-1)!/L! · (v(S ∪ {i}) − v(S)), vectorised over S for each player:
    O(L·2^L) time. Efficiency holds: Σ φ_i = v(all) − v(∅).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    n_players = _n_players(v.size)
    if n_players == 0:
        return np.zeros(0)
    masks = np.arange(v.size, dtype=np.int64)
    weight_of = _weights(n_players)[np.minimum(popcount(masks), n_players - 1)]
    phi = np.empty(n_players)
    for i in range(n_players):
        bit = np.int64(1) << i
        without = masks[(masks & bit) == 0]
        phi[i] = np.dot(weight_of[without], v[without | bit] - v[without])
    return phi


@dataclass(frozen=True)
class SampledShapley:
    """A permutation-sampling estimate.

    ``values``/``stderr`` per player; ``n_permutations`` used; ``evaluated_masks`` (sorted) and
    ``evaluated_values``: every coalition the estimate asked ``value_fn`` for, once each (v(∅) is
    included when it was given as ``empty_value`` rather than evaluated).
    """

    values: np.ndarray
    stderr: np.ndarray
    n_permutations: int
    evaluated_masks: np.ndarray
    evaluated_values: np.ndarray


def sampled_shapley(
    value_fn: Callable[[np.ndarray], np.ndarray],
    n_players: int,
    *,
    max_permutations: int = 1000,
    tol: float | None = None,
    batch: int = 32,
    seed: int = 0,
    antithetic: bool = True,
    min_permutations: int = 32,
    empty_value: float | None = EMPTY_VALUE,
) -> SampledShapley:
    """Permutation-sampling Shapley estimate for games too large for the exact table.

    Each round draws ``batch`` random player orders (with ``antithetic``, half of them plus their
    reverses, which cancels much of the variance), gathers the prefix coalitions they need that are
    not cached yet, and evaluates those in ONE call ``value_fn(masks: int64[m]) -> float[m]`` (so a
    caller can fit them in one batch). The marginal contribution of a player in an order is
    v(prefix + player) − v(prefix); the estimate is their mean, its standard error the std of the
    independent units (one order, or one antithetic pair averaged) / sqrt(#units). Stops when every
    player's standard error is below ``tol`` (once at least ``min_permutations`` were used) or at
    ``max_permutations``. v(∅) = ``empty_value`` unless that is None (then value_fn is asked for
    mask 0 too). Deterministic for a given seed and batch.
    """
    if n_players < 1 or n_players > 62:
        raise LayerleakError(f"sampled_shapley: n_players must lie in [1, 62], got {n_players}")
    if max_permutations < 1 or batch < 1:
        raise LayerleakError("sampled_shapley: max_permutations and batch must be >= 1")
    if antithetic:
        batch += batch % 2
        max_permutations += max_permutations % 2
    rng = np.random.default_rng(seed)
    cache: dict[int, float] = {}
    if empty_value is not None:
        cache[0] = float(empty_value)
    units: list[np.ndarray] = []
    used = 0
    values = stderr = np.zeros(n_players)
    while used < max_permutations:
        b = min(batch, max_permutations - used)
        if antithetic:
            half = rng.permuted(np.tile(np.arange(n_players), (b // 2, 1)), axis=1)
            perms = np.concatenate([half, half[:, ::-1]])
        else:
            perms = rng.permuted(np.tile(np.arange(n_players), (b, 1)), axis=1)
        bits = np.int64(1) << perms.astype(np.int64)
        after = np.cumsum(bits, axis=1)
        before = after - bits
        need = np.setdiff1d(np.union1d(after.ravel(), before.ravel()), np.fromiter(cache, dtype=np.int64, count=len(cache)))
        if need.size:
            got = np.asarray(value_fn(need.astype(np.int64)), dtype=np.float64).ravel()
            if got.shape != need.shape:
                raise LayerleakError(f"sampled_shapley: value_fn returned {got.size} values for {need.size} coalitions")
            if not np.isfinite(got).all():
                raise LayerleakError("sampled_shapley: value_fn returned a non-finite value")
            cache.update(zip(need.tolist(), got.tolist()))
        lookup = np.vectorize(cache.__getitem__, otypes=[np.float64])
        contrib = lookup(after) - lookup(before)
        marg = np.empty_like(contrib)
        np.put_along_axis(marg, perms, contrib, axis=1)
        units.append((marg[: b // 2] + marg[b // 2:]) / 2 if antithetic else marg)
        used += b
        allu = np.concatenate(units)
        values = allu.mean(axis=0)
        stderr = allu.std(axis=0, ddof=1) / np.sqrt(allu.shape[0]) if allu.shape[0] > 1 else np.full(n_players, np.inf)
        if tol is not None and used >= min_permutations and np.all(stderr < tol):
            break
    masks = np.array(sorted(cache), dtype=np.int64)
    return SampledShapley(values, stderr, used, masks, np.array([cache[int(m)] for m in masks]))
