"""Failure made visible (issue 8, part 7): sink failures, database and cache health, loop liveness.

In memory: the checkpoint tells the observer what happened to each batch. With a real broker,
PostgreSQL, a private Redis (started and killed here, never the machine's own) and a real model:
the worker's gauges follow Redis down and up, and /healthz fails when its loop stalls.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.request

import pytest
import redis
from confluent_kafka import TopicPartition

from rakuten_stream.database import make_engine, upgrade
from rakuten_stream.embedded_broker import free_port
from rakuten_stream.health import HealthServer
from rakuten_stream.kafka import ensure_topics, make_producer
from rakuten_stream.metrics import RecordingObserver
from schemas.tables import PredictionRow
from stream_workers.checkpoint import Checkpoint
from stream_workers.retry import Backoff
from stream_workers.worker import Worker
from tests.helpers import listing_json, register_production, running_worker, wait_until
from tests.stream_workers.stubs import TOPIC, FlakySink, StubConsumer, StubProcessor, messages


# --- in memory: the checkpoint's hooks -----------------------------------------------------------------
def test_a_batch_the_database_refuses_is_reported_as_a_sink_failure_with_its_retry_and_paused_partitions():
    observer, sink, consumer = RecordingObserver(), FlakySink(down=1), StubConsumer()
    cp = Checkpoint(consumer, StubProcessor(), sink, observer, Backoff(0.0, 0.0), pipelined=False)
    assert not cp.submit(messages([b"1", b"2"]))
    assert observer.of("sink_failed") == [("database", "connection refused")]
    assert observer.of("partitions_paused") == [([(TOPIC, 0)],)]
    assert len(observer.of("retry_scheduled")) == 1
    assert observer.of("batch_stored") == [] and observer.of("commit_done") == []
    cp.tick()
    assert observer.of("partitions_resumed") == [([(TOPIC, 0)],)]


def test_a_stored_batch_is_reported_committed_then_stored_with_its_predictions():
    observer, consumer = RecordingObserver(), StubConsumer()
    cp = Checkpoint(consumer, StubProcessor(), FlakySink(), observer, Backoff(0.0, 0.0), pipelined=False)
    assert cp.submit(messages([b"1", b"2", b"3"]))
    hooks = [name for name, _, _ in observer.calls if name in ("stage_timed", "commit_done", "batch_stored")]
    assert hooks == ["commit_done", "stage_timed", "batch_stored"]
    [(predictions, cache_hits, _seconds, event_times)] = observer.of("batch_stored")
    assert (predictions, cache_hits, len(event_times)) == (3, 0, 3)
    assert observer.of("commit_done")[0][1:] == (True,)


# --- with the real services ------------------------------------------------------------------------------
class PrivateRedis:
    """A redis-server of this test only, on a free port: started, killed and started again at will."""

    def __init__(self, workdir) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        assert wait_until(lambda: _answers(client), 30), "private redis-server did not start"

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(30)
            self.process = None


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def private_redis(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is required for this test")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def worker_settings(settings, postgres_url, tiny_model):
    s = settings.with_overrides(database={"url": postgres_url},
                                worker={"health_check_every_s": 0.2, "batch_max_wait_ms": 100})
    ensure_topics(s)
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(PredictionRow.__table__.delete())
    engine.dispose()
    register_production(s, tiny_model)
    return s




def publish(settings, n: int, first_id: int = 700000) -> None:
    producer = make_producer(settings)
    for i in range(n):
        producer.produce(settings.topics.products, key=str(first_id + i).encode(),
                         value=listing_json(first_id + i, f"Lampe de chevet {i}"))
    assert producer.flush(30) == 0


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_the_cache_gauge_follows_redis_going_down_and_coming_back(worker_settings, private_redis):
    s = worker_settings.with_overrides(cache={"redis_url": private_redis.url})
    worker = Worker(s, retry_pause_s=0.2)
    gauge = worker.metrics.cache_available
    with running_worker(worker):
        publish(s, 3)
        assert wait_until(lambda: worker.stats.consumed >= 3, 90)
        assert gauge._value.get() == 1
        private_redis.kill()
        assert wait_until(lambda: gauge._value.get() == 0, 60), "still 1 with Redis down"
        assert worker.health.readiness()[1]["cache"] == "down"
        publish(s, 3, first_id=700100)  # the stream goes on without the cache
        assert wait_until(lambda: worker.stats.consumed >= 6, 90)
        private_redis.start()
        assert wait_until(lambda: gauge._value.get() == 1, 60), "still 0 with Redis back"
        assert worker.metrics.sample("rakuten_database_available") == 1


@pytest.mark.slow
def test_healthz_fails_while_the_loop_is_stuck_though_metrics_still_answer(worker_settings):
    s = worker_settings.with_overrides(worker={"liveness_timeout_s": 1.0})
    release, stuck = threading.Event(), threading.Event()

    def hold(outcome) -> None:  # called on the loop's thread once a batch is stored: the loop stops there
        stuck.set()
        release.wait(120)

    worker = Worker(s, retry_pause_s=0.2, on_batch=hold)
    with HealthServer(worker.health, worker.metrics.registry, free_port(), host="127.0.0.1") as server, \
            running_worker(worker):
        assert wait_until(lambda: get(server.port, "/readyz")[0] == 200, 90), get(server.port, "/readyz")
        assert get(server.port, "/healthz")[0] == 200
        publish(s, 2)
        assert stuck.wait(90)
        try:
            assert wait_until(lambda: get(server.port, "/healthz")[0] == 503, 30)
            status, body = get(server.port, "/livez")
            assert status == 503 and body["status"] == "stalled"
            assert get(server.port, "/readyz")[0] == 503
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
                assert response.status == 200  # /metrics answers from its own thread: no proof of life
        finally:
            release.set()
        assert wait_until(lambda: get(server.port, "/healthz")[0] == 200, 30)


@pytest.mark.slow
def test_a_worker_without_a_model_is_live_but_not_ready_and_says_why(settings):
    upgrade(settings.database.url.get_secret_value())  # the test's own SQLite database: an empty registry
    worker = Worker(settings)
    with HealthServer(worker.health, worker.metrics.registry, free_port(), host="127.0.0.1") as server, \
            running_worker(worker):
        assert wait_until(lambda: worker.model_state.waiting_reason is not None, 60)
        status, body = get(server.port, "/readyz")
        assert status == 503 and body["reasons"][0].startswith("no model loaded: no production model")
        assert body["model"] is None
        assert get(server.port, "/healthz")[0] == 200  # waiting for a model is not being stuck


def test_a_partition_paused_for_a_retry_and_then_lost_is_resumed_so_it_is_fetched_when_it_comes_back():
    """Found by bench/soak.py: a broker restart made the worker lose its partitions while one was
    paused for a retry; librdkafka keeps a pause across unassign + assign, the checkpoint forgot it
    without resuming, and that partition was never fetched again (lag stuck, readiness green)."""
    sink, consumer = FlakySink(down=1), StubConsumer()
    cp = Checkpoint(consumer, StubProcessor(), sink, RecordingObserver(), Backoff(60.0, 60.0), pipelined=False)
    assert not cp.submit(messages([b"1", b"2"], partition=2))
    assert consumer.paused == {(TOPIC, 2)}
    cp.forget([TopicPartition(TOPIC, 2)])  # on_lost
    assert consumer.paused == set() and cp.health.paused == frozenset()
