"""Episodes and the retrain gate: one drift episode, one request, however many consumers are in the group."""

import threading
import uuid

import pytest
import redis

from rakuten_stream.settings import DriftSettings
from stream_workers.drift.episodes import EpisodeState, advance
from stream_workers.drift.triggers import (
    DISTRIBUTION_DRIFT,
    PERFORMANCE_DROP,
    RetrainGate,
    WindowJudgement,
    fired,
    request_id_for,
)


def test_consecutive_alarms_are_one_episode_that_asks_once_and_healthy_windows_end_it():
    state = EpisodeState()
    asked = []
    for i, alarmed in enumerate([False, True, True, False, True, False, False, False, True]):
        step = advance(state, f"v#{i}", alarmed, end_after=3)
        if step.wants_request:
            asked.append(step.episode_id)
            step.state.requested = True  # the consumer marks it once the request is out
        state = step.state
    # windows 1-7 are one episode (window 3 is one healthy window, not three); window 8 opens a new one
    assert asked == ["v#1", "v#8"]


def test_an_episode_whose_request_was_held_back_asks_again_at_its_next_alarm():
    step = advance(EpisodeState(), "v#0", True, end_after=2)
    assert step.wants_request  # the gate said no (cooldown): requested stays False
    assert advance(step.state, "v#1", True, end_after=2).wants_request


def test_triggers_fire_on_the_calibrated_threshold_and_on_a_drop_of_estimated_or_true_f1():
    s = DriftSettings(max_f1_drop=0.1, min_true_f1_labels=50)
    healthy = WindowJudgement(2.0, 2.5, 0.69, None, 0, 0.72)
    assert fired(healthy, s) == []
    assert fired(WindowJudgement(3.0, 2.5, 0.69, None, 0, 0.72), s) == [DISTRIBUTION_DRIFT]
    assert fired(WindowJudgement(2.0, 2.5, 0.60, None, 0, 0.72), s) == [PERFORMANCE_DROP]
    assert fired(WindowJudgement(2.0, 2.5, 0.69, 0.55, 49, 0.72), s) == []  # too few labels to judge
    assert fired(WindowJudgement(2.0, 2.5, 0.69, 0.55, 50, 0.72), s) == [PERFORMANCE_DROP]
    assert fired(healthy, DriftSettings(min_f1=0.7)) == [PERFORMANCE_DROP]  # an absolute floor


def test_one_request_id_per_episode():
    assert request_id_for("v#3") == request_id_for("v#3") != request_id_for("v#4")


@pytest.fixture
def gate_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    prefix = f"test:drift:{uuid.uuid4().hex}"
    yield client, prefix
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def test_several_consumers_of_one_group_let_exactly_one_request_through(gate_client):
    client, prefix = gate_client
    gates = [RetrainGate(redis.Redis(connection_pool=client.connection_pool), 3600, prefix) for _ in range(8)]
    barrier = threading.Barrier(len(gates))
    results: list[bool] = []

    def race(gate: RetrainGate, n: int) -> None:
        barrier.wait()
        results.append(gate.acquire("v1", request_id_for(f"v1#{n}")))  # each saw its own episode id

    threads = [threading.Thread(target=race, args=(g, i)) for i, g in enumerate(gates)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    winner = client.get(f"{prefix}:v1").decode()
    assert gates[0].acquire("v1", winner)  # the same request, retried after a crash, goes out again
    assert client.ttl(f"{prefix}:v1") > 3500  # the cooldown
    assert RetrainGate(client, 3600, prefix).acquire("v2", request_id_for("v2#0"))  # per model version
