"""Thin factories over confluent-kafka: every client of the service is made here.

The settings decide where Kafka is and how to authenticate; these functions decide how the
service uses it (idempotent producers, manual commits, the topics it needs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from rakuten_stream.settings import Settings

log = logging.getLogger(__name__)
#: librdkafka's own log, through Python logging (confluent-kafka's `logger` setting) instead of raw
#: `%3|FAIL|...` lines on stderr; the CLI shows it from WARNING up
LIBRDKAFKA_LOG = logging.getLogger("librdkafka")


def client_config(settings: Settings) -> dict[str, object]:
    """The settings' librdkafka configuration, logging through :data:`LIBRDKAFKA_LOG`."""
    return settings.kafka_config() | {"logger": LIBRDKAFKA_LOG}


def make_producer(settings: Settings, **overrides: object) -> Producer:
    """Idempotent producer, acks=all: a retried send is never written twice."""
    config: dict[str, object] = client_config(settings) | {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.max.bytes": settings.topics.max_message_bytes,
    }
    config.update(overrides)
    return Producer(config)


def make_consumer(settings: Settings, group_id: str, **overrides: object) -> Consumer:
    """Consumer with manual commits: offsets move only when the caller says its sinks have the data."""
    config: dict[str, object] = client_config(settings) | {
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "max.poll.interval.ms": settings.worker.max_poll_interval_ms,
        "session.timeout.ms": settings.worker.session_timeout_ms,
        "fetch.max.bytes": max(52_428_800, settings.topics.max_message_bytes),
        "max.partition.fetch.bytes": settings.topics.max_message_bytes,
    }
    config.update(overrides)
    return Consumer(config)


def make_admin(settings: Settings) -> AdminClient:
    return AdminClient(client_config(settings))


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def service_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic the service reads or writes, with its partitioning and retention."""
    p = settings.topics.partitions
    big = {"max.message.bytes": str(settings.topics.max_message_bytes)}
    return [
        TopicSpec(settings.topics.products, p, big),
        TopicSpec(settings.topics.predictions, p, {}),
        TopicSpec(settings.topics.labels, p, {}),
        TopicSpec(settings.topics.dead_letters, p, big),
        # the latest promoted version per key is all that matters: compact it
        TopicSpec(settings.topics.model_updates, 1, {"cleanup.policy": "compact"}),
        TopicSpec(settings.topics.retrain_requests, 1, {}),
        TopicSpec(settings.topics.drift_reports, 1, {}),
    ]


def ensure_topics(settings: Settings, specs: Iterable[TopicSpec] | None = None, timeout_s: float = 15.0) -> list[str]:
    """Create the missing topics; returns the names created. Existing topics are left alone."""
    admin = make_admin(settings)
    specs = list(specs if specs is not None else service_topics(settings))
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=settings.topics.replication_factor,
                 config=s.config)
        for s in specs if s.name not in existing
    ]
    if not missing:
        return []
    created = []
    for name, future in admin.create_topics(missing, request_timeout=timeout_s).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):  # another process won the race: fine
                raise
    log.info("created topics %s", created)
    return created


class DeliveryTracker:
    """Counts delivery reports of a producer: the only honest 'sent' figure."""

    def __init__(self) -> None:
        self.delivered = 0
        self.failed = 0
        self.bytes = 0
        self.errors: list[str] = []
        self.fatal = False  # a fatal producer error (e.g. idempotence state lost by a broker): replace the producer

    def __call__(self, err, msg) -> None:  # confluent-kafka on_delivery signature
        if err is not None:
            self.failed += 1
            self.fatal = self.fatal or err.fatal() or err.code() == KafkaError._FATAL
            if len(self.errors) < 20:
                self.errors.append(str(err))
        else:
            self.delivered += 1
            self.bytes += len(msg.value() or b"")


def produce_with_backpressure(producer: Producer, topic: str, value: bytes, key: bytes | None = None,
                              headers: list[tuple[str, bytes]] | None = None, on_delivery=None) -> None:
    """``produce`` that serves delivery callbacks and waits when the local queue is full."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
            producer.poll(0)
            return
        except BufferError:
            producer.poll(0.1)
