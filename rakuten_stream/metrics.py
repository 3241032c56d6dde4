"""Prometheus metrics of the service, declared once and passed to whoever records them.

A :class:`ServiceMetrics` owns its own registry (no global state), so two workers in one process
(tests) do not collide; ``serve`` exposes it over HTTP.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages_in = Counter("rakuten_messages_in_total", "messages consumed", ["topic"], registry=r)
        self.predictions_out = Counter("rakuten_predictions_out_total", "predictions written", registry=r)
        self.cache_hits = Counter("rakuten_cache_hits_total", "predictions served from Redis", registry=r)
        self.dead_letters = Counter("rakuten_dead_letters_total", "messages sent to the DLQ", ["reason"],
                                    registry=r)
        self.batch_size = Histogram("rakuten_batch_size", "messages per micro-batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.inference_seconds = Histogram("rakuten_inference_seconds", "model time per batch", ["modality"],
                                           registry=r)
        self.stage_seconds = Histogram("rakuten_stage_seconds", "time per batch and pipeline stage", ["stage"],
                                       registry=r)
        self.end_to_end_seconds = Histogram("rakuten_end_to_end_latency_seconds",
                                            "event time to prediction written", buckets=LATENCY_BUCKETS,
                                            registry=r)
        self.consumer_lag = Gauge("rakuten_consumer_lag", "high watermark minus committed offset",
                                  ["group", "topic", "partition"], registry=r)
        self.model_version = Gauge("rakuten_model_version_info", "model version in use (1 = active)",
                                   ["version"], registry=r)
        self.execution_provider = Gauge("rakuten_execution_provider_info", "onnxruntime provider in use",
                                        ["provider"], registry=r)
        self.model_reloads = Counter("rakuten_model_reloads_total", "model versions switched to", registry=r)
        self.cache_available = Gauge("rakuten_cache_available", "1 when Redis answers", registry=r)

    def set_model_version(self, version: str) -> None:
        self.model_version.clear()
        self.model_version.labels(version=version).set(1)

    def set_execution_provider(self, provider: str) -> None:
        self.execution_provider.clear()
        self.execution_provider.labels(provider=provider).set(1)

    def serve(self, port: int) -> None:
        """Expose ``/metrics`` on ``port`` (0 means: do not serve)."""
        if port:
            start_http_server(port, registry=self.registry)


class RetrainMetrics:
    """The retrain worker's figures: jobs by outcome, the labeled rows it last trained on."""

    OUTCOMES = ("started", "promoted", "rejected", "failed")

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.jobs = Counter("rakuten_retrain_jobs_total",
                            "retrain jobs by outcome (started, promoted, rejected, failed)", ["outcome"],
                            registry=self.registry)
        for outcome in self.OUTCOMES:
            self.jobs.labels(outcome=outcome)  # every series exists from the start (rate() and alerts see 0)
        self.labeled_rows = Gauge("rakuten_retrain_stream_labeled_rows",
                                  "rows labeled on labels.v1 in the last retrain's dataset", registry=self.registry)

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)
