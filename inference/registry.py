"""The model registry: ``model_versions`` rows and the announcements of promotions.

Training registers candidates and promotes them through the quality gate; workers read the
production version at start and hear of promotions on the compacted model-updates topic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from inference.artifacts import Manifest, manifest_sha256
from rakuten_stream.database import session_scope
from rakuten_stream.kafka import make_producer
from rakuten_stream.settings import Settings
from schemas import ModelUpdate
from schemas.tables import ModelVersion


class RegistryError(LookupError):
    pass


def register(engine: Engine, manifest: Manifest, artifact_dir: Path, snapshot_id: str | None,
             stage: str = "candidate", training_rows: list[int] | None = None,
             held_out_rows: list[int] | None = None) -> ModelVersion:
    """A version's registry row; ``training_rows`` are the productids it was trained on (the quality gate
    scores a later candidate against it only on the others), ``held_out_rows`` those it held out."""
    row = ModelVersion(
        version=manifest.version, stage=stage, snapshot_id=snapshot_id, artifact_dir=str(Path(artifact_dir).resolve()),
        artifacts=manifest.files, parameters=manifest.parameters, metrics=manifest.metrics,
        training_rows=training_rows, held_out_rows=held_out_rows,
    )
    with session_scope(engine) as session:
        session.merge(row)
    return row


def get_version(engine: Engine, version: str) -> ModelVersion:
    with session_scope(engine) as session:
        row = session.get(ModelVersion, version)
        if row is None:
            raise RegistryError(f"no model version {version!r} in the registry")
        session.expunge(row)
        return row


def production(engine: Engine) -> ModelVersion | None:
    with session_scope(engine) as session:
        row = session.scalars(
            select(ModelVersion).where(ModelVersion.stage == "production").order_by(ModelVersion.promoted_at.desc())
        ).first()
        if row is not None:
            session.expunge(row)
        return row


def list_versions(engine: Engine) -> list[ModelVersion]:
    with session_scope(engine) as session:
        rows = list(session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc())))
        for row in rows:
            session.expunge(row)
        return rows


def promote(engine: Engine, version: str, decision: dict[str, Any] | None = None) -> ModelVersion:
    """Make ``version`` the production model; the previous one is archived."""
    with session_scope(engine) as session:
        row = session.get(ModelVersion, version)
        if row is None:
            raise RegistryError(f"no model version {version!r} in the registry")
        for old in session.scalars(select(ModelVersion).where(ModelVersion.stage == "production")):
            if old.version != version:
                old.stage = "archived"
        row.stage = "production"
        row.promoted_at = datetime.now(UTC)
        if decision is not None:
            row.gate_decision = decision
        session.flush()
        session.expunge(row)
        return row


def record_decision(engine: Engine, version: str, decision: dict[str, Any]) -> None:
    with session_scope(engine) as session:
        row = session.get(ModelVersion, version)
        if row is None:
            raise RegistryError(f"no model version {version!r} in the registry")
        row.gate_decision = decision


def announce(settings: Settings, row: ModelVersion) -> None:
    """Tell running workers (compacted topic, keyed by stage) which version is now in production."""
    update = ModelUpdate(version=row.version, stage=row.stage, artifact_dir=row.artifact_dir,
                         manifest_sha256=manifest_sha256(Path(row.artifact_dir)))
    producer = make_producer(settings)
    producer.produce(settings.topics.model_updates, key=row.stage.encode(), value=update.to_bytes())
    if producer.flush(15) != 0:
        raise RuntimeError(f"could not announce model version {row.version} on {settings.topics.model_updates}")
