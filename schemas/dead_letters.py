"""``dlq.v1``: an input that could not be processed, kept whole with the reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar

from pydantic import Field

from schemas.versioning import Base64Data, VersionedMessage


class DeadLetter(VersionedMessage):
    TOPIC: ClassVar[str] = "dlq.v1"

    original: Base64Data = Field(..., description="the original message value, base64")
    original_key: Base64Data | None = None
    topic: str
    partition: int
    offset: int
    error_class: str = Field(
        ..., description="stable reason code, e.g. not_json, too_deep, empty_title, truncated_image; processing_error "
                         "(processing raised) and sink_rejected (the database refused the row) for a poison message "
                         "found by bisecting its batch")
    error_message: str
    worker_id: str | None = None
    failed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
