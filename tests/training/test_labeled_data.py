"""Labels and the listings they label, copied from the topics into PostgreSQL: batched, idempotent,
and joined with the loaded dataset into the rows a retrain trains on."""

from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition
from sqlalchemy import func, select

from producers.labels import LabelPublisher
from producers.publisher import Publisher
from rakuten_stream.database import make_engine, session_scope
from rakuten_stream.datasets import ListingRecord
from rakuten_stream.kafka import ensure_topics, make_consumer, make_producer
from schemas import Label
from schemas.tables import DatasetSnapshot, LabelRow, StreamListing
from training.data_loading import load_into_database
from training.labeled_data import labeled_dataset, record_labeled_snapshot, sync_labeled_data


@pytest.fixture
def setup(settings, fresh_postgres_url):
    s = settings.with_overrides(database={"url": fresh_postgres_url},
                                retrain={"sync_group_id": f"sync-{settings.worker.group_id}", "sync_batch_rows": 7})
    ensure_topics(s)
    engine = make_engine(fresh_postgres_url)
    yield s, engine
    engine.dispose()


def listing(productid: int, title: str) -> ListingRecord:
    return ListingRecord(productid=productid, designation=title, description=f"description of {title}")


def count(engine, table) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(table))


def rewind(settings, group: str, topic: str) -> None:
    """Commit offset 0 on every partition: the next copy sees every message again (a redelivery)."""
    consumer = make_consumer(settings, group)
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.commit(offsets=[TopicPartition(topic, p, 0) for p in partitions], asynchronous=False)
    consumer.close()


def test_labels_and_listings_are_stored_once_however_often_they_are_read(setup):
    settings, engine = setup
    with Publisher(settings, images="none") as publisher:
        publisher.publish([listing(1000 + i, f"Lampe de chevet {i}") for i in range(30)])
    with LabelPublisher(settings) as labels:
        labels.publish([Label(productid=1000 + i, prdtypecode=2060) for i in range(20)])
        labels.publish([Label(productid=1000 + i, prdtypecode=1560, source="correction") for i in range(5)])
    producer = make_producer(settings)
    producer.produce(settings.topics.labels, key=b"x", value=b"{not a label")
    assert producer.flush(10) == 0

    first = sync_labeled_data(settings, engine)
    assert (first.labels.read, first.labels.invalid, first.listings.read) == (26, 1, 30)
    assert first.listings.batches >= 4  # batches of 7 rows, each upserted then committed
    assert count(engine, LabelRow) == 20 and count(engine, StreamListing) == 30
    with session_scope(engine) as session:
        corrected = session.get(LabelRow, 1000)
        assert (corrected.prdtypecode, corrected.source) == (1560, "correction")  # the latest label wins
        assert session.get(StreamListing, 1003).designation == "Lampe de chevet 3"

    nothing_new = sync_labeled_data(settings, engine)
    assert (nothing_new.labels.read, nothing_new.listings.read) == (0, 0)  # from the committed offsets

    group = settings.retrain.sync_group_id
    rewind(settings, f"{group}-labels", settings.topics.labels)
    rewind(settings, f"{group}-listings", settings.topics.products)
    again = sync_labeled_data(settings, engine)
    assert (again.labels.read, again.listings.read) == (26, 30)  # everything delivered a second time...
    assert count(engine, LabelRow) == 20 and count(engine, StreamListing) == 30  # ...stored once
    with session_scope(engine) as session:
        assert session.get(LabelRow, 1000).prdtypecode == 1560


def test_the_training_rows_are_the_dataset_with_the_streams_labels_over_and_beside_it(setup, tmp_path):
    settings, engine = setup
    csv = tmp_path / "products.csv"
    csv.write_text("productid,imageid,designation,description,prdtypecode\n"
                   "1,,Perceuse sans fil,,2585\n2,,Roman policier,,10\n3,,Sans label,,\n", encoding="utf-8")
    from rakuten_stream.datasets import load_dataset

    load_into_database(engine, load_dataset(tmp_path))
    with Publisher(settings, images="none") as publisher:
        publisher.publish([listing(50, "Coussin brodé"), listing(51, "Plaid en laine")])
    with LabelPublisher(settings) as labels:
        labels.publish([Label(productid=2, prdtypecode=2705),  # a dataset row, relabeled
                        Label(productid=3, prdtypecode=1560),  # a dataset row without a label, labeled
                        Label(productid=50, prdtypecode=1920),  # a listing from the stream
                        Label(productid=99, prdtypecode=1920)])  # no listing seen yet
    sync_labeled_data(settings, engine)

    data = labeled_dataset(engine)
    rows = {r.productid: (r.designation, r.prdtypecode) for r in data.dataset.records}
    assert rows == {1: ("Perceuse sans fil", 2585), 2: ("Roman policier", 2705), 3: ("Sans label", 1560),
                    50: ("Coussin brodé", 1920)}  # 51 has no label; 99 has no listing
    assert (data.from_dataset, data.from_labels, data.pending_labels) == (1, 3, 1)
    assert data.labeled_productids == {2, 3, 50}

    assert record_labeled_snapshot(engine, data) is True
    assert record_labeled_snapshot(engine, data) is False  # the same rows, the same snapshot
    with session_scope(engine) as session:
        snapshot = session.get(DatasetSnapshot, data.snapshot_id)
        assert (snapshot.layout, snapshot.row_count) == ("database", 4)
        assert snapshot.class_counts == {"1560": 1, "1920": 1, "2585": 1, "2705": 1}
    with LabelPublisher(settings) as labels:
        labels.publish([Label(productid=51, prdtypecode=1920)])
    sync_labeled_data(settings, engine)
    assert labeled_dataset(engine).snapshot_id != data.snapshot_id  # a new label, a new snapshot
