"""``drift-reports.v1`` and ``retrain-requests.v1``: what the drift consumer finds and asks for."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from schemas.versioning import VersionedMessage


class DriftReport(VersionedMessage):
    TOPIC: ClassVar[str] = "drift-reports.v1"

    report_id: str
    model_version: str
    window_start: datetime
    window_end: datetime
    n_predictions: int = Field(..., ge=0)
    n_labels: int = Field(0, ge=0)
    metrics: dict[str, Any] = Field(default_factory=dict)
    drift_detected: bool


class RetrainEvidence(BaseModel):
    """The window that raised a retrain request and what it showed (since 1.1)."""

    window_id: str
    window_start: datetime
    window_end: datetime
    n_predictions: int = Field(..., ge=0)
    n_labels: int = Field(0, ge=0)
    drift_score: float | None = None
    drift_threshold: float | None = None
    estimated_f1: float | None = None
    true_f1: float | None = None
    reference_f1: float | None = None
    labels_since_last_request: int | None = Field(None, ge=0)
    figures: dict[str, Any] = Field(default_factory=dict, description="the window's figures, as in its drift report")


class RetrainRequest(VersionedMessage):
    TOPIC: ClassVar[str] = "retrain-requests.v1"

    schema_version: str = "1.1"

    request_id: str
    reason: str = Field(..., description="distribution_drift | performance_drop | label_backlog (or a free text)")
    drift_report_id: str | None = None
    model_version: str | None = Field(None, description="the production version the evidence is about (since 1.1)")
    episode_id: str | None = Field(None, description="the drift episode that raised it; one request each (since 1.1)")
    triggers: list[str] = Field(default_factory=list, description="every trigger that fired in the window (since 1.1)")
    evidence: RetrainEvidence | None = Field(None, description="since 1.1")
    requested_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
