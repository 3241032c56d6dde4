"""The checkpoint in memory: database -> Kafka -> offsets, and what happens when a sink fails.

A stub consumer records commits, seeks and pauses; a flaky sink fails on cue. No broker.
"""

from __future__ import annotations

import time

import pytest

from rakuten_stream.metrics import PrometheusObserver
from schemas import DeadLetter
from stream_workers.checkpoint import Batch, Checkpoint, earliest_offsets, next_offsets
from stream_workers.retry import Backoff
from tests.stream_workers.stubs import TOPIC, FlakySink, StubConsumer, StubProcessor, messages


def ids(start: int, n: int) -> list[bytes]:
    return [str(i).encode() for i in range(start, start + n)]


def checkpoint(sink: FlakySink, consumer: StubConsumer, processor: StubProcessor | None = None,
               pipelined: bool = True) -> Checkpoint:
    # no pause between attempts: the tests call tick() themselves
    return Checkpoint(consumer, processor or StubProcessor(), sink, PrometheusObserver(), Backoff(0.0, 0.0),
                      pipelined=pipelined, worker_id="test")


def test_a_stored_batch_is_in_the_database_then_on_kafka_then_committed():
    sink, consumer = FlakySink(), StubConsumer()
    cp = checkpoint(sink, consumer, pipelined=False)
    assert cp.submit(messages(ids(1, 3), partition=0) + messages(ids(101, 2), partition=1))
    assert {pid for pid, _ in sink.rows} == {1, 2, 3, 101, 102}
    assert len(sink.producer.topic("predictions")) == 5
    assert consumer.committed == {(TOPIC, 0): 3, (TOPIC, 1): 2}
    assert cp.health.healthy


def test_a_failed_database_write_commits_nothing_and_the_batch_is_redelivered():
    sink, consumer = FlakySink(down=1), StubConsumer()
    cp = checkpoint(sink, consumer, pipelined=False)
    batch = messages(ids(1, 4), first_offset=10)
    assert not cp.submit(batch)
    assert consumer.committed == {}
    assert sink.producer.records == [], "nothing reaches Kafka before the database has the rows"
    assert consumer.paused == {(TOPIC, 0)} and consumer.position_of(0) == 10
    assert not cp.health.healthy and cp.health.paused == frozenset({(TOPIC, 0)})

    cp.tick()  # backoff over: resumed from the first offset of the batch
    assert consumer.paused == set() and consumer.position_of(0) == 10
    assert cp.submit(batch)  # the redelivered batch
    assert consumer.committed == {(TOPIC, 0): 14}
    assert cp.health.healthy and cp.health.retries == 1


def test_a_failed_write_rewinds_to_the_earliest_offset_of_every_batch_in_flight():
    """Defect 1: batch k fails while k+1 (same partition) is processed; the old cycle rewound to
    k, then to k+1, and the later seek won: k was skipped. Now the earliest offset wins."""
    sink, consumer = FlakySink(), StubConsumer()
    cp = checkpoint(sink, consumer)
    first = messages(ids(1, 5), first_offset=0) + messages(ids(101, 3), partition=1, first_offset=0)
    assert cp.submit(first)
    cp._pending[0].result()  # noqa: SLF001 - let batch k's write finish (stored)
    k = messages(ids(6, 5), first_offset=5) + messages(ids(104, 3), partition=1, first_offset=3)
    sink.down = 1
    assert cp.submit(k)  # k goes to the writer and fails there
    k_plus_1 = messages(ids(11, 5), first_offset=10)  # partition 0 only
    assert not cp.submit(k_plus_1)
    assert consumer.position_of(0) == 5, "partition 0 resumes at batch k, not at k+1"
    assert consumer.position_of(1) == 3
    assert consumer.committed == {(TOPIC, 0): 5, (TOPIC, 1): 3}, "only the first batch is committed"
    assert consumer.paused == {(TOPIC, 0), (TOPIC, 1)}

    cp.tick()
    assert cp.submit(k) and cp.submit(k_plus_1) and cp.drain()
    assert consumer.committed == {(TOPIC, 0): 15, (TOPIC, 1): 6}
    assert {pid for pid, _ in sink.rows} == {*range(1, 16), *range(101, 107)}


def test_earliest_offsets_are_taken_over_all_batches_in_flight():
    a = Batch(messages(ids(1, 3), first_offset=7) + messages(ids(9, 1), partition=2, first_offset=40), None, 0)
    b = Batch(messages(ids(4, 3), first_offset=10) + messages(ids(9, 1), partition=1, first_offset=3), None, 0)
    assert earliest_offsets([b, a]) == {(TOPIC, 0): 7, (TOPIC, 1): 3, (TOPIC, 2): 40}
    assert [(tp.partition, tp.offset) for tp in next_offsets(a.messages + b.messages)] == [(0, 13), (1, 4), (2, 41)]


def test_partitions_stay_paused_until_the_backoff_is_over():
    sink, consumer = FlakySink(down=1), StubConsumer()
    cp = Checkpoint(consumer, StubProcessor(), sink, PrometheusObserver(), Backoff(60.0, 60.0, jitter=0),
                    pipelined=False)
    assert not cp.submit(messages(ids(1, 2)))
    cp.tick()
    assert consumer.paused == {(TOPIC, 0)}, "a minute's backoff: not resumed at once"
    assert cp.health.retry_at > time.monotonic() + 30
    cp.health.retry_at = time.monotonic() - 1
    cp.tick()
    assert consumer.paused == set()


def test_revoked_partitions_are_not_resumed():
    from confluent_kafka import TopicPartition

    sink, consumer = FlakySink(down=1), StubConsumer()
    cp = checkpoint(sink, consumer, pipelined=False)
    assert not cp.submit(messages(ids(1, 2)) + messages(ids(50, 2), partition=1))
    cp.forget([TopicPartition(TOPIC, 1)])  # in on_revoke/on_lost: resumed as it goes (a pause outlives assignments)
    assert consumer.resumed == [(TOPIC, 1)]
    cp.tick()
    assert consumer.resumed == [(TOPIC, 1), (TOPIC, 0)], "the retry resumes (and seeks) only what is still ours"


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_row_the_database_rejects_is_found_by_bisection_and_dead_lettered(pipelined):
    sink, consumer = FlakySink(poison={7}), StubConsumer()
    cp = checkpoint(sink, consumer, pipelined=pipelined)
    assert cp.submit(messages(ids(1, 16))) and cp.drain()
    assert {pid for pid, _ in sink.rows} == set(range(1, 17)) - {7}
    [letter] = [DeadLetter.from_bytes(v) for v in sink.producer.topic("dlq")]
    assert (letter.error_class, letter.original, letter.offset) == ("sink_rejected", b"7", 6)
    assert "bigint out of range" in letter.error_message
    assert len(sink.producer.topic("predictions")) == 15
    assert consumer.committed == {(TOPIC, 0): 16}
    assert sink.database_calls <= 1 + 2 * 4, "a bisection: about 2 log2(n) writes, not n"


def test_a_message_that_makes_processing_raise_is_dead_lettered_and_the_rest_goes_on():
    sink, consumer = FlakySink(), StubConsumer()
    cp = checkpoint(sink, consumer, StubProcessor(explode={b"3", b"12"}), pipelined=False)
    assert cp.submit(messages(ids(1, 16)))
    letters = sorted((DeadLetter.from_bytes(v) for v in sink.producer.topic("dlq")), key=lambda d: d.offset)
    assert [(d.error_class, d.original) for d in letters] == [("processing_error", b"3"), ("processing_error", b"12")]
    assert "ValueError" in letters[0].error_message
    assert {pid for pid, _ in sink.rows} == set(range(1, 17)) - {3, 12}
    assert consumer.committed == {(TOPIC, 0): 16}


def test_a_kafka_flush_that_does_not_confirm_every_record_commits_nothing():
    from stream_workers.sinks import ResultWriter
    from tests.stream_workers.stubs import StubProducer

    producer = StubProducer(fail_flush=1)
    writer = ResultWriter(producer, engine=None, predictions_topic="predictions", dead_letter_topic="dlq")
    writer.write_database = lambda outcome: None  # the database is not the point here
    consumer = StubConsumer()
    cp = Checkpoint(consumer, StubProcessor(), writer, PrometheusObserver(), Backoff(0.0, 0.0), pipelined=False)
    assert not cp.submit(messages(ids(1, 3)))
    assert consumer.committed == {} and "Kafka took 0/3" in cp.health.last_error
    cp.tick()
    assert cp.submit(messages(ids(1, 3)))
    assert consumer.committed == {(TOPIC, 0): 3}


class TransactionalProducer:
    """A stub producer that records its transaction calls; ``fail_commit`` makes the next commits fail."""

    def __init__(self, journal: list, fail_commit: object | None = None) -> None:
        from tests.stream_workers.stubs import StubProducer

        self.journal, self.fail_commit, self._records = journal, fail_commit, StubProducer()

    def init_transactions(self, timeout: float) -> None:
        self.journal.append("init")

    def begin_transaction(self) -> None:
        self.journal.append("begin")

    def produce(self, *args, **kwargs) -> None:
        self._records.produce(*args, **kwargs)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        self.journal.append("flush")
        return self._records.flush()

    def send_offsets_to_transaction(self, offsets, metadata, timeout: float) -> None:
        self.journal.append(("offsets", [(tp.partition, tp.offset) for tp in offsets]))

    def commit_transaction(self, timeout: float) -> None:
        if self.fail_commit is not None:
            error, self.fail_commit = self.fail_commit, None
            from confluent_kafka import KafkaException

            raise KafkaException(error)
        self.journal.append("commit")

    def abort_transaction(self, timeout: float) -> None:
        self.journal.append("abort")


def transactional_checkpoint(journal: list, fail_commit=None):
    from stream_workers.checkpoint import Transactions
    from stream_workers.sinks import ResultWriter

    writer = ResultWriter(TransactionalProducer(journal, fail_commit), None, "predictions", "dlq")
    writer.write_database = lambda outcome: journal.append("database")
    consumer = StubConsumer()
    replacements = []

    def make_producer():
        replacements.append(TransactionalProducer(journal))
        return replacements[-1]

    transactions = Transactions(make_producer, consumer, writer)
    cp = Checkpoint(consumer, StubProcessor(), writer, PrometheusObserver(), Backoff(0.0, 0.0), pipelined=False,
                    transactions=transactions)
    return cp, consumer, replacements


def test_exactly_once_puts_the_records_and_the_offsets_in_one_transaction_after_the_database():
    journal: list = []
    cp, consumer, _ = transactional_checkpoint(journal)
    assert cp.submit(messages(ids(1, 3), first_offset=4))
    assert journal == ["init", "database", "begin", "flush", ("offsets", [(0, 7)]), "commit"]
    assert consumer.committed == {}, "the offsets are committed by the transaction, not by the consumer"


def test_exactly_once_a_failed_transaction_is_aborted_and_the_batch_redone():
    from confluent_kafka import KafkaError

    journal: list = []
    cp, consumer, _ = transactional_checkpoint(journal, fail_commit=KafkaError(KafkaError._TIMED_OUT, "slow"))
    assert not cp.submit(messages(ids(1, 2)))
    assert journal[-1] == "abort" and consumer.position_of(0) == 0
    cp.tick()
    assert cp.submit(messages(ids(1, 2))) and journal[-1] == "commit"


def test_exactly_once_a_fatal_error_replaces_the_producer():
    from confluent_kafka import KafkaError

    journal: list = []
    cp, _, replacements = transactional_checkpoint(
        journal, fail_commit=KafkaError(KafkaError._FENCED, "fenced", fatal=True))
    assert not cp.submit(messages(ids(1, 2)))
    assert len(replacements) == 1 and cp.writer.producer is replacements[0]
    assert journal.count("init") == 2 and "abort" not in journal
    cp.tick()
    assert cp.submit(messages(ids(1, 2))) and journal[-1] == "commit"
