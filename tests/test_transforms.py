"""The signed-log feature transform: fitted on attack-train only, monotone, scale-free."""

from __future__ import annotations

import numpy as np

from mia_tasks.transforms import SignedLog, fit_transform_pair


def test_signed_log_is_monotone_odd_and_fitted_on_train_only():
    rng = np.random.default_rng(0)
    train = rng.lognormal(0, 3, size=(200, 3)) * np.array([1e-6, 1.0, 1e6])
    held = rng.lognormal(0, 3, size=(50, 3))
    t = SignedLog().fit(train)
    np.testing.assert_allclose(t.scale_, np.median(np.abs(train), axis=0))
    a, b = fit_transform_pair(train, held, "signed-log")
    a2, b2 = fit_transform_pair(train, held * 1e9, "signed-log")
    np.testing.assert_array_equal(a, a2)  # what the eval rows hold never changes the fitted transform
    x = np.linspace(-5, 5, 101)[:, None]
    y = SignedLog().fit(np.ones((3, 1))).transform(x)
    assert np.all(np.diff(y[:, 0]) > 0) and np.allclose(y[::-1], -y)
    # scale-free: multiplying a column by a constant leaves its transform unchanged
    np.testing.assert_allclose(fit_transform_pair(train * 1e3, held, "signed-log")[0], a)


def test_non_finite_and_constant_columns():
    X = np.array([[0.0, np.inf], [0.0, 1.0], [0.0, np.nan]])
    t = SignedLog().fit(X)
    assert t.scale_[0] == 1.0 and np.isnan(t.transform(X)[0, 1])
    assert fit_transform_pair(X, X, "none")[0] is X
