"""Publish product listings to ``products.v1``: the entry point of the stream.

    with Publisher(settings, images="inline") as publisher:
        summary = publisher.publish(load_dataset("data/rakuten").records, rate=200)

- one idempotent producer (``make_producer``), the products topic created when missing;
- each listing keyed by ``productid`` (all events of a product land on one partition, in order);
- images inline (the file's bytes, base64 in the JSON), as absolute ``file://`` URIs, or left out;
- "sent" counts delivery reports, not ``produce`` calls; ``publish`` flushes before it returns,
  even when the input raises half-way, so the tail is never lost;
- ``rate`` paces the stream with a token bucket that waits inside ``producer.poll``.
"""

from __future__ import annotations

import logging
import mimetypes
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from itertools import islice
from types import TracebackType
from typing import Literal, get_args

from confluent_kafka import KafkaError, KafkaException
from pydantic import ValidationError

from producers.rate_limit import RateLimiter
from rakuten_stream.datasets import ListingRecord
from rakuten_stream.kafka import (
    DeliveryTracker,
    ensure_topics,
    make_producer,
    produce_with_backpressure,
    service_topics,
)
from rakuten_stream.settings import Settings
from schemas import ProductImage, ProductListing

log = logging.getLogger(__name__)

ImageMode = Literal["inline", "uri", "none"]
IMAGE_MODES: tuple[str, ...] = get_args(ImageMode)
MAX_ERRORS = 20


class PublishError(ValueError):
    """One listing that cannot be turned into a message (unreadable image, invalid fields)."""


@dataclass
class PublishSummary:
    sent: int = 0
    failed: int = 0
    bytes: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def messages_per_second(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class PublishProgress:
    queued: int  # handed to the producer
    delivered: int  # acknowledged by the broker
    failed: int
    total: int | None  # None when the input has no known length (stdin)


ProgressCallback = Callable[[PublishProgress], object]


def listing_from_record(record: ListingRecord, images: ImageMode = "inline") -> ProductListing:
    """The ``products.v1`` message of a dataset row. The label (``prdtypecode``) is not sent."""
    image = None
    if record.image_path is not None and images != "none":
        content_type = mimetypes.guess_type(record.image_path.name)[0] or "application/octet-stream"
        if images == "inline":
            try:
                data = record.image_path.read_bytes()
            except OSError as exc:
                raise PublishError(f"productid {record.productid}: cannot read image {record.image_path}: "
                                   f"{exc.strerror or exc}") from None
            image = ProductImage(data=data, content_type=content_type)
        else:
            image = ProductImage(uri=record.image_path.resolve().as_uri(), content_type=content_type)
    try:
        return ProductListing(productid=record.productid, imageid=record.imageid, designation=record.designation,
                              description=record.description, image=image)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        raise PublishError(f"productid {record.productid}: {problems}") from None


def _reason(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)


class Publisher:
    """Context manager around one idempotent producer writing to the products topic."""

    def __init__(self, settings: Settings, images: ImageMode = "inline", *, flush_timeout_s: float = 60.0,
                 create_topic: bool = True, **producer_overrides: object) -> None:
        if images not in IMAGE_MODES:
            raise ValueError(f"images must be one of {', '.join(IMAGE_MODES)}; got {images!r}")
        self.settings = settings
        self.images: ImageMode = images
        self.topic = settings.topics.products
        self.flush_timeout_s = flush_timeout_s
        if create_topic:
            ensure_topics(settings, [s for s in service_topics(settings) if s.name == self.topic])
        self._producer = make_producer(settings, **producer_overrides)
        self._closed = False
        self.last_summary: PublishSummary | None = None

    def publish(self, records: Iterable[ListingRecord] | Iterable[ProductListing], limit: int | None = None,
                rate: float | None = None, progress: ProgressCallback | None = None) -> PublishSummary:
        """Send ``records`` (at most ``limit``, at most ``rate`` per second) and wait for their acks.

        A listing that cannot be sent (unreadable image, larger than the topic allows) counts as
        failed with its reason in ``errors``; the others go on. If the input itself raises
        (a malformed line), what was queued is flushed first, ``last_summary`` holds the counts,
        and the exception propagates.
        """
        if self._closed:
            raise RuntimeError("this Publisher is closed")
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        total = len(records) if isinstance(records, Sized) else None
        if total is not None and limit is not None:
            total = min(total, limit)

        tracker = DeliveryTracker()
        limiter = RateLimiter(rate, wait=self._producer.poll) if rate else None
        local_errors: list[str] = []
        queued = 0
        summary = self.last_summary = PublishSummary()
        start = time.perf_counter()

        def refused(reason: str) -> None:
            summary.failed += 1
            if len(local_errors) < MAX_ERRORS:
                local_errors.append(reason)

        try:
            for record in islice(records, limit):
                if limiter is not None:
                    limiter.acquire()
                try:
                    listing = record if isinstance(record, ProductListing) else listing_from_record(record, self.images)
                    value = listing.to_bytes()
                    produce_with_backpressure(self._producer, self.topic, value, key=listing.key, on_delivery=tracker)
                except PublishError as exc:
                    refused(str(exc))
                    continue
                except KafkaException as exc:  # refused before it left, e.g. MSG_SIZE_TOO_LARGE
                    refused(f"productid {listing.productid}: {_reason(exc)}")
                    continue
                queued += 1
                if progress is not None:
                    progress(PublishProgress(queued, tracker.delivered, tracker.failed + summary.failed, total))
        finally:
            remaining = self._producer.flush(self.flush_timeout_s)
            summary.seconds = time.perf_counter() - start
            summary.sent = tracker.delivered
            summary.bytes = tracker.bytes
            summary.failed += tracker.failed + remaining
            summary.errors = (local_errors + tracker.errors)[:MAX_ERRORS]
            if remaining:
                summary.errors.append(f"{remaining} message(s) not acknowledged within {self.flush_timeout_s:.0f}s")
            if progress is not None:
                progress(PublishProgress(queued, tracker.delivered, summary.failed, total))
        log.debug("published %d listing(s) to %s (%d failed) in %.2fs", summary.sent, self.topic, summary.failed,
                 summary.seconds)
        return summary

    def close(self) -> None:
        """Flush whatever is still queued (nothing is dropped on the way out)."""
        if self._closed:
            return
        self._closed = True
        remaining = self._producer.flush(self.flush_timeout_s)
        if remaining:
            log.error("%d message(s) to %s not acknowledged at close", remaining, self.topic)
        self._producer = None  # librdkafka's threads go with the last reference

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
