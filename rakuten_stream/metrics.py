"""What the service reports about itself, recorded through one observer with named hooks.

The stream code calls hooks (:class:`Observer`): a batch came in, a batch is stored, offsets
are committed, a sink failed, the model switched, Redis went away... and knows nothing of
Prometheus. This is faust's sensor idea: the hot path tells, observers listen.

- :class:`Observer`: every hook, doing nothing (the base of the others; a no-op for tests).
- :class:`PrometheusObserver`: the Prometheus metrics of the service, in its own registry (no
  global state: two workers in one process do not collide). ``serve`` exposes them.
- :class:`Observers`: several observers as one (Prometheus and the health state, say).
- :class:`RecordingObserver`: every call kept in memory, for tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:  # the hooks name the stream's types; plumbing does not import them at run time
    from rakuten_stream.clients.lag import PartitionLag

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Observer:
    """The named hooks of the stream, each a no-op here. Subclass and override what you record.

    Hooks never raise into the stream; they are called from the worker's poll loop and its sink
    thread, so they must be cheap.
    """

    # --- consumption and processing ----------------------------------------------------------
    def message_in(self, topic: str, count: int) -> None:
        """``count`` messages of ``topic`` consumed as one micro-batch."""

    def stage_timed(self, stage: str, seconds: float) -> None:
        """One batch spent ``seconds`` in ``stage`` (decode, infer, write, commit, batch)."""

    def inference_timed(self, modality: str, seconds: float) -> None:
        """The model of ``modality`` took ``seconds`` on one batch."""

    def dead_letter(self, reason: str) -> None:
        """A message rejected with ``reason`` (a dead-letter reason code)."""

    def image_fetched(self, outcome: str, count: int = 1) -> None:
        """Images by reference (URIs), by outcome: ok, refused, timeout, too_large, not_an_image, ..."""

    def predictions_made(self, count: int, cache_hits: int, event_times: Iterable[datetime | None] = ()) -> None:
        """Predictions delivered (``cache_hits`` of them from Redis); the end-to-end latency of each from its
        event time to now."""

    # --- the checkpoint --------------------------------------------------------------------------
    def batch_stored(self, predictions: int, cache_hits: int, seconds: float,
                     event_times: Iterable[datetime | None] = ()) -> None:
        """A batch is in every sink (Kafka acknowledged, database upserted), ``seconds`` after it was consumed."""

    def commit_done(self, seconds: float, ok: bool = True) -> None:
        """The stored batch's offsets committed (``ok=False``: refused, e.g. after a rebalance)."""

    def sink_failed(self, sink: str, error: str) -> None:
        """A sink (``kafka`` or ``database``) did not take a batch: nothing was committed."""

    def retry_scheduled(self, delay_s: float) -> None:
        """A failed batch will be tried again in ``delay_s`` seconds."""

    def partitions_paused(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Partitions paused (while a failed batch waits for its retry)."""

    def partitions_resumed(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Partitions resumed."""

    # --- models and dependencies ---------------------------------------------------------------
    def model_switched(self, version: str, provider: str) -> None:
        """Version ``version`` now serves, on onnxruntime's ``provider``."""

    def model_load_failed(self, version: str, reason: str) -> None:
        """A version did not load; the one in use (if any) keeps serving."""

    def cache_health(self, available: bool) -> None:
        """Redis answered (or not), whenever the worker last asked."""

    def database_health(self, available: bool) -> None:
        """PostgreSQL answered (or not), whenever the worker last asked."""

    def lag_measured(self, group: str, topic: str, lags: Sequence[PartitionLag]) -> None:
        """Consumer lag of ``group`` on ``topic`` per partition, just measured."""

    def loop_progressed(self) -> None:
        """The poll loop went round once (a heartbeat: consumed, or found nothing and polled again)."""


class Observers(Observer):
    """Several observers as one: each hook is called on each, in order."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = [o for o in observers if o is not None]

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and name != "observers" and callable(getattr(Observer, name, None)):
            hooks = [getattr(o, name) for o in object.__getattribute__(self, "observers")]

            def fan_out(*args: Any, **kwargs: Any) -> None:
                for hook in hooks:
                    hook(*args, **kwargs)

            return fan_out
        return object.__getattribute__(self, name)

    def find(self, kind: type) -> Any:
        """The first observer of type ``kind`` (e.g. the Prometheus one), or None."""
        return next((o for o in self.observers if isinstance(o, kind)), None)


class RecordingObserver(Observer):
    """Every hook call, kept in order as ``(hook, args, kwargs)``: an in-memory observer for tests."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and name not in ("calls", "of") and callable(getattr(Observer, name, None)):
            calls = object.__getattribute__(self, "calls")

            def record(*args: Any, **kwargs: Any) -> None:
                calls.append((name, args, kwargs))

            return record
        return object.__getattribute__(self, name)

    def of(self, hook: str) -> list[tuple]:
        """The positional arguments of every call of ``hook``."""
        return [args for name, args, _ in self.calls if name == hook]


class PrometheusObserver(Observer):
    """The service's Prometheus metrics, recorded by the hooks."""

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
        self.model_load_failures = Counter("rakuten_model_load_failures_total",
                                           "model versions that did not load (the one in use kept serving)",
                                           registry=r)
        self.cache_available = Gauge("rakuten_cache_available", "1 when Redis answered the last check", registry=r)
        self.database_available = Gauge("rakuten_database_available", "1 when PostgreSQL answered the last check",
                                        registry=r)
        self.sink_failures = Counter("rakuten_sink_failures_total", "batches a sink did not take (not committed)",
                                     ["sink"], registry=r)
        self.retries = Counter("rakuten_batch_retries_total", "failed batches scheduled for another try",
                               registry=r)
        self.commits = Counter("rakuten_commits_total", "offset commits of stored batches", ["result"], registry=r)
        self.paused_partitions = Gauge("rakuten_paused_partitions", "partitions paused, waiting for a retry",
                                       registry=r)
        self.image_fetches = Counter("rakuten_image_fetches_total", "images by reference, by outcome", ["outcome"],
                                     registry=r)
        self.last_progress = Gauge("rakuten_loop_last_progress_timestamp_seconds",
                                   "when the poll loop last went round (Unix time)", registry=r)
        self._paused: set[tuple[str, int]] = set()

    # --- hooks ---------------------------------------------------------------------------------
    def message_in(self, topic: str, count: int) -> None:
        self.batch_size.observe(count)
        self.messages_in.labels(topic=topic).inc(count)

    def stage_timed(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)

    def inference_timed(self, modality: str, seconds: float) -> None:
        self.inference_seconds.labels(modality=modality).observe(seconds)

    def dead_letter(self, reason: str) -> None:
        self.dead_letters.labels(reason=reason).inc()

    def image_fetched(self, outcome: str, count: int = 1) -> None:
        self.image_fetches.labels(outcome=outcome).inc(count)

    def predictions_made(self, count: int, cache_hits: int, event_times: Iterable[datetime | None] = ()) -> None:
        now = datetime.now(UTC)
        for event_time in event_times:
            if event_time is not None:
                self.end_to_end_seconds.observe(max(0.0, (now - event_time).total_seconds()))
        self.predictions_out.inc(count)
        self.cache_hits.inc(cache_hits)

    def batch_stored(self, predictions: int, cache_hits: int, seconds: float,
                     event_times: Iterable[datetime | None] = ()) -> None:
        self.predictions_made(predictions, cache_hits, event_times)
        self.stage_seconds.labels("batch").observe(seconds)

    def commit_done(self, seconds: float, ok: bool = True) -> None:
        self.stage_seconds.labels("commit").observe(seconds)
        self.commits.labels(result="ok" if ok else "refused").inc()

    def sink_failed(self, sink: str, error: str) -> None:
        self.sink_failures.labels(sink=sink).inc()
        if sink == "database":
            self.database_available.set(0)

    def retry_scheduled(self, delay_s: float) -> None:
        self.retries.inc()

    def partitions_paused(self, partitions: Sequence[tuple[str, int]]) -> None:
        self._paused |= set(partitions)
        self.paused_partitions.set(len(self._paused))

    def partitions_resumed(self, partitions: Sequence[tuple[str, int]]) -> None:
        self._paused -= set(partitions)
        self.paused_partitions.set(len(self._paused))

    def model_switched(self, version: str, provider: str) -> None:
        self.model_version.clear()
        self.model_version.labels(version=version).set(1)
        self.execution_provider.clear()
        self.execution_provider.labels(provider=provider).set(1)
        self.model_reloads.inc()

    def model_load_failed(self, version: str, reason: str) -> None:
        self.model_load_failures.inc()

    def cache_health(self, available: bool) -> None:
        self.cache_available.set(1 if available else 0)

    def database_health(self, available: bool) -> None:
        self.database_available.set(1 if available else 0)

    def lag_measured(self, group: str, topic: str, lags: Sequence[PartitionLag]) -> None:
        for item in lags:
            self.consumer_lag.labels(group=group, topic=topic, partition=str(item.partition)).set(item.lag)

    def loop_progressed(self) -> None:
        self.last_progress.set_to_current_time()

    # --- exposition ----------------------------------------------------------------------------
    def serve(self, port: int) -> None:
        """Expose ``/metrics`` alone on ``port`` (0 means: do not serve). The worker serves it with its health
        endpoints instead (:mod:`rakuten_stream.health`)."""
        if port:
            start_http_server(port, registry=self.registry)

    def sample(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """The current value of one series (tests, benchmarks)."""
        return self.registry.get_sample_value(name, dict(labels or {}))


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


#: the former name of :class:`PrometheusObserver` (kept while other branches still say it)
ServiceMetrics = PrometheusObserver
