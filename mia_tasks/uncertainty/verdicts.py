"""Verdicts, in order, from the bootstrap: is there leakage at all, which players, which differences.

1. Leakage detected iff the all-layer attack's AUC interval lies wholly above 0.5 (the loss baseline
   is judged the same way and reported beside it). If not: "no measurable leakage", and NO
   per-layer claim — no player is flagged, no difference is significant, the params/depth test
   is not run. This gate is what keeps the family-wise error on a non-leaking model at the
   level of the one AUC test.
2. Players: ``excludes_zero`` reads the player's own 95% Shapley interval; ``flagged`` is the
   family-wise claim — Holm-adjusted bootstrap p-value < alpha over the L players.
3. Pairwise differences of Shapley values (paired: the same replicates): bootstrap p-values,
   Holm-adjusted over the L(L-1)/2 pairs.
4. The seed study's "leakage follows parameter count and depth": ONE joint test — R² of the
   least-squares regression of the players' Shapley values on log10(parameters) and depth, with a
   permutation p-value (Shapley values permuted over players; exact when L! is small).
"""

from __future__ import annotations

import math
from itertools import combinations, permutations
from typing import Sequence

import numpy as np

from ..errors import LayerleakError
from .bootstrap import SweepBootstrap, bootstrap_p_value, entry, percentile_interval

ALPHA = 0.05
CHANCE_AUC = 0.5


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values: sorted p_(i) times (m - i), running maximum, capped at 1."""
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.maximum.accumulate(np.minimum(1.0, p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adj
    return out


def above_chance(auc: dict) -> bool:
    """True when an AUC entry's 95% interval lies wholly above 0.5."""
    return auc.get("ci95") is not None and auc["ci95"][0] > CHANCE_AUC


def leakage_verdict(attack_auc: dict, baseline_auc: dict | None = None) -> dict:
    """Step 1: {"leakage_detected", "statement", "attack_auc", "baseline_auc", "baseline_above_chance"}."""
    detected = above_chance(attack_auc)
    return {
        "leakage_detected": detected,
        "statement": ("leakage detected: the all-layer attack's AUC interval lies above 0.5" if detected else
                      "no measurable leakage: the all-layer attack's AUC interval includes 0.5; no per-layer claim is made"),
        "attack_auc": attack_auc,
        "baseline_auc": baseline_auc,
        "baseline_above_chance": None if baseline_auc is None else above_chance(baseline_auc),
    }


def player_verdicts(sb: SweepBootstrap, names: Sequence[str], detected: bool, alpha: float = ALPHA) -> dict:
    """Steps 2-3: per player its Shapley entry, ``excludes_zero``, p-values and ``flagged``; every
    pairwise difference with its interval, p-values and ``significant`` (both False unless ``detected``)."""
    names = list(names)
    if len(names) != sb.n_players:
        raise LayerleakError(f"{len(names)} player names for {sb.n_players} Shapley values")
    ci = percentile_interval(sb.shapley_replicates)
    p = bootstrap_p_value(sb.shapley_replicates)
    p_holm = holm(p)
    players = []
    for i, name in enumerate(names):
        players.append({"player": name, "shapley": entry(sb.shapley[i], ci[:, i], sb.n, sb.resampling),
                        "excludes_zero": bool(ci[0, i] > 0 or ci[1, i] < 0), "p_value": float(p[i]),
                        "p_holm": float(p_holm[i]), "flagged": bool(detected and p_holm[i] < alpha)})
    pairs = list(combinations(range(len(names)), 2))
    diffs = []
    if pairs:
        a, b = np.array(pairs).T
        d_reps = sb.shapley_replicates[:, a] - sb.shapley_replicates[:, b]
        d_ci = percentile_interval(d_reps)
        d_p = bootstrap_p_value(d_reps)
        d_holm = holm(d_p)
        for j, (i, k) in enumerate(pairs):
            diffs.append({"a": names[i], "b": names[k],
                          "difference": entry(sb.shapley[i] - sb.shapley[k], d_ci[:, j], sb.n, sb.resampling),
                          "p_value": float(d_p[j]), "p_holm": float(d_holm[j]),
                          "significant": bool(detected and d_holm[j] < alpha)})
    return {"players": players, "differences": diffs, "alpha": alpha,
            "correction": (f"Holm over the {len(names)} players' Shapley values and, separately, over the "
                           f"{len(pairs)} pairwise differences; two-sided bootstrap p-values; no claim unless "
                           "leakage is detected first")}


def _r_squared(Xd: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """R² of the least-squares fit of each column of Y [L, P] on the design Xd [L, 3]."""
    coef, *_ = np.linalg.lstsq(Xd, Y, rcond=None)
    resid = Y - Xd @ coef
    tot = ((Y - Y.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, 1.0 - (resid ** 2).sum(axis=0) / tot, 0.0)


def params_depth_test(shapley: Sequence[float], params: Sequence[float], depth: Sequence[float],
                      n_permutations: int = 9999, seed: int = 0) -> dict:
    """One joint test of "Shapley value depends on parameter count and depth".

    Statistic: R² of shapley ~ 1 + log10(params) + depth (least squares); p-value: share of
    permutations of the Shapley values over players with R² at least the observed (all L!
    permutations when L! <= n_permutations + 1, else n_permutations random ones plus the observed).
    Also the standardised coefficients (sign and size of each predictor, given the other).
    """
    y = np.asarray(shapley, dtype=np.float64).ravel()
    lp = np.log10(np.asarray(params, dtype=np.float64).ravel())
    dep = np.asarray(depth, dtype=np.float64).ravel()
    L = y.size
    if lp.size != L or dep.size != L:
        raise LayerleakError(f"params_depth_test: {L} Shapley values, {lp.size} parameter counts, {dep.size} depths")
    Xd = np.column_stack([np.ones(L), lp, dep])
    base = {"test": "R² of shapley ~ log10(params) + depth, permutation p-value", "n_players": L,
            "correction": "one joint test of both predictors (no per-predictor tests, so no multiplicity correction)"}
    if L < 4 or np.linalg.matrix_rank(Xd) < 3:
        return {**base, "tested": False, "reason": "not testable: needs >= 4 players whose log-params and depth are not collinear"}
    r2 = float(_r_squared(Xd, y[:, None])[0])
    if math.factorial(L) <= n_permutations + 1:
        perms = np.array(list(permutations(range(L))))
        null = _r_squared(Xd, y[perms].T)
        p, how = float((null >= r2 - 1e-12).mean()), f"exact, all {len(perms)} permutations"
    else:
        rng = np.random.default_rng(seed)
        perms = rng.permuted(np.tile(np.arange(L), (n_permutations, 1)), axis=1)
        null = _r_squared(Xd, y[perms].T)
        p, how = float((1 + (null >= r2 - 1e-12).sum()) / (n_permutations + 1)), f"{n_permutations} random permutations, seed {seed}"
    z = (Xd[:, 1:] - Xd[:, 1:].mean(axis=0)) / Xd[:, 1:].std(axis=0)
    ys = y.std()
    coef = np.linalg.lstsq(np.column_stack([np.ones(L), z]), (y - y.mean()) / (ys if ys > 0 else 1.0), rcond=None)[0]
    return {**base, "tested": True, "r_squared": r2, "p_value": p, "permutations": how,
            "std_coef_log10_params": float(coef[1]), "std_coef_depth": float(coef[2])}


def verdicts(sb: SweepBootstrap, names: Sequence[str], attack_auc: dict, baseline_auc: dict | None = None,
             params: Sequence[float] | None = None, depth: Sequence[float] | None = None,
             alpha: float = ALPHA, n_permutations: int = 9999, seed: int = 0) -> dict:
    """All verdicts in order; the JSON block a report shows (``leakage_detected`` at the top)."""
    out = leakage_verdict(attack_auc, baseline_auc)
    out.update(player_verdicts(sb, names, out["leakage_detected"], alpha))
    if params is not None and depth is not None:
        out["params_depth"] = (params_depth_test(sb.shapley, params, depth, n_permutations, seed)
                               if out["leakage_detected"] else
                               {"tested": False, "reason": "not tested: no measurable leakage"})
    out["players_flagged"] = [p["player"] for p in out["players"] if p["flagged"]]
    return out
