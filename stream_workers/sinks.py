"""Where a batch's results go: PostgreSQL, then the predictions and dead-letter topics.

The order is the checkpoint contract (stream_workers/checkpoint.py): one upsert writes the rows,
then Kafka acknowledges every record of the batch, and only then may the caller commit the
consumer offsets. A sink that fails says whether to wait and retry (:class:`SinkUnavailable`: the
database or the broker is down) or whether the batch itself is at fault (:class:`SinkRejected`:
a value the database refuses), in which case the caller bisects it to find the poison row.
"""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException
from sqlalchemy import Engine
from sqlalchemy import exc as sa

from rakuten_stream.database import session_scope, upsert_statement
from rakuten_stream.kafka import DeliveryTracker, produce_with_backpressure
from schemas.tables import PredictionRow
from stream_workers.batch import BatchOutcome


class SinkError(RuntimeError):
    """A sink did not take the batch: the caller must not commit it. ``sink`` says which one (``kafka`` or
    ``database``), for metrics and readiness."""

    def __init__(self, message: str, sink: str = "kafka") -> None:
        super().__init__(message)
        self.sink = sink


class SinkUnavailable(SinkError):
    """The sink is down or did not answer in time: pause, back off, retry the same batch.
    ``fatal``: the producer cannot go on (librdkafka's fatal error) and must be replaced."""

    def __init__(self, message: str, sink: str = "kafka", fatal: bool = False) -> None:
        super().__init__(message, sink)
        self.fatal = fatal


class SinkRejected(SinkError):
    """The sink refused the batch's content (a data error): retrying it unchanged cannot help."""


#: errors that say "this data", not "this connection": the batch is split to find the culprit
REJECTED_BY_DATABASE = (sa.DataError, sa.IntegrityError)


def database_error(exc: Exception, rows: int) -> SinkError:
    message = f"database upsert of {rows} predictions failed: {exc}"
    if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
        return SinkUnavailable(message, sink="database")
    if isinstance(exc, REJECTED_BY_DATABASE):
        return SinkRejected(message, sink="database")
    if isinstance(exc, sa.StatementError) and not isinstance(exc, sa.DBAPIError):
        return SinkRejected(message, sink="database")  # a value the driver could not even send
    return SinkUnavailable(message, sink="database")


class ResultWriter:
    def __init__(self, producer, engine: Engine, predictions_topic: str, dead_letter_topic: str,
                 flush_timeout_s: float = 30.0, make_producer: Callable[[], object] | None = None) -> None:
        self.producer = producer
        self.make_producer = make_producer  # to replace the producer after a fatal error (None: the caller does)
        self.engine = engine
        self.predictions_topic = predictions_topic
        self.dead_letter_topic = dead_letter_topic
        self.flush_timeout_s = flush_timeout_s
        self._upsert = None  # built at the first batch, then reused: rebuilding it cost 7% of a cheap worker

    def write(self, outcome: BatchOutcome) -> None:
        """Both sinks in the checkpoint order (replay and tests; the worker's checkpoint calls them itself)."""
        self.write_database(outcome)
        self.write_topics(outcome)

    def write_topics(self, outcome: BatchOutcome) -> None:
        try:
            self._produce(outcome)
        except SinkUnavailable as exc:
            if exc.fatal and self.make_producer is not None:
                self.replace_producer()
            raise

    def _produce(self, outcome: BatchOutcome) -> None:
        tracker = DeliveryTracker()
        try:
            for prediction in outcome.predictions:
                produce_with_backpressure(self.producer, self.predictions_topic, prediction.to_bytes(),
                                          key=str(prediction.productid).encode(), on_delivery=tracker)
            for letter, key in zip(outcome.dead_letters, outcome.keys, strict=True):
                produce_with_backpressure(self.producer, self.dead_letter_topic, letter.to_bytes(), key=key,
                                          headers=[("error_class", letter.error_class.encode())], on_delivery=tracker)
            remaining = self.producer.flush(self.flush_timeout_s)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            fatal = isinstance(error, KafkaError) and (error.fatal() or error.code() == KafkaError._FATAL)
            raise SinkUnavailable(f"Kafka refused the batch: {exc}", fatal=fatal) from exc
        expected = len(outcome.predictions) + len(outcome.dead_letters)
        if remaining or tracker.failed or tracker.delivered != expected:
            raise SinkUnavailable(f"Kafka took {tracker.delivered}/{expected} records ({remaining} still queued): "
                                  f"{tracker.errors[:3]}", fatal=tracker.fatal)

    def replace_producer(self) -> None:
        """A new producer after a fatal error; the old one's queued records are dropped (they are redone)."""
        old, self.producer = self.producer, self.make_producer()
        try:
            old.purge()
        except Exception:  # a failed producer may refuse even that
            pass

    def write_database(self, outcome: BatchOutcome) -> None:
        # one row per key: a listing published twice in a batch must not hit ON CONFLICT twice
        rows = list({(p.productid, p.model_version): prediction_row(p) for p in outcome.predictions}.values())
        if not rows:
            return
        try:
            with session_scope(self.engine) as session:
                session.execute(self._upsert_statement(rows[0]), rows)
        except Exception as exc:
            raise database_error(exc, len(rows)) from exc

    def _upsert_statement(self, row: dict):
        if self._upsert is None:
            self._upsert = upsert_statement(self.engine.dialect.name, PredictionRow.__table__, CONFLICT_COLUMNS,
                                            [c for c in row if c not in CONFLICT_COLUMNS])
        return self._upsert


CONFLICT_COLUMNS = ("productid", "model_version")


def prediction_row(p) -> dict:
    return {
        "productid": p.productid, "model_version": p.model_version, "prdtypecode": p.prdtypecode,
        "category": p.category, "confidence": p.confidence, "top_k": [s.model_dump() for s in p.top_k],
        "contributions": p.contributions, "modalities": p.modalities,
        "source_topic": p.source.topic if p.source else None,
        "source_partition": p.source.partition if p.source else None,
        "source_offset": p.source.offset if p.source else None,
        "content_hash": p.content_hash, "cached": p.cached, "event_time": p.event_time, "predicted_at": p.predicted_at,
    }
