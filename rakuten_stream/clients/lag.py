"""Consumer lag per partition: how far a consumer group is behind a topic, in messages and seconds.

- ``committed``: the group's committed offset (the next message it will read), read with the
  admin API (``list_consumer_group_offsets``) so that measuring never joins or disturbs the group;
- ``high_watermark``: the offset the next produced message will get;
- ``lag = high_watermark - committed``. A partition the group never committed counts from the low
  watermark (the service's consumers start at ``earliest``);

:func:`partition_lags` is that computation, the only one: the CLI (``lag``), the exporter
(``lag --watch --metrics-port``) and the worker's own gauge call it. Given committed offsets (the
admin API's answer) it reads only the watermarks; without, it asks the consumer for its own
group's commits (the worker passes its own consumer, so it opens no extra client);
- ``seconds_behind``: now minus the timestamp of the first uncommitted message (None at lag 0),
  read by a probe consumer that only ``assign``s, never subscribes, never commits.

A :class:`LagProbe` keeps its clients for repeated measurements (``lag --watch``, exporters);
:func:`consumer_lag` is the one-shot form.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from types import TracebackType

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, ConsumerGroupTopicPartitions, TopicPartition

from rakuten_stream.kafka import make_admin, make_consumer
from rakuten_stream.metrics import Observer
from rakuten_stream.settings import Settings


class LagError(RuntimeError):
    """The lag cannot be measured (unknown topic, unreachable cluster)."""


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    committed: int | None  # None: the group has no committed offset on this partition
    high_watermark: int
    lag: int
    seconds_behind: float | None  # None when lag is 0 (or no timestamp could be read)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class GroupInfo:
    group_id: str
    state: str
    simple: bool


def partition_lags(consumer, topic: str, partitions: Sequence[int],
                   committed: Mapping[int, int | None] | None = None, timeout_s: float = 10.0) -> list[PartitionLag]:
    """Lag of ``topic``'s ``partitions``, without ``seconds_behind`` (see :meth:`LagProbe.consumer_lag`).

    ``committed``: the group's committed offset per partition (None: never committed); when not given,
    ``consumer.committed`` is asked (the consumer's own group). Watermarks come from ``consumer``.
    """
    if committed is None:
        answer = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout_s)
        committed = {tp.partition: tp.offset if tp.offset >= 0 else None for tp in answer}
    lags = []
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s, cached=False)
        start = committed.get(p)
        lag = max(0, high - (start if start is not None else low))
        lags.append(PartitionLag(partition=p, committed=start, high_watermark=high, lag=lag, seconds_behind=None))
    return lags


class LagProbe:
    """Admin client + assign-only probe consumer, reused across measurements. Close it (or use ``with``)."""

    def __init__(self, settings: Settings, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self._admin = make_admin(settings)
        self._consumer = make_consumer(settings, group_id=f"rakuten-lag-probe-{uuid.uuid4().hex[:12]}",
                                       **{"fetch.wait.max.ms": 50, "enable.partition.eof": False})
        self._closed = False

    # -- measurements -------------------------------------------------------------------------
    def partitions(self, topic: str) -> list[int]:
        # ask through the consumer: its metadata requests never auto-create the topic (an admin
        # client's may, on brokers with auto.create.topics.enable)
        metadata = self._consumer.list_topics(topic=topic, timeout=self.timeout_s)
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            reason = f": {info.error.str()}" if info is not None and info.error is not None else ""
            raise LagError(f"topic {topic!r} does not exist{reason}")
        return sorted(info.partitions)

    def committed(self, group_id: str, topic: str, partitions: list[int]) -> dict[int, int | None]:
        request = ConsumerGroupTopicPartitions(group_id, [TopicPartition(topic, p) for p in partitions])
        futures = self._admin.list_consumer_group_offsets([request], request_timeout=self.timeout_s)
        result = futures[group_id].result(timeout=self.timeout_s)
        offsets: dict[int, int | None] = dict.fromkeys(partitions)
        for tp in result.topic_partitions:
            if tp.error is not None:
                raise LagError(f"committed offset of {group_id} on {topic}[{tp.partition}]: {tp.error.str()}")
            offsets[tp.partition] = tp.offset if tp.offset >= 0 else None
        return offsets

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        return self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=self.timeout_s,
                                                    cached=False)

    def first_timestamps(self, topic: str, offsets: dict[int, int]) -> dict[int, float]:
        """Epoch seconds of the message at ``offsets[partition]`` for each partition (missing if unknown)."""
        if not offsets:
            return {}
        self._consumer.assign([TopicPartition(topic, p, o) for p, o in offsets.items()])
        found: dict[int, float] = {}
        deadline = time.monotonic() + self.timeout_s
        try:
            while len(found) < len(offsets) and time.monotonic() < deadline:
                message = self._consumer.poll(min(0.5, max(0.0, deadline - time.monotonic())))
                if message is None or message.error() is not None or message.partition() in found:
                    continue
                kind, millis = message.timestamp()
                if kind != TIMESTAMP_NOT_AVAILABLE and millis >= 0:
                    found[message.partition()] = millis / 1000
                # one message per partition is all we need: stop fetching the rest
                self._consumer.pause([TopicPartition(topic, message.partition())])
        finally:
            # a paused partition stays paused across assignments: resume before letting go
            self._consumer.resume([TopicPartition(topic, p) for p in offsets])
            self._consumer.unassign()
        return found

    def consumer_lag(self, group_id: str, topic: str) -> list[PartitionLag]:
        partitions = self.partitions(topic)
        lags = partition_lags(self._consumer, topic, partitions, self.committed(group_id, topic, partitions),
                              self.timeout_s)
        # the first uncommitted message of each partition behind: high - lag
        stamps = self.first_timestamps(topic, {x.partition: x.high_watermark - x.lag for x in lags if x.lag > 0})
        now = time.time()
        return [replace(x, seconds_behind=max(0.0, now - stamps[x.partition]) if x.lag and x.partition in stamps
                        else None) for x in lags]

    def list_groups(self) -> list[GroupInfo]:
        result = self._admin.list_consumer_groups(request_timeout=self.timeout_s).result(timeout=self.timeout_s)
        groups = [
            GroupInfo(g.group_id, g.state.name.lower() if g.state is not None else "unknown",
                      bool(g.is_simple_consumer_group))
            for g in result.valid
        ]
        return sorted(groups, key=lambda g: g.group_id)

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close()

    def __enter__(self) -> LagProbe:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def consumer_lag(settings: Settings, group_id: str, topic: str, timeout_s: float = 10.0) -> list[PartitionLag]:
    """Lag of ``group_id`` on every partition of ``topic`` (one-shot; see :class:`LagProbe`)."""
    with LagProbe(settings, timeout_s) as probe:
        return probe.consumer_lag(group_id, topic)


def list_groups(settings: Settings, timeout_s: float = 10.0) -> list[GroupInfo]:
    """Every consumer group the cluster knows, sorted by id."""
    with LagProbe(settings, timeout_s) as probe:
        return probe.list_groups()


def export_lag(observer: Observer, settings: Settings, group_id: str, topic: str,
               probe: LagProbe | None = None) -> list[PartitionLag]:
    """Measure and report it (``lag_measured``: the ``rakuten_consumer_lag{group, topic, partition}`` gauge)."""
    lags = probe.consumer_lag(group_id, topic) if probe is not None else consumer_lag(settings, group_id, topic)
    observer.lag_measured(group_id, topic, lags)
    return lags
