"""Replay for backfill: exactly the messages of a range, with a chosen version, resumable."""

from __future__ import annotations

import time

import pytest

from rakuten_stream.kafka import ensure_topics, make_producer
from schemas import Prediction
from stream_workers.replay import Replayer, ReplayError, parse_position, plan_replay
from tests.helpers import listing_json, read_topic, register_production

pytestmark = pytest.mark.slow


@pytest.fixture
def replay_settings(settings, tiny_model):
    s = settings.with_overrides(cache={"enabled": False}, worker={"batch_max_messages": 5})
    ensure_topics(s)
    register_production(s, tiny_model)
    return s


def publish_at(settings, first_id: int, count: int, timestamp_ms: int) -> None:
    producer = make_producer(settings)
    for i in range(count):
        pid = first_id + i
        producer.produce(settings.topics.products, key=str(pid).encode(), timestamp=timestamp_ms + i,
                         value=listing_json(pid, f"Piscine tubulaire ronde {pid}", "Piscine hors sol, 3 m"))
    assert producer.flush(15) == 0


def test_positions_parse_as_offsets_times_and_ends():
    assert parse_position("42") == ("offset", 42)
    assert parse_position("offset:7") == ("offset", 7)
    assert parse_position("beginning") == ("beginning", 0)
    assert parse_position("2026-01-01T00:00:00Z") == ("time", 1767225600000)
    with pytest.raises(ReplayError, match="time zone"):
        parse_position("2026-01-01T00:00:00")
    with pytest.raises(ReplayError):
        parse_position("yesterday")


def test_replaying_a_time_range_reprocesses_exactly_the_messages_in_it(replay_settings):
    base = int(time.time() * 1000) - 3_600_000
    publish_at(replay_settings, 1000, 10, base)  # before the range
    publish_at(replay_settings, 2000, 12, base + 600_000)  # inside
    publish_at(replay_settings, 3000, 8, base + 1_200_000)  # after
    plan = plan_replay(replay_settings, f"time:{base + 600_000}", f"time:{base + 1_200_000}")
    assert plan.total == 12

    stats = Replayer(replay_settings, plan).run()
    assert (stats.processed, stats.remaining) == (12, 0)
    produced = [Prediction.from_bytes(m.value()) for m in read_topic(replay_settings,
                replay_settings.topics.predictions, expected=12)]
    assert sorted(p.productid for p in produced) == list(range(2000, 2012))


def test_an_interrupted_replay_resumes_where_it_stopped(replay_settings):
    publish_at(replay_settings, 5000, 30, int(time.time() * 1000))
    plan = plan_replay(replay_settings, "beginning", "end", partitions=[0])
    first = Replayer(replay_settings, plan)
    first.run(lambda stats: first.stop() if stats.processed >= 5 else None)
    resumed = Replayer(replay_settings, plan).run()
    assert resumed.remaining == 0
    produced = read_topic(replay_settings, replay_settings.topics.predictions, expected=plan.total)
    assert len({Prediction.from_bytes(m.value()).productid for m in produced}) == plan.total
    assert len(produced) <= plan.total + replay_settings.worker.batch_max_messages  # at most one batch again


def test_a_replay_with_a_named_version_tags_its_predictions(replay_settings, tiny_model):
    publish_at(replay_settings, 7000, 4, int(time.time() * 1000))
    version = register_production(replay_settings, tiny_model)
    plan = plan_replay(replay_settings, "offset:0", "end", model_version=version)
    stats = Replayer(replay_settings, plan, model_version=version).run()
    assert stats.model_version == version and stats.predicted == plan.total
