"""Migrations create every table, on PostgreSQL and on SQLite, matching the table definitions."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from rakuten_stream.database import make_engine, table_names, upgrade
from schemas.tables import Base

EXPECTED_TABLES = {"products", "predictions", "labels", "model_versions", "drift_reports", "retrain_jobs",
                   "dataset_snapshots", "stream_listings"}


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request, postgres_url, sqlite_url):
    return postgres_url if request.param == "postgresql" else sqlite_url


def test_migrations_create_every_table_and_match_the_models(database_url):
    upgrade(database_url)
    upgrade(database_url)  # a second run is a no-op
    engine = make_engine(database_url)
    assert EXPECTED_TABLES <= table_names(engine)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == [], f"tables and migrations disagree: {diff}"
