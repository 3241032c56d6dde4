"""The labeled data a retrain trains on: the loaded dataset plus every label the stream brought.

Where the rows come from:

- ``products``: the dataset loaded once (``load-data``, or ``train --data``), with its labels;
- ``labels``: the latest label of each product received on ``labels.v1`` (it overrides the dataset's);
- ``stream_listings``: the listings seen on ``products.v1``, so that a label finds the text it labels.

:func:`sync_labeled_data` copies both topics into those tables, each with a consumer group of its
own (``RAKUTEN_RETRAIN_SYNC_GROUP_ID``-labels / -listings) from its committed offsets up to the high
watermarks of when it started, in batches: one upsert on ``productid`` per batch, then the batch's
offsets are committed. A crash between the two replays the batch into the same rows (idempotent).
Every listing is kept, not only those labeled so far: a label may come long after its listing, by
which time the topic's retention may have dropped it. Only the text and a by-reference image URI are
kept; inline image bytes are not (such a row trains its text).

:func:`labeled_dataset` joins them into one :class:`~rakuten_stream.datasets.Dataset` and
:func:`record_labeled_snapshot` records it as a dataset snapshot whose id is the sha256 of its rows.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

from confluent_kafka import OFFSET_INVALID, Consumer, Message, TopicPartition
from sqlalchemy import Engine, select

from rakuten_stream.database import session_scope, upsert
from rakuten_stream.datasets import Dataset, ListingRecord
from rakuten_stream.kafka import make_consumer
from rakuten_stream.settings import Settings
from schemas import Label, MessageError, ProductListing
from schemas.tables import DatasetSnapshot, LabelRow, Product, StreamListing

log = logging.getLogger(__name__)

DATABASE_LAYOUT = "database"


@dataclass
class TopicCopy:
    topic: str
    group_id: str
    read: int = 0  # messages read
    stored: int = 0  # rows upserted (after de-duplication within a batch)
    invalid: int = 0  # messages that are not a valid label or listing (skipped)
    batches: int = 0


@dataclass
class SyncSummary:
    labels: TopicCopy
    listings: TopicCopy
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"labels": vars(self.labels), "listings": vars(self.listings), "seconds": round(self.seconds, 2)}


def sync_labeled_data(settings: Settings, engine: Engine, idle_timeout_s: float = 10.0) -> SyncSummary:
    """Copy the new labels and listings into the database (see the module's docstring)."""
    started = time.monotonic()
    group = settings.retrain.sync_group_id
    batch = settings.retrain.sync_batch_rows
    labels = _copy_topic(settings, engine, TopicCopy(settings.topics.labels, f"{group}-labels"), _label_row,
                         LabelRow, batch, idle_timeout_s)
    listings = _copy_topic(settings, engine, TopicCopy(settings.topics.products, f"{group}-listings"),
                           _listing_row, StreamListing, batch, idle_timeout_s)
    return SyncSummary(labels, listings, time.monotonic() - started)


def _label_row(message: Message) -> dict | None:
    try:
        label = Label.from_bytes(message.value())
    except MessageError:
        return None
    return {"productid": label.productid, "prdtypecode": label.prdtypecode, "source": label.source,
            "event_time": label.event_time, "source_partition": message.partition(),
            "source_offset": message.offset(), "received_at": _now()}


def _listing_row(message: Message) -> dict | None:
    try:
        listing = ProductListing.from_bytes(message.value())
    except MessageError:
        return None  # the workers dead-letter it; there is nothing to train on
    image_uri = listing.image.uri if listing.image is not None else None
    return {"productid": listing.productid, "imageid": listing.imageid, "designation": listing.designation,
            "description": listing.description, "image_uri": image_uri, "event_time": listing.event_time,
            "source_partition": message.partition(), "source_offset": message.offset(), "received_at": _now()}


def _now() -> datetime:
    return datetime.now(UTC)


def _copy_topic(settings: Settings, engine: Engine, copy: TopicCopy, to_row, table, batch_rows: int,
                idle_timeout_s: float) -> TopicCopy:
    consumer = make_consumer(settings, copy.group_id)
    try:
        ends = _assign_from_committed(consumer, copy.topic)
        pending: dict[int, dict] = {}  # productid -> row: the latest in the batch (one upsert touches a row once)
        positions: dict[int, int] = {}
        last_message = time.monotonic()
        while ends:
            messages = consumer.consume(batch_rows, timeout=0.5)
            for message in messages:
                if message.error():
                    continue
                last_message = time.monotonic()
                partition = message.partition()
                if partition not in ends or message.offset() >= ends[partition]:
                    continue  # newer than this copy's snapshot of the topic: the next copy takes it
                copy.read += 1
                row = to_row(message)
                if row is None:
                    copy.invalid += 1
                else:
                    pending[row["productid"]] = row
                positions[partition] = message.offset() + 1
                if positions[partition] >= ends[partition]:
                    ends.pop(partition)
            if ends and not messages:  # offsets without a message (transaction markers, compaction)
                for tp in consumer.position([TopicPartition(copy.topic, p) for p in ends]):
                    if tp.offset >= ends[tp.partition]:
                        positions[tp.partition] = ends.pop(tp.partition)
            if len(pending) >= batch_rows or (positions and not ends):
                _store(engine, consumer, copy, table, pending, positions)
            if ends and time.monotonic() - last_message > idle_timeout_s:
                log.warning("%s: no message for %.0f s below the high watermark of partition(s) %s; "
                            "stopping this copy there", copy.topic, idle_timeout_s, sorted(ends))
                break
        if positions:
            _store(engine, consumer, copy, table, pending, positions)
    finally:
        consumer.close()
    return copy


def _assign_from_committed(consumer: Consumer, topic: str) -> dict[int, int]:
    """Assign every partition with something new at the group's committed offset (the earliest when none);
    returns partition -> the high watermark now (where this copy stops)."""
    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return {}
    partitions = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
    committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10)}
    assignment, ends = [], {}
    for tp in partitions:
        low, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
        start = committed.get(tp.partition, OFFSET_INVALID)
        start = low if start < 0 else max(start, low)
        if start < high:
            assignment.append(TopicPartition(topic, tp.partition, start))
            ends[tp.partition] = high
    if assignment:
        consumer.assign(assignment)
    return ends


def _store(engine: Engine, consumer: Consumer, copy: TopicCopy, table, pending: dict[int, dict],
           positions: dict[int, int]) -> None:
    """One upsert, then the offsets: the order that makes a replayed batch harmless."""
    if pending:
        with session_scope(engine) as session:
            upsert(session, table.__table__, list(pending.values()), ["productid"])
    consumer.commit(offsets=[TopicPartition(copy.topic, p, o) for p, o in positions.items()], asynchronous=False)
    copy.stored += len(pending)
    copy.batches += 1
    pending.clear()
    positions.clear()


# -- the training set ---------------------------------------------------------------------------
@dataclass
class LabeledData:
    dataset: Dataset
    snapshot_id: str
    from_dataset: int  # rows whose label is the loaded dataset's
    from_labels: int  # rows whose label came on labels.v1
    labeled_productids: set[int] = field(default_factory=set)  # those rows
    pending_labels: int = 0  # labels whose listing has not been seen yet (not trainable)

    def summary(self) -> dict:
        return {"snapshot_id": self.snapshot_id, "rows": len(self.dataset.records), "from_dataset": self.from_dataset,
                "from_labels": self.from_labels, "pending_labels": self.pending_labels}


def labeled_dataset(engine: Engine) -> LabeledData:
    """Every labeled listing in the database: the loaded dataset, with the stream's labels over it and
    the stream's labeled listings beside it (a product listed on the stream trains on that text)."""
    with session_scope(engine) as session:
        products = {p.productid: p for p in session.scalars(select(Product))}
        labels = {lab.productid: lab for lab in session.scalars(select(LabelRow))}
        listings = {s.productid: s for s in session.scalars(
            select(StreamListing).where(StreamListing.productid.in_(select(LabelRow.productid))))}
        session.expunge_all()
    records: dict[int, ListingRecord] = {}
    for p in products.values():
        if p.prdtypecode is not None:
            records[p.productid] = ListingRecord(p.productid, p.designation, p.description, p.imageid, p.prdtypecode,
                                                 _existing(Path(p.image_path)) if p.image_path else None)
    labeled, pending = set(), 0
    for productid, label in labels.items():
        listing, product = listings.get(productid), products.get(productid)
        if listing is not None:
            records[productid] = ListingRecord(productid, listing.designation, listing.description, listing.imageid,
                                               label.prdtypecode, _image_path(listing.image_uri))
        elif product is not None:
            records[productid] = ListingRecord(productid, product.designation, product.description, product.imageid,
                                               label.prdtypecode,
                                               _existing(Path(product.image_path)) if product.image_path else None)
        else:
            pending += 1
            continue
        labeled.add(productid)
    rows = [records[k] for k in sorted(records)]
    dataset = Dataset(path=Path(DATABASE_LAYOUT), layout=DATABASE_LAYOUT, records=rows, files=[])
    return LabeledData(dataset, rows_digest(rows), len(rows) - len(labeled), len(labeled), labeled, pending)


def rows_digest(rows: list[ListingRecord]) -> str:
    """sha256 of the rows (id, label, text, image): the snapshot id of a database dataset."""
    digest = hashlib.sha256()
    for r in rows:
        digest.update(f"{r.productid}\t{r.prdtypecode}\t{r.designation}\t{r.description or ''}\t"
                      f"{r.image_path or ''}\n".encode("utf-8", errors="surrogatepass"))
    return digest.hexdigest()


def record_labeled_snapshot(engine: Engine, data: LabeledData) -> bool:
    """The snapshot row of ``data`` unless it exists; True when it was new."""
    rows = data.dataset.records
    with session_scope(engine) as session:
        if session.get(DatasetSnapshot, data.snapshot_id) is not None:
            return False
        counts = Counter(str(r.prdtypecode) for r in rows)
        labeled = [r for r in rows if r.productid in data.labeled_productids]
        session.add(DatasetSnapshot(
            snapshot_id=data.snapshot_id, source_path="database: products + labels.v1 + stream_listings",
            layout=DATABASE_LAYOUT, row_count=len(rows), image_count=sum(r.image_path is not None for r in rows),
            class_counts=dict(sorted(counts.items())),
            files={"products": rows_digest([r for r in rows if r.productid not in data.labeled_productids]),
                   "labels": rows_digest(labeled)},
        ))
    return True


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def _image_path(uri: str | None) -> Path | None:
    """A ``file://`` image that is readable here; other schemes are not fetched for training."""
    if not uri or not uri.startswith("file://"):
        return None
    return _existing(Path(unquote(urlparse(uri).path)))
