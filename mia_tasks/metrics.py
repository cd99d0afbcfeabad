"""Membership-inference metrics in plain numpy: accuracy (the seed study's leakage), AUC, TPR at low FPR.

Conventions, shared by every attack: ``y_true`` is 1 for members, 0 for non-members; a higher score means
"more likely a member"; a sample is *predicted* a member when ``score >= threshold`` (the same rule as
the thresholds of :func:`roc_curve`, so the metrics at a ROC threshold are that ROC point).
Every function agrees with scikit-learn's counterpart (``roc_curve(drop_intermediate=False)``,
``roc_auc_score``, ``accuracy_score``, ``balanced_accuracy_score``); the tests check it.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import LayerleakError

# An FPR equal to the target up to rounding (3/300 vs 0.01) counts as within it.
_FPR_SLACK = 1e-12

LOW_FPRS = {"tpr@1%": 0.01, "tpr@0.1%": 0.001}


def _check(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise LayerleakError(f"metrics: {y.size} labels but {s.size} scores")
    if y.size == 0:
        raise LayerleakError("metrics: no samples to evaluate")
    if not np.isin(y, (0, 1)).all():
        raise LayerleakError("metrics: member labels must be 0/1 (or bool)")
    if np.isnan(s).any():
        raise LayerleakError(f"metrics: {int(np.isnan(s).sum())} attack scores are NaN")
    return y.astype(bool), s


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr) at every distinct score, highest threshold first, starting at (0, 0).

    ``thresholds[0]`` is +inf (nothing predicted a member); ``thresholds[i]`` predicts members where
    ``score >= thresholds[i]``. Tied scores enter together, so no point splits a tie. Equals
    ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``; with only one class present the
    undefined rate is NaN.
    """
    y, s = _check(y_true, scores)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    tps = np.r_[0, tps].astype(np.float64)
    fps = np.r_[0, fps].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tps / tps[-1] if tps[-1] > 0 else np.full_like(tps, np.nan)
        fpr = fps / fps[-1] if fps[-1] > 0 else np.full_like(fps, np.nan)
    return fpr, tpr, np.r_[np.inf, s[last_of_tie]]


def _auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return math.nan
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN when only one class is present."""
    fpr, tpr, _ = roc_curve(y_true, scores)
    return _auc(fpr, tpr)


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return math.nan
    ok = fpr <= target + _FPR_SLACK
    return float(tpr[ok].max())  # (0, 0) is always a point, so ok is never empty


def tpr_at_fpr(y_true: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """Largest TPR over the ROC points whose FPR is at most ``fpr``.

    Tied scores move together (a threshold cannot split a tie), so a tie that would carry the FPR
    above the target is left out whole; 0.0 when even the top-scored group holds too many
    non-members; NaN when only one class is present.
    """
    if not 0.0 <= fpr <= 1.0:
        raise LayerleakError(f"tpr_at_fpr: target FPR must lie in [0, 1], got {fpr}")
    f, t, _ = roc_curve(y_true, scores)
    return _tpr_at(f, t, fpr)


def attack_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.0) -> dict[str, float]:
    """All metrics of one attack on one evaluation set.

    ``accuracy`` = (TP+TN)/all at ``threshold`` (members predicted where ``score >= threshold``; the
    seed study's privacy leakage); ``balanced_accuracy`` = (TPR+TNR)/2 there; ``far`` = the false-alarm
    (false-positive) rate there; ``auc``, ``tpr@1%``, ``tpr@0.1%`` are threshold-free (ROC).
    """
    y, s = _check(y_true, scores)
    pred = s >= threshold
    pos, neg = int(y.sum()), int((~y).sum())
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    tn = neg - fp
    tpr_thr = tp / pos if pos else math.nan
    far = fp / neg if neg else math.nan
    recalls = [r for r in (tpr_thr, tn / neg if neg else math.nan) if not math.isnan(r)]
    fpr, tpr, _ = roc_curve(y, s)
    out = {
        "accuracy": (tp + tn) / y.size,
        "balanced_accuracy": float(np.mean(recalls)),
        "auc": _auc(fpr, tpr),
    }
    for key, target in LOW_FPRS.items():
        out[key] = _tpr_at(fpr, tpr, target)
    out["far"] = far
    return out
