"""Replay for backfill: reprocess a range of the products topic through a chosen model version.

The range is given per side as an offset, a time (ISO 8601 or epoch milliseconds, resolved with
the broker's offsets-for-times), ``beginning`` or ``end``, on all or some partitions. The replay
runs in its own consumer group, named after the range and the version, and commits as it goes:
interrupted and started again with the same arguments, it resumes where it stopped. Predictions
are tagged with the version used; the idempotent upsert keeps the database clean.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from rakuten_stream.cache import PredictionCache
from rakuten_stream.database import make_engine
from rakuten_stream.kafka import make_consumer, make_producer
from rakuten_stream.metrics import Observer, PrometheusObserver
from rakuten_stream.settings import Settings
from stream_workers.batch import BatchProcessor
from stream_workers.checkpoint import Batch, Checkpoint
from stream_workers.model_watcher import ModelWatcher
from stream_workers.retry import Backoff
from stream_workers.sinks import ResultWriter

log = logging.getLogger(__name__)


class ReplayError(ValueError):
    pass


@dataclass
class ReplayPlan:
    group_id: str
    start: dict[int, int]  # partition -> first offset (inclusive)
    end: dict[int, int]  # partition -> end offset (exclusive)

    @property
    def total(self) -> int:
        return sum(max(0, self.end[p] - self.start[p]) for p in self.start)


@dataclass
class ReplayStats:
    model_version: str = ""
    processed: int = 0
    predicted: int = 0
    dead_lettered: int = 0
    remaining: int = 0
    partitions: dict[int, int] = field(default_factory=dict)


def parse_position(spec: str) -> tuple[str, int]:
    """``"beginning"`` / ``"end"`` / ``"offset:N"`` or ``"N"`` / ``"2026-11-23T10:00:00Z"`` / ``"time:MS"``."""
    text = spec.strip()
    if text in ("beginning", "earliest"):
        return "beginning", 0
    if text in ("end", "latest", "now"):
        return "end", 0
    if text.startswith("offset:"):
        text = text.removeprefix("offset:")
        if text.isdigit():
            return "offset", int(text)
    if text.isdigit():
        return "offset", int(text)
    if text.startswith("time:") and text[5:].isdigit():
        return "time", int(text[5:])
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(f"{spec!r}: expected an offset, an ISO time, time:EPOCH_MS, beginning or end") from None
    if moment.tzinfo is None:
        raise ReplayError(f"{spec!r}: give a time zone (e.g. 2026-11-23T10:00:00Z)")
    return "time", int(moment.timestamp() * 1000)


def plan_replay(settings: Settings, from_spec: str, to_spec: str = "end", partitions: Sequence[int] | None = None,
                model_version: str | None = None) -> ReplayPlan:
    topic = settings.topics.products
    probe = make_consumer(settings, group_id="replay-planner")
    try:
        metadata = probe.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise ReplayError(f"topic {topic} does not exist")
        chosen = sorted(partitions) if partitions else sorted(metadata.partitions)
        unknown = set(chosen) - set(metadata.partitions)
        if unknown:
            raise ReplayError(f"{topic} has no partition(s) {sorted(unknown)}")
        start = _resolve(probe, topic, chosen, parse_position(from_spec))
        end = _resolve(probe, topic, chosen, parse_position(to_spec))
    finally:
        probe.close()
    key = f"{topic}|{from_spec}|{to_spec}|{','.join(map(str, chosen))}|{model_version or 'production'}"
    group = f"replay-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    return ReplayPlan(group, start, end)


def _resolve(consumer, topic: str, partitions: list[int], position: tuple[str, int]) -> dict[int, int]:
    kind, value = position
    out = {}
    if kind == "time":
        found = consumer.offsets_for_times([TopicPartition(topic, p, value) for p in partitions], timeout=10)
        for tp in found:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            out[tp.partition] = tp.offset if tp.offset >= 0 else high  # no message at/after: the end
        return out
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        out[p] = {"beginning": low, "end": high}.get(kind, min(max(value, low), high))
    return out


class Replayer:
    def __init__(self, settings: Settings, plan: ReplayPlan, model_version: str | None = None,
                 metrics: Observer | None = None) -> None:
        self.settings = settings
        self.plan = plan
        self.model_version = model_version
        self.metrics = metrics or PrometheusObserver()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self, progress: Callable[[ReplayStats], None] | None = None) -> ReplayStats:
        s = self.settings
        engine = make_engine(s.database.url.get_secret_value())
        watcher = ModelWatcher(s, engine, pinned_version=self.model_version)
        runtime = watcher.initial()
        watcher.close()  # a replay keeps one version from start to end
        stats = ReplayStats(model_version=runtime.version)
        cache = PredictionCache(s.cache.redis_url.get_secret_value() if s.cache.enabled else None, s.cache.ttl_seconds)
        processor = BatchProcessor(runtime, cache, self.metrics, s, self.plan.group_id)
        producer = make_producer(s)
        writer = ResultWriter(producer, engine, s.topics.predictions, s.topics.dead_letters,
                              make_producer=lambda: make_producer(s))
        consumer = make_consumer(s, self.plan.group_id)
        topic = s.topics.products

        def stored(batch: Batch) -> None:  # the checkpoint's word that a batch is in both sinks and committed
            stats.processed += len(batch.messages)
            stats.predicted += len(batch.outcome.predictions)
            stats.dead_lettered += len(batch.outcome.dead_letters)
            for m in batch.messages:
                position[m.partition()] = max(position[m.partition()], m.offset() + 1)

        checkpoint = Checkpoint(consumer, processor, writer, self.metrics, Backoff(s.worker.retry_initial_s,
                                s.worker.retry_max_s), pipelined=False, on_stored=stored, worker_id=self.plan.group_id)
        try:
            committed = consumer.committed([TopicPartition(topic, p) for p in self.plan.start], timeout=10)
            position = {tp.partition: max(self.plan.start[tp.partition], tp.offset if tp.offset >= 0 else 0)
                        for tp in committed}
            active = {p for p in position if position[p] < self.plan.end[p]}
            consumer.assign([TopicPartition(topic, p, position[p] if position[p] > 0 else OFFSET_BEGINNING)
                             for p in active])
            stats.remaining = sum(self.plan.end[p] - position[p] for p in active)
            while active and not self._stop.is_set():
                checkpoint.tick()
                messages = [m for m in consumer.consume(s.worker.batch_max_messages, timeout=0.5) if not m.error()]
                in_range = [m for m in messages
                            if m.partition() in active and m.offset() < self.plan.end[m.partition()]]
                if in_range and not checkpoint.submit(in_range):  # not stored: redelivered after a pause
                    continue
                for m in messages:  # past the end of the range: that partition is done
                    if m.partition() in active and m.offset() >= self.plan.end[m.partition()]:
                        position[m.partition()] = max(position[m.partition()], self.plan.end[m.partition()])
                done = {p for p in active if position[p] >= self.plan.end[p]}
                if done:
                    consumer.incremental_unassign([TopicPartition(topic, p) for p in done])
                    active -= done
                stats.remaining = sum(max(0, self.plan.end[p] - position[p]) for p in active)
                stats.partitions = dict(position)
                if progress is not None:
                    progress(stats)
        finally:
            checkpoint.close()
            consumer.close()
            writer.producer.flush(30)
            engine.dispose()
        return stats
