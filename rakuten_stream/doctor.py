"""Health checks of the services the system depends on, each bounded by a timeout."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rakuten_stream.redaction import redact
from rakuten_stream.settings import Settings


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    target: str
    detail: str
    advice: str = ""
    seconds: float = 0.0


def check_kafka(settings: Settings, timeout_s: float = 3.0) -> CheckResult:
    from confluent_kafka.admin import AdminClient

    target = redact(settings.kafka.bootstrap_servers)
    start = time.monotonic()
    admin = AdminClient(settings.kafka_config() | {"log_level": 0, "socket.connection.setup.timeout.ms": 2000})
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except Exception as exc:
        return CheckResult("kafka", False, target, f"unreachable: {redact(str(exc))}",
                           "start the embedded broker with `rakuten-stream broker`, or set "
                           "RAKUTEN_KAFKA_BOOTSTRAP_SERVERS to your cluster", time.monotonic() - start)
    ours = [t for t in (settings.topics.products, settings.topics.predictions, settings.topics.dead_letters)
            if t in metadata.topics]
    detail = f"{len(metadata.brokers)} broker(s), {len(metadata.topics)} topics ({len(ours)}/3 service topics)"
    advice = "" if len(ours) == 3 else "topics are created by the worker, `publish` or `demo` on first use"
    return CheckResult("kafka", True, target, detail, advice, time.monotonic() - start)


def check_database(settings: Settings, timeout_s: float = 3.0) -> CheckResult:
    from sqlalchemy import text

    from rakuten_stream.database import make_engine, table_names

    url = settings.database.url.get_secret_value()
    target = redact(url)
    start = time.monotonic()
    connect_args = {"connect_timeout": int(max(1, timeout_s))} if url.startswith("postgres") else {}
    try:
        engine = make_engine(url, connect_args=connect_args) if connect_args else make_engine(url)
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                version = connection.execute(text("SHOW server_version")).scalar()
            else:
                version = connection.execute(text("select sqlite_version()")).scalar()
        tables = table_names(engine)
        engine.dispose()
    except Exception as exc:
        return CheckResult("database", False, target, f"unreachable: {redact(str(exc).splitlines()[0])}",
                           "start PostgreSQL or set RAKUTEN_DATABASE_URL (SQLite works for a demo)",
                           time.monotonic() - start)
    migrated = "model_versions" in tables
    return CheckResult("database", True, target, f"{engine.dialect.name} {version}, "
                       f"{'migrated' if migrated else 'not migrated'}",
                       "" if migrated else "run `rakuten-stream init-db`", time.monotonic() - start)


def check_redis(settings: Settings, timeout_s: float = 2.0) -> CheckResult:
    import redis

    url = settings.cache.redis_url.get_secret_value()
    start = time.monotonic()
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        info = client.info("server")
        client.close()
    except Exception as exc:
        return CheckResult("redis", False, redact(url), f"unreachable: {redact(str(exc))}",
                           "optional: workers run without the prediction cache; start redis-server or set "
                           "RAKUTEN_REDIS_URL", time.monotonic() - start)
    return CheckResult("redis", True, redact(url), f"redis {info.get('redis_version')}", "",
                       time.monotonic() - start)


def run_checks(settings: Settings) -> list[CheckResult]:
    return [check_kafka(settings), check_database(settings), check_redis(settings)]
