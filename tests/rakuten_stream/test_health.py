"""/healthz, /livez and /readyz next to /metrics: real HTTP requests to a real server on a free port."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from rakuten_stream.embedded_broker import free_port
from rakuten_stream.health import DependencyChecks, HealthServer, HealthState
from rakuten_stream.metrics import Observers, PrometheusObserver
from stream_workers.model_watcher import ModelState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(port: int, path: str) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            status, body = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    return status, json.loads(body) if body.startswith("{") else body


@pytest.fixture
def served():
    clock, model = Clock(), ModelState(serving="v1")
    health = HealthState(liveness_timeout_s=30, model_state=lambda: model, clock=clock)
    metrics = PrometheusObserver()
    with HealthServer(health, metrics.registry, free_port(), host="127.0.0.1") as server:
        yield server.port, health, Observers(metrics, health), clock, model


def test_metrics_are_served_on_the_same_port(served):
    port, _, observer, _, _ = served
    observer.dead_letter("not_json")
    status, body = get(port, "/metrics")
    assert status == 200 and 'rakuten_dead_letters_total{reason="not_json"} 1.0' in body


def test_a_worker_whose_loop_goes_round_is_live_and_one_whose_loop_stalls_is_not(served):
    port, _, observer, clock, _ = served
    assert get(port, "/healthz")[0] == 200  # not started yet: waiting (for a model), not stuck
    observer.loop_progressed()
    clock.now += 29
    status, body = get(port, "/healthz")
    assert status == 200 and body["status"] == "ok"
    clock.now += 2  # 31 s without a heartbeat; /metrics still answers from its own thread
    for path in ("/healthz", "/livez"):
        status, body = get(port, path)
        assert status == 503 and body["status"] == "stalled" and "no progress for 31 s" in body["reason"]
    assert get(port, "/metrics")[0] == 200
    observer.loop_progressed()
    assert get(port, "/livez")[0] == 200


def test_not_ready_without_a_model_and_saying_why(served):
    port, _, observer, _, model = served
    model.serving, model.waiting_reason = None, "no production model: train one"
    observer.loop_progressed()
    status, body = get(port, "/readyz")
    assert status == 503 and body["reasons"] == ["no model loaded: no production model: train one"]
    model.serving = "v2"
    status, body = get(port, "/readyz")
    assert status == 200 and body["model"] == "v2" and body["status"] == "ready"


def test_not_ready_while_a_batch_waits_for_its_retry_and_ready_once_stored(served):
    port, _, observer, _, _ = served
    observer.loop_progressed()
    observer.sink_failed("database", "connection refused")
    observer.retry_scheduled(4.0)
    observer.partitions_paused([("products", 0)])
    status, body = get(port, "/readyz")
    assert status == 503
    assert body["reasons"][0] == "the last batch was not stored (retry in 4.0 s): database: connection refused"
    assert "1 partition(s) paused, waiting for a retry" in body["reasons"]
    assert body["database"] == "down"
    observer.partitions_resumed([("products", 0)])
    observer.database_health(True)
    observer.batch_stored(1, 0, 0.1)
    status, body = get(port, "/readyz")
    assert status == 200 and body["database"] == "up"


def test_redis_down_is_reported_but_a_worker_without_its_cache_stays_ready(served):
    port, _, observer, _, _ = served
    observer.loop_progressed()
    observer.cache_health(False)
    status, body = get(port, "/readyz")
    assert status == 200 and body["cache"] == "down"


def test_dependency_checks_report_each_answer_and_a_check_that_raises_as_down():
    metrics = PrometheusObserver()
    answers = iter([True, False])

    def broken() -> bool:
        raise OSError("no route to host")

    checks = DependencyChecks(metrics, every_s=60, database=lambda: next(answers), cache=broken)
    assert checks.check_now() == {"database": True, "cache": False}
    assert metrics.sample("rakuten_database_available") == 1 and metrics.sample("rakuten_cache_available") == 0
    checks.check_now()
    assert metrics.sample("rakuten_database_available") == 0
