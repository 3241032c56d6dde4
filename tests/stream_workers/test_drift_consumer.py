"""The drift consumer on real rows: a real broker, PostgreSQL, Redis and a TF-IDF model trained on a
random subset of the sample (so its held-out reference profile is the sample's own class mix).

The stream is the rows the model never saw, scored by the model as a worker would, published on
``predictions.v1`` (one partition: windows then hold the same predictions on every run) with their
labels on ``labels.v1``. The consumer runs as `rakuten-stream drift-consumer`, in a subprocess.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer

from inference import registry
from inference.artifacts import read_manifest
from inference.features.text_cleaning import ListingText
from inference.reference_profile import read_profile
from inference.runtime import ModelRuntime
from inference.scoring import score_batch
from rakuten_stream.database import make_engine, upgrade
from rakuten_stream.datasets import load_dataset
from rakuten_stream.kafka import ensure_topics
from rakuten_stream.settings import Settings
from schemas import Label, Prediction, RetrainRequest
from stream_workers.drift import reports
from stream_workers.drift.consumer import Reference
from stream_workers.drift.estimation import estimate
from stream_workers.drift.windows import WindowRow, true_performance

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def drift_model(data_dir, tmp_path_factory):
    """(artifact dir, unseen scored rows): TF-IDF on 1,200 random rows; the other rows scored, shuffled."""
    from training.pipeline import TrainConfig, train
    from training.tfidf_model import TfidfParams

    records = load_dataset(data_dir).records
    random.Random(5).shuffle(records)
    chosen, unseen = records[:1200], records[1200:]
    folder = tmp_path_factory.mktemp("drift-data")
    with open(folder / "products.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["productid", "imageid", "designation", "description", "prdtypecode"])
        for r in chosen:
            writer.writerow([r.productid, r.imageid or "", r.designation, r.description or "", r.prdtypecode])
    result = train(
        TrainConfig(
            data=folder,
            model_dir=tmp_path_factory.mktemp("drift-models"),
            use_e5=False,
            use_image=False,
            tfidf=TfidfParams(max_word_features=8000, max_char_features=8000),
        )
    )
    runtime = ModelRuntime(result.artifact_dir, providers="cpu")
    scored = []
    for start in range(0, 2400, 128):
        part = unseen[start : start + 128]
        listings = score_batch(
            runtime, [ListingText.of(r.designation, r.description) for r in part], [None] * len(part), top_k=3
        ).listings
        scored.extend(zip(part, listings, strict=True))
    return result.artifact_dir, scored


@pytest.fixture
def own_postgres_url(postgres_url):
    """A database of this test alone (reports, registry), on the session's PostgreSQL server."""
    import psycopg

    admin = postgres_url.rsplit("/", 1)[0] + "/postgres"
    name = f"rakuten_drift_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def drift_settings(settings, own_postgres_url, drift_model, tmp_path):
    postgres_url = own_postgres_url
    artifact_dir, _ = drift_model
    run = uuid.uuid4().hex[:8]
    s = settings.with_overrides(
        topics={"partitions": 1},
        database={"url": postgres_url},
        drift={
            "app_id": f"drift-{run}",
            "state_dir": tmp_path / "state",
            "window_messages": 100,
            "window_seconds": 3600,
            "metrics_port": 0,
            "min_true_f1_labels": 1000,
            "html_reports": "alarms",
        },
    )
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    manifest = read_manifest(artifact_dir)
    registry.register(engine, manifest, artifact_dir, None)
    registry.promote(engine, manifest.version)
    engine.dispose()
    ensure_topics(s)
    return s


def publish(settings, scored, version: str, labels: bool = True) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "enable.idempotence": True})
    now = datetime.now(UTC)
    for record, listing in scored:
        prediction = Prediction(
            productid=record.productid, **listing.model_dump(), model_version=version, predicted_at=now
        )
        producer.produce(settings.topics.predictions, prediction.to_bytes(), key=str(record.productid).encode())
        if labels:
            label = Label(productid=record.productid, prdtypecode=record.prdtypecode, source="test")
            producer.produce(settings.topics.labels, label.to_bytes(), key=str(record.productid).encode())
    assert producer.flush(30) == 0


class DriftConsumerProcess:
    """`rakuten-stream drift-consumer` in a subprocess, stopped by SIGTERM (faust leaves its group cleanly)."""

    def __init__(self, settings, log_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAKUTEN_")} | settings.as_environment()
        env["PYTHONPATH"] = str(REPO)
        self.log = open(log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rakuten_cli.main", "drift-consumer"],
            cwd=log_path.parent,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


def wait_for_reports(url: str, count: int, process: DriftConsumerProcess, log_path: Path, timeout_s: float = 240):
    engine = make_engine(url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            rows = reports.list_reports(engine, limit=1000)
            if len(rows) >= count:
                return sorted(rows, key=lambda r: r.window_id.split("#")[1].zfill(6))
            assert process.process.poll() is None, log_path.read_text(errors="replace")[-4000:]
            time.sleep(1)
        raise AssertionError(f"{len(rows)} of {count} reports; log:\n" + log_path.read_text(errors="replace")[-4000:])
    finally:
        engine.dispose()


def read_all(settings, topic: str) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"read-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out, idle = [], time.monotonic()
    while time.monotonic() - idle < 5:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            out.append(message.value())
            idle = time.monotonic()
    consumer.close()
    return out


def test_a_healthy_stream_raises_nothing_and_a_class_mix_shift_raises_one_request_with_its_evidence(
    drift_settings, drift_model, tmp_path
):
    artifact_dir, scored = drift_model
    version = read_manifest(artifact_dir).version
    healthy = scored[:800]  # 8 windows of rows from the training distribution, with their labels
    few = {c for c, _ in sorted(((c, n) for c, n in _counts(scored).items()), key=lambda x: -x[1])[:3]}
    # only 3 categories: 2 windows, and 10 more so that the second closes even if one internal event goes
    # missing (seen after restarts on the embedded broker, not explained yet: README, Known limits)
    shifted = [(r, s) for r, s in scored[800:] if r.prdtypecode in few][:210]
    assert len(shifted) == 210
    publish(drift_settings, healthy, version)
    publish(drift_settings, shifted, version, labels=False)
    log_path = tmp_path / "drift-consumer.log"
    consumer = DriftConsumerProcess(drift_settings, log_path)
    try:
        windows = wait_for_reports(drift_settings.database.url.get_secret_value(), 10, consumer, log_path)
    finally:
        consumer.stop()
    assert (drift_settings.drift.state_dir / "drift").is_dir()  # faust's data folder: under the state dir
    assert [w.n_predictions for w in windows] == [100] * 10
    assert [w.triggers for w in windows[:8]] == [[]] * 8, [(w.drift_score, w.drift_threshold) for w in windows]
    assert all(w.n_labels > 0 for w in windows[:8]) and windows[9].n_labels == 0
    first_shifted = windows[8]
    assert "distribution_drift" in first_shifted.triggers  # within one window of the shift
    assert first_shifted.drift_score > first_shifted.drift_threshold
    assert first_shifted.report_html_gz is not None and windows[0].report_html_gz is None
    assert first_shifted.metrics["evidently"]["columns"]["predicted_class"]["p_value"] < 0.01
    requests = [RetrainRequest.from_bytes(m) for m in read_all(drift_settings, drift_settings.topics.retrain_requests)]
    assert len(requests) == 1, requests  # window 9 alarms too: same episode, no second request
    request = requests[0]
    assert request.reason == "distribution_drift" and request.model_version == version
    assert request.drift_report_id == first_shifted.report_id == first_shifted.report_id
    assert request.evidence.window_id == first_shifted.window_id
    assert request.evidence.drift_score == pytest.approx(first_shifted.drift_score)
    assert request.evidence.figures["class_distribution"] and request.evidence.n_predictions == 100
    assert windows[9].episode_id == first_shifted.episode_id and windows[9].retrain_request_id is None
    assert first_shifted.retrain_request_id == request.request_id


def test_a_restart_resumes_the_open_window_from_the_changelog(drift_settings, drift_model, tmp_path):
    artifact_dir, scored = drift_model
    version = read_manifest(artifact_dir).version
    settings = drift_settings.with_overrides(drift={"evidently": False})
    publish(settings, scored[:60], version, labels=False)  # 60 of a window of 100: it stays open
    log_path = tmp_path / "drift-consumer.log"
    first = DriftConsumerProcess(settings, log_path)
    try:  # both agents have processed and committed the 60 (the window's entries are in the changelog)
        wait_for_committed(
            settings, {settings.topics.predictions: 60, f"{settings.drift.app_id}-windows": 60}, first, log_path
        )
    finally:
        first.stop()
    assert reports.list_reports(make_engine(settings.database.url.get_secret_value())) == []
    publish(settings, scored[60:120], version, labels=False)  # 60 more: a fresh window could not reach 100, and
    # window 0 still closes if one event goes missing (seen in about half of the restarts on the embedded broker)
    second = DriftConsumerProcess(settings, log_path)  # same app id and group, fresh memory: state from changelog
    try:
        first_window = wait_for_reports(settings.database.url.get_secret_value(), 1, second, log_path, timeout_s=180)[0]
    finally:
        second.stop()
    # window 0 closed at 100 predictions: the 60 it held before the restart came back from the changelog
    assert first_window.window_id == f"{version}#0"
    assert first_window.n_predictions == 100


def wait_for_committed(settings, wanted: dict[str, int], process, log_path: Path, timeout_s: float = 120) -> None:
    from confluent_kafka import TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": settings.drift.app_id,
            "enable.auto.commit": False,
        }
    )
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            committed = consumer.committed([TopicPartition(t, 0) for t in wanted], timeout=10)
            if all(tp.offset >= wanted[tp.topic] for tp in committed):
                return
            assert process.process.poll() is None, log_path.read_text(errors="replace")[-4000:]
            time.sleep(1)
        raise AssertionError(f"not committed: {committed}; log:\n" + log_path.read_text(errors="replace")[-4000:])
    finally:
        consumer.close()


def _counts(scored) -> dict[int, int]:
    out: dict[int, int] = {}
    for r, _ in scored:
        out[r.prdtypecode] = out.get(r.prdtypecode, 0) + 1
    return out


def test_the_estimated_f1_of_a_window_is_within_005_of_its_true_f1_on_held_out_rows(drift_model, tmp_path):
    artifact_dir, scored = drift_model
    profile = read_profile(artifact_dir)
    reference = Reference.of(profile, Settings())
    errors = []
    for start in range(0, 2000, 500):  # windows of the default size, 500 predictions
        window = scored[start : start + 500]
        rows = [
            WindowRow(s.prdtypecode, s.confidence, tuple((c.prdtypecode, c.probability) for c in s.top_k), s.text_chars)
            for _, s in window
        ]
        estimated = estimate(rows, profile.classes, reference.prior, reference.calibration).weighted_f1
        true = true_performance([(s.prdtypecode, r.prdtypecode) for r, s in window])["true_f1"]
        errors.append(estimated - true)
    assert np.max(np.abs(errors)) <= 0.05, errors
