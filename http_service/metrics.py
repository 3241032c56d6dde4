"""Prometheus metrics of the HTTP service: the workers' ``PrometheusObserver`` plus requests and batches.

One registry per app (no global state). The batch metrics show what dynamic batching does:
listings and requests per model call, and how long the oldest request waited for its batch.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from http_service.batcher import BatchStats
from rakuten_stream.metrics import LATENCY_BUCKETS, PrometheusObserver

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class HttpMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.service = PrometheusObserver(r)
        self.requests = Counter("rakuten_http_requests_total", "HTTP requests answered", ["method", "route", "status"],
                                registry=r)
        self.request_seconds = Histogram("rakuten_http_request_seconds", "time to answer a request", ["route"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.batch_listings = Histogram("rakuten_http_batch_listings", "listings per model call",
                                        buckets=SIZE_BUCKETS, registry=r)
        self.batch_requests = Histogram("rakuten_http_batch_requests", "requests per model call",
                                        buckets=SIZE_BUCKETS, registry=r)
        self.batch_queue_seconds = Histogram("rakuten_http_batch_queue_seconds",
                                             "wait of a batch's oldest request before the model call",
                                             buckets=LATENCY_BUCKETS, registry=r)

    def record_batch(self, stats: BatchStats) -> None:
        self.batch_listings.observe(stats.items)
        self.batch_requests.observe(stats.requests)
        self.batch_queue_seconds.observe(stats.queued_s)


class RequestMetrics:
    """ASGI middleware: count and time every request by its route template (not its raw path)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            route = getattr(scope.get("route"), "path", "(unmatched)")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - start)
