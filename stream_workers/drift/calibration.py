"""The drift score of a window against the reference, and its threshold calibrated by bootstrap.

The score compares four things with scipy's two-sample tests: the predicted class mix (chi-square
on the contingency table), the confidence and the text length (Kolmogorov-Smirnov), the share with
an image (chi-square, 2x2). It is the strongest of them, ``max(-log10 p)``.

The threshold is not guessed: windows of the window's size are drawn from the reference profile
with replacement (the training distribution), each compared with a pseudo-reference drawn the same
way (the reference is itself a sample), and the threshold is the ``1 - false_alarm_rate`` quantile
of their scores. A stream from the training distribution then alarms in about that share of
windows, whatever the window size and however many tests the score combines (Alibi Detect
configures its online detectors the same way, by simulation under no drift).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from stream_workers.drift.windows import WindowRow

#: p-values are clipped here: -log10 of it is the largest score (a window of one class only)
P_FLOOR = 1e-300


@dataclass(frozen=True)
class Features:
    """A window (or reference) as arrays, for fast repeated scoring."""

    classes: np.ndarray  # int
    confidence: np.ndarray
    text_chars: np.ndarray  # NaN where unknown
    has_image: np.ndarray  # bool

    @classmethod
    def of(cls, rows: Sequence[WindowRow]) -> Features:
        return cls(
            np.asarray([r.predicted_class for r in rows], dtype=np.int64),
            np.asarray([r.confidence for r in rows], dtype=float),
            np.asarray([np.nan if r.text_chars is None else r.text_chars for r in rows], dtype=float),
            np.asarray([r.has_image for r in rows], dtype=bool),
        )

    def take(self, index: np.ndarray) -> Features:
        return Features(self.classes[index], self.confidence[index], self.text_chars[index], self.has_image[index])

    def __len__(self) -> int:
        return len(self.classes)


def _neg_log10(p: np.ndarray) -> np.ndarray:
    p = np.where(np.isfinite(p), p, 1.0)
    return -np.log10(np.clip(p, P_FLOOR, 1.0))


# Each test works on counts over a fixed support (the distinct values of window and reference),
# one row per window, so the bootstrap scores thousands of windows in a few array operations.
# The results equal scipy's chi2_contingency(correction=False) and kstwobign.sf(sqrt(en) * D) of ks_2samp's D.
def chi2_pvalues(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson chi-square of the 2 x K tables (a[i], b[i]) of counts: p-values, one per row."""
    a, b = np.atleast_2d(a).astype(float), np.atleast_2d(b).astype(float)
    col = a + b
    na, nb = a.sum(axis=1, keepdims=True), b.sum(axis=1, keepdims=True)
    total = na + nb
    with np.errstate(divide="ignore", invalid="ignore"):
        ea, eb = col * na / total, col * nb / total
        stat = np.where(
            col > 0, (a - ea) ** 2 / np.where(ea > 0, ea, 1) + (b - eb) ** 2 / np.where(eb > 0, eb, 1), 0.0
        ).sum(axis=1)
    dof = (col > 0).sum(axis=1) - 1
    p = np.where(dof > 0, stats.chi2.sf(stat, np.maximum(dof, 1)), 1.0)
    return np.where((na[:, 0] > 0) & (nb[:, 0] > 0), p, 1.0)


def ks_pvalues(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two-sample Kolmogorov-Smirnov (Smirnov's limit, scipy's kstwobign) from counts over sorted values."""
    a, b = np.atleast_2d(a).astype(float), np.atleast_2d(b).astype(float)
    na, nb = a.sum(axis=1), b.sum(axis=1)
    ok = (na >= 2) & (nb >= 2)
    na_, nb_ = np.where(ok, na, 1), np.where(ok, nb, 1)
    d = np.abs(np.cumsum(a, axis=1) / na_[:, None] - np.cumsum(b, axis=1) / nb_[:, None]).max(axis=1)
    en = na_ * nb_ / (na_ + nb_)
    return np.where(ok, np.clip(special.kolmogorov(np.sqrt(en) * d), 0, 1), 1.0)


TESTS = ("class_mix", "confidence", "text_chars", "image_share")


def _support(*arrays: np.ndarray) -> np.ndarray:
    values = np.concatenate([x[~np.isnan(x)] if x.dtype.kind == "f" else x for x in arrays])
    return np.unique(values)


def _counts(x: np.ndarray, support: np.ndarray) -> np.ndarray:
    if x.dtype.kind == "f":
        x = x[~np.isnan(x)]
    return np.bincount(np.searchsorted(support, x), minlength=len(support))


def test_scores(window: Features, reference: Features) -> dict[str, float]:
    """``-log10 p`` of each test: class_mix, confidence, text_chars, image_share."""
    out = {}
    for name, test, w, r in (
        ("class_mix", chi2_pvalues, window.classes, reference.classes),
        ("confidence", ks_pvalues, window.confidence, reference.confidence),
        ("text_chars", ks_pvalues, window.text_chars, reference.text_chars),
        ("image_share", chi2_pvalues, window.has_image.astype(np.int64), reference.has_image.astype(np.int64)),
    ):
        support = _support(w, r)
        if len(support) == 0:
            out[name] = 0.0
            continue
        out[name] = float(_neg_log10(test(_counts(w, support), _counts(r, support)))[0])
    return out


def drift_score(window: Features, reference: Features) -> tuple[float, dict[str, float]]:
    scores = test_scores(window, reference)
    return max(scores.values()), {k: round(v, 3) for k, v in scores.items()}


def bootstrap_scores(reference: Features, window_size: int, rounds: int, seed: int = 0, block: int = 250) -> np.ndarray:
    """Scores of ``rounds`` windows drawn from the reference, each against a pseudo-reference of its size.

    Drawing rows with replacement is drawing counts over the reference's distinct values from a
    multinomial with the values' shares, which is what this does, ``block`` windows at a time."""
    rng = np.random.default_rng(seed)
    n = len(reference)
    columns = [
        (chi2_pvalues, reference.classes),
        (ks_pvalues, reference.confidence),
        (ks_pvalues, reference.text_chars),
        (chi2_pvalues, reference.has_image.astype(np.int64)),
    ]
    out = []
    for start in range(0, rounds, block):
        size = min(block, rounds - start)
        best = np.zeros(size)
        for test, values in columns:
            if values.dtype.kind == "f":
                values = values[~np.isnan(values)]
            if len(values) == 0:
                continue
            support, counts = np.unique(values, return_counts=True)
            shares = counts / counts.sum()
            w = rng.multinomial(window_size, shares, size=size)
            r = rng.multinomial(len(values) if len(values) < n else n, shares, size=size)
            best = np.maximum(best, _neg_log10(test(w, r)))
        out.append(best)
    return np.concatenate(out)


def calibrate_threshold(
    reference: Features, window_size: int, false_alarm_rate: float, rounds: int, seed: int = 0
) -> float:
    """The score that windows from the training distribution exceed in ``false_alarm_rate`` of cases."""
    if len(reference) < 2:
        raise ValueError("a reference profile needs at least 2 rows to calibrate a threshold")
    scores = bootstrap_scores(reference, window_size, rounds, seed)
    return float(np.quantile(scores, 1.0 - false_alarm_rate, method="higher"))


class Thresholds:
    """Calibrated thresholds of one reference, per window size (a window closed by time is smaller)."""

    def __init__(self, reference: Features, false_alarm_rate: float, rounds: int, seed: int = 0) -> None:
        self.reference = reference
        self.false_alarm_rate = false_alarm_rate
        self.rounds = rounds
        self.seed = seed
        self._cache: dict[int, float] = {}

    def for_size(self, window_size: int) -> float:
        size = _bucket(window_size)
        if size not in self._cache:
            self._cache[size] = calibrate_threshold(self.reference, size, self.false_alarm_rate, self.rounds, self.seed)
        return self._cache[size]


def _bucket(n: int) -> int:
    """Window sizes rounded to 2 significant digits, so odd-sized windows share a calibration."""
    if n < 100:
        return n
    digits = int(math.floor(math.log10(n))) - 1
    return int(round(n, -digits))
