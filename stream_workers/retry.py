"""Exponential backoff with jitter, and the worker's sink health while it backs off.

A failed sink write is retried after ``initial_s``, then twice as long each time up to ``max_s``,
each pause drawn at random between half and all of its nominal value ("equal jitter"), so that
the workers of a group do not hammer a recovering database in step. A success resets it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5  # the share of a pause drawn at random: 0 = none, 1 = anywhere in [0, nominal]
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempts: int = 0

    def nominal(self, attempt: int) -> float:
        return min(self.max_s, self.initial_s * self.multiplier ** attempt)

    def next_delay(self) -> float:
        """The pause before the next attempt; each call counts one failed attempt."""
        nominal = self.nominal(self.attempts)
        self.attempts += 1
        return nominal * (1 - self.jitter) + nominal * self.jitter * self.rng.random()

    def reset(self) -> None:
        self.attempts = 0


@dataclass
class SinkHealth:
    """What the worker's health endpoints read: unhealthy from a failed write until one succeeds."""

    healthy: bool = True
    consecutive_failures: int = 0
    failing_since: float | None = None  # time.monotonic() of the first failure of this run
    last_error: str | None = None
    retry_at: float | None = None  # time.monotonic() when the paused partitions resume
    paused: frozenset[tuple[str, int]] = frozenset()  # (topic, partition) held back meanwhile
    retries: int = 0  # failed writes over the worker's life
    poison: int = 0  # messages dead-lettered by bisection over the worker's life

    def failed(self, error: str, retry_at: float, paused: frozenset[tuple[str, int]]) -> None:
        if self.healthy:
            self.failing_since = time.monotonic()
        self.healthy = False
        self.consecutive_failures += 1
        self.retries += 1
        self.last_error = error
        self.retry_at = retry_at
        self.paused = paused

    def recovered(self) -> None:
        self.healthy = True
        self.consecutive_failures = 0
        self.failing_since = None
        self.last_error = None
        self.retry_at = None
