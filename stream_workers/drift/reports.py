"""The ``drift_reports`` table: one row per closed window (idempotent: a reprocessed window overwrites it)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from rakuten_stream.database import session_scope, upsert
from schemas.tables import DriftReportRow

COLUMNS = (
    "report_id",
    "model_version",
    "window_start",
    "window_end",
    "n_predictions",
    "n_labels",
    "metrics",
    "drift_detected",
    "report_path",
    "window_id",
    "drift_score",
    "drift_threshold",
    "estimated_f1",
    "true_f1",
    "triggers",
    "episode_id",
    "retrain_request_id",
    "report_html_gz",
)


def store(engine: Engine, row: dict[str, Any]) -> None:
    with session_scope(engine) as session:
        upsert(session, DriftReportRow.__table__, [{c: row.get(c) for c in COLUMNS}], ["report_id"])


def list_reports(engine: Engine, limit: int = 50, model_version: str | None = None) -> list[DriftReportRow]:
    with session_scope(engine) as session:
        query = select(DriftReportRow).order_by(DriftReportRow.window_end.desc()).limit(limit)
        if model_version:
            query = query.where(DriftReportRow.model_version == model_version)
        return list(session.scalars(query))


def get_report(engine: Engine, report_id: str) -> DriftReportRow | None:
    with session_scope(engine) as session:
        return session.get(DriftReportRow, report_id)


def summary(row: DriftReportRow) -> dict[str, Any]:
    """A report as JSON-ready data, without its HTML."""
    return {
        "report_id": row.report_id,
        "model_version": row.model_version,
        "window_id": row.window_id,
        "window_start": row.window_start.isoformat(),
        "window_end": row.window_end.isoformat(),
        "n_predictions": row.n_predictions,
        "n_labels": row.n_labels,
        "drift_detected": row.drift_detected,
        "drift_score": row.drift_score,
        "drift_threshold": row.drift_threshold,
        "estimated_f1": row.estimated_f1,
        "true_f1": row.true_f1,
        "triggers": row.triggers or [],
        "episode_id": row.episode_id,
        "retrain_request_id": row.retrain_request_id,
        "has_html": row.report_html_gz is not None,
        "metrics": row.metrics,
    }
