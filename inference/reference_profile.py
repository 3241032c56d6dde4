"""``reference_profile.json``: how a model version behaved on its held-out rows, written at training time.

The drift consumer compares every window of production predictions with this profile (Evidently),
calibrates its alarm threshold on it (bootstrap) and checks its performance estimate against it.
One row per held-out listing, with what a ``predictions.v1`` message carries (top-k probabilities,
not the full vector) plus the true class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

PROFILE_FILE = "reference_profile.json"
PROFILE_TOP_K = 5


class ProfileRow(BaseModel):
    true_class: int
    predicted_class: int
    confidence: float
    top_k: list[tuple[int, float]] = Field(..., description="(prdtypecode, probability), best first")
    text_chars: int
    has_image: bool
    modality_classes: dict[str, int] = Field(default_factory=dict)


class ReferenceProfile(BaseModel):
    version: str
    classes: list[int]
    weighted_f1: float
    accuracy: float
    rows: list[ProfileRow]


def build_profile(
    version: str,
    classes: Sequence[int],
    true_index: np.ndarray,
    probs: np.ndarray,
    modality_probs: dict[str, np.ndarray],
    present: dict[str, np.ndarray],
    text_chars: Sequence[int],
    top_k: int = PROFILE_TOP_K,
) -> ReferenceProfile:
    """The profile of held-out rows scored as a worker scores them (``probs`` over ``classes``)."""
    codes = np.asarray(classes)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    rows = []
    for i in range(len(probs)):
        top = [(int(codes[j]), round(float(probs[i, j]), 6)) for j in order[i]]
        modalities = {m: int(codes[int(p[i].argmax())]) for m, p in modality_probs.items() if present[m][i]}
        rows.append(
            ProfileRow(
                true_class=int(codes[true_index[i]]),
                predicted_class=top[0][0],
                confidence=top[0][1],
                top_k=top,
                text_chars=int(text_chars[i]),
                has_image=bool(present.get("image", np.zeros(len(probs), dtype=bool))[i]),
                modality_classes=modalities,
            )
        )
    y_true = np.asarray([r.true_class for r in rows])
    y_pred = np.asarray([r.predicted_class for r in rows])
    return ReferenceProfile(
        version=version,
        classes=[int(c) for c in classes],
        weighted_f1=round(weighted_f1_score(y_true, y_pred), 6),
        accuracy=round(float(np.mean(y_true == y_pred)) if len(rows) else 0.0, 6),
        rows=rows,
    )


def weighted_f1_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Weighted F1 (support-weighted mean of per-class F1 over the true classes), as scikit-learn's."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return 0.0
    total = 0.0
    for c in np.unique(y_true):
        tp = float(np.sum((y_true == c) & (y_pred == c)))
        support = float(np.sum(y_true == c))
        predicted = float(np.sum(y_pred == c))
        f1 = 2 * tp / (support + predicted) if support + predicted else 0.0
        total += support * f1
    return total / len(y_true)


def write_profile(directory: Path, profile: ReferenceProfile) -> Path:
    path = Path(directory) / PROFILE_FILE
    path.write_text(profile.model_dump_json(), encoding="utf-8")
    return path


def read_profile(directory: Path) -> ReferenceProfile | None:
    """The version's profile, or None for a version trained before profiles existed."""
    path = Path(directory) / PROFILE_FILE
    if not path.is_file():
        return None
    return ReferenceProfile.model_validate_json(path.read_text(encoding="utf-8"))
