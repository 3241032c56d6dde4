"""The classifier worker against the real broker, a real model and real databases.

Accounting rule checked throughout: published = predicted + dead-lettered, with exactly one
prediction row per valid listing in the database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from inference import registry
from rakuten_stream.database import make_engine, upgrade
from rakuten_stream.datasets import load_dataset
from rakuten_stream.kafka import ensure_topics, make_producer
from schemas import DeadLetter, Prediction
from schemas.tables import PredictionRow
from tests.helpers import (
    copy_as_new_version,
    listing_json,
    read_topic,
    register_production,
    running_worker,
    settings_env,
    wait_until,
)

pytestmark = pytest.mark.slow

INVALID = {
    "not_json": b"{this is not json",
    "unsupported_version": listing_json(900001, "Lampe", schema_version="2.0"),
    "bad_base64": json.dumps({"productid": 900002, "designation": "Lampe",
                              "image": {"data": "***"}}).encode(),
    "not_an_image": listing_json(900003, "Lampe de chevet", image=b"GIF89a but not really an image"),
    "empty_title": listing_json(900004, "   "),
}


def real_listings(tiny_data: Path, n: int) -> list[bytes]:
    """n real rows: inline images, file:// images, a missing file (text-only fallback), no image."""
    out = []
    for i, r in enumerate(load_dataset(tiny_data).records[:n]):
        if r.image_path is not None and i % 3 == 0:
            out.append(listing_json(r.productid, r.designation, r.description, image=r.image_path.read_bytes()))
        elif r.image_path is not None and i % 3 == 1:
            out.append(listing_json(r.productid, r.designation, r.description,
                                    image_uri=f"file://{r.image_path.resolve()}"))
        elif i % 7 == 0:
            out.append(listing_json(r.productid, r.designation, r.description, image_uri="file:///nonexistent.jpg"))
        else:
            out.append(listing_json(r.productid, r.designation, r.description))
    return out


def publish(settings, values: list[bytes]) -> None:
    producer = make_producer(settings)
    for value in values:
        key = str(json.loads(value)["productid"]).encode() if value.startswith(b"{\"") else b"x"
        producer.produce(settings.topics.products, key=key, value=value)
    assert producer.flush(30) == 0


def prediction_rows(settings) -> list[PredictionRow]:
    engine = make_engine(settings.database.url.get_secret_value())
    with engine.connect() as connection:
        rows = connection.execute(select(PredictionRow)).all()
    engine.dispose()
    return rows




@pytest.fixture
def worker_settings(settings, postgres_url, tiny_model, data_dir):
    # file:// images are read only under configured roots: the sample's images folder
    s = settings.with_overrides(database={"url": postgres_url}, images={"file_roots": [data_dir.resolve()]})
    ensure_topics(s)
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    with engine.begin() as connection:  # the session database is shared by tests: start clean
        connection.execute(PredictionRow.__table__.delete())
    engine.dispose()
    register_production(s, tiny_model)
    return s


def test_every_valid_listing_gets_one_prediction_and_every_invalid_one_a_dead_letter(worker_settings, tiny_data):
    valid = real_listings(tiny_data, 60)
    publish(worker_settings, valid + list(INVALID.values()))
    with running_worker(worker_settings) as worker:
        assert wait_until(lambda: worker.stats.consumed >= len(valid) + len(INVALID), 120)

    predictions = [Prediction.from_bytes(m.value()) for m in read_topic(worker_settings,
                   worker_settings.topics.predictions, expected=len(valid))]
    letters = [DeadLetter.from_bytes(m.value()) for m in read_topic(worker_settings,
               worker_settings.topics.dead_letters, expected=len(INVALID))]
    rows = prediction_rows(worker_settings)

    assert len(predictions) == len(valid) == len(rows)
    assert len(letters) == len(INVALID)
    assert {p.productid for p in predictions} == {json.loads(v)["productid"] for v in valid}
    assert sorted(letter.original for letter in letters) == sorted(INVALID.values())  # original bytes kept
    assert {letter.error_class for letter in letters} == {"not_json", "unsupported_version", "bad_base64",
                                                          "not_an_image", "empty_title"}
    one = predictions[0]
    assert one.model_version and 0 < one.confidence <= 1 and len(one.top_k) == 3
    assert abs(sum(one.contributions.values()) - 1) < 1e-3
    with_image = [p for p in predictions if "image" in p.modalities]
    assert with_image, "listings with images were classified with the image model"
    assert all(p.source.topic == worker_settings.topics.products for p in predictions)


def test_redelivered_listings_hit_the_cache_and_do_not_duplicate_rows(worker_settings, tiny_data):
    valid = real_listings(tiny_data, 12)
    publish(worker_settings, valid + valid)  # the same 12 listings twice
    with running_worker(worker_settings) as worker:
        assert wait_until(lambda: worker.stats.consumed >= 24, 90)
    assert len(prediction_rows(worker_settings)) == 12
    assert worker.stats.cache_hits >= 12


def test_two_workers_in_one_group_share_the_partitions(worker_settings, tiny_data):
    valid = real_listings(tiny_data, 80)
    first = worker_settings.with_overrides(worker={"instance_id": "worker-a"}, cache={"enabled": False})
    second = worker_settings.with_overrides(worker={"instance_id": "worker-b"}, cache={"enabled": False})
    with running_worker(first) as a, running_worker(second) as b:
        assert wait_until(lambda: a.assignment and b.assignment, 60), "both members should own a partition"
        assert not a.assignment & b.assignment
        publish(worker_settings, valid)
        assert wait_until(lambda: a.stats.consumed + b.stats.consumed >= len(valid), 120)
    assert a.stats.consumed > 0 and b.stats.consumed > 0
    assert len(prediction_rows(worker_settings)) == len(valid)


def test_a_promoted_version_is_picked_up_by_a_running_worker(worker_settings, tiny_data, tiny_model, tmp_path):
    listings = real_listings(tiny_data, 40)
    publish(worker_settings, listings[:20])
    with running_worker(worker_settings) as worker:
        assert wait_until(lambda: worker.stats.consumed >= 20, 90)
        new_dir = copy_as_new_version(tiny_model, tmp_path, "v2-retrained")
        engine = make_engine(worker_settings.database.url.get_secret_value())
        from inference.artifacts import read_manifest

        registry.register(engine, read_manifest(new_dir), new_dir, None)
        registry.announce(worker_settings, registry.promote(engine, "v2-retrained"))
        assert wait_until(lambda: worker.stats.model_versions[-1] == "v2-retrained", 30)
        publish(worker_settings, listings[20:])
        assert wait_until(lambda: worker.stats.consumed >= 40, 90)
    versions = {r.productid: r.model_version for r in prediction_rows(worker_settings)}
    later = {json.loads(v)["productid"] for v in listings[20:]}
    assert {versions[p] for p in later} == {"v2-retrained"}


def test_a_worker_stopped_by_sigterm_and_restarted_loses_nothing_and_writes_no_duplicates(worker_settings,
                                                                                          tiny_data):
    # noida-db cannot evict a SIGKILLed member, so crash recovery is tested as stop + restart of the
    # same static member (group.instance.id), which is also what Kubernetes does on a rollout.
    valid = real_listings(tiny_data, 150)
    publish(worker_settings, valid)
    env = os.environ | settings_env(worker_settings.with_overrides(
        worker={"instance_id": "worker-sigterm", "batch_max_messages": 8}, cache={"enabled": False}))
    command = [sys.executable, "-m", "rakuten_cli.main", "worker"]

    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert wait_until(lambda: len(prediction_rows(worker_settings)) >= 16, 120), "the worker never got going"
    first.send_signal(signal.SIGTERM)
    output = first.communicate(timeout=60)[0].decode()
    assert first.returncode == 0, output
    stopped_at = len(prediction_rows(worker_settings))
    assert stopped_at < len(valid), "stopped too late to test a restart"

    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: len(prediction_rows(worker_settings)) >= len(valid), 180)
        time.sleep(1)
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=60)
    rows = prediction_rows(worker_settings)
    assert len(rows) == len(valid)
    assert len({(r.productid, r.model_version) for r in rows}) == len(valid)


def test_the_database_schema_rejects_a_second_row_for_the_same_product_and_version(postgres_url):
    from datetime import UTC, datetime

    from sqlalchemy.exc import IntegrityError

    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    row = {"productid": 424242, "model_version": "uniqueness-check", "prdtypecode": 10, "category": "livres",
           "confidence": 0.9, "top_k": [], "contributions": {}, "modalities": [], "cached": False,
           "predicted_at": datetime.now(UTC)}
    with engine.begin() as connection:
        connection.execute(PredictionRow.__table__.insert(), [row])
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(PredictionRow.__table__.insert(), [row])
    with engine.begin() as connection:
        connection.execute(PredictionRow.__table__.delete().where(PredictionRow.model_version == "uniqueness-check"))
        assert connection.execute(select(func.count()).select_from(PredictionRow)
                                  .where(PredictionRow.productid == 424242)).scalar() == 0
    engine.dispose()


def test_with_redis_down_the_worker_carries_on_without_the_cache(worker_settings, tiny_data):
    from rakuten_stream.embedded_broker import free_port

    valid = real_listings(tiny_data, 10)
    publish(worker_settings, valid)
    no_redis = worker_settings.with_overrides(cache={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with running_worker(no_redis) as worker:
        assert wait_until(lambda: worker.stats.consumed >= 10, 90)
    assert len(prediction_rows(worker_settings)) == 10
    assert worker.metrics.cache_available._value.get() == 0


def test_the_worker_exports_its_model_version_and_execution_provider(worker_settings, tiny_data):
    from prometheus_client import generate_latest

    publish(worker_settings, real_listings(tiny_data, 5))
    with running_worker(worker_settings) as worker:
        assert wait_until(lambda: worker.stats.consumed >= 5, 90)
    exposition = generate_latest(worker.metrics.registry).decode()
    assert 'rakuten_execution_provider_info{provider="CPUExecutionProvider"} 1.0' in exposition
    assert f'rakuten_model_version_info{{version="{worker.stats.model_versions[-1]}"}} 1.0' in exposition
    assert "rakuten_end_to_end_latency_seconds_count 5.0" in exposition
