"""A token bucket that paces a producer without busy-waiting.

``acquire()`` returns at once while tokens remain; otherwise it computes how long until the next
token and waits exactly that long through ``wait`` (``time.sleep`` by default; the publisher
passes ``producer.poll`` so delivery reports keep flowing while it waits).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    """At most ``rate`` acquisitions per second on average, bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[float], object] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 messages per second, got {rate}")
        self.rate = float(rate)
        # a tenth of a second's worth keeps the pace smooth; never less than one message
        self.burst = float(burst) if burst is not None else max(1.0, self.rate / 10)
        self._clock = clock
        self._wait = wait
        self._tokens = self.burst
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def acquire(self, tokens: float = 1.0) -> float:
        """Take ``tokens``, waiting as long as needed; returns the seconds spent waiting."""
        if tokens > self.burst:
            raise ValueError(f"cannot take {tokens} tokens at once from a bucket of {self.burst}")
        waited = 0.0
        self._refill()
        while self._tokens < tokens:
            delay = (tokens - self._tokens) / self.rate
            started = self._clock()
            self._wait(delay)  # may return early (a delivery report arrived): loop and recompute
            waited += self._clock() - started
            self._refill()
        self._tokens -= tokens
        return waited
