"""Several targets: the between-target mean with a t-interval (n = targets) and the ranking's stability.

Each target is trained on its own random half of the population pool, so targets are independent
draws of "a model trained this way": their spread is the variance the per-target bootstrap (over
one target's audited samples) cannot see.
"""

from __future__ import annotations

from itertools import combinations
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from ..errors import LayerleakError

LEVEL = 0.95


def between_targets(values: Sequence[float], level: float = LEVEL) -> dict:
    """Mean over targets with a t-interval, mean ± t_{T-1} · sd/√T; no interval with one target."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0 or not np.isfinite(v).all():
        raise LayerleakError(f"between_targets: need finite values, one per target (got {v.tolist()[:5]})")
    how = {"unit": "target", "scheme": "t-interval over independently trained targets", "replicates": None}
    if v.size < 2:
        return {"value": float(v[0]), "ci95": None, "n": 1, "resampling": how}
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return {"value": float(v.mean()), "ci95": [float(v.mean() - half), float(v.mean() + half)], "n": int(v.size),
            "resampling": how}


def combine_targets(per_target: Sequence[Mapping[str, Mapping]]) -> dict[str, dict]:
    """Between-target entries for every metric that has a value in every target's results
    (``{metric: {"value", ...}}`` per target, e.g. bootstrap_metrics' output)."""
    keys = [k for k in per_target[0] if all(k in t and t[k].get("value") is not None for t in per_target)]
    return {k: between_targets([t[k]["value"] for t in per_target]) for k in keys}


def ranking_stability(shapley: np.ndarray) -> dict:
    """Agreement of the players' ranking across targets, from Shapley values [T, L].

    Kendall's W (0 = no agreement, 1 = identical rankings; tie-corrected) with its chi-square
    p-value (T(L-1)W on L-1 degrees of freedom, an approximation), and the mean Spearman
    correlation over pairs of targets.
    """
    S = np.asarray(shapley, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] < 2 or S.shape[1] < 2:
        raise LayerleakError(f"ranking_stability: need Shapley values [targets >= 2, players >= 2], got {S.shape}")
    T, L = S.shape
    R = np.vstack([stats.rankdata(row) for row in S])
    dev = R.sum(axis=0) - T * (L + 1) / 2
    ties = sum(((c ** 3) - c).sum() for c in (np.unique(row, return_counts=True)[1] for row in R))
    denom = T ** 2 * (L ** 3 - L) - T * ties
    w = float(12 * (dev ** 2).sum() / denom) if denom > 0 else float("nan")
    chi2 = T * (L - 1) * w
    rhos = [stats.spearmanr(S[a], S[b]).statistic for a, b in combinations(range(T), 2)]
    return {"kendall_w": w, "kendall_w_p_value": float(stats.chi2.sf(chi2, L - 1)),
            "mean_pairwise_spearman": float(np.nanmean(rhos)), "n_targets": T, "n_players": L}
