"""Feature transforms fitted on attack-train only.

Gradient magnitudes are heavy-tailed: a memorised member's gradient is orders of magnitude smaller
than a non-member's, so on a linear scale one outlier dominates the standardised column. The
signed log ``sign(x)·log(1 + |x|/s)``, with ``s`` the column's median magnitude on attack-train,
makes these orders of magnitude linear for the logistic attack and is the identity in shape for
statistics near zero (skewness, kurtosis).
"""

from __future__ import annotations

import numpy as np

TRANSFORMS = ("signed-log", "none")


class SignedLog:
    """``fit`` on attack-train rows, ``transform`` any rows; NaN and ±inf pass through as NaN."""

    def fit(self, X: np.ndarray) -> "SignedLog":
        mag = np.abs(np.where(np.isfinite(X), X, np.nan))
        with np.errstate(all="ignore"):
            scale = np.nanmedian(mag, axis=0) if X.shape[0] else np.ones(X.shape[1])
        self.scale_ = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.where(np.isfinite(X), X, np.nan)
        return np.sign(X) * np.log1p(np.abs(X) / self.scale_)


def fit_transform_pair(X_train: np.ndarray, X_eval: np.ndarray, transform: str) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``transform`` fitted on ``X_train`` to both matrices."""
    if transform == "none":
        return X_train, X_eval
    t = SignedLog().fit(X_train)
    return t.transform(X_train), t.transform(X_eval)
