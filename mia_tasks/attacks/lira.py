"""LiRA, the likelihood-ratio attack with per-example Gaussians (Carlini et al., S&P 2022).

Signal: the logit-scaled confidence phi = log(p_y / (1 - p_y)) of the true label, computed stably
from logits (the true-class logit minus the logsumexp of the others) or from the cross-entropy loss
(p_y = exp(-loss): phi = -loss - log(-expm1(-loss))). For each sample, Gaussians are fitted to its phi
on the reference models that trained on it (IN) and on those that did not (OUT):

- online:  score = log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2)
- offline: score = -log Pr[Z > phi], Z ~ N(mu_out, s_out^2) (one-sided: the paper's OUT-Gaussian
  test; the log-survival keeps the low-FPR tail resolved where the CDF rounds to 1)

``variance="global"`` (the paper's choice for few references) pools each side's spread over every
sample: the within-sample variance of all IN (OUT) observations, so the sample's mean is still its
own. ``per-example`` uses each sample's own spread, falling back to the pooled one where the sample
has fewer than two observations on a side. Means are plain means (the paper's code uses medians). A sample whose references all sit on one side
gets that side's mean from the other's and the average IN - OUT gap (references.side_gaussians).

The attack reads the target's ``loss`` and the references' ``ref.<k>.loss`` / ``ref.<k>.in``
columns (mia_tasks.attacks.references); higher score = more likely a member.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.special import logsumexp
from scipy.stats import norm

from ..errors import LayerleakError
from ..schema import LOSS
from .references import VARIANCES, reference_arrays, reference_matrix, side_gaussians
from .threshold import best_threshold

if TYPE_CHECKING:
    from . import AttackData

MODES = ("online", "offline")


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """phi = z_y - logsumexp(z_j, j != y) per row of ``logits`` [n, classes]: log(p_y / (1 - p_y)) without overflow."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    if z.ndim != 2 or z.shape[0] != y.shape[0] or z.shape[1] < 2:
        raise LayerleakError(f"logit confidence needs logits [n, classes >= 2] and n labels, got {z.shape} and {y.shape}")
    rows = np.arange(len(y))
    true = z[rows, y]
    others = z.copy()
    others[rows, y] = -np.inf
    return true - logsumexp(others, axis=1)


# A float64 loss logsumexp(z) - z_y has an absolute error near 1e-16 |z|, so smaller losses are rounding:
# phi from the loss is resolved up to about 34.5 (p_y within 1e-15 of 1); logits resolve beyond.
LOSS_FLOOR = 1e-15


def confidence_from_loss(loss: np.ndarray) -> np.ndarray:
    """phi from the cross-entropy loss -log p_y: -loss - log(1 - exp(-loss)), the loss floored at ``LOSS_FLOOR``."""
    loss = np.maximum(np.asarray(loss, np.float64), LOSS_FLOOR)
    return -loss - np.log(-np.expm1(-loss))


def lira_scores(phi: np.ndarray, ref_phi: np.ndarray, inside: np.ndarray, mode: str = "online",
                variance: str = "global") -> np.ndarray:
    """LiRA scores of samples with target confidences ``phi`` [n], reference confidences ``ref_phi`` [K, n]
    and ``inside`` [K, n] (reference k trained on sample i)."""
    if mode not in MODES:
        raise LayerleakError(f"LiRA mode {mode!r}: choose one of {', '.join(MODES)}")
    if variance not in VARIANCES:
        raise LayerleakError(f"LiRA variance {variance!r}: choose one of {', '.join(VARIANCES)}")
    phi, ref_phi, inside = reference_arrays(phi, ref_phi, inside, "LiRA", "confidences")
    (mu_in, s_in), (mu_out, s_out) = side_gaussians(ref_phi, inside, variance, "LiRA")
    if mode == "offline":
        return -norm.logsf(phi, mu_out, s_out)
    return norm.logpdf(phi, mu_in, s_in) - norm.logpdf(phi, mu_out, s_out)


class LiraAttack:
    """LiRA on the loss columns of the target and its references; threshold chosen on attack-train."""

    def __init__(self, mode: str = "online", variance: str = "global") -> None:
        if mode not in MODES or variance not in VARIANCES:
            raise LayerleakError(f"LiRA: mode one of {MODES}, variance one of {VARIANCES}; got {mode!r}, {variance!r}")
        self.mode, self.variance = mode, variance
        self.threshold_ = 0.0

    def score(self, data: "AttackData") -> np.ndarray:
        values, inside = reference_matrix(data, LOSS)
        return lira_scores(confidence_from_loss(data.column(LOSS)), confidence_from_loss(values), inside,
                           self.mode, self.variance)

    def fit(self, train: "AttackData") -> "LiraAttack":
        self.threshold_, self.train_accuracy_ = best_threshold(train.y, self.score(train))
        return self


class OnlineLiraAttack(LiraAttack):
    """LiRA with IN and OUT Gaussians (``lira-online``)."""

    def __init__(self, variance: str = "global") -> None:
        super().__init__("online", variance)


class OfflineLiraAttack(LiraAttack):
    """LiRA with OUT references only (``lira-offline``)."""

    def __init__(self, variance: str = "global") -> None:
        super().__init__("offline", variance)
