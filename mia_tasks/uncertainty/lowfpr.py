"""TPR at a low FPR, reported only where the evaluation can measure it.

With N non-members the smallest non-zero FPR is 1/N, so "TPR at 0.1% FPR" from 35 non-members is
TPR at 0% FPR. The rule: TPR at FPR f is reported only when the evaluation holds at least 10/f
non-members (ten false positives allowed at the threshold), with an exact (Clopper-Pearson)
binomial interval on the members above that threshold; the threshold itself is read off the same
samples and treated as fixed. Otherwise the entry says why there is no number.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta

from ..metrics import tpr_at_fpr

LEVEL = 0.95
MIN_FALSE_POSITIVES = 10


def min_nonmembers(fpr: float) -> int:
    """Non-members needed to measure TPR at ``fpr``: ceil(10 / fpr)."""
    return int(math.ceil(MIN_FALSE_POSITIVES / fpr - 1e-9))


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact binomial interval for k successes in n trials (equals scipy's binomtest(...).proportion_ci('exact'))."""
    a = (1.0 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1.0 - a, k + 1, n - k))
    return lo, hi


def tpr_at_fpr_entry(y: np.ndarray, scores: np.ndarray, fpr: float, level: float = LEVEL) -> dict:
    """{"value", "ci95", "n" (members), "fpr", "measurable", "resampling"} or, with too few non-members,
    {"value": None, "measurable": False, "reason": "not measurable (needs >= N non-members)"}."""
    y = np.asarray(y, dtype=bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    need = min_nonmembers(fpr)
    if n_neg < need:
        return {"value": None, "ci95": None, "n": n_pos, "fpr": fpr, "measurable": False,
                "reason": f"not measurable (needs >= {need} non-members, has {n_neg})"}
    tpr = tpr_at_fpr(y, scores, fpr)
    k = int(round(tpr * n_pos))
    return {"value": tpr, "ci95": list(clopper_pearson(k, n_pos, level)), "n": n_pos, "fpr": fpr, "measurable": True,
            "resampling": {"unit": "member", "scheme": "exact binomial (Clopper-Pearson), threshold fixed at the "
                           "measured FPR", "replicates": None, "non_members": n_neg}}
