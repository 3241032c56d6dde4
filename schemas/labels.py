"""``labels.v1``: the true category of a listing, when it becomes known (feedback)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar

from pydantic import Field

from schemas.versioning import VersionedMessage


class Label(VersionedMessage):
    TOPIC: ClassVar[str] = "labels.v1"

    productid: int = Field(..., gt=0)
    prdtypecode: int
    source: str | None = None
    event_time: datetime = Field(default_factory=lambda: datetime.now(UTC))
