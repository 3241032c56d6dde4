"""A window's rows and the figures the drift consumer reports for it.

A row is what one ``predictions.v1`` message says (or one reference-profile row): the predicted class,
its calibrated confidence, the top-k probabilities, the text length, whether an image was used and the
class each modality alone would choose. Labels joined on ``productid`` come as (predicted, true) pairs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference.reference_profile import ProfileRow, weighted_f1_score
from schemas import Prediction


@dataclass(frozen=True)
class WindowRow:
    predicted_class: int
    confidence: float
    top_k: tuple[tuple[int, float], ...]
    text_chars: int | None = None
    has_image: bool = False
    modality_classes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of_prediction(cls, p: Prediction) -> WindowRow:
        return cls(
            p.prdtypecode,
            p.confidence,
            tuple((s.prdtypecode, s.probability) for s in p.top_k),
            p.text_chars,
            "image" in p.modalities,
            dict(p.modality_classes),
        )

    @classmethod
    def of_profile(cls, r: ProfileRow, top_k: int | None = None) -> WindowRow:
        top = tuple((int(c), float(p)) for c, p in r.top_k[:top_k])
        return cls(r.predicted_class, r.confidence, top, r.text_chars, r.has_image, dict(r.modality_classes))

    def to_dict(self) -> dict[str, Any]:
        return {
            "c": self.predicted_class,
            "p": self.confidence,
            "k": [list(t) for t in self.top_k],
            "t": self.text_chars,
            "i": self.has_image,
            "m": self.modality_classes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WindowRow:
        return cls(
            int(d["c"]),
            float(d["p"]),
            tuple((int(c), float(p)) for c, p in d["k"]),
            d.get("t"),
            bool(d.get("i")),
            {k: int(v) for k, v in (d.get("m") or {}).items()},
        )


def class_distribution(rows: Sequence[WindowRow]) -> dict[int, float]:
    counts = Counter(r.predicted_class for r in rows)
    n = max(len(rows), 1)
    return {c: round(k / n, 4) for c, k in sorted(counts.items())}


def _summary(values: Sequence[float]) -> dict[str, float] | None:
    if not len(values):
        return None
    a = np.asarray(values, dtype=float)
    q = np.quantile(a, [0.1, 0.5, 0.9])
    return {
        "mean": round(float(a.mean()), 4),
        "p10": round(float(q[0]), 4),
        "p50": round(float(q[1]), 4),
        "p90": round(float(q[2]), 4),
    }


def modality_agreement(rows: Sequence[WindowRow]) -> dict[str, float]:
    """Per modality: the share of rows (where it was available) whose own choice is the fused one."""
    agree: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    for r in rows:
        for m, c in r.modality_classes.items():
            seen[m] += 1
            agree[m] += c == r.predicted_class
    return {m: round(agree[m] / seen[m], 4) for m in sorted(seen)}


def true_performance(pairs: Sequence[tuple[int, int]]) -> dict[str, float | int | None]:
    """Weighted F1 and accuracy of (predicted, true) pairs: the labels that arrived."""
    if not pairs:
        return {"n_labels": 0, "true_f1": None, "true_accuracy": None}
    pred = np.asarray([p for p, _ in pairs])
    true = np.asarray([t for _, t in pairs])
    return {
        "n_labels": len(pairs),
        "true_f1": round(weighted_f1_score(true, pred), 4),
        "true_accuracy": round(float(np.mean(pred == true)), 4),
    }


def window_figures(rows: Sequence[WindowRow]) -> dict[str, Any]:
    """The figures of a window (or of the reference), JSON-ready."""
    chars = [r.text_chars for r in rows if r.text_chars is not None]
    return {
        "n_predictions": len(rows),
        "class_distribution": {str(c): s for c, s in class_distribution(rows).items()},
        "confidence": _summary([r.confidence for r in rows]),
        "text_chars": _summary(chars),
        "image_share": round(float(np.mean([r.has_image for r in rows])), 4) if rows else None,
        "modality_agreement": modality_agreement(rows),
    }
