"""Every command, when something it needs is unreachable or wrong: one clear line on stderr saying
what and what to do, exit code 2, within seconds, no traceback (issue 12).

Each case runs the real console entry point in a subprocess (`python -m rakuten_cli.main`), as a
user would. The bound on the time is generous (the promise is 5 s; the machine is shared).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from rakuten_stream.embedded_broker import free_port

BOUND_S = 10.0


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def rakuten_stream(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    environment = os.environ | {"COLUMNS": "200", "NO_COLOR": "1"} | (env or {})
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "rakuten_cli.main", *args], capture_output=True, text=True,
                          env=environment, cwd=cwd, timeout=120)
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - start)


def assert_one_clear_line(run: Run, *words: str) -> None:
    assert "Traceback" not in run.stderr + run.stdout, run.stderr[-2000:]
    assert run.code == 2, run.stderr[-2000:]
    assert len(run.lines) == 1, run.stderr
    assert run.seconds < BOUND_S, f"{run.seconds:.1f}s"
    for word in words:
        assert word.lower() in run.lines[0].lower(), run.lines[0]


@pytest.fixture
def no_broker(tmp_path) -> dict[str, str]:
    """A loopback port nothing listens on, as the Kafka of every command; SQLite in tmp_path."""
    port = free_port()
    return {"RAKUTEN_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}", "RAKUTEN_BROKER_PORT": str(port),
            "RAKUTEN_DATABASE_URL": f"sqlite:///{tmp_path / 'rakuten.db'}", "RAKUTEN_MODEL_DIR": str(tmp_path / "m")}


@pytest.mark.parametrize("args", [
    ["results", "--no-follow"],
    ["lag"],
    ["publish", "--data", "-"],
    ["worker", "--metrics-port", "0"],
], ids=lambda args: args[0])
def test_without_a_broker_a_command_says_kafka_is_unreachable_and_how_to_fix_it(args, no_broker, tmp_path):
    run = rakuten_stream(*args, env=no_broker, cwd=tmp_path)
    assert_one_clear_line(run, "kafka", no_broker["RAKUTEN_KAFKA_BOOTSTRAP_SERVERS"], "rakuten-stream broker")
    assert "%3|" not in run.stderr  # librdkafka's own log stays out of it


def test_an_unreachable_database_is_one_line_naming_it_without_its_password(no_broker, tmp_path):
    url = f"postgresql://rakuten:s3cret@127.0.0.1:{free_port()}/rakuten"
    run = rakuten_stream("--database-url", url, "models", "list", env=no_broker, cwd=tmp_path)
    assert_one_clear_line(run, "database", "--database-url")
    assert "s3cret" not in run.stderr


def test_a_database_url_that_is_not_one_is_one_line(no_broker, tmp_path):
    run = rakuten_stream("--database-url", "postgres//oops", "models", "list", env=no_broker, cwd=tmp_path)
    assert_one_clear_line(run, "--database-url", "postgres//oops")


def test_demo_with_an_unknown_image_mode_is_one_line(no_broker, tmp_path):
    run = rakuten_stream("demo", "--images", "bogus", env=no_broker, cwd=tmp_path)
    assert_one_clear_line(run, "bogus", "inline")


def test_demo_on_a_missing_data_folder_is_one_line_before_anything_starts(no_broker, tmp_path):
    run = rakuten_stream("demo", "--data", str(tmp_path / "MISSING"), env=no_broker, cwd=tmp_path)
    assert_one_clear_line(run, "MISSING")
    assert not (tmp_path / "var").exists()  # no broker started, no model trained


def test_a_worker_whose_database_is_down_at_start_retries_with_backoff_then_says_so_in_one_line(
        kafka_bootstrap, tmp_path):
    closed = free_port()
    env = {"RAKUTEN_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "RAKUTEN_MODEL_DIR": str(tmp_path / "m"),
           "RAKUTEN_DATABASE_URL": f"postgresql://rakuten:s3cret@127.0.0.1:{closed}/rakuten",
           "RAKUTEN_DATABASE_STARTUP_WAIT_S": "3", "RAKUTEN_METRICS_PORT": "0"}
    run = rakuten_stream("worker", env=env, cwd=tmp_path)
    assert "Traceback" not in run.stderr + run.stdout, run.stderr[-2000:]
    assert run.code == 2, run.stderr[-2000:]
    *retries, last = run.lines
    assert len(retries) >= 2, run.stderr  # it waited, more than once, before giving up
    assert all(line.startswith("warning: the database at ") and "retrying in" in line for line in retries)
    assert last.startswith("error: the database is unreachable") and "RAKUTEN_DATABASE_URL" in last
    assert "s3cret" not in run.stderr and len(run.stderr) < 4000


def test_waiting_for_the_database_backs_off_exponentially_and_gives_up_with_the_error():
    from sqlalchemy.exc import OperationalError

    from rakuten_stream.database import wait_until_reachable

    pauses: list[float] = []
    with pytest.raises(OperationalError):
        wait_until_reachable(f"postgresql://postgres@127.0.0.1:{free_port()}/x", timeout_s=2.0,
                             on_retry=lambda why, pause: pauses.append(pause), sleep=lambda s: time.sleep(0.3))
    assert len(pauses) >= 2
    assert pauses[1] >= pauses[0]  # 0.5 s, then 1 s, ... (each less up to half of it, the jitter)
