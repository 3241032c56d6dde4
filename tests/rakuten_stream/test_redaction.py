"""No password is printed: one redaction for `config`, `doctor`, log lines and error messages."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from rakuten_stream.embedded_broker import free_port
from rakuten_stream.redaction import RedactingFilter, redact, redact_mapping


@pytest.mark.parametrize(("text", "expected"), [
    ("postgresql://svc:hunter2@db/rakuten", "postgresql://svc:***@db/rakuten"),
    ("postgresql://:hunter2@db/rakuten", "postgresql://:***@db/rakuten"),  # empty user
    ("redis://:hunter2@10.0.0.1:6379/0", "redis://:***@10.0.0.1:6379/0"),
    ("redis://hunter2@cache:6379/0", "redis://***@cache:6379/0"),  # password-only, pre-ACL Redis
    ("postgresql://svc:p@ss@db/x", "postgresql://svc:***@db/x"),  # an unescaped @ in the password
    ("postgresql://svc@db/x?password=hunter2&sslmode=require", "postgresql://svc@db/x?password=***&sslmode=require"),
    ("postgresql://db/x?sslpassword=hunter2", "postgresql://db/x?sslpassword=***"),
    ("https://h/x?token=hunter2&pwd=hunter3;secret=hunter4&passwd=hunter5",
     "https://h/x?token=***&pwd=***;secret=***&passwd=***"),
    ("host=db user=svc password=hunter2 dbname=x", "host=db user=svc password=*** dbname=x"),
    ("host=db password='hunter 2' dbname=x", "host=db password=*** dbname=x"),
    ('{"sasl.password": "hunter2", "acks": "all"}', '{"sasl.password": "***", "acks": "all"}'),
])
def test_every_form_of_secret_is_masked(text, expected):
    assert redact(text) == expected
    in_a_sentence = redact(f"could not connect to {text}: refused")
    assert in_a_sentence.startswith(f"could not connect to {expected}") and "hunter" not in in_a_sentence


@pytest.mark.parametrize("text", [
    "postgresql://postgres@127.0.0.1:5432/rakuten", "sqlite:///var/rakuten-stream.db", "127.0.0.1:19092",
    "http://images:8080/a.jpg?size=large", "redis://127.0.0.1:6379/0",
])
def test_text_without_secrets_is_unchanged(text):
    assert redact(text) == text


def test_secret_named_kafka_settings_are_masked_and_the_rest_kept():
    extra = {"sasl.password": "a", "ssl.key.password": "b", "sasl.jaas.config": "c", "sasl.oauthbearer.config": "d",
             "security.protocol": "SASL_SSL", "ssl.ca.location": "/etc/ca.pem"}
    assert redact_mapping(extra) == {"sasl.password": "***", "ssl.key.password": "***", "sasl.jaas.config": "***",
                                     "sasl.oauthbearer.config": "***", "security.protocol": "SASL_SSL",
                                     "ssl.ca.location": "/etc/ca.pem"}


def test_log_lines_and_their_tracebacks_are_masked(caplog):
    logger = logging.getLogger("test.redaction")
    record_filter = RedactingFilter()
    caplog.handler.addFilter(record_filter)
    try:
        logger.warning("cannot reach %s", "redis://:hunter2@cache:6379/0")
        try:
            raise ConnectionError("postgresql://svc:hunter3@db/x refused")
        except ConnectionError:
            logger.exception("database down")
    finally:
        caplog.handler.removeFilter(record_filter)
    assert "hunter" not in caplog.text
    assert "redis://:***@cache" in caplog.text and "postgresql://svc:***@db" in caplog.text


# --- through the command line ---------------------------------------------------------------------
SECRETS = ("HUNTER2", "HUNTER3", "HUNTER4", "HUNTER5", "HUNTER6", "HUNTER7")


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RAKUTEN_")} | env
    return subprocess.run([sys.executable, "-m", "rakuten_cli.main", *args], capture_output=True, text=True,
                          env=environment, timeout=60)


@pytest.fixture
def secret_env() -> dict[str, str]:
    port = free_port()  # nothing listens there
    return {
        "RAKUTEN_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "RAKUTEN_DATABASE_URL": f"postgresql://:HUNTER2@127.0.0.1:{port}/x?sslpassword=HUNTER3&password=HUNTER4",
        "RAKUTEN_REDIS_URL": f"redis://:HUNTER5@127.0.0.1:{port}/0",
        "RAKUTEN_KAFKA_SASL_PASSWORD": "HUNTER6",
        "RAKUTEN_KAFKA_EXTRA": json.dumps({"ssl.key.password": "HUNTER7", "security.protocol": "PLAINTEXT"}),
    }


def test_config_prints_no_secret(secret_env):
    result = cli("config", **secret_env)
    assert result.returncode == 0, result.stderr
    assert not [s for s in SECRETS if s in result.stdout + result.stderr]
    shown = json.loads(result.stdout)
    assert shown["database"]["url"].startswith("postgresql://:***@127.0.0.1")
    assert shown["cache"]["redis_url"].startswith("redis://:***@127.0.0.1")


def test_doctor_prints_no_secret_even_when_every_service_fails(secret_env):
    result = cli("doctor", **secret_env, COLUMNS="300")
    assert result.returncode == 1
    assert "unreachable" in result.stdout + result.stderr
    assert not [s for s in SECRETS if s in result.stdout + result.stderr]


def test_a_malformed_database_url_is_not_echoed_with_its_password(secret_env):
    env = secret_env | {"RAKUTEN_DATABASE_URL": "postgresql://svc:HUNTER2@db:notaport/x"}
    result = cli("doctor", **env, COLUMNS="300")
    assert result.returncode == 1
    assert "HUNTER2" not in result.stdout + result.stderr
