"""The dynamic batcher: requests gathered up to N items or T ms, answers routed back in order."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from http_service.batcher import BatchStats, DynamicBatcher


class RecordingModel:
    """A stand-in model: doubles numbers, remembers every batch it was given."""

    def __init__(self, seconds: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.seconds = seconds
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot score {self.fail_on}")
        time.sleep(self.seconds)
        return [2 * x for x in items]


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_share_one_model_call_and_get_their_own_answers():
    model, stats = RecordingModel(), []

    async def scenario():
        async with DynamicBatcher(model, max_items=64, max_wait_ms=50, on_batch=stats.append) as batcher:
            return await asyncio.gather(*(batcher.submit([i, 100 + i]) for i in range(8)))

    answers = run(scenario())
    assert answers == [[2 * i, 2 * (100 + i)] for i in range(8)]
    assert len(model.batches) == 1 and sorted(model.batches[0]) == sorted(x for i in range(8) for x in (i, 100 + i))
    assert stats == [BatchStats(items=16, requests=8, queued_s=stats[0].queued_s, run_s=stats[0].run_s)]


def test_a_batch_closes_at_max_items_without_splitting_a_request():
    model = RecordingModel()

    async def scenario():
        async with DynamicBatcher(model, max_items=5, max_wait_ms=200) as batcher:
            return await asyncio.gather(batcher.submit([1, 2]), batcher.submit([3, 4]), batcher.submit([5, 6]),
                                        batcher.submit([7]))

    assert run(scenario()) == [[2, 4], [6, 8], [10, 12], [14]]
    assert model.batches == [[1, 2, 3, 4], [5, 6, 7]]


def test_a_lone_request_waits_at_most_max_wait():
    model = RecordingModel()

    async def scenario():
        async with DynamicBatcher(model, max_items=64, max_wait_ms=30) as batcher:
            start = time.monotonic()
            answer = await batcher.submit([21])
            return answer, time.monotonic() - start

    answer, waited = run(scenario())
    assert answer == [42]
    assert 0.025 <= waited < 1.0


def test_requests_that_queued_during_a_batch_go_at_once_in_the_next():
    model = RecordingModel(seconds=0.2)

    async def scenario():
        async with DynamicBatcher(model, max_items=64, max_wait_ms=150) as batcher:
            first = asyncio.create_task(batcher.submit([0]))
            await asyncio.sleep(0.2)  # the first batch (alone after 150 ms) is now running
            start = time.monotonic()
            later = await asyncio.gather(*(batcher.submit([i]) for i in range(1, 4)))
            return await first, later, time.monotonic() - start

    first, later, waited = run(scenario())
    assert first == [0] and later == [[2], [4], [6]]
    assert model.batches == [[0], [1, 2, 3]]
    # the queued requests waited for the running batch, not for another 150 ms window on top
    assert waited < 0.2 + 0.15 + 0.2


def test_max_items_one_is_batching_off():
    model = RecordingModel()

    async def scenario():
        async with DynamicBatcher(model, max_items=1, max_wait_ms=50) as batcher:
            return await asyncio.gather(*(batcher.submit([i]) for i in range(4)))

    assert run(scenario()) == [[0], [2], [4], [6]]
    assert model.batches == [[0], [1], [2], [3]]


def test_an_oversized_request_runs_alone():
    model = RecordingModel()

    async def scenario():
        async with DynamicBatcher(model, max_items=2, max_wait_ms=20) as batcher:
            return await asyncio.gather(batcher.submit([1, 2, 3]), batcher.submit([4]))

    assert run(scenario()) == [[2, 4, 6], [8]]
    assert model.batches == [[1, 2, 3], [4]]


def test_a_failing_batch_fails_its_requests_and_the_next_batch_still_runs():
    model = RecordingModel(fail_on=13)

    async def scenario():
        async with DynamicBatcher(model, max_items=8, max_wait_ms=20) as batcher:
            failed = await asyncio.gather(batcher.submit([13]), batcher.submit([1]), return_exceptions=True)
            return failed, await batcher.submit([2])

    failed, after = run(scenario())
    assert all(isinstance(f, ValueError) for f in failed)
    assert after == [4]


def test_a_caller_that_left_is_not_computed():
    model = RecordingModel(seconds=0.1)

    async def scenario():
        async with DynamicBatcher(model, max_items=1, max_wait_ms=0) as batcher:
            running = asyncio.create_task(batcher.submit([1]))
            await asyncio.sleep(0.02)
            gone = asyncio.create_task(batcher.submit([2]))
            await asyncio.sleep(0.02)
            gone.cancel()
            return await running

    assert run(scenario()) == [2]
    assert model.batches == [[1]]


def test_other_work_runs_on_the_model_thread_between_batches():
    model = RecordingModel(seconds=0.05)

    async def scenario():
        async with DynamicBatcher(model, max_items=4, max_wait_ms=0) as batcher:
            answer = asyncio.create_task(batcher.submit([1]))
            await asyncio.sleep(0.01)
            name = await batcher.run_on_model_thread(lambda: threading.current_thread().name)
            return await answer, name

    answer, name = run(scenario())
    assert answer == [2] and model.threads == {name}


def test_submit_before_start_is_an_error():
    with pytest.raises(RuntimeError, match="not started"):
        run(DynamicBatcher(RecordingModel(), max_items=4, max_wait_ms=1).submit([1]))
