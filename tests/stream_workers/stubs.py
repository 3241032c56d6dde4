"""In-memory stand-ins for the worker's runtime, for fast unit tests of one step (no broker).

In the manner of Bytewax's ``TestingSource``/``TestingSink``: messages are built from plain
values, the consumer records what the checkpoint asks of it (commits, seeks, pauses), the
producer keeps what it was given, and a sink can be told to fail on cue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from confluent_kafka import TopicPartition

from inference.runtime import BatchPrediction
from schemas import CategoryScore, Prediction, SourcePosition
from stream_workers.batch import BatchOutcome
from stream_workers.sinks import SinkRejected, SinkUnavailable

TOPIC = "products.v1.test"


@dataclass
class StubMessage:
    """What confluent-kafka's ``Message`` offers the worker."""

    _value: bytes | None
    _partition: int = 0
    _offset: int = 0
    _key: bytes | None = None
    _topic: str = TOPIC

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def error(self):
        return None


def messages(values: list[bytes], partition: int = 0, first_offset: int = 0) -> list[StubMessage]:
    return [StubMessage(v, partition, first_offset + i, str(first_offset + i).encode()) for i, v in enumerate(values)]


@dataclass
class StubConsumer:
    """Records the checkpoint's calls; ``committed`` is the offset per partition, as a group would hold it."""

    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    seeks: list[tuple[str, int, int]] = field(default_factory=list)
    paused: set[tuple[str, int]] = field(default_factory=set)
    resumed: list[tuple[str, int]] = field(default_factory=list)

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        for tp in offsets:
            self.committed[(tp.topic, tp.partition)] = tp.offset

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def position_of(self, partition: int, topic: str = TOPIC) -> int | None:
        """Where the last seek left a partition (None: never rewound)."""
        found = [o for t, p, o in self.seeks if (t, p) == (topic, partition)]
        return found[-1] if found else None

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.paused.discard((tp.topic, tp.partition))
            self.resumed.append((tp.topic, tp.partition))

    def consumer_group_metadata(self) -> str:
        return "group-metadata"


@dataclass
class StubProducer:
    """Keeps every record; ``fail_flush`` makes the next flushes leave records undelivered."""

    records: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)
    fail_flush: int = 0
    _callbacks: list = field(default_factory=list)

    def produce(self, topic: str, value: bytes, key: bytes | None = None, headers=None, on_delivery=None) -> None:
        self.records.append((topic, key, value))
        self._callbacks.append((on_delivery, value))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        callbacks, self._callbacks = self._callbacks, []
        if self.fail_flush:
            self.fail_flush -= 1
            return len(callbacks)
        for callback, value in callbacks:
            if callback is not None:
                callback(None, StubMessage(value))
        return 0

    def topic(self, name: str) -> list[bytes]:
        return [v for t, _, v in self.records if t == name]


class FlakySink:
    """The sinks of a ResultWriter, in memory: rows by (productid, model_version), Kafka records.

    ``down`` failed writes raise SinkUnavailable first; a prediction whose productid is in
    ``poison`` makes any database write that contains it raise SinkRejected."""

    def __init__(self, down: int = 0, poison: set[int] | None = None) -> None:
        self.producer = StubProducer()
        self.rows: dict[tuple[int, str], Prediction] = {}
        self.down = down
        self.poison = poison or set()
        self.database_calls = 0
        self.predictions_topic, self.dead_letter_topic = "predictions", "dlq"

    def write_database(self, outcome: BatchOutcome) -> None:
        self.database_calls += 1
        if self.down:
            self.down -= 1
            raise SinkUnavailable("connection refused", sink="database")
        bad = [p.productid for p in outcome.predictions if p.productid in self.poison]
        if bad:
            raise SinkRejected(f"bigint out of range: {bad}")
        for p in outcome.predictions:
            self.rows[(p.productid, p.model_version)] = p

    def write_topics(self, outcome: BatchOutcome) -> None:
        for p in outcome.predictions:
            self.producer.produce(self.predictions_topic, p.to_bytes(), key=str(p.productid).encode())
        for letter in outcome.dead_letters:
            self.producer.produce(self.dead_letter_topic, letter.to_bytes())
        self.producer.flush()


class StubProcessor:
    """A BatchProcessor that predicts category 10 for every message whose value is a productid;
    ``explode`` holds values that make it raise (a bug one message triggers)."""

    def __init__(self, explode: set[bytes] | None = None) -> None:
        self.explode = explode or set()
        self.calls = 0

    def process(self, batch: list) -> BatchOutcome:
        self.calls += 1
        if any(m.value() in self.explode for m in batch):
            raise ValueError("a message this processor chokes on")
        return BatchOutcome(predictions=[prediction_for(m) for m in batch])


def prediction_for(message) -> Prediction:
    return Prediction(
        productid=int(message.value()), prdtypecode=10, category="livres", confidence=0.9,
        top_k=[CategoryScore(prdtypecode=10, category="livres", probability=0.9)], modalities=["text"],
        contributions={"text": 1.0}, model_version="stub",
        source=SourcePosition(topic=message.topic(), partition=message.partition(), offset=message.offset()),
        content_hash="h", cached=False, predicted_at=datetime.now(UTC),
    )


class StubRuntime:
    """A ModelRuntime with two classes that answers class 0 for titles with 'livre', else class 1."""

    version = "stub-runtime"
    provider = "CPUExecutionProvider"
    has_image_model = False
    CLASSES = [(10, "livres"), (2583, "piscine")]

    def __init__(self) -> None:
        self.batches: list[int] = []

    def category(self, index: int) -> tuple[int, str]:
        return self.CLASSES[index]

    def predict(self, texts, images, cascade: bool = True) -> BatchPrediction:
        self.batches.append(len(texts))
        probs = np.array([[0.8, 0.2] if "livre" in t.title.lower() else [0.1, 0.9] for t in texts])
        ones = np.ones(len(texts))
        return BatchPrediction(probs=probs, modality_probs={"tfidf": probs}, present={"tfidf": ones.astype(bool)},
                               contributions={"tfidf": ones})
