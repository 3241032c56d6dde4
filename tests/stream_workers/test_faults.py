"""The fault suite: the worker under outages and crashes, with a real broker, PostgreSQL and Redis.

Each test streams a few hundred listings, breaks something mid-stream (a private PostgreSQL or
Redis instance stopped and started by the test, a private broker restarted, the worker SIGTERMed
or SIGKILLed) and ends with the count check: published = predicted rows + dead letters, no
duplicate rows, lag 0. The model is the TF-IDF-only fixture, to keep the suite near two minutes.
"""

from __future__ import annotations

import time

import pytest

from rakuten_stream.kafka import ensure_topics
from tests.fault_harness import (
    PacedPublisher,
    PrivatePostgres,
    ThreadWorker,
    assert_accounted_for,
    listing,
    settle,
)
from tests.helpers import register_production, wait_until

pytestmark = pytest.mark.slow


def stream_settings(settings, database_url: str, **worker):
    s = settings.with_overrides(database={"url": database_url}, cache={"enabled": False},
                                worker={"batch_max_messages": 8, "retry_initial_s": 0.2, "retry_max_s": 1.0} | worker)
    ensure_topics(s)
    return s


def test_a_postgresql_outage_mid_stream_loses_no_listing(settings, text_model):
    """Defect 1: with the database down for a few seconds, the old cycle rewound a failed batch and
    then the batch after it, so the later seek won and the failed batch was skipped: lag 0,
    offsets committed to the end, listings missing from the table."""
    with PrivatePostgres() as pg:
        s = stream_settings(settings, pg.url)
        register_production(s, text_model)
        published = [listing(i) for i in range(1, 301)]
        publisher = PacedPublisher(s, published, per_second=100)
        with ThreadWorker(s) as worker:
            publisher.start()
            assert wait_until(lambda: worker.stats.predicted >= 40, 60), "the worker never got going"
            pg.stop()
            assert wait_until(lambda: not worker.health_state.healthy, 20), "a failed write makes the worker unhealthy"
            time.sleep(2)  # the outage: the stream goes on meanwhile
            pg.start()
            publisher.join(60)
            counts = settle(s, len(published))
            assert worker.health_state.healthy, "healthy again once a write succeeds"
        assert worker.stats.retries > 0
    assert_accounted_for(counts)
