"""Bootstrap over audited samples, stratified by membership: intervals on every leakage number.

A replicate redraws the members from the members and the non-members from the non-members, with
replacement (multinomial counts, seeded), so every replicate keeps the pool's n_members and
n_non_members. The attack's out-of-fold scores stay fixed: the interval covers the evaluation
noise of the cross-fitted attack; what was resampled is written next to each number. Intervals
are 95% **percentile** intervals (the 2.5% and 97.5% quantiles of the B replicates).

Sweep: a replicate's v(S) for all coalitions at once is one matrix product of the bootstrap
weights (B x n) with the unpacked correctness (n x 2^L), chunked over coalitions; the Shapley
values of every replicate follow as V @ M with the Shapley weight matrix M (2^L x L).

    W = stratified_weights(y, replicates=1000, seed=0)                   # [B, n] counts
    m = bootstrap_metrics(y, scores, weights=W)                          # {"accuracy": {"value", "ci95", ...}, ...}
    sb = bootstrap_sweep(packed, masks, y, n_players=L, weights=W)       # v(S) and Shapley, all replicates
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import LayerleakError
from ..metrics import LOW_FPRS
from ..shapley import EMPTY_VALUE, popcount
from .crossfit import check_membership, unpack_correct
from .lowfpr import tpr_at_fpr_entry

LEVEL = 0.95
LINEAR_METRICS = ("accuracy", "balanced_accuracy")  # means of per-sample correctness: matrix products


def stratified_weights(y: np.ndarray, replicates: int = 1000, seed: int = 0) -> np.ndarray:
    """Bootstrap counts float32 [B, n]: each row draws n_members members and n_non_members non-members
    with replacement (a multinomial draw within each stratum); row sums per stratum are fixed."""
    y = check_membership(y)
    if replicates < 1:
        raise LayerleakError(f"bootstrap replicates must be >= 1, got {replicates}")
    rng = np.random.default_rng(seed)
    W = np.zeros((replicates, y.size), dtype=np.float32)
    for cls in (False, True):
        idx = np.flatnonzero(y == cls)
        m = idx.size
        draws = rng.integers(0, m, size=(replicates, m)) + (np.arange(replicates) * m)[:, None]
        W[:, idx] = np.bincount(draws.ravel(), minlength=replicates * m).reshape(replicates, m)
    return W


def resampling(y: np.ndarray, replicates: int, seed: int) -> dict:
    """What an interval resampled, written next to it."""
    y = np.asarray(y, dtype=bool)
    return {"unit": "audited sample", "scheme": "bootstrap stratified by membership", "replicates": int(replicates),
            "interval": "percentile", "seed": int(seed), "members": int(y.sum()), "non_members": int((~y).sum())}


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> np.ndarray:
    """[2, ...]: lower and upper percentile bounds over axis 0."""
    a = (1.0 - level) / 2
    return np.quantile(np.asarray(replicates, dtype=np.float64), [a, 1.0 - a], axis=0)


def entry(value: float, ci: tuple[float, float] | np.ndarray | None, n: int, how: dict) -> dict:
    """One reported number: {"value", "ci95": [lo, hi], "n", "resampling"}."""
    return {"value": None if value is None else float(value),
            "ci95": None if ci is None else [float(ci[0]), float(ci[1])], "n": int(n), "resampling": how}


def bootstrap_p_value(replicates: np.ndarray, null: float = 0.0) -> np.ndarray:
    """Two-sided bootstrap p-value of "the statistic equals ``null``" per column: twice the smaller
    tail share of replicates at or beyond ``null`` (+1 in numerator and denominator), capped at 1.
    Below 0.05 about when the 95% percentile interval excludes ``null``."""
    r = np.asarray(replicates, dtype=np.float64)
    B = r.shape[0]
    low = (1 + (r <= null).sum(axis=0)) / (B + 1)
    high = (1 + (r >= null).sum(axis=0)) / (B + 1)
    return np.minimum(1.0, 2 * np.minimum(low, high))


def linear_metric(W: np.ndarray, C: np.ndarray, y: np.ndarray, metric: str) -> np.ndarray:
    """Accuracy or balanced accuracy [B, K] of K correctness rows C [K, n] under weight rows W [B, n].

    Integer counts times 0/1 sum exactly in float32 (below 2^24), so the products are exact and only
    the division by each replicate's stratum totals rounds.
    """
    C = np.asarray(C, dtype=W.dtype)
    if metric == "accuracy":
        return (W @ C.T).astype(np.float64) / W.sum(axis=1, dtype=np.float64)[:, None]
    if metric == "balanced_accuracy":
        out = 0.0
        for cls in (False, True):
            part = y == cls
            Wp = W[:, part]
            out = out + 0.5 * (Wp @ C[:, part].T).astype(np.float64) / Wp.sum(axis=1, dtype=np.float64)[:, None]
        return out
    raise LayerleakError(f"sweep bootstrap metric {metric!r}; allowed: {', '.join(LINEAR_METRICS)}")


def weighted_auc(y: np.ndarray, scores: np.ndarray, W: np.ndarray) -> np.ndarray:
    """AUC (ties count half) of one score vector under each weight row of W [B, n]: float64 [B].

    Equals sklearn's roc_auc_score(y, scores, sample_weight=W[b]); O(B·n) after one sort.
    """
    y = np.asarray(y, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    ss, ys = s[order], y[order]
    starts = np.r_[0, np.flatnonzero(ss[1:] != ss[:-1]) + 1]
    Ws = np.atleast_2d(W)[:, order].astype(np.float64)
    pos = np.add.reduceat(Ws * ys, starts, axis=1)
    neg = np.add.reduceat(Ws * ~ys, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    return (pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))


def bootstrap_metrics(y: np.ndarray, scores: np.ndarray, replicates: int = 1000, seed: int = 0,
                      weights: np.ndarray | None = None, fprs: dict[str, float] = LOW_FPRS,
                      raw: np.ndarray | None = None) -> dict[str, dict]:
    """Accuracy, balanced accuracy, FAR (margin >= 0 predicts a member), AUC with bootstrap intervals;
    TPR at each FPR in ``fprs`` with an exact binomial interval where measurable (see lowfpr).

    ``weights`` (from :func:`stratified_weights`) overrides ``replicates``/``seed`` so several
    attacks on the same samples share replicates (paired comparisons). ``raw``: the threshold-free
    metrics (AUC, TPR at FPR) read these scores instead of the margins (a calibrated attack's raw scores).
    """
    y = check_membership(y)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size != y.size or np.isnan(s).any():
        raise LayerleakError(f"bootstrap: {s.size} scores (NaN not allowed) for {y.size} samples")
    W = stratified_weights(y, replicates, seed) if weights is None else np.asarray(weights)
    how = resampling(y, W.shape[0], seed)
    pred = s >= 0
    correct = (pred == y).astype(np.float64)
    out = {}
    for metric in LINEAR_METRICS:
        reps = linear_metric(W, correct[None, :], y, metric)[:, 0]
        point = linear_metric(np.ones((1, y.size), W.dtype), correct[None, :], y, metric)[0, 0]
        out[metric] = entry(point, percentile_interval(reps), y.size, how)
    fp = (pred & ~y).astype(np.float64)
    far_reps = (W[:, ~y].astype(np.float64) @ fp[~y]) / W[:, ~y].sum(axis=1)
    out["far"] = entry(fp[~y].mean(), percentile_interval(far_reps), int((~y).sum()), how)
    if raw is not None:
        s = np.asarray(raw, dtype=np.float64).ravel()
        if s.size != y.size or np.isnan(s).any():
            raise LayerleakError(f"bootstrap: {s.size} raw scores (NaN not allowed) for {y.size} samples")
    auc_point = float(weighted_auc(y, s, np.ones((1, y.size)))[0])
    out["auc"] = entry(auc_point, percentile_interval(weighted_auc(y, s, W)), y.size, how)
    for key, f in fprs.items():
        out[key] = tpr_at_fpr_entry(y, s, f)
    return out


def paired_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, W: np.ndarray, how: dict) -> dict[str, dict]:
    """Attack a minus attack b on the same audited samples (out-of-fold margins), accuracy and AUC, with
    percentile intervals and two-sided p-values from the same bootstrap weights ``W`` (paired); ``how``
    is W's resampling record."""
    y = check_membership(y)
    how = {**how, "paired": True}
    ones = np.ones((1, y.size), W.dtype)
    out = {}
    for metric, fn in (("accuracy", lambda s, w: linear_metric(w, ((np.asarray(s) >= 0) == y)[None, :], y, "accuracy")[:, 0]),
                       ("auc", lambda s, w: weighted_auc(y, s, w))):
        reps = fn(a, W) - fn(b, W)
        point = float(fn(a, ones)[0] - fn(b, ones)[0])
        out[metric] = {**entry(point, percentile_interval(reps), y.size, how), "p_value": float(bootstrap_p_value(reps[:, None])[0])}
    return out


def shapley_weight_matrix(n_players: int) -> np.ndarray:
    """M [2^L, L] with phi = v @ M for a full value table v (index = coalition bitmask):
    M[S, i] = w(|S|-1) if i in S, else -w(|S|), w(s) = s!(L-s-1)!/L!."""
    if not 1 <= n_players <= 24:
        raise LayerleakError(f"exact Shapley needs 1 <= L <= 24 players, got {n_players}")
    w = np.array([1.0 / (n_players * math.comb(n_players - 1, s)) for s in range(n_players)])
    masks = np.arange(1 << n_players, dtype=np.int64)
    size = popcount(masks)
    M = np.empty((masks.size, n_players))
    for i in range(n_players):
        has = ((masks >> i) & 1).astype(bool)
        M[has, i] = w[size[has] - 1]
        M[~has, i] = -w[np.minimum(size[~has], n_players - 1)]
    return M


@dataclass(frozen=True)
class SweepBootstrap:
    """All v(S) and Shapley values of one cross-fitted sweep, with their bootstrap replicates.

    ``values`` [2^L] v(S) at index S (v(∅) included); ``replicates`` [B, 2^L]; ``shapley`` [L];
    ``shapley_replicates`` [B, L]; ``resampling`` describes the bootstrap; ``metric`` the v(S).
    """

    values: np.ndarray
    replicates: np.ndarray
    shapley: np.ndarray
    shapley_replicates: np.ndarray
    n: int
    metric: str
    resampling: dict

    @property
    def n_players(self) -> int:
        return self.shapley.size


def _table_rows(masks: np.ndarray, n_players: int) -> np.ndarray:
    """Positions of masks 1..2^L-1 among the given rows; every non-empty coalition exactly once."""
    masks = np.asarray(masks, dtype=np.int64).ravel()
    size = 1 << n_players
    if masks.size != size - 1 or np.unique(masks).size != masks.size or masks.min() < 1 or masks.max() >= size:
        raise LayerleakError(f"sweep bootstrap: need each of the {size - 1} non-empty coalitions of {n_players} "
                             f"players exactly once, got {masks.size} rows")
    return np.argsort(masks)


def bootstrap_sweep(packed: np.ndarray, masks: np.ndarray, y: np.ndarray, n_players: int, replicates: int = 1000,
                    seed: int = 0, weights: np.ndarray | None = None, metric: str = "accuracy",
                    empty: float = EMPTY_VALUE, empty_correct: np.ndarray | None = None,
                    chunk: int = 512) -> SweepBootstrap:
    """v(S) of every coalition and the exact Shapley values, for the point estimate and each replicate.

    ``packed`` uint8 [2^L-1, ceil(n/8)]: out-of-fold correctness of the coalition ``masks[i]`` (any
    order); ``metric`` accuracy or balanced_accuracy. v(∅) = ``empty``, or — with ``empty_correct``
    (bool [n], e.g. the loss baseline's out-of-fold correctness) — that attack's value in each
    replicate, so the Shapley values measure what the layers add beyond it.
    """
    y = check_membership(y)
    rows = _table_rows(masks, n_players)
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.ndim != 2 or packed.shape[1] != (y.size + 7) // 8:
        raise LayerleakError(f"sweep bootstrap: packed correctness {packed.shape} does not fit {y.size} samples")
    if metric not in LINEAR_METRICS:
        raise LayerleakError(f"sweep bootstrap metric {metric!r}; allowed: {', '.join(LINEAR_METRICS)}")
    W = stratified_weights(y, replicates, seed) if weights is None else np.asarray(weights, dtype=np.float32)
    ones = np.ones((1, y.size), dtype=np.float32)
    B, size = W.shape[0], 1 << n_players
    reps = np.empty((B, size))
    values = np.empty(size)
    for lo in range(0, size - 1, chunk):
        take = rows[lo:lo + chunk]
        C = unpack_correct(packed[take], y.size).astype(np.float32)  # [c, n]
        reps[:, 1 + lo:1 + lo + take.size] = linear_metric(W, C, y, metric)
        values[1 + lo:1 + lo + take.size] = linear_metric(ones, C, y, metric)[0]
    if empty_correct is None:
        reps[:, 0], values[0] = empty, empty
    else:
        e = np.asarray(empty_correct, dtype=bool).ravel().astype(np.float32)[None, :]
        reps[:, 0], values[0] = linear_metric(W, e, y, metric)[:, 0], linear_metric(ones, e, y, metric)[0, 0]
    M = shapley_weight_matrix(n_players)
    return SweepBootstrap(values, reps, values @ M, reps @ M, y.size, metric, resampling(y, B, seed))


def value_entries(sb: SweepBootstrap) -> list[dict]:
    """Every v(S) with its interval, for report.json: [{"coalition": S, "value", "ci95", "n", "resampling"}]."""
    ci = percentile_interval(sb.replicates)
    return [{"coalition": int(S), **entry(sb.values[S], ci[:, S], sb.n, sb.resampling)} for S in range(sb.values.size)]
