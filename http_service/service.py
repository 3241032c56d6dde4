"""What the routes use, opened once per app by its lifespan (see :mod:`http_service.app`)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from http_service.auth import ApiKeys
from http_service.batcher import DynamicBatcher
from http_service.examples import ExampleListings
from http_service.live import PredictionTail, StreamPulse
from http_service.metrics import HttpMetrics
from http_service.predictor import Predictor
from http_service.publishing import TopicWriter
from rakuten_stream.settings import Settings


@dataclass
class Service:
    settings: Settings
    engine: Engine
    metrics: HttpMetrics
    keys: ApiKeys
    predictor: Predictor
    batcher: DynamicBatcher
    writer: TopicWriter
    tail: PredictionTail
    pulse: StreamPulse
    examples: ExampleListings
    admin: object  # confluent_kafka AdminClient, for /readyz
