"""Prediction events for downstream services: a plain Python iterator over ``predictions.v1``.

    with PredictionStream(settings, group_id="catalogue-sync") as stream:
        for prediction in stream:  # schemas.Prediction
            catalogue.update(prediction.productid, prediction.category)

- The stream is one consumer of its own group: give every downstream service its own group id.
- At-least-once for the caller: a prediction's offset is stored only when the caller comes back
  for the next one (or calls :meth:`ack`), i.e. after it has been handled; stored offsets are
  committed every second, on partition revoke and on close. A crash re-delivers what was being
  handled, never skips it: make the handler idempotent (``productid`` is the natural key).
- ``from_beginning`` follows Kafka's ``auto.offset.reset``: a group without committed offsets
  starts at the earliest prediction (True) or at the end (False); a group with committed
  offsets always resumes where it left off.
- ``follow=False`` stops at the end of the topic: the high watermark of each assigned partition
  is read when the partition is assigned, and the stream ends once every assigned partition
  has been read up to it (or reports end-of-partition). No idle-timeout guess.
- A message that is not a valid prediction is logged, counted in ``skipped`` and passed over.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from types import TracebackType

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from rakuten_stream.kafka import make_consumer
from rakuten_stream.settings import Settings
from schemas import MessageError, Prediction

log = logging.getLogger(__name__)


class PredictionStream:
    """Iterate once over typed predictions; close it (or use ``with``) to leave the group cleanly."""

    def __init__(self, settings: Settings, group_id: str, from_beginning: bool = False, follow: bool = True,
                 commit: bool = True, *, topic: str | None = None, poll_timeout_s: float = 0.5,
                 auto_commit_interval_ms: int = 1000) -> None:
        self.topic = topic or settings.topics.predictions
        self.group_id = group_id
        self.from_beginning = from_beginning
        self.follow = follow
        self.commit = commit
        self.poll_timeout_s = poll_timeout_s
        self.skipped = 0
        self._consumer = make_consumer(settings, group_id, **{
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            # stored offsets (never un-handled ones) are committed in the background
            "enable.auto.commit": commit,
            "auto.commit.interval.ms": auto_commit_interval_ms,
            "enable.partition.eof": True,
        })
        self._pending: Message | None = None  # yielded, not yet acknowledged
        self._handled: dict[int, int] = {}  # partition -> offset after the last acknowledged message
        self._ends: dict[int, int] = {}  # partition -> high watermark when it was assigned
        self._done: set[int] = set()
        self._assigned: set[int] | None = None  # None until the group has given us partitions
        self._stop = threading.Event()
        self._closed = False
        self._iterating = False

    # -- the iterator ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Prediction]:
        if self._iterating or self._closed:
            raise RuntimeError("a PredictionStream can be iterated once")
        self._iterating = True
        return self._predictions()

    def _predictions(self) -> Iterator[Prediction]:
        try:
            if not self._subscribe():
                return
            while not self._stop.is_set():
                if not self.follow and self._at_end():
                    return
                message = self._consumer.poll(self.poll_timeout_s)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        self._done.add(message.partition())
                    elif error.fatal():
                        raise KafkaException(error)
                    else:
                        log.warning("consumer error on %s: %s", self.topic, error.str())
                    continue
                if message.offset() + 1 >= self._ends.get(message.partition(), 1 << 62):
                    self._done.add(message.partition())
                try:
                    prediction = Prediction.from_bytes(message.value())
                except MessageError as exc:
                    self.skipped += 1
                    log.warning("skipping %s[%d]@%d: %s", message.topic(), message.partition(), message.offset(), exc)
                    self._pending = message
                    self.ack()
                    continue
                self._pending = message
                yield prediction
                self.ack()  # the caller came back: it has handled the prediction
        finally:
            self.close()

    def ack(self) -> None:
        """Mark the last yielded prediction as handled (done implicitly when the next one is asked for)."""
        message, self._pending = self._pending, None
        if message is None or not self.commit or self._closed:
            return
        self._handled[message.partition()] = message.offset() + 1
        try:
            self._consumer.store_offsets(message=message)
        except KafkaException as exc:  # its partition was revoked meanwhile: the new owner re-delivers it
            log.info("not storing %s[%d]@%d: %s", message.topic(), message.partition(), message.offset(), exc)

    @property
    def assigned(self) -> frozenset[int] | None:
        """Partitions this stream owns now; None until the group has assigned it any."""
        return None if self._assigned is None else frozenset(self._assigned)

    def stop(self) -> None:
        """Ask the iteration to end within ``poll_timeout_s`` (safe from another thread or a signal handler)."""
        self._stop.set()

    # -- group membership ------------------------------------------------------------------------
    def _subscribe(self) -> bool:
        """Subscribe once the topic exists; False when it does not and we are not following."""
        waited = False
        while not self._stop.is_set():
            metadata = self._consumer.list_topics(topic=self.topic, timeout=10)
            info = metadata.topics.get(self.topic)
            if info is not None and info.error is None and info.partitions:
                self._consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                         on_lost=self._on_lost)
                return True
            if not self.follow:
                log.info("topic %s does not exist: nothing to read", self.topic)
                return False
            if not waited:
                log.info("waiting for topic %s to be created", self.topic)
            waited = True
            self._stop.wait(1.0)
        return False

    def _on_assign(self, consumer, partitions: list[TopicPartition]) -> None:
        """Start each partition at an explicit offset and note where its end is right now.

        Resolving the start here (committed offset, else the low or high watermark) instead of
        leaving ``latest`` to the client means the stream's start and its end are read from the
        same watermarks: a prediction written after the assignment is never skipped.
        """
        committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10)}
        regained = []
        for tp in partitions:
            low, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            # a partition coming back whose last commit was lost in the rebalance: resume after what
            # our caller has handled rather than hand it the same predictions again
            start = max(committed.get(tp.partition, -1), self._handled.get(tp.partition, -1))
            if start > committed.get(tp.partition, -1):
                regained.append(TopicPartition(tp.topic, tp.partition, start))
            if start < 0:
                start = low if self.from_beginning else high
            tp.offset = start
            self._ends[tp.partition] = high
            if start >= high:
                self._done.add(tp.partition)
            else:
                self._done.discard(tp.partition)
        consumer.assign(partitions)
        if regained:
            consumer.store_offsets(offsets=regained)  # committed with the next commit
        self._assigned = {tp.partition for tp in partitions}
        log.debug("%s assigned %s of %s, ends %s", self.group_id, sorted(self._assigned), self.topic, self._ends)

    def _on_revoke(self, consumer, partitions: list[TopicPartition]) -> None:
        self._commit_stored()  # hand over what was handled: the next owner starts right after it
        self._forget(partitions)

    def _on_lost(self, consumer, partitions: list[TopicPartition]) -> None:
        self._forget(partitions)  # no longer ours, too late to commit: the next owner re-delivers

    def _forget(self, partitions: list[TopicPartition]) -> None:
        revoked = {tp.partition for tp in partitions}
        # nothing left: a rebalance is under way, wait for the next assignment before judging the end
        self._assigned = ((self._assigned or set()) - revoked) or None
        for partition in revoked:
            self._ends.pop(partition, None)
            self._done.discard(partition)

    def _at_end(self) -> bool:
        return self._assigned is not None and self._assigned <= self._done

    def _commit_stored(self) -> None:
        if not self.commit:
            return
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError._NO_OFFSET:
                return  # nothing handled since the last commit
            log.warning("commit of %s failed: %s", self.group_id, exc)

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self) -> None:
        """Commit what was handled and leave the group (idempotent)."""
        if self._closed:
            return
        self._commit_stored()
        self._closed = True
        self._consumer.close()

    def __enter__(self) -> PredictionStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
