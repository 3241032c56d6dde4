"""Where a batch's results go: the predictions and dead-letter topics, then PostgreSQL.

The order is the checkpoint contract: Kafka acknowledges every record of the batch, then one
upsert writes the rows, and only then may the caller commit the consumer offsets.
"""

from __future__ import annotations

from sqlalchemy import Engine

from rakuten_stream.database import session_scope, upsert
from rakuten_stream.kafka import DeliveryTracker, produce_with_backpressure
from schemas.tables import PredictionRow
from stream_workers.batch import BatchOutcome


class SinkError(RuntimeError):
    """A sink did not take the batch: the caller must not commit and should retry it."""


class ResultWriter:
    def __init__(self, producer, engine: Engine, predictions_topic: str, dead_letter_topic: str,
                 flush_timeout_s: float = 30.0) -> None:
        self.producer = producer
        self.engine = engine
        self.predictions_topic = predictions_topic
        self.dead_letter_topic = dead_letter_topic
        self.flush_timeout_s = flush_timeout_s

    def write(self, outcome: BatchOutcome) -> None:
        self.write_topics(outcome)
        self.write_database(outcome)

    def write_topics(self, outcome: BatchOutcome) -> None:
        tracker = DeliveryTracker()
        for prediction in outcome.predictions:
            produce_with_backpressure(self.producer, self.predictions_topic, prediction.to_bytes(),
                                      key=str(prediction.productid).encode(), on_delivery=tracker)
        for letter, key in zip(outcome.dead_letters, outcome.keys, strict=True):
            produce_with_backpressure(self.producer, self.dead_letter_topic, letter.to_bytes(), key=key,
                                      headers=[("error_class", letter.error_class.encode())], on_delivery=tracker)
        remaining = self.producer.flush(self.flush_timeout_s)
        expected = len(outcome.predictions) + len(outcome.dead_letters)
        if remaining or tracker.failed or tracker.delivered != expected:
            raise SinkError(f"Kafka took {tracker.delivered}/{expected} records ({remaining} still queued): "
                            f"{tracker.errors[:3]}")

    def write_database(self, outcome: BatchOutcome) -> None:
        # one row per key: a listing published twice in a batch must not hit ON CONFLICT twice
        rows = list({(p.productid, p.model_version): prediction_row(p) for p in outcome.predictions}.values())
        if not rows:
            return
        try:
            with session_scope(self.engine) as session:
                upsert(session, PredictionRow.__table__, rows, ["productid", "model_version"])
        except Exception as exc:
            raise SinkError(f"database upsert of {len(rows)} predictions failed: {exc}") from exc


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
