"""The publisher puts every listing on the products topic, keyed by productid, with its image as asked."""

from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from producers.json_lines import read_json_lines
from producers.publisher import Publisher, PublishProgress
from producers.rate_limit import RateLimiter
from rakuten_stream.datasets import DatasetError, ListingRecord, load_dataset
from rakuten_stream.kafka import make_consumer
from schemas import ProductListing


def read_topic(settings, topic: str) -> list:
    """Every message of ``topic``, read from the low to the high watermark of each partition."""
    consumer = make_consumer(settings, group_id=f"read-{uuid.uuid4().hex[:8]}")
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends, start = {}, []
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
        if high > low:
            ends[p] = high
            start.append(TopicPartition(topic, p, low))
    consumer.assign(start)
    messages, deadline = [], time.monotonic() + 30
    while ends and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        messages.append(message)
        if message.offset() + 1 >= ends.get(message.partition(), 0):
            ends.pop(message.partition(), None)
    consumer.close()
    assert not ends, f"partitions not read to the end: {ends}"
    return messages


@pytest.fixture(scope="module")
def sample(data_dir: Path) -> list[ListingRecord]:
    """200 real rows of the flat layout: 60 with an image on disk, 140 without."""
    records = load_dataset(data_dir).records
    with_image = [r for r in records if r.image_path is not None][:60]
    without = [r for r in records if r.image_path is None][:140]
    return with_image + without


def test_publishing_200_rows_puts_exactly_200_messages_on_the_topic_with_images_intact(settings, sample):
    with Publisher(settings, images="inline") as publisher:
        summary = publisher.publish(sample)

    assert (summary.sent, summary.failed, summary.errors) == (200, 0, [])
    messages = read_topic(settings, settings.topics.products)
    assert len(messages) == 200
    by_id = {r.productid: r for r in sample}
    received = {}
    for message in messages:
        listing = ProductListing.from_bytes(message.value())
        assert message.key() == str(listing.productid).encode()  # keyed by productid
        received[listing.productid] = listing
    assert received.keys() == by_id.keys()
    for productid, record in by_id.items():
        listing = received[productid]
        assert listing.designation == record.designation
        if record.image_path is None:
            assert listing.image is None
        else:
            assert listing.image.data == record.image_path.read_bytes()  # byte for byte
            assert listing.image.content_type == "image/jpeg"
    assert summary.bytes == sum(len(m.value()) for m in messages)


def test_uri_mode_sends_absolute_file_uris_instead_of_bytes(settings, sample):
    with Publisher(settings, images="uri") as publisher:
        summary = publisher.publish(sample[:5])

    assert summary.sent == 5
    for message in read_topic(settings, settings.topics.products):
        listing = ProductListing.from_bytes(message.value())
        assert listing.image.data is None
        assert listing.image.uri.startswith("file:///")
        record = next(r for r in sample if r.productid == listing.productid)
        assert listing.image.uri == record.image_path.resolve().as_uri()


def test_none_mode_sends_text_only(settings, sample):
    with Publisher(settings, images="none") as publisher:
        publisher.publish(sample[:3])
    assert [ProductListing.from_bytes(m.value()).image for m in read_topic(settings, settings.topics.products)] \
        == [None, None, None]


def test_an_unreadable_image_fails_that_listing_alone_with_its_reason(settings, sample, tmp_path):
    gone = ListingRecord(productid=42, designation="Lampe", imageid=7, image_path=tmp_path / "image_7_product_42.jpg")
    with Publisher(settings) as publisher:
        summary = publisher.publish([sample[0], gone, sample[1]])

    assert (summary.sent, summary.failed) == (2, 1)
    assert "productid 42" in summary.errors[0] and "image_7_product_42.jpg" in summary.errors[0]
    assert len(read_topic(settings, settings.topics.products)) == 2


def test_a_listing_larger_than_the_topic_allows_fails_alone(settings, tmp_path):
    small = settings.with_overrides(topics={"max_message_bytes": 64_000})
    big = tmp_path / "image_1_product_1.jpg"
    big.write_bytes(b"\xff\xd8" + bytes(100_000))
    records = [ListingRecord(productid=1, designation="Grand poster", imageid=1, image_path=big),
               ListingRecord(productid=2, designation="Petit livre")]
    with Publisher(small) as publisher:
        summary = publisher.publish(records)

    assert (summary.sent, summary.failed) == (1, 1)
    assert "productid 1" in summary.errors[0] and "too large" in summary.errors[0].lower()


def test_limit_rate_and_progress(settings, sample):
    seen: list[PublishProgress] = []
    with Publisher(settings, images="none") as publisher:
        started = time.monotonic()
        summary = publisher.publish(sample, limit=20, rate=40, progress=seen.append)
        elapsed = time.monotonic() - started

    assert summary.sent == 20
    # 40 msg/s with a burst of 4: the last 16 messages need at least 0.4 s
    assert 0.35 <= elapsed < 3, elapsed
    assert [p.queued for p in seen[:-1]] == list(range(1, 21))
    assert seen[-1] == PublishProgress(queued=20, delivered=20, failed=0, total=20)


def test_the_rate_limiter_waits_exactly_as_long_as_needed():
    now = [0.0]
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(10, burst=2, clock=lambda: now[0], wait=wait)
    for _ in range(5):
        limiter.acquire()
    assert waits == pytest.approx([0.1, 0.1, 0.1])  # 2 from the burst, then one every 1/10 s
    assert now[0] == pytest.approx(0.3)


def test_product_listings_are_sent_as_they_are(settings):
    listing = ProductListing(productid=77, designation="Coussin", image={"uri": "https://cdn.example/77.jpg"},
                             source={"shop": "demo"})
    with Publisher(settings, images="inline") as publisher:
        assert publisher.publish([listing]).sent == 1
    [message] = read_topic(settings, settings.topics.products)
    assert ProductListing.from_bytes(message.value()) == listing


def test_json_lines_are_read_as_rows_or_as_ready_messages(sample):
    row = sample[0]
    lines = io.StringIO(
        json.dumps({"productid": row.productid, "designation": row.designation, "imageid": row.imageid,
                    "image_path": str(row.image_path)}) + "\n\n"
        + ProductListing(productid=5, designation="Tapis").model_dump_json() + "\n"
    )
    first, second = read_json_lines(lines)
    assert first == ListingRecord(productid=row.productid, designation=row.designation, imageid=row.imageid,
                                  image_path=row.image_path)
    assert isinstance(second, ProductListing) and second.productid == 5

    with pytest.raises(DatasetError, match=r"<stdin>:2: missing field 'designation'"):
        list(read_json_lines(io.StringIO('{"productid": 1, "designation": "ok"}\n{"productid": 2}\n')))


def test_input_that_breaks_half_way_still_flushes_what_was_queued(settings):
    def listings():
        for i in range(1, 6):
            yield ListingRecord(productid=i, designation=f"Article {i}")
        raise DatasetError("<stdin>:6: not JSON")

    with Publisher(settings) as publisher, pytest.raises(DatasetError):
        publisher.publish(listings())
    assert publisher.last_summary.sent == 5
    assert len(read_topic(settings, settings.topics.products)) == 5
