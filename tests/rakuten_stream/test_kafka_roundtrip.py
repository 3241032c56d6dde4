"""A product event goes through a real topic on the embedded broker and validates on the way out."""

import time

from rakuten_stream.kafka import ensure_topics, make_consumer, make_producer, service_topics
from schemas import ProductListing


def test_service_topics_are_created_once(settings):
    created = ensure_topics(settings)
    assert set(created) == {t.name for t in service_topics(settings)}
    assert ensure_topics(settings) == []


def test_a_product_event_round_trips_through_a_topic(settings):
    ensure_topics(settings)
    sent = ProductListing(productid=123, designation="Figurine Goku 18cm", description="PVC",
                          image={"data": b"\xff\xd8\xff binary"})
    producer = make_producer(settings)
    producer.produce(settings.topics.products, key=sent.key, value=sent.to_bytes())
    assert producer.flush(10) == 0

    consumer = make_consumer(settings, group_id=settings.worker.group_id + "-roundtrip")
    consumer.subscribe([settings.topics.products])
    deadline, message = time.monotonic() + 20, None
    while message is None and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error():
            message = None
    consumer.close()
    assert message is not None, "nothing arrived"
    assert message.key() == b"123"
    assert ProductListing.from_bytes(message.value()) == sent
