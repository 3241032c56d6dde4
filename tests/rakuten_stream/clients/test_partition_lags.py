"""The one lag computation (CLI, exporter and worker alike), in memory with a stand-in consumer."""

from __future__ import annotations

from confluent_kafka import TopicPartition

from rakuten_stream.clients.lag import partition_lags
from rakuten_stream.metrics import PrometheusObserver
from rakuten_stream.settings import Settings
from stream_workers.worker import Worker


class StandInConsumer:
    """The two calls the computation makes: the group's commits and the watermarks."""

    def __init__(self, committed: dict[int, int], watermarks: dict[int, tuple[int, int]]) -> None:
        self._committed, self._watermarks = committed, watermarks
        self.asked_committed = 0

    def committed(self, partitions, timeout=None):
        self.asked_committed += 1
        return [TopicPartition(tp.topic, tp.partition, self._committed.get(tp.partition, -1001)) for tp in partitions]

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        return self._watermarks[tp.partition]


def test_lag_is_the_high_watermark_minus_the_committed_offset():
    consumer = StandInConsumer({0: 7}, {0: (0, 10)})
    [p0] = partition_lags(consumer, "t", [0])
    assert (p0.partition, p0.committed, p0.high_watermark, p0.lag) == (0, 7, 10, 3)


def test_a_partition_never_committed_counts_from_its_low_watermark_not_from_zero():
    consumer = StandInConsumer({}, {0: (5, 8)})  # retention removed offsets 0-4
    [p0] = partition_lags(consumer, "t", [0])
    assert (p0.committed, p0.lag) == (None, 3)


def test_given_commits_from_the_admin_api_the_consumer_is_not_asked_for_its_own():
    consumer = StandInConsumer({0: 1}, {0: (0, 4), 1: (0, 2)})
    lags = partition_lags(consumer, "t", [0, 1], committed={0: 3, 1: None})
    assert [x.lag for x in lags] == [1, 2] and consumer.asked_committed == 0


def test_the_workers_gauge_uses_the_same_computation_with_its_own_consumer(tmp_path):
    settings = Settings(database={"url": f"sqlite:///{tmp_path / 'db.sqlite'}"})
    metrics = PrometheusObserver()
    worker = Worker(settings, metrics)
    worker._assigned = {(settings.topics.products, 0)}
    # never committed, low watermark 5: the lag is 3 (the worker used to report 8, counting from 0)
    worker._export_lag(StandInConsumer({}, {0: (5, 8)}))
    assert metrics.sample("rakuten_consumer_lag", {"group": settings.worker.group_id,
                                                   "topic": settings.topics.products, "partition": "0"}) == 3
