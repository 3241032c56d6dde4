"""``model-updates.v1`` (compacted): the model version promoted to a stage."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar

from pydantic import Field

from schemas.versioning import VersionedMessage


class ModelUpdate(VersionedMessage):
    TOPIC: ClassVar[str] = "model-updates.v1"

    version: str
    stage: str = "production"
    artifact_dir: str
    manifest_sha256: str
    promoted_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
