"""Lag per partition is the high watermark minus the committed offset, and its age is the oldest unread message."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import TopicPartition

from rakuten_stream.clients.lag import LagError, LagProbe, consumer_lag, export_lag, list_groups
from rakuten_stream.kafka import TopicSpec, ensure_topics, make_consumer, make_producer
from rakuten_stream.metrics import PrometheusObserver

MINUTE_AGO_MS = 60_000


@pytest.fixture
def topic(settings) -> str:
    """Two partitions: 6 messages written a minute ago on partition 0, 4 fresh ones on partition 1."""
    name = f"lag-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [TopicSpec(name, 2, {})])
    producer = make_producer(settings)
    old = int(time.time() * 1000) - MINUTE_AGO_MS
    for i in range(6):
        producer.produce(name, value=b"old %d" % i, key=b"a", partition=0, timestamp=old + i)
    for i in range(4):
        producer.produce(name, value=b"new %d" % i, key=b"b", partition=1)
    assert producer.flush(10) == 0
    return name


def read_and_commit(settings, group: str, topic: str, commit_at: dict[int, int]) -> None:
    """A member of ``group`` reads the whole topic, then commits ``commit_at`` (partition -> next offset)."""
    consumer = make_consumer(settings, group)
    consumer.subscribe([topic])
    read, deadline = 0, time.monotonic() + 20
    while read < 10 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            read += 1
    assert read == 10
    consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in commit_at.items()], asynchronous=False)
    consumer.close()


def test_lag_is_exact_per_partition_after_a_partial_commit(settings, topic):
    group = f"g-{uuid.uuid4().hex[:8]}"
    read_and_commit(settings, group, topic, {0: 4, 1: 1})

    p0, p1 = consumer_lag(settings, group, topic)

    assert (p0.partition, p0.committed, p0.high_watermark, p0.lag) == (0, 4, 6, 2)
    assert (p1.partition, p1.committed, p1.high_watermark, p1.lag) == (1, 1, 4, 3)
    # the first unread message of partition 0 was written a minute ago, that of partition 1 just now
    assert 58 <= p0.seconds_behind <= 90
    assert 0 <= p1.seconds_behind < 30


def test_lag_is_zero_with_no_time_behind_once_everything_is_committed(settings, topic):
    group = f"g-{uuid.uuid4().hex[:8]}"
    read_and_commit(settings, group, topic, {0: 6, 1: 4})

    assert [(p.committed, p.lag, p.seconds_behind) for p in consumer_lag(settings, group, topic)] \
        == [(6, 0, None), (4, 0, None)]


def test_a_group_that_never_committed_is_behind_by_everything_retained(settings, topic):
    p0, p1 = consumer_lag(settings, f"never-{uuid.uuid4().hex[:8]}", topic)
    assert (p0.committed, p0.lag, p1.committed, p1.lag) == (None, 6, None, 4)
    assert p0.seconds_behind >= 58


def test_measuring_never_joins_nor_commits_for_the_group(settings, topic):
    group = f"g-{uuid.uuid4().hex[:8]}"
    read_and_commit(settings, group, topic, {0: 4, 1: 1})
    before = {g.group_id for g in list_groups(settings)}

    with LagProbe(settings) as probe:
        for _ in range(3):
            assert [p.lag for p in probe.consumer_lag(group, topic)] == [2, 3]

    assert {g.group_id for g in list_groups(settings)} == before
    assert group in before


def test_an_unknown_topic_is_a_clear_error(settings):
    with pytest.raises(LagError, match="does not exist"):
        consumer_lag(settings, "any-group", f"no-such-topic-{uuid.uuid4().hex[:8]}")


def test_export_lag_sets_the_gauge_of_each_partition(settings, topic):
    group = f"g-{uuid.uuid4().hex[:8]}"
    read_and_commit(settings, group, topic, {0: 5, 1: 4})
    metrics = PrometheusObserver()

    export_lag(metrics, settings, group, topic)

    def gauge(partition: str) -> float | None:
        return metrics.registry.get_sample_value(
            "rakuten_consumer_lag", {"group": group, "topic": topic, "partition": partition})

    assert (gauge("0"), gauge("1")) == (1.0, 0.0)
