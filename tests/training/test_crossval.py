"""Out-of-fold figures and the cascade threshold, on hand-made cases."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from training.crossval import (
    choose_cascade_threshold,
    cross_fitted_fusion,
    kfold_figures,
    stratified_folds,
    weighted_f1_fast,
)


def one_hot(labels, n, confidence):
    """Rows whose top class is ``labels[i]`` with probability ``confidence[i]``, the rest spread evenly."""
    labels, confidence = np.asarray(labels), np.asarray(confidence, dtype=float)
    probs = np.tile(((1 - confidence) / (n - 1))[:, None], (1, n))
    probs[np.arange(len(labels)), labels] = confidence
    return probs


def test_the_fast_weighted_f1_is_scikit_learns():
    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    pred[:300] = y[:300]
    assert weighted_f1_fast(y, pred, 7) == pytest.approx(f1_score(y, pred, average="weighted"))


def test_folds_are_stratified_and_cover_every_row_once():
    y = np.repeat(np.arange(4), 10)
    folds = stratified_folds(y, 5, seed=1)
    assert sorted(np.unique(folds)) == [0, 1, 2, 3, 4]
    for k in range(5):
        assert np.bincount(y[folds == k], minlength=4).tolist() == [2, 2, 2, 2]


def test_fewer_rows_than_folds_in_a_class_means_fewer_folds():
    assert len(np.unique(stratified_folds(np.repeat(np.arange(3), 3), 5))) == 3


def test_the_cascade_threshold_keeps_the_confident_rows_the_cheap_model_gets_right():
    """Ten rows. The cheap model is right on its six most confident rows (0.99 .. 0.90), wrong on
    the next one (0.80) and on the three least confident; the fusion is right everywhere. Below
    0.90 the cascade would take a wrong cheap answer (a loss of about 10 points), so the threshold
    is 0.90 and 60% of the rows are answered cheaply, with no loss."""
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    cheap_conf = [0.99, 0.98, 0.97, 0.95, 0.92, 0.90, 0.80, 0.60, 0.50, 0.40]
    cheap_labels = y.copy()
    cheap_labels[6:] = (y[6:] + 1) % 3
    cheap = one_hot(cheap_labels, 3, cheap_conf)
    fused = one_hot(y, 3, [0.7] * 10)
    choice = choose_cascade_threshold(cheap, fused, y, max_loss=0.003)
    assert choice.threshold == pytest.approx(0.90)
    assert choice.cheap_share == pytest.approx(0.6)
    assert choice.oof_weighted_f1_all == 1.0 and choice.oof_weighted_f1_cascade == 1.0
    assert choice.to_manifest() == {
        "threshold": 0.9,
        "cheap_model": "tfidf",
        "oof_weighted_f1_all": 1.0,
        "oof_weighted_f1_cascade": 1.0,
        "cheap_share": 0.6,
    }


def test_a_cheap_model_wrong_when_most_confident_sends_everything_to_the_full_path():
    y = np.array([0, 1, 2, 0])
    cheap = one_hot([1, 1, 2, 0], 3, [0.99, 0.5, 0.5, 0.5])  # the most confident row is wrong
    choice = choose_cascade_threshold(cheap, one_hot(y, 3, [0.8] * 4), y)
    assert choice.threshold > 1 and choice.cheap_share == 0.0


def test_a_later_recovery_does_not_lower_the_threshold_past_a_loss():
    """A wrong cheap answer at 0.8 then lucky ones below: the search stops at the first loss."""
    y = np.array([0, 1, 2, 0, 1, 2])
    cheap_labels = np.array([0, 1, 0, 0, 1, 2])  # row 2 (confidence 0.8) wrong, the rest right
    cheap = one_hot(cheap_labels, 3, [0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    fused = one_hot([0, 1, 2, 1, 1, 2], 3, [0.6] * 6)  # the fusion is wrong on row 3
    choice = choose_cascade_threshold(cheap, fused, y, max_loss=0.003)
    assert choice.threshold == pytest.approx(0.9) and choice.cheap_share == pytest.approx(2 / 6, abs=1e-4)


def test_cross_fitted_fusion_and_figures_have_a_spread_per_model():
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 20)
    folds = stratified_folds(y, 5, seed=0)
    noisy = np.where(rng.random(60) < 0.7, y, (y + 1) % 3)
    text = one_hot(noisy, 3, rng.uniform(0.5, 0.9, 60))
    image = one_hot(np.where(rng.random(60) < 0.5, y, (y + 2) % 3), 3, rng.uniform(0.4, 0.6, 60))
    has_image = rng.random(60) < 0.5
    present = {"tfidf": np.ones(60, bool), "image": has_image}
    fused = cross_fitted_fusion({"tfidf": text, "image": image}, present, y, folds)
    np.testing.assert_allclose(fused.sum(axis=1), 1)
    np.testing.assert_allclose(fused[~has_image].argmax(1), text[~has_image].argmax(1))  # no image, no say
    figures = kfold_figures(y, {"tfidf": text, "image": image, "fused": fused}, present, has_image, folds)
    assert figures["n_folds"] == 5 and set(figures["models"]) == {"tfidf", "image", "fused"}
    tfidf = figures["models"]["tfidf"]
    assert len(tfidf["weighted_f1_folds"]) == 5
    assert tfidf["weighted_f1"]["mean"] == pytest.approx(np.mean(tfidf["weighted_f1_folds"]), abs=1e-4)
    assert tfidf["weighted_f1"]["std"] > 0 and 0 <= tfidf["ece"] <= 1


def test_an_overconfident_fusion_is_recalibrated_out_of_fold_without_changing_a_decision():
    """Every row claims 0.95 but only 60% are right: the cross-fitted map brings the confidence to
    about 0.6 (the calibration error falls), and no decision changes."""
    from training.crossval import cross_fitted_confidence, fit_confidence_map
    from training.evaluation import expected_calibration_error

    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(4), 50)
    predicted = np.where(rng.random(200) < 0.6, y, (y + 1) % 4)
    fused = one_hot(predicted, 4, np.full(200, 0.95))
    folds = stratified_folds(y, 5, seed=0)
    recalibrated = cross_fitted_confidence(fused, y, folds)
    assert recalibrated.argmax(axis=1).tolist() == fused.argmax(axis=1).tolist()
    assert expected_calibration_error(y, recalibrated) < 0.1 < expected_calibration_error(y, fused)
    knots = fit_confidence_map(fused, y)
    assert set(knots) == {"x", "y"} and len(knots["x"]) == len(knots["y"])
