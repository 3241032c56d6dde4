"""Fixtures of the HTTP service's tests: its settings, a registered real model, the app."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from http_service.app import create_app
from rakuten_stream.database import make_engine, upgrade
from rakuten_stream.kafka import ensure_topics
from rakuten_stream.settings import Settings
from schemas.tables import PredictionRow
from tests.helpers import DATA_DIR, register_production

API_KEY = "test-key-" + uuid.uuid4().hex


def service_settings(kafka_bootstrap: str, postgres_url: str, root: Path, data_dir: Path | None = None,
                     **http: object) -> Settings:
    """Own topics and consumer group, the session's PostgreSQL, no cache (every answer is computed)."""
    run = uuid.uuid4().hex[:8]
    return Settings(
        kafka={"bootstrap_servers": kafka_bootstrap},
        topics={name: f"{topic}.{run}" for name, topic in [
            ("products", "products.v1"), ("predictions", "predictions.v1"), ("labels", "labels.v1"),
            ("dead_letters", "dlq.v1"), ("model_updates", "model-updates.v1"),
            ("retrain_requests", "retrain-requests.v1"), ("drift_reports", "drift-reports.v1")]} | {"partitions": 2},
        worker={"group_id": f"workers-{run}", "metrics_port": 0, "batch_max_wait_ms": 100},
        database={"url": postgres_url},
        cache={"enabled": False},
        images={"file_roots": [DATA_DIR.resolve()]},  # file:// images only under configured roots
        models={"dir": root / "models", "report_dir": root / "reports", "data_dir": data_dir},
        http={"api_keys": f"another-key,{API_KEY}", "batch_max_wait_ms": 5} | http,
    )


@pytest.fixture(scope="module")
def http_settings(kafka_bootstrap, postgres_url, tiny_model, tiny_data, tmp_path_factory) -> Settings:
    settings = service_settings(kafka_bootstrap, postgres_url, tmp_path_factory.mktemp("http"), tiny_data)
    ensure_topics(settings)
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    with engine.begin() as connection:  # the session database is shared by tests: start clean
        connection.execute(PredictionRow.__table__.delete())
    engine.dispose()
    register_production(settings, tiny_model)
    return settings


@pytest.fixture(scope="module")
def client(http_settings) -> Iterator[TestClient]:
    with TestClient(create_app(http_settings)) as test_client:
        yield test_client


@pytest.fixture
def key() -> dict[str, str]:
    return {"X-API-Key": API_KEY}
