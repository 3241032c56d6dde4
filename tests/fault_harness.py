"""Faults on demand for the fault suite: private PostgreSQL, Redis and broker instances that a test
may stop and start, worker processes it may SIGTERM or SIGKILL, a paced publisher, and the count
check every fault test ends with.

The machine's own PostgreSQL and Redis are never stopped: each private instance runs on a free
port in a throwaway directory (PostgreSQL initialised as the ``postgres`` user).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import TopicPartition
from sqlalchemy import select

from rakuten_stream.clients.lag import consumer_lag
from rakuten_stream.database import make_engine
from rakuten_stream.embedded_broker import free_port
from rakuten_stream.kafka import make_consumer, make_producer
from rakuten_stream.settings import Settings
from schemas import DeadLetter, Prediction
from schemas.tables import PredictionRow
from tests.helpers import wait_until


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    return str(versions[-1] / name)


class PrivatePostgres:
    """A PostgreSQL cluster of its own (initdb as ``postgres`` on a free port), to stop mid-test."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rakuten-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _as_postgres(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=60)

    def start(self) -> PrivatePostgres:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                          str(self.root / "log"), "-w", "start")
        return self

    def stop(self) -> None:
        self._as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped by the test
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A redis-server of its own on a free port, nothing kept on disk."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen | None = None

    def start(self) -> PrivateRedis:
        self._process = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        import redis

        assert wait_until(lambda: _answers(redis.Redis(port=self.port, socket_connect_timeout=0.2)), 10)
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _answers(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False




class WorkerProcess:
    """``rakuten-stream worker`` as a child process, to SIGTERM or SIGKILL."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.env = os.environ | settings.as_environment()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "rakuten_cli.main", "worker"], env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT)
        return self

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.terminate()


def listing(productid: int) -> bytes:
    return json.dumps({"schema_version": "1.0", "productid": productid,
                       "designation": f"Piscine tubulaire ronde {productid % 97}",
                       "description": "Piscine hors sol, 3 m, avec pompe"}).encode()


class PacedPublisher(threading.Thread):
    """Publishes ``values`` to the products topic at about ``per_second``, keyed by productid.
    ``confirmed`` counts the records the broker acknowledged (across a broker restart too)."""

    def __init__(self, settings: Settings, values: list[bytes], per_second: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.values, self.per_second = settings, values, per_second
        self.sent = 0
        self.confirmed = 0
        self.failed = 0

    def run(self) -> None:
        producer = make_producer(self.settings, **{"message.timeout.ms": 60_000})

        def report(err, _msg) -> None:
            if err is None:
                self.confirmed += 1
            else:
                self.failed += 1

        for value in self.values:
            producer.produce(self.settings.topics.products, value=value, key=str(json.loads(value)["productid"])
                             .encode() if value.startswith(b"{") else b"x", on_delivery=report)
            producer.poll(0)
            self.sent += 1
            time.sleep(1 / self.per_second)
        producer.flush(90)

    def done(self) -> bool:
        return not self.is_alive()


def read_all(settings: Settings, topic: str, read_committed: bool = False, idle_s: float = 1.5) -> list:
    """Every message of ``topic`` (read_committed: only committed transactions' records)."""
    extra = {"isolation.level": "read_committed"} if read_committed else {}
    consumer = make_consumer(settings, group_id=f"fault-reader-{uuid.uuid4().hex[:8]}", **extra)
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out, last = [], time.monotonic()
    while time.monotonic() - last < idle_s:
        batch = [m for m in consumer.consume(500, timeout=0.2) if not m.error()]
        if batch:
            out.extend(batch)
            last = time.monotonic()
    consumer.close()
    return out


def lag_is_zero(settings: Settings) -> bool:
    try:
        lags = consumer_lag(settings, settings.worker.group_id, settings.topics.products, timeout_s=5)
    except Exception:
        return False
    return bool(lags) and all(p.lag == 0 for p in lags)


def rows_of(settings: Settings) -> list[tuple[int, str]]:
    engine = make_engine(settings.database.url.get_secret_value())
    try:
        with engine.connect() as connection:
            return [(r.productid, r.model_version) for r in connection.execute(select(PredictionRow))]
    finally:
        engine.dispose()


@dataclass
class Counts:
    published: int
    rows: int
    distinct_rows: int
    dead_letters: int
    lag_zero: bool

    def __str__(self) -> str:
        lost = self.published - self.rows - self.dead_letters
        return (f"published {self.published}, predicted rows {self.rows} ({self.distinct_rows} distinct), "
                f"dead letters {self.dead_letters}, lag 0: {self.lag_zero} -> {lost} lost")


def settle(settings: Settings, published: int, timeout_s: float = 90.0) -> Counts:
    """Wait until the group's lag is 0 and every listing is accounted for (or the timeout), then count."""
    def counts() -> Counts:
        rows = rows_of(settings)
        letters = len(read_all(settings, settings.topics.dead_letters, idle_s=0.3))
        return Counts(published, len(rows), len(set(rows)), letters, lag_is_zero(settings))

    zero_since: list[float] = []

    def settled() -> bool:
        c = counts()
        if not c.lag_zero:
            zero_since.clear()
            return False
        if not zero_since:
            zero_since.append(time.monotonic())
        # lag 0 with listings missing is the silent loss: nothing more will come, stop waiting
        return c.rows + c.dead_letters >= published or time.monotonic() - zero_since[0] > 5

    wait_until(settled, timeout_s, every_s=0.5)
    return counts()


def assert_accounted_for(c: Counts) -> None:
    """The count check: published = predicted rows + dead letters, no duplicate rows, lag 0."""
    assert c.rows == c.distinct_rows, f"duplicate rows: {c}"
    assert c.published == c.rows + c.dead_letters, str(c)
    assert c.lag_zero, str(c)


def predictions_on_topic(settings: Settings, read_committed: bool = False) -> list[Prediction]:
    return [Prediction.from_bytes(m.value()) for m in read_all(settings, settings.topics.predictions, read_committed)]


def dead_letters_on_topic(settings: Settings) -> list[DeadLetter]:
    return [DeadLetter.from_bytes(m.value()) for m in read_all(settings, settings.topics.dead_letters)]
