"""Database tables (SQLAlchemy 2). PostgreSQL in production, SQLite for the zero-setup demo.

Migrations in ``rakuten_stream/migrations`` create exactly these tables; a test checks that
the migrated schema and these definitions agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# BIGINT primary keys autoincrement on PostgreSQL; SQLite only does so for INTEGER.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class DatasetSnapshot(Base):
    __tablename__ = "dataset_snapshots"

    snapshot_id: Mapped[str] = mapped_column(String(64), primary_key=True, comment="sha256 of the input files")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    source_path: Mapped[str] = mapped_column(Text)
    layout: Mapped[str] = mapped_column(String(16))
    row_count: Mapped[int] = mapped_column(Integer)
    image_count: Mapped[int] = mapped_column(Integer)
    class_counts: Mapped[dict[str, Any]] = mapped_column(JSON)
    files: Mapped[dict[str, Any]] = mapped_column(JSON, comment="file name -> sha256")


class Product(Base):
    __tablename__ = "products"

    productid: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    imageid: Mapped[int | None] = mapped_column(BigInteger)
    designation: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    prdtypecode: Mapped[int | None] = mapped_column(Integer, index=True, comment="label from the dataset")
    image_path: Mapped[str | None] = mapped_column(Text)
    snapshot_id: Mapped[str | None] = mapped_column(ForeignKey("dataset_snapshots.snapshot_id"))
    loaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class PredictionRow(Base):
    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("productid", "model_version", name="uq_predictions_product_version"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    productid: Mapped[int] = mapped_column(BigInteger, index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    prdtypecode: Mapped[int] = mapped_column(Integer)
    category: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(Float)
    top_k: Mapped[list[Any]] = mapped_column(JSON)
    contributions: Mapped[dict[str, Any]] = mapped_column(JSON)
    modalities: Mapped[list[Any]] = mapped_column(JSON)
    source_topic: Mapped[str | None] = mapped_column(String(255))
    source_partition: Mapped[int | None] = mapped_column(Integer)
    source_offset: Mapped[int | None] = mapped_column(BigInteger)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    event_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    predicted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class LabelRow(Base):
    """The latest label of a product received on ``labels.v1`` (it overrides the dataset's label)."""

    __tablename__ = "labels"

    productid: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    prdtypecode: Mapped[int] = mapped_column(Integer)
    source: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    event_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), comment="the label's own time")
    source_partition: Mapped[int | None] = mapped_column(Integer)
    source_offset: Mapped[int | None] = mapped_column(BigInteger)


class StreamListing(Base):
    """A listing as it came on ``products.v1`` (the latest per product): the text a label trains on."""

    __tablename__ = "stream_listings"

    productid: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    imageid: Mapped[int | None] = mapped_column(BigInteger)
    designation: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    image_uri: Mapped[str | None] = mapped_column(Text, comment="by-reference images only; inline bytes are not kept")
    event_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    source_partition: Mapped[int | None] = mapped_column(Integer)
    source_offset: Mapped[int | None] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    stage: Mapped[str] = mapped_column(String(16), index=True, comment="candidate | production | archived")
    snapshot_id: Mapped[str | None] = mapped_column(ForeignKey("dataset_snapshots.snapshot_id"))
    artifact_dir: Mapped[str] = mapped_column(Text)
    artifacts: Mapped[dict[str, Any]] = mapped_column(JSON, comment="file -> sha256")
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    gate_decision: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    training_rows: Mapped[list[Any] | None] = mapped_column(
        JSON, comment="productids the version was trained on (the gate scores on the others)")
    held_out_rows: Mapped[list[Any] | None] = mapped_column(
        JSON, comment="productids it held out (a retrain keeps them held out)")
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DriftReportRow(Base):
    __tablename__ = "drift_reports"

    report_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    model_version: Mapped[str] = mapped_column(String(64))
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    n_predictions: Mapped[int] = mapped_column(Integer)
    n_labels: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    drift_detected: Mapped[bool] = mapped_column(Boolean)
    report_path: Mapped[str | None] = mapped_column(Text)
    window_id: Mapped[str | None] = mapped_column(String(128), comment="model version, window number")
    drift_score: Mapped[float | None] = mapped_column(Float)
    drift_threshold: Mapped[float | None] = mapped_column(Float, comment="bootstrap-calibrated for the window size")
    estimated_f1: Mapped[float | None] = mapped_column(Float)
    true_f1: Mapped[float | None] = mapped_column(Float, comment="on the labels that arrived; None without labels")
    triggers: Mapped[list[str] | None] = mapped_column(JSON)
    episode_id: Mapped[str | None] = mapped_column(String(64))
    retrain_request_id: Mapped[str | None] = mapped_column(String(64))
    report_html_gz: Mapped[bytes | None] = mapped_column(LargeBinary, comment="Evidently's HTML report, gzip")


class RetrainJob(Base):
    __tablename__ = "retrain_jobs"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    status: Mapped[str] = mapped_column(String(16), comment="queued | running | succeeded | rejected | failed")
    reason: Mapped[str] = mapped_column(Text)
    drift_report_id: Mapped[str | None] = mapped_column(ForeignKey("drift_reports.report_id"))
    candidate_version: Mapped[str | None] = mapped_column(String(64))
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    steps: Mapped[list[Any] | None] = mapped_column(
        JSON, comment="each step as it finished: what it did, found, decided")
    snapshot_id: Mapped[str | None] = mapped_column(String(64), comment="the dataset snapshot the job trained on")
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
