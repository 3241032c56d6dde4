"""The classifier worker: a consumer-group member that turns product listings into predictions.

Loop, per micro-batch (bounded by ``batch_max_messages`` and ``batch_max_wait_ms``):
consume -> decode/validate -> cache -> ONNX -> the checkpoint (stream_workers/checkpoint.py):
upsert into the database -> predictions + dead letters to Kafka (confirmed) -> commit the
offsets (with ``exactly-once``: records and offsets in one Kafka transaction). The upsert makes
redelivery harmless (no duplicate rows).

A failed sink write pauses the partitions of every batch in flight, rewinds them to their
earliest uncommitted offset and retries after an exponential backoff with jitter
(:attr:`Worker.health_state` reports unhealthy meanwhile); a message that makes its batch fail
is found by bisection and dead-lettered. Between batches the worker polls for a promoted model
version and swaps it in (a version that does not load is reported and the worker keeps serving
the one it has; without a loadable model at start it waits). On SIGTERM/SIGINT it finishes the
batch in hand, commits, closes the consumer and flushes the producer.

Membership: dynamic by default (a stopped worker leaves the group, its partitions move at
once); static (``group.instance.id``) only when ``RAKUTEN_WORKER_INSTANCE_ID`` names a stable
id, e.g. a StatefulSet pod name, so that a restarted worker reclaims its own partitions.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError
from sqlalchemy import Engine

from rakuten_stream.cache import PredictionCache
from rakuten_stream.clients.lag import partition_lags
from rakuten_stream.database import make_engine, ping
from rakuten_stream.health import DependencyChecks, HealthState
from rakuten_stream.kafka import ensure_topics, make_consumer, make_producer
from rakuten_stream.metrics import Observer, Observers, PrometheusObserver
from rakuten_stream.settings import Settings
from stream_workers.batch import BatchOutcome, BatchProcessor
from stream_workers.checkpoint import Batch, Checkpoint, Transactions
from stream_workers.model_watcher import ModelState, ModelWatcher
from stream_workers.retry import Backoff, SinkHealth
from stream_workers.sinks import ResultWriter

log = logging.getLogger(__name__)


def process_id() -> str:
    """Who this process is in logs and dead letters when no stable instance id is configured."""
    return f"{socket.gethostname()}-{os.getpid()}"


def transactional_id(settings: Settings, instance: str) -> str:
    return f"rakuten-worker-{settings.worker.group_id}-{instance}"


@dataclass
class WorkerStats:
    batches: int = 0
    consumed: int = 0
    predicted: int = 0
    dead_lettered: int = 0
    cache_hits: int = 0
    retries: int = 0
    model_versions: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


class Worker:
    """Run with :meth:`run` (blocking) and stop with :meth:`stop` (from a signal handler or thread)."""

    def __init__(self, settings: Settings, metrics: PrometheusObserver | None = None, engine: Engine | None = None,
                 on_batch: Callable[[BatchOutcome], None] | None = None, retry_pause_s: float | None = None,
                 observer: Observer | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or PrometheusObserver()
        # what /healthz and /readyz answer: the loop's heartbeat, the model, the sinks (health_state), the database
        self.health = HealthState(settings.worker.liveness_timeout_s, model_state=lambda: self.model_state,
                                  sink_state=lambda: self.health_state)
        self.observer = Observers(self.metrics, self.health, observer)  # every hook reaches each of them
        self.engine = engine or make_engine(settings.database.url.get_secret_value())
        self.on_batch = on_batch
        w = settings.worker
        self.backoff = Backoff(retry_pause_s or w.retry_initial_s, max(w.retry_max_s, retry_pause_s or 0))
        self.static_member = w.instance_id is not None
        self.instance_id = w.instance_id or process_id()
        self.exactly_once = w.processing_guarantee == "exactly-once"
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._assigned: set[tuple[str, int]] = set()
        self._last_lag_export = 0.0
        self._checkpoint: Checkpoint | None = None
        self._watcher: ModelWatcher | None = None
        self._health = SinkHealth()

    def stop(self) -> None:
        self._stop.set()

    @property
    def assignment(self) -> set[tuple[str, int]]:
        """(topic, partition) pairs this worker owns right now."""
        return set(self._assigned)

    @property
    def model_state(self) -> ModelState:
        """Which version is served, or why none is yet; failed loads (for readiness and metrics)."""
        return self._watcher.state if self._watcher is not None else ModelState()

    @property
    def health_state(self) -> SinkHealth:
        """Whether the sinks take batches: unhealthy from a failed write until one succeeds, with the
        paused partitions, the next retry time and the last error (for readiness and metrics)."""
        return self._checkpoint.health if self._checkpoint is not None else self._health

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> WorkerStats:
        s = self.settings
        ensure_topics(s)
        watcher = self._watcher = ModelWatcher(s, self.engine, observer=self.observer)
        runtime = watcher.wait_for_model(self._stop)  # not ready, saying why, until a loadable version is promoted
        if runtime is None:  # stopped while waiting
            watcher.close()
            return self.stats
        self._activate(runtime)
        cache = PredictionCache(s.cache.redis_url.get_secret_value() if s.cache.enabled else None, s.cache.ttl_seconds)
        if s.cache.enabled and not cache.ping():
            log.warning("Redis at %s does not answer: running without the prediction cache", s.cache.redis_url)
        processor = BatchProcessor(runtime, cache, self.observer, s, self.instance_id)

        consumer = make_consumer(s, s.worker.group_id, **self._consumer_config())
        writer = ResultWriter(self._new_producer(), self.engine, s.topics.predictions, s.topics.dead_letters,
                              make_producer=None if self.exactly_once else self._new_producer)
        transactions = Transactions(self._new_producer, consumer, writer) if self.exactly_once else None
        checkpoint = self._checkpoint = Checkpoint(consumer, processor, writer, self.observer, self.backoff,
                                                   transactions=transactions, on_stored=self._record,
                                                   worker_id=self.instance_id)
        consumer.subscribe([s.topics.products], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        log.info("worker %s (%s member, %s) consuming %s in group %s with model %s on %s", self.instance_id,
                 "static" if self.static_member else "dynamic", s.worker.processing_guarantee, s.topics.products,
                 s.worker.group_id, runtime.version, runtime.provider)
        # Redis and the database asked now and then, from a thread: the gauges and readiness follow them down and up
        checks = DependencyChecks(self.observer, s.worker.health_check_every_s, database=lambda: ping(self.engine),
                                  cache=cache.ping if s.cache.enabled else None).start()
        try:
            while not self._stop.is_set():
                checkpoint.tick()  # resume partitions paused after a failed write once their backoff is over
                messages = consumer.consume(num_messages=s.worker.batch_max_messages,
                                            timeout=s.worker.batch_max_wait_ms / 1000)
                promoted = watcher.reload(processor.runtime.version)  # None: keep serving what we have
                if promoted is not None:
                    processor.runtime = promoted
                    self._activate(promoted)
                    log.info("switched to model version %s", promoted.version)
                messages = [m for m in messages if not self._is_benign_error(m)]
                if messages:
                    self.observer.message_in(s.topics.products, len(messages))
                    stored = checkpoint.submit(messages)  # process, then store the batch before it
                else:
                    stored = checkpoint.drain()  # idle: finish and commit the batch in flight now
                if not stored:
                    self.stats.retries += 1
                self._export_lag(consumer)
                self.observer.loop_progressed()  # the heartbeat /healthz reads
        finally:
            checks.close()
            checkpoint.close()  # the batch in flight: stored and committed before we leave
            consumer.close()  # commits nothing more (manual commits); a dynamic member leaves the group
            writer.producer.flush(30)
            watcher.close()
            self._health = checkpoint.health
            self._checkpoint = None  # release the producer (and its librdkafka threads) with the loop
        return self.stats

    def _consumer_config(self) -> dict[str, object]:
        s = self.settings
        config: dict[str, object] = {
            "partition.assignment.strategy": "cooperative-sticky",
            # prefetch about two batches, not librdkafka's 100k messages: bounded memory, and no
            # fetch traffic while a full local queue waits for the model (empty fetches on a drained
            # topic are the broker's to hold; the embedded broker answers them at once)
            "queued.min.messages": 2 * s.worker.batch_max_messages,
            "fetch.queue.backoff.ms": 20,
        }
        if self.static_member:  # a stable id (StatefulSet ordinal, configured): a restart reclaims its partitions
            config["group.instance.id"] = self.instance_id
        if self.exactly_once:
            config["isolation.level"] = "read_committed"
        return config

    def _new_producer(self):
        if not self.exactly_once:
            return make_producer(self.settings)
        return make_producer(self.settings, **{"transactional.id": transactional_id(self.settings, self.instance_id)})

    # --- one batch stored ----------------------------------------------------------------------
    def _record(self, batch: Batch) -> None:
        outcome = batch.outcome  # its metrics: the checkpoint's batch_stored hook
        self.stats.batches += 1
        self.stats.consumed += len(outcome.predictions) + len(outcome.dead_letters)
        self.stats.predicted += len(outcome.predictions)
        self.stats.dead_lettered += len(outcome.dead_letters)
        self.stats.cache_hits += outcome.cache_hits
        if self.on_batch is not None:
            self.on_batch(outcome)

    # --- housekeeping --------------------------------------------------------------------------
    def _activate(self, runtime) -> None:
        self.stats.model_versions.append(runtime.version)
        self.observer.model_switched(runtime.version, runtime.provider)

    def _is_benign_error(self, message) -> bool:
        error = message.error()
        if error is None:
            return False
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error: %s", error)
        return True

    def _on_assign(self, consumer, partitions) -> None:
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        log.info("assigned %s", sorted(p.partition for p in partitions))

    def _on_revoke(self, consumer, partitions) -> None:
        self._checkpoint.drain()  # commit the batch in flight while the partitions are still ours
        self._checkpoint.forget(partitions)
        self._assigned -= {(p.topic, p.partition) for p in partitions}
        log.info("revoked %s", sorted(p.partition for p in partitions))

    def _on_lost(self, consumer, partitions) -> None:
        # gone already: the new owner redelivers what was not committed (the upsert absorbs it)
        self._checkpoint.forget(partitions)
        self._assigned -= {(p.topic, p.partition) for p in partitions}
        log.warning("lost %s", sorted(p.partition for p in partitions))

    def _export_lag(self, consumer, every_s: float = 10.0) -> None:
        now = time.monotonic()
        if now - self._last_lag_export < every_s or not self._assigned:
            return
        self._last_lag_export = now
        by_topic: dict[str, list[int]] = {}
        for topic, partition in sorted(self._assigned):
            by_topic.setdefault(topic, []).append(partition)
        try:  # the one lag computation (the CLI's and the exporter's), with the worker's own consumer
            for topic, partitions in by_topic.items():
                self.observer.lag_measured(self.settings.worker.group_id, topic,
                                           partition_lags(consumer, topic, partitions, timeout_s=2))
        except Exception as exc:  # lag is informative only
            log.debug("lag export failed: %s", exc)
