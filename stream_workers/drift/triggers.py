"""What makes a window alarm, and the gate that lets one retrain request through.

Triggers of a window (each with its figure and threshold in the drift report):
- ``distribution_drift``: the drift score is above the bootstrap-calibrated threshold;
- ``performance_drop``: the estimated weighted F1 (or the true one, with enough labels) is more than
  ``max_f1_drop`` below the reference's, or below ``min_f1``;
- ``label_backlog``: ``label_backlog`` new labels since the last request (retrain on what came in).

The gate: a cooldown per model version held in Redis, ``SET key request_id NX EX cooldown``. The
first consumer to set it publishes; every other consumer of the group (or a later episode inside the
cooldown) finds the key taken by another request and stays quiet. The same request retried after a
crash finds its own id and publishes again (the retrain worker deduplicates by request id).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from rakuten_stream.settings import DriftSettings

log = logging.getLogger(__name__)
DISTRIBUTION_DRIFT = "distribution_drift"
PERFORMANCE_DROP = "performance_drop"
LABEL_BACKLOG = "label_backlog"


@dataclass(frozen=True)
class WindowJudgement:
    drift_score: float | None
    threshold: float | None
    estimated_f1: float | None
    true_f1: float | None
    n_labels: int
    reference_f1: float | None


def fired(j: WindowJudgement, settings: DriftSettings) -> list[str]:
    """The drift triggers a window fires (the label backlog is counted apart)."""
    out = []
    if j.drift_score is not None and j.threshold is not None and j.drift_score > j.threshold:
        out.append(DISTRIBUTION_DRIFT)
    floors = []
    if j.reference_f1 is not None:
        floors.append(j.reference_f1 - settings.max_f1_drop)
    if settings.min_f1 is not None:
        floors.append(settings.min_f1)
    if floors:
        floor = max(floors)
        low_estimate = j.estimated_f1 is not None and j.estimated_f1 < floor
        low_truth = j.true_f1 is not None and j.n_labels >= settings.min_true_f1_labels and j.true_f1 < floor
        if low_estimate or low_truth:
            out.append(PERFORMANCE_DROP)
    return out


def request_id_for(episode_id: str) -> str:
    """One request id per episode, the same after a crash and a reprocessed window."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"rakuten-stream/retrain/{episode_id}"))


class RetrainGate:
    """Redis cooldown + lock: ``acquire`` is True for exactly one request per model version per cooldown."""

    def __init__(self, redis_client, cooldown_seconds: int, prefix: str = "rakuten:drift:retrain") -> None:
        self.redis = redis_client
        self.cooldown_seconds = cooldown_seconds
        self.prefix = prefix

    def key(self, model_version: str) -> str:
        return f"{self.prefix}:{model_version}"

    def acquire(self, model_version: str, request_id: str) -> bool:
        key = self.key(model_version)
        if self.redis.set(key, request_id, nx=True, ex=self.cooldown_seconds):
            return True
        holder = self.redis.get(key)
        if isinstance(holder, bytes):
            holder = holder.decode()
        return holder == request_id  # our own request, retried after a crash

    def holder(self, model_version: str) -> str | None:
        value = self.redis.get(self.key(model_version))
        return value.decode() if isinstance(value, bytes) else value
