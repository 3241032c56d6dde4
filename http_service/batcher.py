"""Dynamic batching: concurrent requests gathered into one model call (Triton, BentoML).

Each request hands over a few items and awaits their results. One collector takes the oldest
waiting request and keeps adding the next ones, whole, until the batch holds ``max_items`` or
the oldest request has waited ``max_wait_ms`` (Triton's ``max_queue_delay``: counted from the
oldest request's arrival, so requests that queued while the model was busy go at once). The
batch runs on one dedicated thread, so batches never compete with each other for the cores; the
next batch gathers while the current one runs. ``max_items=1`` turns batching off: every
request is its own model call.

A request larger than ``max_items`` runs alone (callers bound request sizes); a request whose
caller went away before its batch started is dropped; an exception in a batch is every one of
its requests' answer and never stops the collector.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class BatchStats:
    """What one model call carried: for metrics and the benchmark."""

    items: int
    requests: int
    queued_s: float  # how long the oldest request waited before its batch started
    run_s: float


@dataclass
class _Pending(Generic[Item, Result]):
    items: Sequence[Item]
    future: asyncio.Future[list[Result]]
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher(Generic[Item, Result]):
    """Gathers ``submit`` calls into calls of ``run_batch(items) -> results`` (same length, same order).

    Use it as an async context manager (or ``start``/``aclose``) inside the event loop that submits.
    ``run_on_model_thread`` runs other work (a model reload) on the batch thread, between batches.
    """

    def __init__(self, run_batch: Callable[[list[Item]], Sequence[Result]], max_items: int, max_wait_ms: float,
                 on_batch: Callable[[BatchStats], None] | None = None) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.run_batch = run_batch
        self.max_items = max_items
        self.max_wait_s = max(0.0, max_wait_ms / 1000)
        self.on_batch = on_batch
        self._waiting: deque[_Pending[Item, Result]] = deque()
        self._arrival: asyncio.Event | None = None
        self._collector: asyncio.Task[None] | None = None
        self._thread: ThreadPoolExecutor | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._arrival = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-batch")
        self._collector = asyncio.create_task(self._collect(), name="dynamic-batcher")

    async def aclose(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            try:
                await self._collector
            except asyncio.CancelledError:
                pass
            self._collector = None
        while self._waiting:
            pending = self._waiting.popleft()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the service is shutting down"))
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None

    async def __aenter__(self) -> DynamicBatcher[Item, Result]:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- use --------------------------------------------------------------------------------------
    async def submit(self, items: Sequence[Item]) -> list[Result]:
        if self._arrival is None:
            raise RuntimeError("the batcher is not started")
        if not items:
            return []
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Pending(items, future))
        self._arrival.set()
        return await future

    async def run_on_model_thread(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on the batch thread, after the batch that is running (never beside it)."""
        if self._thread is None:
            raise RuntimeError("the batcher is not started")
        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    # -- the collector ----------------------------------------------------------------------------
    async def _next_batch(self) -> list[_Pending[Item, Result]]:
        assert self._arrival is not None
        while not self._waiting:
            self._arrival.clear()
            await self._arrival.wait()
        first = self._waiting.popleft()
        batch, size = [first], len(first.items)
        deadline = first.arrived + self.max_wait_s
        while size < self.max_items:
            if self._waiting:
                if size + len(self._waiting[0].items) > self.max_items:
                    break  # it starts the next batch, whole
                nxt = self._waiting.popleft()
                batch.append(nxt)
                size += len(nxt.items)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except TimeoutError:
                break
        return batch

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [p for p in await self._next_batch() if not p.future.done()]  # callers that left
            if not batch:
                continue
            items = [item for pending in batch for item in pending.items]
            queued_s = time.monotonic() - batch[0].arrived
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._thread, self.run_batch, items)
                if len(results) != len(items):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
            except asyncio.CancelledError:  # shutting down mid-batch: nobody is left waiting forever
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(RuntimeError("the service is shutting down"))
                raise
            except Exception as exc:  # the batch's answer, not the collector's end
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            run_s = time.perf_counter() - start
            offset = 0
            for pending in batch:
                n = len(pending.items)
                if not pending.future.done():
                    pending.future.set_result(list(results[offset : offset + n]))
                offset += n
            if self.on_batch is not None:
                self.on_batch(BatchStats(items=len(items), requests=len(batch), queued_s=queued_s, run_s=run_s))
