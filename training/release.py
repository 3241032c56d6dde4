"""From data to a served model: train, record the snapshot, register, gate, announce.

What `rakuten-stream train`, the demo and the retrain worker all do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress
from sqlalchemy import Engine

from inference import registry
from inference.artifacts import read_manifest
from rakuten_stream.datasets import load_dataset
from rakuten_stream.kafka import ensure_topics
from rakuten_stream.settings import Settings
from training.data_loading import load_into_database
from training.labeled_data import LabeledData, record_labeled_snapshot
from training.pipeline import PreviousSplit, TrainConfig, TrainResult, train
from training.quality_gate import decide

log = logging.getLogger(__name__)


@dataclass
class Release:
    result: TrainResult
    decision: dict
    announced: bool

    @property
    def promoted(self) -> bool:
        return bool(self.decision.get("promoted"))


def train_and_release(settings: Settings, engine: Engine, config: TrainConfig, promote: bool = True,
                      progress: Progress | None = None, labeled: LabeledData | None = None,
                      min_improvement: float = 0.0,
                      on_registered: Callable[[TrainResult], None] | None = None) -> Release:
    """Train on ``config.data`` (a folder, then loaded into the database, so that retraining starts from it)
    or on ``labeled`` (the database's labeled rows), record the snapshot, register with the training rows,
    gate and announce."""
    if labeled is not None:
        result = train(config, progress, dataset=labeled.dataset, snapshot_id=labeled.snapshot_id,
                       previous=production_split(engine), category_names=production_category_names(engine))
        record_labeled_snapshot(engine, labeled)
    else:
        result = train(config, progress)
        load_into_database(engine, load_dataset(config.data, limit=config.limit))  # idempotent, with the snapshot
    registry.register(engine, read_manifest(result.artifact_dir), result.artifact_dir, result.snapshot_id,
                      training_rows=result.train_productids, held_out_rows=result.held_out_productids)
    if on_registered is not None:
        on_registered(result)
    decision: dict = {}
    announced = False
    if promote:
        task = progress.add_task("quality gate: candidate and production on the held-out rows", total=1) \
            if progress is not None else None
        started = time.monotonic()
        decision = decide(engine, result.version, result.test_records, min_improvement,
                          labeled.labeled_productids if labeled is not None else ())
        if task is not None:
            progress.update(task, completed=1,
                            description=f"[green]✓[/] quality gate ({time.monotonic() - started:.0f}s)")
        if decision["promoted"]:
            announced = announce_quietly(settings, engine, result.version)
    return Release(result, decision, announced)


def production_split(engine: Engine) -> PreviousSplit | None:
    """The production version's train / held-out rows, when it recorded them."""
    row = registry.production(engine)
    if row is None or row.training_rows is None or row.held_out_rows is None:
        return None
    return PreviousSplit(frozenset(row.training_rows), frozenset(row.held_out_rows))


def production_category_names(engine: Engine) -> dict[int, str]:
    """The production version's category names (a retrain on the database keeps them)."""
    row = registry.production(engine)
    if row is None:
        return {}
    try:
        return dict(read_manifest(Path(row.artifact_dir)).category_names)
    except Exception as exc:  # an unreadable production version: the built-in names
        log.warning("category names of %s not read (%s): the built-in names are used", row.version, exc)
        return {}


def announce_quietly(settings: Settings, engine: Engine, version: str) -> bool:
    """Tell running workers; without Kafka they pick the version up at their next start."""
    try:
        ensure_topics(settings, timeout_s=5)
        registry.announce(settings, registry.get_version(engine, version))
        return True
    except Exception as exc:
        log.warning("could not announce %s on Kafka (%s): running workers will pick it up at their next start",
                    version, exc)
        return False
