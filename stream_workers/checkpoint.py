"""Checkpointed cycles: process a batch, store it in both sinks, then commit its offsets.

``run_batch`` (replay) does it in sequence; ``PipelinedCycle`` (the worker) overlaps a batch's
writes with the next batch's inference. Both follow the same order: Kafka acknowledged ->
database upserted -> offsets committed. A sink failure rewinds the batch's partitions (the
next poll redelivers it) and commits nothing; a commit refused after a rebalance leaves the
batch to the partition's new owner, where the idempotent upsert absorbs it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from confluent_kafka import KafkaException, TopicPartition

from rakuten_stream.metrics import ServiceMetrics
from stream_workers.batch import BatchOutcome, BatchProcessor
from stream_workers.sinks import ResultWriter, SinkError

log = logging.getLogger(__name__)


def next_offsets(messages: list) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for m in messages:
        key = (m.topic(), m.partition())
        last[key] = max(last.get(key, -1), m.offset())
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


def rewind(consumer, messages: list) -> None:
    first: dict[tuple[str, int], int] = {}
    for m in messages:
        key = (m.topic(), m.partition())
        first[key] = min(first.get(key, m.offset()), m.offset())
    for (topic, partition), offset in first.items():
        try:
            consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:  # revoked meanwhile: its new owner starts at the last commit
            log.info("not rewinding %s[%d]: %s", topic, partition, exc)


def run_batch(messages: list, consumer, processor: BatchProcessor, writer: ResultWriter,
              metrics: ServiceMetrics) -> BatchOutcome | None:
    """The outcome when stored and committed (or handed over); None when it must be retried."""
    try:
        outcome = processor.process(messages)
        start = time.perf_counter()
        writer.write(outcome)
        metrics.stage_seconds.labels("write").observe(time.perf_counter() - start)
    except SinkError as exc:
        log.error("batch of %d not stored, will be redelivered: %s", len(messages), exc)
        rewind(consumer, messages)
        return None
    start = time.perf_counter()
    try:
        consumer.commit(offsets=next_offsets(messages), asynchronous=False)
    except KafkaException as exc:
        log.warning("offsets of a stored batch not committed (%s): it will be redelivered", exc)
    metrics.stage_seconds.labels("commit").observe(time.perf_counter() - start)
    return outcome


class PipelinedCycle:
    """The worker's cycle: infer batch k+1 while batch k is being written, commit k once stored.

    onnxruntime and the sinks' network I/O release the GIL, so the writes of one batch hide
    behind the inference of the next. The order stays the checkpoint order: a batch's offsets
    are committed only after its own write succeeded, batches are committed in sequence, and
    :meth:`drain` (called on partition revoke and on shutdown) finishes the write in flight and
    commits it before the partitions go.
    """

    def __init__(self, consumer, processor: BatchProcessor, writer: ResultWriter, metrics: ServiceMetrics,
                 on_stored: Callable[[BatchOutcome, float], None] | None = None) -> None:
        self.consumer = consumer
        self.processor = processor
        self.writer = writer
        self.metrics = metrics
        self.on_stored = on_stored
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-writer")
        self._pending: tuple[Future, list, BatchOutcome, float] | None = None

    def submit(self, messages: list) -> bool:
        """Process ``messages`` and hand them to the writer. False when a write failed: the
        failed batch and this one are rewound for redelivery and the caller should pause."""
        started = time.perf_counter()
        outcome = self.processor.process(messages)
        if not self.drain():
            rewind(self.consumer, messages)
            return False
        self._pending = (self._executor.submit(self._write, outcome), messages, outcome, started)
        return True

    def _write(self, outcome: BatchOutcome) -> None:
        start = time.perf_counter()
        self.writer.write(outcome)
        self.metrics.stage_seconds.labels("write").observe(time.perf_counter() - start)

    def drain(self) -> bool:
        """Wait for the batch in flight; commit it when stored, rewind it when not."""
        if self._pending is None:
            return True
        future, messages, outcome, started = self._pending
        self._pending = None
        try:
            future.result()
        except SinkError as exc:
            log.error("batch of %d not stored, will be redelivered: %s", len(messages), exc)
            rewind(self.consumer, messages)
            return False
        start = time.perf_counter()
        try:
            self.consumer.commit(offsets=next_offsets(messages), asynchronous=False)
        except KafkaException as exc:
            log.warning("offsets of a stored batch not committed (%s): it will be redelivered", exc)
        self.metrics.stage_seconds.labels("commit").observe(time.perf_counter() - start)
        if self.on_stored is not None:
            self.on_stored(outcome, time.perf_counter() - started)
        return True

    def close(self) -> None:
        self.drain()
        self._executor.shutdown(wait=True)
