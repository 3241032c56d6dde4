"""Redis cache of predictions by content hash and model version.

Batched: one MGET per micro-batch and one pipelined SETEX for the misses. When Redis is down the
cache turns itself off (and says so once), retrying the connection now and then; the worker goes
on without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import redis

log = logging.getLogger(__name__)


class PredictionCache:
    def __init__(self, url: str | None, ttl_seconds: int, retry_after_s: float = 30.0,
                 socket_timeout_s: float = 0.5) -> None:
        self.ttl_seconds = ttl_seconds
        self.retry_after_s = retry_after_s
        self._client = (
            redis.Redis.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s)
            if url else None
        )
        self._down_since: float | None = None

    @staticmethod
    def key(model_version: str, content_hash: str) -> str:
        return f"rakuten:pred:{model_version}:{content_hash}"

    @property
    def available(self) -> bool:
        if self._client is None:
            return False
        return self._down_since is None or time.monotonic() - self._down_since >= self.retry_after_s

    def get_many(self, model_version: str, content_hashes: Sequence[str]) -> list[bytes | None]:
        if not content_hashes or not self.available:
            return [None] * len(content_hashes)
        try:
            values = self._client.mget([self.key(model_version, h) for h in content_hashes])
        except redis.RedisError as exc:
            self._mark_down(exc)
            return [None] * len(content_hashes)
        self._mark_up()
        return list(values)

    def put_many(self, model_version: str, items: Mapping[str, bytes]) -> None:
        if not items or not self.available:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for content_hash, value in items.items():
                pipe.setex(self.key(model_version, content_hash), self.ttl_seconds, value)
            pipe.execute()
        except redis.RedisError as exc:
            self._mark_down(exc)

    def ping(self) -> bool:
        """Whether Redis answers now; an answer (or none) also turns the cache on (or off) at once."""
        if self._client is None:
            return False
        try:
            up = bool(self._client.ping())
        except redis.RedisError as exc:
            self._mark_down(exc)
            return False
        if up:
            self._mark_up()
        return up

    def _mark_down(self, exc: Exception) -> None:
        if self._down_since is None:
            log.warning("Redis unavailable (%s): carrying on without the prediction cache", exc)
        self._down_since = time.monotonic()

    def _mark_up(self) -> None:
        if self._down_since is not None:
            log.warning("Redis is back: prediction cache on again")
        self._down_since = None
