"""The workers' inference path, behind the HTTP service.

A request's listings are handed to the very :class:`stream_workers.batch.BatchProcessor` a
worker runs on a micro-batch of Kafka messages: the same decoding and limits
(``stream_workers.decoding``, ``stream_workers.image_sources``), the same prediction cache, the
same scoring entry point (``inference.scoring``) and the same construction of the
``schemas.Prediction``. So the stream and the API cannot disagree. Each listing travels as a
:class:`RequestMessage`, the few methods of a Kafka message the batch reads; the Kafka position
it gets (``topic="http"``, offset = its place in the batch) only routes the answer back and is
removed from it.

New production versions are heard of through the workers' :class:`ModelWatcher` and swapped in
between batches (``reload_if_promoted`` runs on the batch thread), without a restart.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE
from sqlalchemy import Engine

from inference.runtime import ModelRuntime
from rakuten_stream.cache import PredictionCache
from rakuten_stream.metrics import Observer
from rakuten_stream.settings import Settings
from schemas import Prediction
from stream_workers.batch import BatchProcessor
from stream_workers.model_watcher import ModelWatcher

log = logging.getLogger(__name__)
REQUEST_TOPIC = "http"


@dataclass(frozen=True)
class RequestMessage:
    """One listing of a request, as the worker's batch reads a Kafka message."""

    payload: bytes
    position: int

    def value(self) -> bytes:
        return self.payload

    def key(self) -> bytes | None:
        return None

    def topic(self) -> str:
        return REQUEST_TOPIC

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.position

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_NOT_AVAILABLE, -1

    def error(self) -> None:
        return None


@dataclass(frozen=True)
class Refused:
    """A listing the workers would have dead-lettered, with their reason code and message."""

    reason: str
    error: str


class Predictor:
    def __init__(self, settings: Settings, engine: Engine, metrics: Observer,
                 cache: PredictionCache | None = None, watcher: ModelWatcher | None = None) -> None:
        self.metrics = metrics
        self.watcher = watcher or ModelWatcher(settings, engine)
        runtime = self.watcher.initial()
        self.processor = BatchProcessor(runtime, cache, metrics, settings,
                                        worker_id=f"http-{socket.gethostname()}-{os.getpid()}")
        self._activate(runtime)

    @property
    def runtime(self) -> ModelRuntime:
        return self.processor.runtime

    def run_batch(self, payloads: list[bytes]) -> list[Prediction | Refused]:
        """Predictions (or refusals) for listings given as ``products.v1`` JSON, in their order."""
        outcome = self.processor.process([RequestMessage(p, i) for i, p in enumerate(payloads)])
        answers: dict[int, Prediction | Refused] = {}
        for prediction in outcome.predictions:
            answers[prediction.source.offset] = prediction.model_copy(update={"source": None})
        for letter in outcome.dead_letters:
            answers[letter.offset] = Refused(letter.error_class, letter.error_message)
        self.metrics.predictions_made(len(outcome.predictions), outcome.cache_hits)
        return [answers[i] for i in range(len(payloads))]

    def reload_if_promoted(self) -> str | None:
        """Switch to a newly promoted version, if there is one that the registry knows and that loads; its id,
        or None (the version in use keeps serving; the watcher's state reports a failed load)."""
        promoted = self.watcher.reload(self.processor.runtime.version)
        if promoted is None:
            return None
        self.processor.runtime = promoted
        self._activate(promoted)
        log.info("switched to model version %s", promoted.version)
        return promoted.version

    def _activate(self, runtime: ModelRuntime) -> None:
        self.metrics.model_switched(runtime.version, runtime.provider)

    def close(self) -> None:
        self.watcher.close()
