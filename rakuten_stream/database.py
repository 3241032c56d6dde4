"""Database engine, sessions, migrations and the batched idempotent upsert.

One code path for PostgreSQL (production) and SQLite (zero-setup demo). Migrations are
Alembic's; ``upgrade`` is what ``rakuten-stream init-db`` runs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Table, create_engine, event, inspect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.expression import Executable

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 here."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if url.startswith("postgresql+psycopg://"):  # an unreachable host fails in seconds, not after TCP's minutes
        kwargs.setdefault("connect_args", {}).setdefault("connect_timeout", 5)
    return create_engine(url, **kwargs)


def ping(engine: Engine) -> bool:
    """Whether the database answers ``SELECT 1`` now."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except SQLAlchemyError:
        return False


def wait_until_reachable(url: str, timeout_s: float, on_retry: Callable[[str, float], None] | None = None,
                         first_pause_s: float = 0.5, max_pause_s: float = 10.0,
                         sleep: Callable[[float], None] = time.sleep) -> None:
    """Return once the database at ``url`` answers; retry with exponential backoff and jitter for up to
    ``timeout_s`` (``on_retry(why, pause)`` before each pause), then raise the last ``OperationalError``."""
    engine = make_engine(url, poolclass=NullPool)
    deadline = time.monotonic() + timeout_s
    pause = first_pause_s
    try:
        while True:
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                return
            except (OperationalError, InterfaceError) as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                wait = min(left, pause * random.uniform(0.5, 1.0))
                if on_retry is not None:
                    why = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
                    on_retry(why[0] if why else type(exc).__name__, wait)
                sleep(wait)
                pause = min(max_pause_s, pause * 2)
    finally:
        engine.dispose()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the worker's writes
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A transaction: commit on success, roll back on error."""
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session, session.begin():
        yield session


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Apply the migrations (idempotent: an up-to-date database is left alone)."""
    command.upgrade(alembic_config(url), revision)


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def upsert_statement(dialect: str, table: Table, conflict_columns: Sequence[str],
                     update_columns: Sequence[str]) -> Executable:
    """``INSERT ... ON CONFLICT DO UPDATE`` of ``table``, to execute with a list of rows.

    Built once and executed with each batch's rows (an executemany that SQLAlchemy sends as one
    multi-row INSERT), so neither the statement nor its compiled SQL is rebuilt per batch.
    Redelivered rows overwrite themselves: the sink stays idempotent under at-least-once.
    """
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert is None:
        raise NotImplementedError(f"upsert is implemented for PostgreSQL and SQLite, not {dialect}")
    statement = insert(table)
    if update_columns:
        return statement.on_conflict_do_update(
            index_elements=list(conflict_columns), set_={c: statement.excluded[c] for c in update_columns}
        )
    return statement.on_conflict_do_nothing(index_elements=list(conflict_columns))


def upsert(session: Session, table: Table, rows: Sequence[dict[str, Any]], conflict_columns: Sequence[str],
           update_columns: Sequence[str] | None = None) -> None:
    """One upsert of the whole batch (PostgreSQL and SQLite); see :func:`upsert_statement`."""
    if not rows:
        return
    columns = update_columns if update_columns is not None else [
        c for c in rows[0] if c not in conflict_columns
    ]
    statement = upsert_statement(session.get_bind().dialect.name, table, conflict_columns, columns)
    session.execute(statement, list(rows))
