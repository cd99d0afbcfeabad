"""The seed study's attack: logistic regression on standardised per-layer feature statistics.

Everything is fitted on attack-train alone (the scaler too), so attack-eval rows never shape the model.
An optional signed-log transform (``transform="signed-log"``, fitted on attack-train) puts
heavy-tailed gradient magnitudes on a log scale first. Non-finite features (NaN, ±inf: e.g. a kurtosis overflow) count as missing: the scaler's mean and
scale ignore them, and after scaling they become 0, i.e. the attack-train mean of that column.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ..errors import LayerleakError
from ..transforms import TRANSFORMS, SignedLog

if TYPE_CHECKING:
    from . import AttackData


class LogisticAttack:
    """StandardScaler + L2-regularised LogisticRegression (lbfgs); score = log-odds of membership.

    ``C`` is the inverse regularisation strength; ``tol`` the solver tolerance (1e-8 for fits that
    must match a reference closely); ``threshold_`` is 0 (probability 1/2; attack-train is balanced).
    After ``fit``: ``scaler_``, ``model_``, ``columns_`` and ``converged_`` (False if lbfgs hit max_iter).
    """

    def __init__(self, C: float = 1.0, max_iter: int = 5000, tol: float = 1e-6, seed: int = 0, transform: str = "none"):
        if not C > 0:
            raise LayerleakError(f"attack.C must be > 0, got {C}")
        if transform not in TRANSFORMS:
            raise LayerleakError(f"attack.transform {transform!r}; allowed: {', '.join(TRANSFORMS)}")
        self.C, self.max_iter, self.tol, self.seed = float(C), int(max_iter), float(tol), int(seed)
        self.transform = transform
        self.threshold_ = 0.0

    def _scaled(self, X: np.ndarray) -> np.ndarray:
        X = self.transform_.transform(X) if self.transform_ is not None else X
        X = np.where(np.isfinite(X), X, np.nan)
        Z = self.scaler_.transform(X)
        return np.nan_to_num(Z, nan=0.0, posinf=0.0, neginf=0.0)

    def fit(self, train: "AttackData") -> "LogisticAttack":
        if len(np.unique(train.y)) < 2:
            raise LayerleakError("logistic attack: attack-train needs both members and non-members")
        self.transform_ = SignedLog().fit(train.X) if self.transform == "signed-log" else None
        X = self.transform_.transform(train.X) if self.transform_ is not None else train.X
        X = np.where(np.isfinite(X), X, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: nanmean of nothing
            self.scaler_ = StandardScaler().fit(X)
        self.scaler_.mean_ = np.nan_to_num(self.scaler_.mean_, nan=0.0)
        self.scaler_.scale_ = np.where(np.isfinite(self.scaler_.scale_) & (self.scaler_.scale_ > 0), self.scaler_.scale_, 1.0)
        self.columns_ = list(train.columns)
        self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol, random_state=self.seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            self.model_.fit(self._scaled(train.X), train.y)
        self.converged_ = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        return self

    def score(self, data: "AttackData") -> np.ndarray:
        if list(data.columns) != self.columns_:
            raise LayerleakError("logistic attack: scoring data has other feature columns than it was fitted on")
        return self.model_.decision_function(self._scaled(data.X)).astype(np.float64)
