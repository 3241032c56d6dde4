"""Log-linear fusion: a missing modality drops its term, shares add up to one, heads on fewer classes fit in."""

import numpy as np
import pytest

from inference.fusion import contribution_shares, expand_to_classes, fuse_weighted, safe_log, softmax


def probs(*rows):
    return np.asarray(rows, dtype=np.float64)


def test_a_single_modality_with_weight_one_returns_its_own_probabilities():
    text = probs([0.7, 0.2, 0.1], [0.1, 0.1, 0.8])
    fused, shares = fuse_weighted({"tfidf": safe_log(text)}, {"tfidf": np.ones(2, bool)}, {"tfidf": 1.0})
    assert np.allclose(fused, text)
    assert np.allclose(shares["tfidf"], 1.0)


def test_a_missing_image_drops_its_term_and_gets_no_share():
    text = probs([0.6, 0.3, 0.1])
    image = probs([0.0, 0.0, 1.0])  # would flip the decision if it counted
    present = {"tfidf": np.array([True]), "image": np.array([False])}
    fused, shares = fuse_weighted({"tfidf": safe_log(text), "image": safe_log(image)}, present,
                                  {"tfidf": 1.0, "image": 0.5})
    assert np.allclose(fused, text)
    assert shares["image"][0] == 0.0 and shares["tfidf"][0] == pytest.approx(1.0)


def test_the_fused_decision_is_the_weighted_product_of_the_modalities():
    text, image = probs([0.5, 0.4, 0.1]), probs([0.1, 0.8, 0.1])
    present = {"tfidf": np.array([True]), "image": np.array([True])}
    weights = {"tfidf": 1.0, "image": 0.6}
    fused, shares = fuse_weighted({"tfidf": safe_log(text), "image": safe_log(image)}, present, weights)
    expected = softmax(np.log(text) + 0.6 * np.log(image))
    assert np.allclose(fused, expected)
    assert fused.argmax() == 1
    assert shares["tfidf"][0] + shares["image"][0] == pytest.approx(1.0)
    assert 0 < shares["image"][0] < 1


def test_contribution_shares_of_equal_margins_are_equal():
    terms = {"a": np.array([[2.0, 0.0]]), "b": np.array([[2.0, 0.0]])}
    shares = contribution_shares(terms, np.array([0]))
    assert shares["a"][0] == pytest.approx(0.5) and shares["b"][0] == pytest.approx(0.5)


def test_a_head_trained_on_fewer_classes_gets_its_columns_put_in_place():
    head = probs([0.9, 0.1])
    full = expand_to_classes(head, head_classes=[40, 10], classes=[10, 40, 50])
    assert full.shape == (1, 3)
    assert full.sum() == pytest.approx(1.0)
    assert full[0].argmax() == 1  # class 40
    assert full[0, 2] < 1e-5  # a class the head never saw gets (almost) nothing


def test_the_confidence_map_recalibrates_the_top_probability_and_never_changes_the_decision():
    from inference.fusion import recalibrate_confidence

    fused = probs([0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.4, 0.35, 0.25])
    # observed out of fold: 0.9 is right 97% of the time, 0.5 only 40%
    mapped = recalibrate_confidence(fused, {"x": [0.3, 0.5, 0.9], "y": [0.2, 0.4, 0.97]})
    np.testing.assert_allclose(mapped.sum(axis=1), 1)
    assert mapped[0, 0] == pytest.approx(0.97) and mapped[0, 1] == pytest.approx(0.015)  # the rest rescaled
    assert mapped[1, 0] == pytest.approx(0.4) and mapped[1, 1] / mapped[1, 2] == pytest.approx(1.5)
    assert mapped.argmax(axis=1).tolist() == [0, 0, 0]  # 0.4 -> 0.35 would put class 1 first: kept ahead
    assert mapped[2, 0] > mapped[2, 1]
    assert recalibrate_confidence(fused, None) is fused
