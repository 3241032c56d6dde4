"""Estimated performance: the expected confusion matrix of calibrated top-k probabilities, by hand.

Every expected figure below is worked out in the comment beside it (no model, no broker).
"""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from inference.reference_profile import weighted_f1_score
from stream_workers.drift.estimation import ConfidenceCalibration, estimate, expected_confusion
from stream_workers.drift.windows import WindowRow


def row(*top: tuple[int, float]) -> WindowRow:
    return WindowRow(top[0][0], top[0][1], tuple(top))


def test_full_probability_vectors_give_the_f1_of_the_expected_confusion_matrix():
    # row 1: (A .8, B .2) predicted A; row 2: (B .7, A .3) predicted B
    # A: tp .8, fp .2, fn .3 -> F1 1.6/2.1 = .76190, support 1.1
    # B: tp .7, fp .3, fn .2 -> F1 1.4/1.9 = .73684, support 0.9
    # weighted: (1.1 * .76190 + 0.9 * .73684) / 2 = .75063; accuracy: mean confidence .75
    result = estimate([row((1, 0.8), (2, 0.2)), row((2, 0.7), (1, 0.3))], classes=[1, 2])
    assert result.weighted_f1 == pytest.approx((1.1 * 1.6 / 2.1 + 0.9 * 1.4 / 1.9) / 2)
    assert result.accuracy == pytest.approx(0.75)
    assert result.tail_mass == pytest.approx(0.0)


def test_the_tail_mass_is_a_false_positive_of_the_predicted_class_and_spread_over_the_others_by_the_prior():
    rows = [row((1, 0.6)), row((2, 0.9))]  # top-1 only: tails .4 and .1
    # uniform prior over 1, 2, 3: row 1's .4 -> .2 to class 2, .2 to class 3; row 2's .1 -> .05 to 1, .05 to 3
    # column 1 = (.6, .2, .2), column 2 = (.05, .9, .05)
    # class 1: tp .6, support .65, predicted 1 -> 1.2/1.65; class 2: tp .9, support 1.1, predicted 1 -> 1.8/2.1
    uniform = estimate(rows, classes=[1, 2, 3])
    assert uniform.weighted_f1 == pytest.approx((0.65 * 1.2 / 1.65 + 1.1 * 1.8 / 2.1) / 2)
    assert uniform.tail_mass == pytest.approx(0.25)
    # a prior that puts every tail on class 2: row 1's .4 all to class 2, row 2's .1 split between 1 and 3
    # class 2: support 1.3 -> F1 1.8/2.3
    skewed = estimate(rows, classes=[1, 2, 3], prior={1: 0.0, 2: 1.0, 3: 0.0})
    assert skewed.weighted_f1 == pytest.approx((0.65 * 1.2 / 1.65 + 1.3 * 1.8 / 2.3) / 2, abs=1e-6)


def test_each_row_adds_exactly_one_to_the_expected_matrix_even_with_rounded_probabilities():
    rows = [row((1, 0.5000004), (2, 0.5000004)), row((3, 0.4), (1, 0.3)), row((9, 1.0))]  # 9: a class unseen
    matrix = expected_confusion(rows, classes=[1, 2, 3])
    assert matrix.shape == (4, 4)
    assert matrix.sum() == pytest.approx(3.0)


def test_certain_and_right_is_perfect_and_an_empty_window_has_no_estimate():
    assert estimate([row((1, 1.0)), row((2, 1.0))], classes=[1, 2]).weighted_f1 == pytest.approx(1.0)
    assert estimate([], classes=[1, 2]) is None


def test_the_confidence_calibration_matches_the_reference_accuracy():
    rng = np.random.default_rng(3)
    confidence = rng.uniform(0.3, 0.99, 2000)
    correct = rng.random(2000) < confidence**2  # over-confident model: truly right with p ** 2
    calibration = ConfidenceCalibration.fit(confidence, correct)
    assert calibration.exponent == pytest.approx(2.0, abs=0.15)
    calibrated = calibration.apply(row((1, 0.8), (2, 0.1)))
    assert calibrated.confidence == pytest.approx(0.8**calibration.exponent)
    assert sum(p for _, p in calibrated.top_k) == pytest.approx(
        calibrated.confidence + 0.1 * ((1 - calibrated.confidence) / 0.2)
    )
    assert ConfidenceCalibration.fit([0.9] * 5, [True] * 5).exponent == 1.0  # too few rows: left alone


def test_weighted_f1_is_scikit_learns():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 6, 300), rng.integers(0, 6, 300)
    assert weighted_f1_score(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
