"""Several targets pooled: one ROC over every (target, audited sample) score, with a two-way bootstrap.

T targets score the same n audited samples, each target with its own membership. Pooling their scores,
as LiRA's reference code evaluates several target models, gives T·n scores and T·n/2 non-member scores,
so TPR at a low FPR becomes measurable (lowfpr's rule: at least 10/f pooled non-members) where one
target's n cannot measure it. The pooled scores are not independent: a sample's scores under different
targets share the image, a target's scores share the model. A replicate therefore redraws both, the
targets with replacement and the audited samples with replacement, and weighs score (t, i) by
count_t · count_i (a two-way "product" bootstrap, conservative when both effects are present); the
threshold at the FPR is read off each replicate's own weighted non-members. Every attack given is
evaluated under the same replicates, so differences between attacks (paired) get intervals too.

    m = pooled_metrics({"lira": S_lira, "loss-threshold": S_loss}, member, replicates=1000, seed=0)
    m["attacks"]["lira"]["tpr@1%"], m["differences"]["lira - loss-threshold"]["tpr@1%"]
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import LayerleakError
from ..metrics import LOW_FPRS
from .bootstrap import entry, percentile_interval, weighted_auc
from .lowfpr import min_nonmembers

_FPR_SLACK = 1e-12  # as metrics.tpr_at_fpr: an FPR equal to the target up to rounding is within it
_CHUNK = 64  # replicates per block: [64, T·n] float64 stays small for T·n in the 100k


def _tie_blocks(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted (members, non-members) [B, G] at each distinct score, highest score first."""
    order = np.argsort(-s, kind="mergesort")
    ss, ys = s[order], y[order]
    starts = np.r_[0, np.flatnonzero(ss[1:] != ss[:-1]) + 1]
    Ws = W[:, order]
    return np.add.reduceat(Ws * ys, starts, axis=1), np.add.reduceat(Ws * ~ys, starts, axis=1)


def weighted_tpr_at_fpr(y: np.ndarray, scores: np.ndarray, W: np.ndarray, fpr: float) -> np.ndarray:
    """TPR at FPR ``fpr`` of one score vector under each weight row of W [B, N]: float64 [B].

    The largest TPR over the ROC points (ties never split) whose weighted FPR is at most ``fpr``; with unit
    weights it equals metrics.tpr_at_fpr, with integer weights the same on the duplicated samples."""
    y = np.asarray(y, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    pos, neg = _tie_blocks(y, s, np.atleast_2d(np.asarray(W, dtype=np.float64)))
    tpr = np.cumsum(pos, axis=1) / pos.sum(axis=1, keepdims=True)
    fprs = np.cumsum(neg, axis=1) / neg.sum(axis=1, keepdims=True)
    k = (fprs <= fpr + _FPR_SLACK).sum(axis=1)  # fprs is non-decreasing: the points within are a prefix
    return np.where(k > 0, tpr[np.arange(tpr.shape[0]), np.maximum(k - 1, 0)], 0.0)


def two_way_weights(n_targets: int, n_samples: int, replicates: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap counts (targets [B, T], samples [B, n]): each row a multinomial redraw with replacement."""
    rng = np.random.default_rng([seed, 0x706F6F6C])  # 'pool': its own stream, apart from the per-target bootstrap
    Wt = rng.multinomial(n_targets, np.full(n_targets, 1.0 / n_targets), size=replicates).astype(np.float64)
    Ws = rng.multinomial(n_samples, np.full(n_samples, 1.0 / n_samples), size=replicates).astype(np.float64)
    return Wt, Ws


def _statistics(y: np.ndarray, s: np.ndarray, W: np.ndarray, fprs: Mapping[str, float]) -> dict[str, np.ndarray]:
    """AUC and each measurable TPR at FPR of pooled scores under weight rows W [B, N]."""
    out = {"auc": weighted_auc(y, s, W)}
    for key, f in fprs.items():
        out[key] = weighted_tpr_at_fpr(y, s, W, f)
    return out


def pooled_metrics(scores: Mapping[str, np.ndarray], member: np.ndarray, replicates: int = 1000, seed: int = 0,
                   fprs: Mapping[str, float] = LOW_FPRS, baseline: str | None = None) -> dict:
    """AUC and TPR at each FPR in ``fprs`` of every attack's pooled scores, and each attack's difference from
    ``baseline`` (default: the first one named), all with 95% percentile intervals from one two-way bootstrap (targets × samples).

    ``scores``: attack name -> float [T, n] (row t: target t's out-of-fold scores of the audited samples);
    ``member`` bool [T, n]: membership of each sample for each target. TPR at f needs >= 10/f pooled
    non-members (lowfpr's rule); otherwise its entry says why there is no number.
    """
    if not scores:
        raise LayerleakError("pooled metrics: no attack scores given")
    first = next(iter(scores)) if baseline is None else baseline
    if first not in scores:
        raise LayerleakError(f"pooled metrics: baseline {first!r} is not among the attacks ({', '.join(scores)})")
    M = np.asarray(member, dtype=bool)
    if M.ndim != 2 or M.size == 0:
        raise LayerleakError(f"pooled metrics: membership must be [targets, samples], got shape {M.shape}")
    S = {name: np.asarray(v, dtype=np.float64) for name, v in scores.items()}
    for name, v in S.items():
        if v.shape != M.shape or np.isnan(v).any():
            raise LayerleakError(f"pooled metrics: {name}'s scores {v.shape} (NaN not allowed) do not fit membership {M.shape}")
    if (M.sum(axis=1) == 0).any() or (M.sum(axis=1) == M.shape[1]).any():
        raise LayerleakError("pooled metrics: every target needs both members and non-members among the audited samples")
    T, n = M.shape
    y = M.ravel()
    n_neg = int((~y).sum())
    measurable = {k: f for k, f in fprs.items() if n_neg >= min_nonmembers(f)}
    how = {"unit": "target and audited sample", "scheme": "two-way bootstrap: targets and audited samples each redrawn "
           "with replacement, score (t, i) weighted by their counts; threshold re-read in each replicate",
           "replicates": int(replicates), "interval": "percentile", "seed": int(seed), "targets": T,
           "samples": n, "members": int(y.sum()), "non_members": n_neg}
    Wt, Ws = two_way_weights(T, n, replicates, seed)
    ones = np.ones((1, y.size))
    point = {name: {k: v[0] for k, v in _statistics(y, s.ravel(), ones, measurable).items()} for name, s in S.items()}
    reps: dict[str, dict[str, list]] = {name: {} for name in S}
    for lo in range(0, replicates, _CHUNK):
        W = (Wt[lo:lo + _CHUNK, :, None] * Ws[lo:lo + _CHUNK, None, :]).reshape(-1, T * n)
        for name, s in S.items():
            for k, v in _statistics(y, s.ravel(), W, measurable).items():
                reps[name].setdefault(k, []).append(v)
    R = {name: {k: np.concatenate(v) for k, v in r.items()} for name, r in reps.items()}

    def entries(value: Mapping[str, float], replicates_of: Mapping[str, np.ndarray]) -> dict:
        out = {"auc": entry(value["auc"], percentile_interval(replicates_of["auc"]), y.size, how)}
        for key, f in fprs.items():
            if key in measurable:
                out[key] = {**entry(value[key], percentile_interval(replicates_of[key]), int(y.sum()), how), "fpr": f,
                            "measurable": True}
            else:
                out[key] = {"value": None, "ci95": None, "n": int(y.sum()), "fpr": f, "measurable": False,
                            "reason": f"not measurable (needs >= {min_nonmembers(f)} pooled non-members, has {n_neg})"}
        return out

    return {
        "targets": T, "samples": n, "pairs": int(y.size), "members": int(y.sum()), "non_members": n_neg,
        "resampling": how, "baseline": first,
        "attacks": {name: entries(point[name], R[name]) for name in S},
        "differences": {f"{name} - {first}": entries({k: point[name][k] - point[first][k] for k in point[name]},
                                                     {k: R[name][k] - R[first][k] for k in R[name]})
                        for name in S if name != first},
    }
