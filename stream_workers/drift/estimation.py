"""Performance without labels: the weighted F1 and accuracy that calibrated probabilities imply.

The idea of NannyML's CBPE (confidence-based performance estimation), written for what a
``predictions.v1`` message carries: if the probabilities are calibrated, a listing predicted as
``ŷ`` is truly of class ``c`` with probability ``p(c)``, so the window's *expected* confusion
matrix is the sum of the rows' probability vectors, each placed in the column of its predicted
class. The weighted F1 of that expected matrix is the estimate; the expected accuracy is the mean
confidence.

Messages carry only the top-k probabilities. What is left, the tail mass ``1 - sum(top-k)``, is
probability that the listing belongs to some class outside its top-k, without saying which: it
counts against the predicted class (a false positive, exactly) and as a false negative of the
other classes, spread in proportion to a prior (the reference's class shares, uniform without
one). Only that spread is a guess; the window reports its mean tail mass so a reader knows how much
was guessed (``tail_mass``). (NannyML itself needs the full probability vector.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stream_workers.drift.windows import WindowRow


@dataclass(frozen=True)
class Estimate:
    weighted_f1: float
    accuracy: float
    tail_mass: float  # mean probability outside the top-k, spread by the prior

    def as_dict(self) -> dict[str, float]:
        return {
            "estimated_f1": round(self.weighted_f1, 4),
            "estimated_accuracy": round(self.accuracy, 4),
            "tail_mass": round(self.tail_mass, 4),
        }


@dataclass(frozen=True)
class ConfidenceCalibration:
    """A power on the top-1 confidence, fitted on the reference profile (held-out rows with labels).

    CBPE first calibrates the model's probabilities on reference data; with a few hundred held-out
    rows one parameter is what can be fitted without overfitting: the exponent ``a`` for which the
    mean calibrated confidence ``p ** a`` of the reference equals its accuracy (``mean(p ** a)``
    falls as ``a`` grows, so bisection finds it). The rest of the top-k is rescaled to keep its
    shares of ``1 - p ** a``. ``a = 1`` changes nothing.
    """

    exponent: float = 1.0

    @classmethod
    def fit(cls, confidences: Sequence[float], correct: Sequence[bool], min_rows: int = 20) -> ConfidenceCalibration:
        c = np.clip(np.asarray(confidences, dtype=float), 1e-6, 1 - 1e-6)
        if len(c) < min_rows:
            return cls(1.0)
        target = float(np.clip(np.mean(correct), 1e-3, 1 - 1e-3))
        lo, hi = 0.05, 20.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if float(np.mean(c**mid)) > target:
                lo = mid
            else:
                hi = mid
        return cls(round((lo + hi) / 2, 4))

    def apply(self, row: WindowRow) -> WindowRow:
        if self.exponent == 1.0 or not row.top_k:
            return row
        p = min(max(row.confidence, 1e-6), 1 - 1e-6)
        calibrated = p**self.exponent
        scale = (1 - calibrated) / (1 - p)
        top = ((row.top_k[0][0], calibrated),) + tuple((c, q * scale) for c, q in row.top_k[1:])
        return WindowRow(row.predicted_class, calibrated, top, row.text_chars, row.has_image, row.modality_classes)


def expected_confusion(
    rows: Sequence[WindowRow], classes: Sequence[int], prior: Mapping[int, float] | None = None
) -> np.ndarray:
    """``M[true, predicted]``: the expected number of rows of each (true, predicted) pair, over ``classes``.

    A row's predicted class or a top-k class outside ``classes`` is added to the list (a model version
    knows more classes than its reference saw). Each row adds exactly 1 to the matrix.
    """
    index = {int(c): i for i, c in enumerate(classes)}
    extra = sorted(
        {c for r in rows for c, _ in r.top_k if c not in index}
        | {r.predicted_class for r in rows if r.predicted_class not in index}
    )
    for c in extra:
        index[c] = len(index)
    n = len(index)
    weights = np.ones(n)
    if prior:
        weights = np.asarray([max(float(prior.get(c, 0.0)), 0.0) for c in index]) + 1e-9
    matrix = np.zeros((n, n))
    for r in rows:
        col = index[r.predicted_class]
        column = np.zeros(n)
        for c, p in r.top_k:
            column[index[c]] += max(float(p), 0.0)
        known = column.sum()
        if known > 1.0:  # rounding in the message: renormalise
            column /= known
            known = 1.0
        tail = 1.0 - known
        if tail > 0:
            outside = weights.copy()
            outside[[index[c] for c, _ in r.top_k]] = 0.0
            if outside.sum() > 0:
                column += tail * outside / outside.sum()
            else:  # the top-k is every class: the tail can only be rounding
                column[col] += tail
        matrix[:, col] += column
    return matrix


def weighted_f1_of_confusion(matrix: np.ndarray) -> float:
    """Weighted F1 of a (possibly fractional) confusion matrix ``M[true, predicted]``."""
    total = matrix.sum()
    if total <= 0:
        return 0.0
    tp = np.diag(matrix)
    support = matrix.sum(axis=1)  # tp + fn
    predicted = matrix.sum(axis=0)  # tp + fp
    denominator = support + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(np.sum(support * f1) / total)


def estimate(
    rows: Sequence[WindowRow],
    classes: Sequence[int],
    prior: Mapping[int, float] | None = None,
    calibration: ConfidenceCalibration | None = None,
) -> Estimate | None:
    """The estimated weighted F1 and accuracy of ``rows``; None for an empty window."""
    if not rows:
        return None
    if calibration is not None:
        rows = [calibration.apply(r) for r in rows]
    matrix = expected_confusion(rows, classes, prior)
    tail = float(np.mean([max(0.0, 1.0 - sum(p for _, p in r.top_k)) for r in rows]))
    accuracy = float(np.mean([r.confidence for r in rows]))
    return Estimate(weighted_f1_of_confusion(matrix), accuracy, tail)
