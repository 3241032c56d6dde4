"""The drift score and its bootstrap threshold (in memory, synthetic populations with known truth)."""

import numpy as np
import pytest
from scipy import stats

from stream_workers.drift.calibration import (
    Features,
    Thresholds,
    calibrate_threshold,
    chi2_pvalues,
    drift_score,
    ks_pvalues,
)


def population(rng: np.random.Generator, n: int, class_shares: np.ndarray | None = None) -> Features:
    shares = class_shares if class_shares is not None else np.linspace(1, 3, 12) / np.linspace(1, 3, 12).sum()
    return Features(
        rng.choice(12, n, p=shares), rng.beta(5, 2, n).round(4), rng.lognormal(5, 0.6, n).round(), rng.random(n) < 0.7
    )


def test_the_tests_are_scipys():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 8, (2, 9)) + 1
    assert chi2_pvalues(a, b)[0] == pytest.approx(stats.chi2_contingency(np.vstack([a, b]), correction=False).pvalue)
    x, y = rng.normal(size=80), rng.normal(0.3, size=120)
    support = np.unique(np.concatenate([x, y]))
    counts = [np.bincount(np.searchsorted(support, v), minlength=len(support)) for v in (x, y)]
    d = stats.ks_2samp(x, y).statistic
    assert ks_pvalues(*counts)[0] == pytest.approx(stats.kstwobign.sf(np.sqrt(80 * 120 / 200) * d))


@pytest.mark.parametrize("window_size", [100, 500])
def test_windows_of_the_training_distribution_alarm_at_most_at_the_configured_rate(window_size):
    rng = np.random.default_rng(7)
    reference = population(rng, 1500)  # the held-out rows of training: a sample of the population
    threshold = calibrate_threshold(reference, window_size, false_alarm_rate=0.01, rounds=2000)
    scores = np.asarray([drift_score(population(rng, window_size), reference)[0] for _ in range(400)])
    assert np.mean(scores > threshold) <= 0.025  # 0.01 expected; 400 windows leave room for chance


def test_a_shifted_class_mix_or_a_text_shift_scores_above_the_threshold():
    rng = np.random.default_rng(11)
    reference = population(rng, 1500)
    threshold = Thresholds(reference, false_alarm_rate=0.01, rounds=2000).for_size(200)
    few = np.zeros(12)
    few[[0, 5, 9]] = 1 / 3
    score, parts = drift_score(population(rng, 200, few), reference)
    assert score > threshold and parts["class_mix"] == max(parts.values())
    shorter = population(rng, 200)
    shorter = Features(shorter.classes, shorter.confidence, np.round(shorter.text_chars * 0.6), shorter.has_image)
    score, parts = drift_score(shorter, reference)
    assert score > threshold and parts["text_chars"] == max(parts.values())


def test_thresholds_are_cached_per_window_size_bucket():
    rng = np.random.default_rng(2)
    thresholds = Thresholds(population(rng, 300), 0.01, rounds=500)
    assert thresholds.for_size(500) == thresholds.for_size(503)
    assert thresholds.for_size(50) > 0
