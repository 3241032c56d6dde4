"""The checkpoint: the one way a batch leaves the worker (and replay).

For every batch, in this order and no other (:meth:`Checkpoint._store`):

1. **database**: one idempotent upsert of its predictions (a redelivered row overwrites itself);
2. **Kafka**: its predictions and dead letters produced and every delivery confirmed (flush);
3. **offsets**: its offsets committed. With ``exactly-once`` steps 2 and 3 are one Kafka
   transaction (the offsets sent inside it), so a ``read_committed`` reader sees the batch's
   records once, or not at all when the worker died before the commit.

Nothing of a batch is committed before both sinks have it. When a sink fails for a while
(:class:`SinkUnavailable`: database or broker down), every batch in flight is given back: the
partitions of all of them are paused, each is sought to the earliest uncommitted offset over
all of them (so no batch is skipped, whatever order the failures come in), and they resume
after an exponential backoff with jitter; the worker reports itself unhealthy meanwhile
(:attr:`Checkpoint.health`). When the content of a batch is at fault (processing raises, or the
database rejects a value), the batch is split in halves until the poison message is alone; it
goes to the dead-letter topic (``processing_error`` / ``sink_rejected``) and the rest goes on.

The worker overlaps a batch's writes with the next batch's inference (``pipelined=True``: one
writer thread; onnxruntime and the sinks' network I/O release the GIL); replay runs each batch
to its end before the next (``pipelined=False``). Batches are committed in sequence either way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from rakuten_stream.metrics import Observer
from rakuten_stream.redaction import redact
from schemas import DeadLetter, Prediction
from stream_workers.batch import BatchOutcome, BatchProcessor
from stream_workers.retry import Backoff, SinkHealth
from stream_workers.sinks import ResultWriter, SinkError, SinkRejected, SinkUnavailable

log = logging.getLogger(__name__)

#: dead-letter reasons of the checkpoint (schemas/dead_letters.py lists every reason)
PROCESSING_ERROR = "processing_error"
SINK_REJECTED = "sink_rejected"

Partition = tuple[str, int]


@dataclass
class Batch:
    messages: list
    outcome: BatchOutcome
    started: float  # time.perf_counter() when it was taken from the consumer


def next_offsets(messages: list) -> list[TopicPartition]:
    """The offsets to commit once ``messages`` are stored: one past the last of each partition."""
    last: dict[Partition, int] = {}
    for m in messages:
        key = (m.topic(), m.partition())
        last[key] = max(last.get(key, -1), m.offset())
    return [TopicPartition(t, p, o + 1) for (t, p), o in sorted(last.items())]


def earliest_offsets(batches: list[Batch]) -> dict[Partition, int]:
    """Per partition, the first offset of any batch in flight: where redelivery must start."""
    first: dict[Partition, int] = {}
    for batch in batches:
        for m in batch.messages:
            key = (m.topic(), m.partition())
            first[key] = min(first.get(key, m.offset()), m.offset())
    return first


def merge(*outcomes: BatchOutcome) -> BatchOutcome:
    merged = BatchOutcome()
    for o in outcomes:
        merged.predictions += o.predictions
        merged.dead_letters += o.dead_letters
        merged.keys += o.keys
        merged.cache_hits += o.cache_hits
        merged.image_outcomes.update(o.image_outcomes)
    return merged


def halves(items: list) -> tuple[list, list]:
    middle = len(items) // 2
    return items[:middle], items[middle:]


class Transactions:
    """Exactly-once: a batch's records and its consumer offsets in one Kafka transaction.

    The producer has a stable ``transactional.id`` per worker, so a restarted worker fences its
    predecessor and aborts the transaction it left open. After a fatal producer error the
    producer is replaced (``make_producer`` builds a new one with the same id).
    """

    def __init__(self, make_producer: Callable[[], object], consumer, writer: ResultWriter,
                 timeout_s: float = 30.0) -> None:
        self.make_producer = make_producer
        self.consumer = consumer
        self.writer = writer
        self.timeout_s = timeout_s
        self._init(writer.producer)

    def _init(self, producer) -> None:
        producer.init_transactions(self.timeout_s)
        self.writer.producer = producer

    def commit(self, outcome: BatchOutcome, offsets: list[TopicPartition]) -> None:
        producer = self.writer.producer
        try:
            producer.begin_transaction()
            self.writer.write_topics(outcome)
            producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), self.timeout_s)
            self._commit_transaction(producer)
        except (KafkaException, SinkError) as exc:
            self._recover(producer, exc)
            raise SinkUnavailable(f"transaction not committed: {exc}") from exc

    def _commit_transaction(self, producer, attempts: int = 3) -> None:
        for attempt in range(attempts):
            try:
                producer.commit_transaction(self.timeout_s)
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not error.retriable() or attempt == attempts - 1:
                    raise

    def _recover(self, producer, exc: Exception) -> None:
        error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
        if (isinstance(error, KafkaError) and error.fatal()) or getattr(exc, "fatal", False):
            log.error("producer failed fatally (%s): replacing it", error)
            self._init(self.make_producer())
            return
        try:
            producer.abort_transaction(self.timeout_s)
        except KafkaException as abort_exc:
            log.error("transaction not aborted (%s): replacing the producer", abort_exc)
            self._init(self.make_producer())

    def close(self) -> None:
        self.writer.producer.flush(self.timeout_s)


class Checkpoint:
    """Process batches and store them in the checkpoint order; retry, pause and bisect on failure.

    ``submit`` each batch taken from the consumer; call ``tick`` on every turn of the poll loop
    (it resumes paused partitions once their backoff is over), ``drain`` when idle and on
    partition revoke, and ``close`` at the end. ``health`` says whether the sinks take batches.
    """

    def __init__(self, consumer, processor: BatchProcessor, writer: ResultWriter, observer: Observer,
                 backoff: Backoff | None = None, *, pipelined: bool = True, transactions: Transactions | None = None,
                 on_stored: Callable[[Batch], None] | None = None, worker_id: str | None = None) -> None:
        self.consumer = consumer
        self.processor = processor
        self.writer = writer
        self.observer = observer
        self.backoff = backoff or Backoff()
        self.pipelined = pipelined
        self.transactions = transactions
        self.on_stored = on_stored
        self.worker_id = worker_id
        self.health = SinkHealth()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-writer")
        self._pending: tuple[Future, Batch] | None = None
        self._rewind: dict[Partition, int] = {}  # paused partitions and where each resumes

    # --- the loop's calls ------------------------------------------------------------------------
    def submit(self, messages: list) -> bool:
        """Process ``messages`` and hand them to the writer once the batch before them is stored.
        False when a write failed: every batch in flight was given back for redelivery."""
        batch = Batch(messages, self.process(messages), time.perf_counter())
        failure = self._wait()
        if failure is not None:
            self._retreat([failure[0], batch], failure[1])
            return False
        self._pending = (self._executor.submit(self._store, batch), batch)
        return True if self.pipelined else self.drain()

    def drain(self) -> bool:
        """Wait for the batch in flight: True when it is stored and committed (or there was none)."""
        failure = self._wait()
        if failure is not None:
            self._retreat([failure[0]], failure[1])
            return False
        return True

    def tick(self) -> None:
        """Resume the paused partitions when their backoff is over (from where each must restart)."""
        if not self._rewind or time.monotonic() < (self.health.retry_at or 0):
            return
        rewind, self._rewind = self._rewind, {}
        partitions = [TopicPartition(t, p, o) for (t, p), o in sorted(rewind.items())]
        for tp in partitions:
            self._seek(tp)
        try:
            self.consumer.resume([TopicPartition(tp.topic, tp.partition) for tp in partitions])
        except KafkaException as exc:  # some were revoked meanwhile
            log.info("resume: %s", exc)
        self.health.paused = frozenset()
        self.observer.partitions_resumed(sorted(rewind))
        log.info("retrying from %s", {f"{t}[{p}]": o for (t, p), o in sorted(rewind.items())})

    def forget(self, partitions: list) -> None:
        """Partitions revoked or lost: no longer ours to retry. A paused one is resumed on the way out:
        librdkafka keeps a partition paused across an unassign and a new assign, so one that comes back
        (a broker restart: lost, then assigned again) would otherwise never be fetched again."""
        paused = [TopicPartition(tp.topic, tp.partition) for tp in partitions
                  if (tp.topic, tp.partition) in self._rewind]
        for tp in partitions:
            self._rewind.pop((tp.topic, tp.partition), None)
        self.health.paused = frozenset(self._rewind)
        if paused:
            try:
                self.consumer.resume(paused)
            except KafkaException as exc:  # gone already: nothing to resume
                log.info("resume of forgotten partitions: %s", exc)
        self.observer.partitions_resumed([(tp.topic, tp.partition) for tp in partitions])  # not paused by us now

    def close(self) -> None:
        self.drain()  # the batch in flight: stored and committed, or left for redelivery
        self._executor.shutdown(wait=True)
        if self.transactions is not None:
            self.transactions.close()

    # --- processing, with bisection for a message that makes it raise ----------------------------
    def process(self, messages: list) -> BatchOutcome:
        try:
            return self.processor.process(messages)
        except Exception as exc:  # one message must never stop the worker: find it
            if len(messages) == 1:
                log.warning("processing %s[%d]@%d raised, dead-lettered: %r", messages[0].topic(),
                            messages[0].partition(), messages[0].offset(), exc)
                return self._poison(messages[0], PROCESSING_ERROR, exc)
            first, second = halves(messages)
            return merge(self.process(first), self.process(second))

    # --- the checkpoint order --------------------------------------------------------------------
    def _store(self, batch: Batch) -> None:
        """Steps 1-3 for one batch (on the writer thread). Raises when the batch must be retried."""
        start = time.perf_counter()
        outcome = self._upsert(batch)  # 1. database (the rows it rejects become dead letters)
        offsets = next_offsets(batch.messages)
        if self.transactions is not None:  # 2. + 3. Kafka records and offsets in one transaction
            self.transactions.commit(outcome, offsets)
        else:
            self.writer.write_topics(outcome)  # 2. Kafka, every delivery confirmed
            self._commit(offsets)  # 3. offsets
        batch.outcome = outcome
        self.observer.stage_timed("write", time.perf_counter() - start)

    def _upsert(self, batch: Batch) -> BatchOutcome:
        rejected = self._upsert_bisecting(batch.outcome.predictions)
        if not rejected:
            return batch.outcome
        by_position = {(m.topic(), m.partition(), m.offset()): m for m in batch.messages}
        poisoned = {id(p) for p, _ in rejected}
        kept = BatchOutcome(predictions=[p for p in batch.outcome.predictions if id(p) not in poisoned],
                            cache_hits=batch.outcome.cache_hits, image_outcomes=batch.outcome.image_outcomes)
        letters = [self._poison(by_position[(p.source.topic, p.source.partition, p.source.offset)], SINK_REJECTED, exc)
                   for p, exc in rejected]
        return merge(BatchOutcome(dead_letters=batch.outcome.dead_letters, keys=batch.outcome.keys), kept, *letters)

    def _upsert_bisecting(self, predictions: list[Prediction]) -> list[tuple[Prediction, SinkRejected]]:
        """Upsert ``predictions``; the ones the database refuses even alone, with its reason."""
        try:
            self.writer.write_database(BatchOutcome(predictions=predictions))
            return []
        except SinkRejected as exc:
            if len(predictions) == 1:
                log.warning("the database rejects the prediction of %d, dead-lettered: %s", predictions[0].productid,
                            exc)
                return [(predictions[0], exc)]
            first, second = halves(predictions)
            return self._upsert_bisecting(first) + self._upsert_bisecting(second)

    def _commit(self, offsets: list[TopicPartition]) -> None:
        start = time.perf_counter()
        ok = True
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # revoked meanwhile: the new owner redelivers, the upsert absorbs it
            ok = False
            log.warning("offsets of a stored batch not committed (%s): it will be redelivered", exc)
        self.observer.commit_done(time.perf_counter() - start, ok)

    # --- after a write: stored, or given back -------------------------------------------------------
    def _wait(self) -> tuple[Batch, Exception] | None:
        """Wait for the batch in flight; None when it is stored (or there was none), else the failure."""
        if self._pending is None:
            return None
        future, batch = self._pending
        self._pending = None
        try:
            future.result()
        except Exception as exc:  # SinkUnavailable, or anything else: the batch is not stored
            return batch, exc
        if not self.health.healthy:
            log.info("sinks take batches again after %d failed attempts", self.health.consecutive_failures)
        self.health.recovered()
        self.backoff.reset()
        outcome = batch.outcome
        self.observer.batch_stored(len(outcome.predictions), outcome.cache_hits, time.perf_counter() - batch.started,
                                   [p.event_time for p in outcome.predictions])
        if self.on_stored is not None:
            self.on_stored(batch)
        return None

    def _retreat(self, batches: list[Batch], exc: Exception) -> None:
        """Give every batch in flight back: pause their partitions, rewind each to its earliest
        uncommitted offset, and resume after the next backoff pause."""
        for partition, offset in earliest_offsets(batches).items():
            self._rewind[partition] = min(offset, self._rewind.get(partition, offset))
        paused = [TopicPartition(t, p) for t, p in sorted(self._rewind)]
        try:
            self.consumer.pause(paused)
        except KafkaException as error:
            log.info("pause: %s", error)
        for (t, p), offset in self._rewind.items():
            self._seek(TopicPartition(t, p, offset))
        delay = self.backoff.next_delay()
        self.health.failed(redact(str(exc)), time.monotonic() + delay, frozenset(self._rewind))
        self.observer.sink_failed(getattr(exc, "sink", "unknown"), redact(str(exc)))
        self.observer.partitions_paused(sorted(self._rewind))
        self.observer.retry_scheduled(delay)
        log.error("%d batch(es) not stored, redelivered from %s in %.1f s (attempt %d): %s", len(batches),
                  {f"{t}[{p}]": o for (t, p), o in sorted(self._rewind.items())}, delay,
                  self.health.consecutive_failures, redact(str(exc)))

    def _seek(self, tp: TopicPartition) -> None:
        try:
            self.consumer.seek(tp)
        except KafkaException as exc:  # revoked meanwhile: its new owner starts at the last commit
            log.info("not rewinding %s[%d]: %s", tp.topic, tp.partition, exc)

    def _poison(self, message, reason: str, exc: Exception) -> BatchOutcome:
        self.health.poison += 1
        self.observer.dead_letter(reason)
        letter = DeadLetter(
            original=message.value() or b"", original_key=message.key(), topic=message.topic(),
            partition=message.partition(), offset=message.offset(), error_class=reason,
            error_message=redact(f"{type(exc).__name__}: {exc}")[:2000], worker_id=self.worker_id,
        )
        return BatchOutcome(dead_letters=[letter], keys=[message.key()])
