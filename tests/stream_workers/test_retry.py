"""Backoff between attempts of a failed sink write: exponential, capped, jittered, reset by a success."""

from __future__ import annotations

import random

from stream_workers.retry import Backoff, SinkHealth


def test_pauses_double_up_to_the_cap():
    backoff = Backoff(initial_s=0.5, max_s=4.0, jitter=0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_jitter_draws_each_pause_between_half_and_all_of_its_nominal_value():
    backoff = Backoff(initial_s=1.0, max_s=8.0, jitter=0.5, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(200)]
    for attempt, delay in enumerate(delays):
        nominal = backoff.nominal(attempt)
        assert nominal / 2 <= delay <= nominal
    assert len({round(d, 6) for d in delays[10:]}) > 100, "workers do not retry in step"


def test_a_success_starts_again_from_the_first_pause():
    backoff = Backoff(initial_s=0.25, max_s=10.0, jitter=0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 0.25


def test_health_is_unhealthy_from_the_first_failure_until_a_success():
    health = SinkHealth()
    health.failed("connection refused", retry_at=10.0, paused=frozenset({("products", 0)}))
    first_failure = health.failing_since
    health.failed("connection refused", retry_at=12.0, paused=frozenset({("products", 0)}))
    assert not health.healthy and health.consecutive_failures == 2 and health.failing_since == first_failure
    health.recovered()
    assert health.healthy and health.consecutive_failures == 0 and health.retries == 2
    assert health.last_error is None and health.retry_at is None
