"""Shared fixtures: a real Kafka-compatible broker, real PostgreSQL and Redis, real data.

- ``kafka_bootstrap``: one embedded noida-db per test session on a free loopback port, in a
  throwaway data dir (or an existing cluster named by RAKUTEN_TEST_KAFKA_BOOTSTRAP).
- ``settings``: per test, with unique topic names and consumer groups, so tests never see each
  other's messages (the broker cannot evict dead members; fresh groups avoid stalls).
- ``postgres_url``: a database created for the session and dropped at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rakuten_stream.embedded_broker import EmbeddedBroker, free_port
from rakuten_stream.settings import Settings
from tests.helpers import DATA_DIR, missing_data

POSTGRES_ADMIN_URL = os.environ.get("RAKUTEN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("RAKUTEN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("RAKUTEN_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    with EmbeddedBroker(free_port(), tmp_path_factory.mktemp("broker")) as broker:
        yield broker.bootstrap_servers


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    import psycopg

    name = f"rakuten_test_{uuid.uuid4().hex[:12]}"
    admin_url = POSTGRES_ADMIN_URL
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required for these tests ({admin_url}): {exc}")
    base = admin_url.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required for these tests ({REDIS_TEST_URL}): {exc}")
    return REDIS_TEST_URL


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'rakuten.db'}"


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path: Path, redis_url: str) -> Settings:
    """Settings of one test: its own topics, consumer group, model dir and SQLite database."""
    run = uuid.uuid4().hex[:8]
    return Settings(
        kafka={"bootstrap_servers": kafka_bootstrap},
        topics={
            "products": f"products.v1.{run}",
            "predictions": f"predictions.v1.{run}",
            "labels": f"labels.v1.{run}",
            "dead_letters": f"dlq.v1.{run}",
            "model_updates": f"model-updates.v1.{run}",
            "retrain_requests": f"retrain-requests.v1.{run}",
            "drift_reports": f"drift-reports.v1.{run}",
            "partitions": 2,
        },
        worker={"group_id": f"workers-{run}", "metrics_port": 0, "batch_max_wait_ms": 100},
        database={"url": f"sqlite:///{tmp_path / 'rakuten.db'}"},
        cache={"redis_url": redis_url},
        models={"dir": tmp_path / "models", "report_dir": tmp_path / "reports"},
    )


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "products.csv").is_file():
        missing_data(f"Rakuten sample not found at {DATA_DIR} (set RAKUTEN_DATA_DIR)")
    return DATA_DIR


# --- models -------------------------------------------------------------------------------------
def stratified_subset(data_dir: Path, out: Path, per_class: int, prefer_images: bool = True) -> Path:
    """A small flat-layout copy of the real sample: ``per_class`` rows of every class."""
    import csv

    from rakuten_stream.datasets import load_dataset

    records = load_dataset(data_dir).records
    by_class: dict[int, list] = {}
    for r in sorted(records, key=lambda r: (r.image_path is None) if prefer_images else 0):
        by_class.setdefault(r.prdtypecode, []).append(r)
    chosen = [r for rows in by_class.values() for r in rows[:per_class]]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "products.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["productid", "imageid", "designation", "description", "prdtypecode"])
        for r in chosen:
            writer.writerow([r.productid, r.imageid or "", r.designation, r.description or "", r.prdtypecode])
    (out / "images").mkdir(exist_ok=True)
    for r in chosen:
        if r.image_path is not None:
            (out / "images" / r.image_path.name).symlink_to(r.image_path)
    return out


@pytest.fixture(scope="session")
def tiny_data(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stratified_subset(data_dir, tmp_path_factory.mktemp("tiny-data"), per_class=10)


@pytest.fixture(scope="session")
def tiny_model(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model version (TF-IDF + image + fusion, no e5 to stay quick) trained on 270 real rows.

    Its cascade threshold is above 1 (no loss of F1 allowed, not even none): every model runs on
    every listing, so the worker and HTTP tests see the image model at work; the cascade's own
    tests (tests/inference/test_cascade.py) give copies of it a threshold."""
    from training.pipeline import TrainConfig, train

    result = train(TrainConfig(data=tiny_data, model_dir=tmp_path_factory.mktemp("models"), use_e5=False,
                               cascade_max_loss=-1.0))
    return result.artifact_dir


@pytest.fixture(scope="session")
def text_model(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TF-IDF-only model version (no image model, no e5): the quickest real model, for worker tests."""
    from training.pipeline import TrainConfig, train

    result = train(TrainConfig(data=tiny_data, model_dir=tmp_path_factory.mktemp("text-models"), use_e5=False,
                               use_image=False))
    return result.artifact_dir


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database of this test alone (migrated), dropped afterwards: for tests that count rows."""
    import psycopg

    from rakuten_stream.database import upgrade

    name = f"rakuten_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    upgrade(url)
    yield url
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
