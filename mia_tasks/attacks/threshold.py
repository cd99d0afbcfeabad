"""Black-box baselines: threshold the target's loss or its confidence in the true label.

The threshold is the one that maximises accuracy on attack-train (midway between the two
attack-train scores where the best split falls; ties in accuracy go to the lowest threshold).
``confidence-threshold`` scores by a confidence column when the data has one, else by the
probability of the true label recovered from the cross-entropy loss, p_true = exp(-loss). That is a
monotone map of -loss, so without a confidence column both baselines rank, and classify, alike.
A NaN score (a NaN loss) counts as least likely a member.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import LayerleakError

if TYPE_CHECKING:
    from . import AttackData


def best_threshold(y: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy of ``score >= threshold`` on these rows.

    Candidates: -inf (all members), a point between each pair of adjacent distinct scores, +inf (none).
    """
    y = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        raise LayerleakError("threshold attack: no attack-train rows")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.flatnonzero(s[1:] != s[:-1])  # predicting the top (i+1) rows as members
    tp = np.cumsum(y)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    neg = int((~y).sum())
    correct = np.r_[neg, tp + (neg - fp), y.sum()]  # none, each split, all
    hi = s[last_of_tie]
    lo = s[last_of_tie + 1]
    mids = np.where(np.isfinite(hi) & np.isfinite(lo), hi / 2 + lo / 2, np.where(np.isfinite(lo), np.nextafter(lo, np.inf), hi))
    mids = np.where(mids > lo, mids, hi)  # adjacent floats: the midpoint may round onto lo
    thresholds = np.r_[np.inf, mids, -np.inf]
    best = int(np.flatnonzero(correct == correct.max())[-1])  # last = lowest threshold
    return float(thresholds[best]), float(correct[best] / s.size)


class _ThresholdAttack:
    def __init__(self) -> None:
        self.threshold_ = 0.0

    def _scores(self, data: "AttackData") -> np.ndarray:
        raise NotImplementedError

    def score(self, data: "AttackData") -> np.ndarray:
        s = self._scores(data).astype(np.float64)
        return np.where(np.isnan(s), -np.inf, s)

    def fit(self, train: "AttackData") -> "_ThresholdAttack":
        self.threshold_, self.train_accuracy_ = best_threshold(train.y, self.score(train))
        return self


def _loss(data: "AttackData") -> np.ndarray:
    if "loss" not in data.columns:
        raise LayerleakError("threshold attacks need the 'loss' column; select it with kinds including 'loss'")
    return data.column("loss")


class LossThresholdAttack(_ThresholdAttack):
    """Score = -loss: members (trained on) have lower loss (Yeom et al. 2018)."""

    def _scores(self, data: "AttackData") -> np.ndarray:
        return -_loss(data)


class ConfidenceThresholdAttack(_ThresholdAttack):
    """Score = the target's confidence: column ``column`` if present, else exp(-loss) = p(true label)."""

    def __init__(self, column: str = "confidence") -> None:
        super().__init__()
        self.column = column

    def _scores(self, data: "AttackData") -> np.ndarray:
        if self.column in data.columns:
            return data.column(self.column)
        return np.exp(-_loss(data))
