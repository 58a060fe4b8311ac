"""Sentiment and classification metrics against hand-computed values (ties at 0, rounding at .5)."""

import numpy as np
import pytest

from mmfusion.metrics import binary_metrics, multiclass_metrics, sentiment_metrics


def test_sentiment_metrics_hand_computed():
    y = np.array([-3.0, -1.5, 0.0, 0.5, 2.5, 3.4])
    p = np.array([-2.0, -0.5, 0.3, -0.2, 2.5, 2.6])
    m = sentiment_metrics(p, y)
    assert m["MAE"] == pytest.approx(np.mean([1.0, 1.0, 0.3, 0.7, 0.0, 0.8]))
    assert m["Corr"] == pytest.approx(np.corrcoef(p, y)[0, 1])
    # Acc-7: clip to [-3,3], round half to even: y -> [-3,-2,0,0,2,3] (2.5 -> 2), p -> [-2,-0,0,-0,2,3]
    assert m["Mult_acc_7"] == pytest.approx(4 / 6)
    # Acc-5: clip to [-2,2]: y -> [-2,-2,0,0,2,2]; p -> [-2,-0,0,-0,2,2]
    assert m["Mult_acc_5"] == pytest.approx(5 / 6)
    # Has0: y>=0 -> [F,F,T,T,T,T]; p>=0 -> [F,F,T,F,T,T]
    assert m["Has0_acc_2"] == pytest.approx(5 / 6)
    # Non0 drops y == 0: y>0 [F,F,T,T,T]; p>0 [F,F,F,T,T]
    assert m["Non0_acc_2"] == pytest.approx(4 / 5)
    # weighted F1 on Non0: class F support 2 (tp=2, fp=1, fn=0) f1=4/5; class T support 3 (tp=2, fn=1) f1=4/5
    assert m["Non0_F1_score"] == pytest.approx(0.8)


def test_zero_ties_and_half_rounding():
    # a prediction of exactly 0 is non-negative (Has0) but not positive (Non0)
    m = sentiment_metrics(np.array([0.0, 0.0]), np.array([1.0, -1.0]))
    assert m["Has0_acc_2"] == 0.5 and m["Non0_acc_2"] == 0.5
    # np.round is half-to-even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0
    m = sentiment_metrics(np.array([0.5, 1.5, 2.5, -0.5]), np.array([0.0, 2.0, 2.0, 0.0]))
    assert m["Mult_acc_7"] == 1.0
    m = sentiment_metrics(np.array([0.5]), np.array([1.0]))
    assert m["Mult_acc_7"] == 0.0
    # clipping before rounding: 9 -> 3 and -2.6 -> -3 (acc-7); both -> +-2 for acc-5
    m = sentiment_metrics(np.array([9.0, -2.6]), np.array([3.0, -3.0]))
    assert m["Mult_acc_7"] == 1.0 and m["Mult_acc_5"] == 1.0


def test_all_zero_labels_non0_is_nan_and_constant_corr_zero():
    m = sentiment_metrics(np.array([0.1, 0.2]), np.array([0.0, 0.0]))
    assert np.isnan(m["Non0_acc_2"]) and m["Corr"] == 0.0


def test_binary_and_multiclass():
    b = binary_metrics(np.array([2.0, -1.0, 0.5, -0.1]), np.array([1, 0, 0, 0]))
    assert b["acc"] == 0.75
    # class 0: support 3, tp 2, fp 0, fn 1 -> 0.8; class 1: support 1, tp 1, fp 1 -> 2/3
    assert b["F1"] == pytest.approx((3 * 0.8 + 1 * (2 / 3)) / 4)
    logits = np.array([[2, 1, 0], [0, 3, 1], [1, 0, 2], [3, 0, 0]], dtype=float)
    c = multiclass_metrics(logits, np.array([0, 1, 1, 0]))
    assert c["acc"] == 0.75


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="must be equal"):
        sentiment_metrics(np.zeros(3), np.zeros(4))
