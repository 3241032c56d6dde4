"""The prediction cache: batched reads and writes by model version, and a worker that goes on when Redis is down."""

import uuid

from rakuten_stream.cache import PredictionCache
from rakuten_stream.embedded_broker import free_port


def test_what_is_put_for_one_version_is_read_back_in_one_batch(redis_url):
    cache = PredictionCache(redis_url, ttl_seconds=60)
    version, other = f"v-{uuid.uuid4().hex[:8]}", f"v-{uuid.uuid4().hex[:8]}"
    cache.put_many(version, {"h1": b"one", "h2": b"two"})
    assert cache.get_many(version, ["h1", "missing", "h2"]) == [b"one", None, b"two"]
    assert cache.get_many(other, ["h1"]) == [None]  # another model version never sees these answers


def test_with_redis_down_every_lookup_is_a_miss_and_nothing_raises():
    cache = PredictionCache(f"redis://127.0.0.1:{free_port()}/0", ttl_seconds=60, retry_after_s=60)
    assert not cache.ping()
    assert cache.get_many("v1", ["h1", "h2"]) == [None, None]
    cache.put_many("v1", {"h1": b"x"})  # swallowed: the worker goes on without the cache
    assert not cache.available  # and stops trying until retry_after_s has passed


def test_a_disabled_cache_is_never_available():
    cache = PredictionCache(None, ttl_seconds=60)
    assert not cache.available and not cache.ping()
    assert cache.get_many("v1", ["h1"]) == [None]
