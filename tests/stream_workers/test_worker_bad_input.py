"""Every bad input of issue 8 through a real worker: real broker, PostgreSQL, Redis, the tiny model.

One of each bad kind, interleaved with good listings, then the same listing 1,000 times. Each
ends either in the dead-letter topic with its reason, or as a prediction (text only, with the
reason in ``image_note`` when only its image by reference was bad); the stream goes on, and the
count holds: published = predictions + dead letters, one row per (productid, version), lag 0.
"""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import zlib
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, inspect, select

from inference.artifacts import read_manifest
from rakuten_stream.clients.lag import consumer_lag
from rakuten_stream.database import make_engine, upgrade
from rakuten_stream.datasets import load_dataset
from rakuten_stream.kafka import ensure_topics, make_producer
from schemas import DeadLetter, Prediction
from schemas.tables import PredictionRow
from stream_workers.worker import Worker
from tests.helpers import ImageServers, listing_json, read_topic, register_production, wait_until

pytestmark = pytest.mark.slow

SQL = "Lampe'); DROP TABLE predictions; --"
HTML = "<script>alert('x')</script><img src=x onerror=alert(1)> Lampe de chevet"


def png_bomb() -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30_000, 30_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 64).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def dead_letter_inputs() -> dict[str, bytes]:
    """Reason -> a message that must end in the dead-letter topic with it."""
    photo = jpeg()
    return {
        "not_json": b"{this is not json",
        "not_utf8": b'{"productid": 800001, "designation": "caf\xe9"}',
        "too_deep": b'{"productid": 800002, "designation": "x", "source": {"a": ' + b"[" * 5_000 + b"]" * 5_000 + b"}}",
        "invalid_schema": json.dumps({"productid": "huit", "designation": "Lampe"}).encode(),
        "missing_title": json.dumps({"productid": 800004}).encode(),
        "empty_title": listing_json(800005, "   "),
        "unsupported_version": listing_json(800006, "Lampe", schema_version="2.0"),
        "description_too_long": listing_json(800007, "Lampe", "très long " * 10_000),
        "title_too_long": listing_json(800008, "T" * 5_000),
        "bad_base64": json.dumps({"productid": 800009, "designation": "Lampe", "image": {"data": "***"}}).encode(),
        "not_an_image": listing_json(800010, "Lampe", image=b"GIF89a but not really an image"),
        "truncated_image": listing_json(800011, "Lampe", image=photo[: len(photo) // 2]),
        "too_many_pixels": listing_json(800012, "Lampe", image=png_bomb()),
    }


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    (root / "big.jpg").write_bytes(b"\xff" * 10_000_000)
    os.mkfifo(root / "pipe.jpg")
    return root


def fallback_inputs(servers: ImageServers, root: Path) -> dict[int, tuple[bytes, str]]:
    """productid -> (a listing whose image by reference is bad, the outcome its prediction must note)."""
    cases = {
        "file:///etc/passwd": "refused",  # outside the roots
        (root / "pipe.jpg").as_uri(): "refused",  # a FIFO: never blocks
        "file:///dev/zero": "refused",  # a device, outside the roots anyway
        (root / "big.jpg").as_uri(): "too_large",  # the 10 MB image
        f"{servers.url}/big-unannounced.jpg": "too_large",
        f"{servers.silent_url}/hang.jpg": "timeout",  # hanging server
        f"{servers.url}/trickle.jpg": "timeout",  # trickling server
        f"{servers.url}/redirect/9": "too_many_redirects",
        "http://169.254.169.254/latest/meta-data/": "refused",  # link-local, not allow-listed
        f"{servers.url}/missing.jpg": "not_found",
    }
    return {810000 + i: (listing_json(810000 + i, "Lampe de chevet LED", image_uri=uri), outcome)
            for i, (uri, outcome) in enumerate(cases.items())}


@pytest.fixture
def worker_settings(settings, postgres_url, tiny_model, data_dir, image_root):
    if read_manifest(tiny_model).image is None:  # images by reference are fetched only for an image model
        pytest.skip("the tiny model has no image model: install the deep extra (pip install -e '.[training]')")
    s = settings.with_overrides(
        database={"url": postgres_url},
        images={"file_roots": [data_dir.resolve(), image_root], "allowed_hosts": ["127.0.0.1"],
                "fetch_timeout_s": 1.0, "batch_timeout_s": 1.5})
    ensure_topics(s)
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    with engine.begin() as connection:  # the session database is shared by tests: start clean
        connection.execute(PredictionRow.__table__.delete())
    engine.dispose()
    register_production(s, tiny_model)
    return s


def test_every_bad_input_ends_as_a_dead_letter_or_a_noted_prediction_and_the_count_holds(
        worker_settings, tiny_data, image_root):
    s = worker_settings
    records = load_dataset(tiny_data).records[:24]
    good = [listing_json(r.productid, r.designation, r.description,
                         image=r.image_path.read_bytes() if r.image_path is not None and i % 2 else None,
                         image_uri=r.image_path.resolve().as_uri() if r.image_path is not None and not i % 2 else None)
            for i, r in enumerate(records)]
    letters_in = dead_letter_inputs()
    with ImageServers(jpeg()) as servers:
        fallbacks = fallback_inputs(servers, image_root)
        verbatim = [listing_json(820001, SQL, HTML), listing_json(820002, HTML, SQL)]
        bad = list(letters_in.values()) + [v for v, _ in fallbacks.values()] + verbatim
        interleaved = [v for pair in zip(good, bad, strict=False) for v in pair] + good[len(bad):] + bad[len(good):]
        same = [listing_json(830000, "Piscine tubulaire autoportante 3 m", "bleu")] * 1_000
        published = interleaved + same

        producer = make_producer(s)
        for i, value in enumerate(published):
            producer.produce(s.topics.products, key=str(i % 97).encode(), value=value)
        assert producer.flush(30) == 0
        del producer

        worker = Worker(s, retry_pause_s=0.2)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            assert wait_until(lambda: worker.stats.consumed >= len(published), 240), worker.stats
        finally:
            worker.stop()
            thread.join(60)
        assert not thread.is_alive()

    n_letters = len(letters_in)
    letters = [DeadLetter.from_bytes(m.value()) for m in read_topic(s, s.topics.dead_letters, expected=n_letters)]
    predictions = [Prediction.from_bytes(m.value())
                   for m in read_topic(s, s.topics.predictions, expected=len(published) - n_letters)]

    # every dead letter with its own reason, original bytes kept
    assert sorted((letter.error_class, letter.original) for letter in letters) == sorted(letters_in.items())
    # the count: published = predictions + dead letters
    assert len(predictions) + len(letters) == len(published)
    by_id: dict[int, list[Prediction]] = {}
    for p in predictions:
        by_id.setdefault(p.productid, []).append(p)
    assert len(by_id[830000]) == 1_000  # the same listing 1,000 times: 1,000 predictions ...
    # ... from the cache once a batch of them has been predicted (a batch's lookups precede its writes)
    assert sum(p.cached for p in by_id[830000]) >= 1_000 - 2 * s.worker.batch_max_messages

    for productid, (_, outcome) in fallbacks.items():  # text only, with the reason kept
        (prediction,) = by_id[productid]
        assert "image" not in prediction.modalities
        assert prediction.image_note and prediction.image_note.startswith(f"image not used, text only: {outcome}")
    with_image = [p for r in records for p in by_id[r.productid] if "image" in p.modalities]
    assert with_image and all(p.image_note is None for p in with_image)
    assert {820001, 820002} <= set(by_id)  # SQL and HTML in text: predicted like any text

    engine = make_engine(s.database.url.get_secret_value())
    try:
        assert "predictions" in inspect(engine).get_table_names()  # nothing was executed
        with engine.connect() as connection:
            rows = connection.execute(select(func.count()).select_from(PredictionRow)).scalar_one()
            distinct = connection.execute(select(func.count(func.distinct(PredictionRow.productid)))).scalar_one()
    finally:
        engine.dispose()
    assert rows == distinct == len(by_id)  # one row per listing and version, no duplicates
    assert sum(p.lag for p in consumer_lag(s, s.worker.group_id, s.topics.products)) == 0
