"""`load-data`: one idempotent load of a dataset into the database, with its snapshot."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from rakuten_stream.database import session_scope, upsert
from rakuten_stream.datasets import Dataset
from rakuten_stream.hashing import sha256_of
from schemas.tables import DatasetSnapshot, Product


@dataclass(frozen=True)
class LoadSummary:
    snapshot_id: str
    rows: int
    images: int
    already_loaded: bool


def record_snapshot(engine: Engine, dataset: Dataset, snapshot_id: str | None = None) -> tuple[str, bool]:
    """Insert the snapshot row unless it exists; returns (id, already there)."""
    snapshot_id = snapshot_id or dataset.content_hash()
    with session_scope(engine) as session:
        if session.get(DatasetSnapshot, snapshot_id) is not None:
            return snapshot_id, True
        counts = Counter(str(r.prdtypecode) for r in dataset.records if r.prdtypecode is not None)
        session.add(DatasetSnapshot(
            snapshot_id=snapshot_id, source_path=str(dataset.path.resolve()), layout=dataset.layout,
            row_count=len(dataset.records), image_count=dataset.with_images, class_counts=dict(sorted(counts.items())),
            files={p.name: sha256_of(p) for p in dataset.files if p.suffix != ".jpg"},
        ))
    return snapshot_id, False


def load_into_database(engine: Engine, dataset: Dataset, advance: Callable[[int], None] | None = None,
                       chunk: int = 1000) -> LoadSummary:
    snapshot_id, existed = record_snapshot(engine, dataset)
    if existed:
        return LoadSummary(snapshot_id, len(dataset.records), dataset.with_images, True)
    records = list({r.productid: r for r in dataset.records}.values())
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        rows = [{"productid": r.productid, "imageid": r.imageid, "designation": r.designation,
                 "description": r.description, "prdtypecode": r.prdtypecode,
                 "image_path": str(r.image_path) if r.image_path else None, "snapshot_id": snapshot_id}
                for r in part]
        with session_scope(engine) as session:
            upsert(session, Product.__table__, rows, ["productid"])
        if advance is not None:
            advance(len(part))
    return LoadSummary(snapshot_id, len(records), dataset.with_images, False)
