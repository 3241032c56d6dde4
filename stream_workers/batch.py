"""One micro-batch from raw messages to predictions and dead letters (no I/O to the sinks).

Batched end to end: one decode pass, one cache MGET, one model call per modality, one cache
write. Used by the worker and by replay alike.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from inference.runtime import ModelRuntime
from inference.scoring import ScoredListing, score_batch
from rakuten_stream.cache import PredictionCache
from rakuten_stream.metrics import Observer
from rakuten_stream.settings import Settings
from schemas import DeadLetter, Prediction, SourcePosition
from stream_workers.decoding import DecodedListing, Rejected, decode_batch
from stream_workers.image_sources import ImagePolicy


@dataclass
class BatchOutcome:
    predictions: list[Prediction] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)  # key of each dead letter's original
    cache_hits: int = 0
    image_outcomes: Counter[str] = field(default_factory=Counter)  # images by reference: ok, refused, timeout, ...


class BatchProcessor:
    def __init__(self, runtime: ModelRuntime, cache: PredictionCache | None, observer: Observer,
                 settings: Settings, worker_id: str) -> None:
        self.runtime = runtime
        self.cache = cache
        self.observer = observer
        self.settings = settings
        self.images = ImagePolicy.from_settings(settings.images)
        self.limits = settings.limits.listing_limits()
        self.worker_id = worker_id

    def process(self, messages: list) -> BatchOutcome:
        runtime = self.runtime  # one version per batch, even if a reload happens meanwhile
        observe = self.observer
        start = time.perf_counter()
        decoded, rejected = decode_batch(messages, self.images, want_images=runtime.has_image_model,
                                         limits=self.limits)
        observe.stage_timed("decode", time.perf_counter() - start)
        outcome = BatchOutcome(image_outcomes=Counter(d.image_outcome for d in decoded if d.image_outcome))
        for image_outcome, count in outcome.image_outcomes.items():
            observe.image_fetched(image_outcome, count)
        for r in rejected:
            outcome.dead_letters.append(self._dead_letter(r))
            outcome.keys.append(r.message.key())
            observe.dead_letter(r.reason)

        cached = self._cache_lookup(runtime, decoded)
        misses = [d for d, hit in zip(decoded, cached, strict=True) if hit is None]
        now = datetime.now(UTC)
        fresh: dict[str, bytes] = {}
        if misses:
            start = time.perf_counter()
            scored = score_batch(runtime, [d.text for d in misses], [d.image for d in misses],
                                 self.settings.inference.top_k)
            observe.stage_timed("infer", time.perf_counter() - start)
            for modality, seconds in scored.prediction.seconds.items():
                observe.inference_timed(modality, seconds)
            for item, listing in zip(misses, scored.listings, strict=True):
                if self.cache is not None and self.cache.available:
                    fresh[item.content_hash] = listing.model_dump_json().encode()
                outcome.predictions.append(self._prediction(item, listing, runtime.version, now, cached=False))
        for item, hit in zip(decoded, cached, strict=True):
            if hit is not None:
                listing = ScoredListing.model_validate_json(hit)
                outcome.predictions.append(self._prediction(item, listing, runtime.version, now, cached=True))
                outcome.cache_hits += 1
        if self.cache is not None and fresh:
            self.cache.put_many(runtime.version, fresh)
        return outcome

    def _cache_lookup(self, runtime: ModelRuntime, decoded: list[DecodedListing]) -> list[bytes | None]:
        if self.cache is None:
            return [None] * len(decoded)
        return self.cache.get_many(runtime.version, [d.content_hash for d in decoded])

    @staticmethod
    def _prediction(item: DecodedListing, scored: ScoredListing, version: str, now: datetime, cached: bool
                    ) -> Prediction:
        message = item.message
        return Prediction(
            productid=item.listing.productid, **scored.model_dump(), model_version=version,
            source=SourcePosition(topic=message.topic(), partition=message.partition(), offset=message.offset()),
            content_hash=item.content_hash, cached=cached, event_time=item.listing.event_time, predicted_at=now,
            image_note=item.image_note,
        )

    def _dead_letter(self, rejected: Rejected) -> DeadLetter:
        message = rejected.message
        return DeadLetter(
            original=message.value() or b"", original_key=message.key(), topic=message.topic(),
            partition=message.partition(), offset=message.offset(), error_class=rejected.reason,
            error_message=rejected.error, worker_id=self.worker_id,
        )
