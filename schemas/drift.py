"""``drift-reports.v1`` and ``retrain-requests.v1``: what the drift consumer finds and asks for."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import Field

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


class RetrainRequest(VersionedMessage):
    TOPIC: ClassVar[str] = "retrain-requests.v1"

    request_id: str
    reason: str
    drift_report_id: str | None = None
    requested_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
