"""Writes of the HTTP service: listings to ``products.v1``, labels to ``labels.v1``.

One idempotent producer (acks=all). A write answers only once the broker has acknowledged every
message of the request, so a 202 means the listing is in the stream, not merely queued.
"""

from __future__ import annotations

import threading

from rakuten_stream.kafka import (
    DeliveryTracker,
    make_producer,
    produce_with_backpressure,
)
from rakuten_stream.settings import Settings


class PublishFailed(RuntimeError):
    pass


class TopicWriter:
    def __init__(self, settings: Settings, ack_timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.ack_timeout_s = ack_timeout_s
        self._producer = None
        self._lock = threading.Lock()

    def send(self, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
        """Produce ``(key, value)`` pairs to ``topic`` and wait for their acknowledgements (blocking)."""
        producer = self._ready()
        tracker = DeliveryTracker()
        for key, value in messages:
            produce_with_backpressure(producer, topic, value, key=key, on_delivery=tracker)
        remaining = producer.flush(self.ack_timeout_s)
        if tracker.failed or remaining or tracker.delivered < len(messages):
            reasons = "; ".join(tracker.errors) or f"not acknowledged within {self.ack_timeout_s:.0f} s"
            raise PublishFailed(f"{len(messages) - tracker.delivered} of {len(messages)} message(s) to {topic} "
                                f"not written: {reasons}")

    def _ready(self):
        with self._lock:
            if self._producer is None:
                self._producer = make_producer(self.settings)
            return self._producer

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.flush(self.ack_timeout_s)
                self._producer = None
