"""The observer: named hooks, recorded in memory or as Prometheus series; several observers as one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rakuten_stream.clients.lag import PartitionLag
from rakuten_stream.metrics import Observer, Observers, PrometheusObserver, RecordingObserver


def test_the_base_observer_accepts_every_hook_and_does_nothing():
    o = Observer()
    o.message_in("t", 3)
    o.sink_failed("database", "down")
    o.partitions_paused([("t", 0)])
    o.lag_measured("g", "t", [])


def test_several_observers_hear_every_hook_in_order():
    first, second = RecordingObserver(), RecordingObserver()
    both = Observers(first, second, None)
    both.message_in("products", 4)
    both.commit_done(0.01, ok=False)
    assert first.calls == second.calls == [("message_in", ("products", 4), {}),
                                           ("commit_done", (0.01,), {"ok": False})]
    assert both.find(RecordingObserver) is first


def test_prometheus_counts_consumption_dead_letters_and_image_outcomes():
    m = PrometheusObserver()
    m.message_in("products", 5)
    m.dead_letter("not_json")
    m.dead_letter("not_json")
    m.image_fetched("timeout", 2)
    assert m.sample("rakuten_messages_in_total", {"topic": "products"}) == 5
    assert m.sample("rakuten_batch_size_count") == 1
    assert m.sample("rakuten_dead_letters_total", {"reason": "not_json"}) == 2
    assert m.sample("rakuten_image_fetches_total", {"outcome": "timeout"}) == 2


def test_a_stored_batch_counts_predictions_cache_hits_and_end_to_end_latency():
    m = PrometheusObserver()
    m.batch_stored(3, 1, 0.2, [datetime.now(UTC) - timedelta(seconds=2), None, datetime.now(UTC)])
    assert m.sample("rakuten_predictions_out_total") == 3
    assert m.sample("rakuten_cache_hits_total") == 1
    assert m.sample("rakuten_end_to_end_latency_seconds_count") == 2  # the one without an event time is not timed
    assert m.sample("rakuten_stage_seconds_count", {"stage": "batch"}) == 1


def test_sink_failures_retries_commits_and_paused_partitions_have_series():
    m = PrometheusObserver()
    m.database_health(True)
    m.sink_failed("database", "connection refused")
    m.sink_failed("kafka", "timed out")
    m.retry_scheduled(2.0)
    m.commit_done(0.01)
    m.commit_done(0.01, ok=False)
    m.partitions_paused([("t", 0), ("t", 1)])
    m.partitions_paused([("t", 1)])
    assert m.sample("rakuten_sink_failures_total", {"sink": "database"}) == 1
    assert m.sample("rakuten_sink_failures_total", {"sink": "kafka"}) == 1
    assert m.sample("rakuten_database_available") == 0  # a failed upsert says the database is down
    assert m.sample("rakuten_batch_retries_total") == 1
    assert m.sample("rakuten_commits_total", {"result": "ok"}) == 1
    assert m.sample("rakuten_commits_total", {"result": "refused"}) == 1
    assert m.sample("rakuten_paused_partitions") == 2
    m.partitions_resumed([("t", 0), ("t", 1)])
    assert m.sample("rakuten_paused_partitions") == 0


def test_cache_and_database_gauges_follow_each_check_down_and_up():
    m = PrometheusObserver()
    for up in (True, False, True):
        m.cache_health(up)
        m.database_health(not up)
        assert m.sample("rakuten_cache_available") == (1 if up else 0)
        assert m.sample("rakuten_database_available") == (0 if up else 1)


def test_a_model_switch_replaces_the_version_and_provider_series():
    m = PrometheusObserver()
    m.model_switched("v1", "CPUExecutionProvider")
    m.model_switched("v2", "CPUExecutionProvider")
    m.model_load_failed("v3", "corrupt")
    assert m.sample("rakuten_model_version_info", {"version": "v1"}) is None
    assert m.sample("rakuten_model_version_info", {"version": "v2"}) == 1
    assert m.sample("rakuten_model_reloads_total") == 2
    assert m.sample("rakuten_model_load_failures_total") == 1


def test_lag_is_one_gauge_per_partition():
    m = PrometheusObserver()
    m.lag_measured("g", "t", [PartitionLag(0, 5, 9, 4, None), PartitionLag(1, None, 3, 3, None)])
    assert m.sample("rakuten_consumer_lag", {"group": "g", "topic": "t", "partition": "0"}) == 4
    assert m.sample("rakuten_consumer_lag", {"group": "g", "topic": "t", "partition": "1"}) == 3
