"""One checkpointed cycle: process a batch, store it in both sinks, then commit its offsets.

Shared by the worker and by replay, so both follow the same order: Kafka acknowledged ->
database upserted -> offsets committed. A sink failure rewinds the batch's partitions (the
next poll redelivers it) and commits nothing; a commit refused after a rebalance leaves the
batch to the partition's new owner, where the idempotent upsert absorbs it.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException, TopicPartition

from rakuten_stream.metrics import ServiceMetrics
from stream_workers.processor import BatchOutcome, BatchProcessor
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
