"""``predictions.v1``: the category a worker chose for one listing."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from pydantic import BaseModel, Field

from schemas.versioning import VersionedMessage


class CategoryScore(BaseModel):
    prdtypecode: int
    category: str
    probability: float = Field(..., ge=0, le=1)


class SourcePosition(BaseModel):
    topic: str
    partition: int
    offset: int


class Prediction(VersionedMessage):
    TOPIC: ClassVar[str] = "predictions.v1"

    schema_version: str = "1.3"

    productid: int
    prdtypecode: int
    category: str
    confidence: float = Field(..., ge=0, le=1, description="calibrated probability of prdtypecode")
    top_k: list[CategoryScore]
    contributions: dict[str, float] = Field(
        default_factory=dict, description="share of the decision per modality (text_tfidf, text_e5, image)"
    )
    modalities: list[str] = Field(
        default_factory=list, description="the models that ran for this listing (tfidf, e5, image). Since 1.3 a "
        "listing the confidence-gated cascade answers with the cheap model alone says only [\"tfidf\"] even if it "
        "has a photo; before 1.3 every available modality ran")
    model_version: str
    source: SourcePosition | None = None
    content_hash: str | None = None
    cached: bool = False
    image_note: str | None = Field(
        None, description="why the listing's image was not used and the prediction is text only, starting with the "
        "outcome code (refused, not_found, too_large, timeout, truncated_image, ...); absent when the image was used "
        "or there was none (since 1.1)")
    text_chars: int | None = Field(None, ge=0, description="characters of the cleaned title and description "
                                   "(since 1.2; the drift consumer's text-length figure)")
    modality_classes: dict[str, int] = Field(
        default_factory=dict, description="the class each available modality alone would choose (since 1.2; the drift "
        "consumer's per-modality agreement)")
    event_time: datetime | None = None
    predicted_at: datetime
