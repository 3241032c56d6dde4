"""The one scoring entry point: cleaned texts and decoded images in, scored listings out.

The workers, replay, `score`, the quality gate and the HTTP service all call :func:`score_batch`,
so a listing gets the same category, confidence, top-k and per-modality contributions wherever it
is scored. Transport details (Kafka positions, cache flags, timestamps) are added by the callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image
from pydantic import BaseModel

from inference.features.text_cleaning import ListingText
from inference.runtime import BatchPrediction, ModelRuntime
from schemas import CategoryScore


class ScoredListing(BaseModel):
    """What the model says about one listing (the model-facing part of a ``schemas.Prediction``)."""

    prdtypecode: int
    category: str
    confidence: float
    top_k: list[CategoryScore]
    modalities: list[str]
    contributions: dict[str, float]
    text_chars: int | None = None
    modality_classes: dict[str, int] = {}


@dataclass
class ScoredBatch:
    listings: list[ScoredListing]
    prediction: BatchPrediction  # the probabilities behind them (for evaluation and metrics)


def score_batch(runtime: ModelRuntime, texts: Sequence[ListingText], images: Sequence[Image.Image | None],
                top_k: int, cascade: bool = True) -> ScoredBatch:
    """``cascade=False``: every model runs even where the manifest's cascade would stop at the cheap one."""
    prediction = runtime.predict(texts, images, cascade=cascade)
    return ScoredBatch([_scored(runtime, prediction, row, top_k, len(texts[row].full)) for row in range(len(texts))],
                       prediction)


def _scored(runtime: ModelRuntime, prediction: BatchPrediction, row: int, k: int, text_chars: int) -> ScoredListing:
    top = []
    for index, probability in prediction.top_k(row, k):
        code, name = runtime.category(index)
        top.append(CategoryScore(prdtypecode=code, category=name, probability=round(probability, 6)))
    modalities = [m for m, flags in prediction.present.items() if flags[row]]
    return ScoredListing(
        prdtypecode=top[0].prdtypecode, category=top[0].category, confidence=top[0].probability, top_k=top,
        modalities=modalities,
        contributions={m: round(float(prediction.contributions[m][row]), 4) for m in modalities},
        text_chars=text_chars,
        modality_classes={m: runtime.category(int(prediction.modality_probs[m][row].argmax()))[0] for m in modalities
                          if m in prediction.modality_probs},
    )
