"""The result writer: which failures mean "retry later" and which mean "this batch is at fault".

The database is a real SQLite file (the upsert is the same statement PostgreSQL gets); Kafka is a
stub producer that confirms deliveries, or does not.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

import stream_workers.sinks as sinks
from rakuten_stream.database import make_engine, upgrade
from schemas.tables import PredictionRow
from stream_workers.batch import BatchOutcome
from stream_workers.sinks import ResultWriter, SinkRejected, SinkUnavailable
from tests.stream_workers.stubs import StubMessage, StubProducer, prediction_for


def outcome(*productids: int) -> BatchOutcome:
    return BatchOutcome(predictions=[prediction_for(StubMessage(str(p).encode(), 0, i)) for i, p in
                                     enumerate(productids)])


@pytest.fixture
def writer(sqlite_url) -> ResultWriter:
    upgrade(sqlite_url)
    return ResultWriter(StubProducer(), make_engine(sqlite_url), "predictions", "dlq")


def rows(writer: ResultWriter) -> list[int]:
    with writer.engine.connect() as connection:
        return sorted(r.productid for r in connection.execute(select(PredictionRow)))


def test_a_batch_goes_to_the_database_and_to_kafka_and_a_repeat_writes_no_second_row(writer):
    writer.write(outcome(1, 2, 3))
    writer.write(outcome(2, 3, 4))  # redelivered rows overwrite themselves
    assert rows(writer) == [1, 2, 3, 4]
    assert len(writer.producer.topic("predictions")) == 6


def test_the_same_listing_twice_in_a_batch_is_one_row(writer):
    writer.write(outcome(5, 5, 5))
    assert rows(writer) == [5]


def test_a_database_that_does_not_answer_is_unavailable_not_a_rejection(tmp_path):
    writer = ResultWriter(StubProducer(), make_engine(f"sqlite:///{tmp_path}/missing-dir/db.sqlite"), "p", "d")
    with pytest.raises(SinkUnavailable):
        writer.write_database(outcome(1))


def test_a_value_the_database_refuses_is_a_rejection_of_the_batch(postgres_url):
    upgrade(postgres_url)
    writer = ResultWriter(StubProducer(), make_engine(postgres_url), "p", "d")
    with pytest.raises(SinkRejected, match="out of range"):
        writer.write_database(outcome(2**63))  # a valid listing id that is no PostgreSQL bigint


def test_kafka_that_does_not_confirm_every_record_is_unavailable(writer):
    writer.producer.fail_flush = 1
    with pytest.raises(SinkUnavailable, match="Kafka took 0/2"):
        writer.write_topics(outcome(1, 2))


def test_the_upsert_statement_is_built_once_not_per_batch(sqlite_url, monkeypatch):
    """Rebuilding the multi-row INSERT for every batch cost 7% of a TF-IDF-only worker (issue 13)."""
    built = []
    original = sinks.upsert_statement
    monkeypatch.setattr(sinks, "upsert_statement", lambda *a, **k: built.append(a) or original(*a, **k))
    upgrade(sqlite_url)
    writer = ResultWriter(StubProducer(), make_engine(sqlite_url), "predictions", "dlq")
    for batch in range(3):
        writer.write_database(outcome(*range(batch, batch + 50)))
    assert len(built) == 1
    assert rows(writer) == list(range(52))


def test_a_fatal_producer_error_replaces_the_producer_and_the_batch_is_retried(writer):
    from confluent_kafka import KafkaError, KafkaException

    class FatallyFailed(StubProducer):
        def flush(self, timeout: float = 0) -> int:
            raise KafkaException(KafkaError(KafkaError._FATAL, "sequence desynchronization", fatal=True))

        def purge(self) -> None:
            pass

    fresh = StubProducer()
    writer.producer, writer.make_producer = FatallyFailed(), lambda: fresh
    with pytest.raises(SinkUnavailable) as failure:
        writer.write_topics(outcome(1))
    assert failure.value.fatal and writer.producer is fresh
    writer.write_topics(outcome(1))
    assert len(fresh.topic("predictions")) == 1
