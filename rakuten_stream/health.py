"""Liveness and readiness of a worker, served next to ``/metrics`` on its metrics port.

- ``/healthz`` (alias ``/livez``): the poll loop went round within ``liveness_timeout_s``. The
  loop heartbeats through the observer hook ``loop_progressed``; ``/metrics`` answering (it does,
  from its own thread, even when the loop is stuck) proves nothing. Before the loop starts (waiting
  for a model) the worker is live: it is waiting, not stuck.
- ``/readyz``: a model is loaded (``Worker.model_state``), the sinks took the last batch (no
  batch waiting for a retry, no partition paused) and the database answered its last check.
  Redis is reported but does not make a worker unready (it runs without the cache).

Each answers 200 or 503 with a JSON body that says why. :class:`HealthState` is an observer: it
learns everything from the same hooks as the metrics.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from rakuten_stream.metrics import Observer

log = logging.getLogger(__name__)

LIVENESS_PATHS = ("/healthz", "/livez")
READINESS_PATH = "/readyz"


class HealthState(Observer):
    """What the probes answer, kept up to date by the stream's hooks (thread-safe enough: plain assignments)."""

    def __init__(self, liveness_timeout_s: float = 60.0, model_state: Callable[[], Any] | None = None,
                 sink_state: Callable[[], Any] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.liveness_timeout_s = liveness_timeout_s
        self.model_state = model_state  # () -> an object with .ready, .serving, .waiting_reason, .last_failure
        # () -> the checkpoint's own record (stream_workers.retry.SinkHealth: .healthy, .last_error, .retry_at,
        # .paused); without one, what the hooks said (sink_failed, retry_scheduled, partitions_paused, ...)
        self.sink_state = sink_state
        self.clock = clock
        self.last_progress: float | None = None  # None: the loop has not started
        self.sink_error: str | None = None  # the last sink failure, until a batch is stored again
        self.retry_in_s: float | None = None
        self.paused: set[tuple[str, int]] = set()
        self.database_up: bool | None = None  # None: not checked yet
        self.cache_up: bool | None = None

    # --- hooks ---------------------------------------------------------------------------------
    def loop_progressed(self) -> None:
        self.last_progress = self.clock()

    def batch_stored(self, predictions: int, cache_hits: int, seconds: float, event_times=()) -> None:
        self.sink_error, self.retry_in_s = None, None

    def sink_failed(self, sink: str, error: str) -> None:
        self.sink_error = f"{sink}: {error[:300]}"
        if sink == "database":
            self.database_up = False

    def retry_scheduled(self, delay_s: float) -> None:
        self.retry_in_s = delay_s

    def partitions_paused(self, partitions: Sequence[tuple[str, int]]) -> None:
        self.paused |= set(partitions)

    def partitions_resumed(self, partitions: Sequence[tuple[str, int]]) -> None:
        self.paused -= set(partitions)

    def database_health(self, available: bool) -> None:
        self.database_up = available

    def cache_health(self, available: bool) -> None:
        self.cache_up = available

    # --- the answers ---------------------------------------------------------------------------
    def liveness(self) -> tuple[bool, dict[str, Any]]:
        if self.last_progress is None:
            return True, {"status": "starting", "reason": "the poll loop has not started (waiting for a model?)"}
        age = self.clock() - self.last_progress
        body = {"last_progress_s_ago": round(age, 3), "timeout_s": self.liveness_timeout_s}
        if age > self.liveness_timeout_s:
            return False, {"status": "stalled", "reason": f"the poll loop made no progress for {age:.0f} s", **body}
        return True, {"status": "ok", **body}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        reasons: list[str] = []
        model = self.model_state() if self.model_state is not None else None
        body: dict[str, Any] = {}
        if model is not None:
            body["model"] = model.serving
            if not model.ready:
                reasons.append(f"no model loaded: {model.waiting_reason or 'starting'}")
            if getattr(model, "last_failure", None):
                body["last_model_failure"] = model.last_failure
        sink = self.sink_state() if self.sink_state is not None else None
        if sink is not None:
            error = None if sink.healthy else (sink.last_error or "unknown")
            retry_in = max(0.0, sink.retry_at - time.monotonic()) if sink.retry_at is not None else None
            paused = sink.paused
        else:
            error, retry_in, paused = self.sink_error, self.retry_in_s, self.paused
        if error is not None:
            retry = f" (retry in {retry_in:.1f} s)" if retry_in is not None else ""
            reasons.append(f"the last batch was not stored{retry}: {error[:300]}")
        if paused:
            reasons.append(f"{len(paused)} partition(s) paused, waiting for a retry")
        if self.database_up is False:
            reasons.append("the database does not answer")
        body["database"] = _tri(self.database_up)
        body["cache"] = _tri(self.cache_up)
        live, why = self.liveness()
        if not live:
            reasons.append(why["reason"])
        ready = not reasons
        return ready, {"status": "ready" if ready else "not ready", "reasons": reasons, **body}


def _tri(value: bool | None) -> str:
    return "unknown" if value is None else ("up" if value else "down")


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: not worth a log line
        pass


class HealthServer:
    """``/metrics``, ``/healthz``, ``/livez`` and ``/readyz`` on one port, from a daemon thread."""

    def __init__(self, health: HealthState, registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> None:
        self.health = health
        self._metrics = make_wsgi_app(registry)
        self._server = make_server(host, port, self._app, server_class=_ThreadingServer, handler_class=_QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _app(self, environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path in LIVENESS_PATHS:
            ok, body = self.health.liveness()
        elif path == READINESS_PATH:
            ok, body = self.health.readiness()
        else:
            return self._metrics(environ, start_response)
        payload = json.dumps(body).encode()
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
        return [payload]


def serve_health(health: HealthState, registry: CollectorRegistry, port: int) -> HealthServer | None:
    """Start the endpoints on ``port`` (0: none)."""
    if not port:
        return None
    return HealthServer(health, registry, port).start()


class DependencyChecks:
    """Ask each dependency whether it answers, every ``every_s`` seconds, from a daemon thread, and report
    it (``database_health``, ``cache_health``): the gauges and readiness follow it going down and coming back,
    and a slow answer never holds the poll loop."""

    def __init__(self, observer: Observer, every_s: float, database: Callable[[], bool] | None = None,
                 cache: Callable[[], bool] | None = None) -> None:
        self.observer = observer
        self.every_s = every_s
        self.checks = {name: check for name, check in (("database", database), ("cache", cache)) if check}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dependency-checks", daemon=True)

    def check_now(self) -> dict[str, bool]:
        found = {}
        for name, check in self.checks.items():
            try:
                found[name] = bool(check())
            except Exception as exc:  # a check that raises is a dependency that does not answer
                log.debug("%s check failed: %s", name, exc)
                found[name] = False
            getattr(self.observer, f"{name}_health")(found[name])
        return found

    def start(self) -> DependencyChecks:
        self.check_now()  # the gauges are right from the start, not after the first period
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.check_now()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
