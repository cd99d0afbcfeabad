"""Metrics against scikit-learn on random scores, and TPR at low FPR on hand-made cases."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from mia_tasks.errors import LayerleakError
from mia_tasks.metrics import attack_metrics, auc, roc_curve, tpr_at_fpr


@st.composite
def labelled_scores(draw):
    """Both classes present; scores from a small grid half the time, so ties are common."""
    n = draw(st.integers(2, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1
    if draw(st.booleans()):
        s = rng.integers(-3, 4, n).astype(float)
    else:
        s = rng.normal(size=n) + y * draw(st.floats(0, 3))
    return y, s


def _reference_tpr(y, s, target):
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    return tpr[fpr <= target + 1e-12].max()


@settings(max_examples=25, deadline=None)
@given(labelled_scores(), st.floats(-2, 2))
def test_agrees_with_sklearn(data, threshold):
    y, s = data
    fpr, tpr, thr = roc_curve(y, s)
    rf, rt, rthr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, rf)
    np.testing.assert_allclose(tpr, rt)
    np.testing.assert_array_equal(thr, rthr)
    assert auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)

    m = attack_metrics(y, s, threshold=threshold)
    pred = (s >= threshold).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert m["far"] == pytest.approx(fp / (fp + tn))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert m["tpr@1%"] == _reference_tpr(y, s, 0.01)
    assert m["tpr@0.1%"] == _reference_tpr(y, s, 0.001)
    for target in (0.0, 0.05, 0.3, 1.0):
        assert tpr_at_fpr(y, s, target) == _reference_tpr(y, s, target)


def _case(pos_scores, neg_scores):
    y = np.r_[np.ones(len(pos_scores)), np.zeros(len(neg_scores))].astype(int)
    return y, np.r_[pos_scores, neg_scores].astype(float)


def test_tie_at_the_threshold_moves_together():
    # 10 members, 100 non-members. Top: one member alone; then a tie of 5 members with 2 non-members.
    y, s = _case([10] + [5] * 5 + [-2] * 4, [5, 5] + [-1] * 98)
    assert tpr_at_fpr(y, s, 0.01) == pytest.approx(0.1)  # the tie would bring FPR 2% > 1%: left out whole
    assert tpr_at_fpr(y, s, 0.02) == pytest.approx(0.6)  # exactly at the target counts
    # The same tie holding only one non-member: FPR 1% is within 1%.
    y, s = _case([10] + [5] * 5 + [-2] * 4, [5] + [-1] * 99)
    assert tpr_at_fpr(y, s, 0.01) == pytest.approx(0.6)
    assert tpr_at_fpr(y, s, 0.001) == pytest.approx(0.1)


def test_fpr_equal_to_target_up_to_rounding():
    # 3 of 300 non-members: 3/300 is 0.01 up to rounding.
    y, s = _case([9] * 7 + [-2] * 3, [9] * 3 + [-1] * 297)
    assert tpr_at_fpr(y, s, 0.01) == pytest.approx(0.7)


def test_no_member_above_any_admissible_threshold():
    # The top score is a non-member: any positive prediction costs FPR 1/100 > 0.1%.
    y, s = _case([1, 2, 3], [4] + [0] * 99)
    assert tpr_at_fpr(y, s, 0.001) == 0.0
    assert tpr_at_fpr(y, s, 0.01) == pytest.approx(1.0)


def test_all_equal_scores():
    y, s = _case([0.5] * 50, [0.5] * 50)
    fpr, tpr, thr = roc_curve(y, s)
    np.testing.assert_array_equal(fpr, [0, 1])
    np.testing.assert_array_equal(tpr, [0, 1])
    m = attack_metrics(y, s, threshold=0.5)
    assert m["auc"] == 0.5 and m["tpr@1%"] == 0.0 and m["tpr@0.1%"] == 0.0
    assert m["accuracy"] == 0.5 and m["far"] == 1.0  # everyone predicted a member


def test_perfect_separation():
    y, s = _case(np.linspace(1, 2, 1000), np.linspace(-2, -1, 1000))
    m = attack_metrics(y, s)
    assert m["auc"] == 1.0 and m["tpr@0.1%"] == 1.0 and m["tpr@1%"] == 1.0
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0 and m["far"] == 0.0


def test_infinite_scores_tie():
    y, s = _case([np.inf, np.inf, 1.0], [np.inf, -np.inf, 0.0])
    fpr, tpr, thr = roc_curve(y, s)  # scikit-learn rejects infinite scores; worked out by hand
    np.testing.assert_allclose(tpr, [0, 2 / 3, 1, 1, 1])
    np.testing.assert_allclose(fpr, [0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_array_equal(thr, [np.inf, np.inf, 1.0, 0.0, -np.inf])


def test_one_class_gives_nan_rates_but_accuracy():
    m = attack_metrics(np.ones(5, int), np.arange(5.0), threshold=2.0)
    assert m["accuracy"] == 0.6 and m["balanced_accuracy"] == 0.6
    assert math.isnan(m["auc"]) and math.isnan(m["tpr@1%"]) and math.isnan(m["far"])


def test_bad_input():
    with pytest.raises(LayerleakError, match="NaN"):
        attack_metrics([0, 1], [0.0, np.nan])
    with pytest.raises(LayerleakError, match="labels"):
        auc([0, 1, 1], [0.0, 1.0])
    with pytest.raises(LayerleakError, match="0/1"):
        auc([0, 2], [0.0, 1.0])
    with pytest.raises(LayerleakError, match="FPR"):
        tpr_at_fpr([0, 1], [0.0, 1.0], 1.5)
