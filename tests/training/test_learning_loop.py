"""The loop end to end, on real rows, a real broker, PostgreSQL and Redis: listings the production
model never saw are published and labeled; a retrain request makes a version trained on them; when
it wins the gate the running worker serves it, when it loses production stays and the decision is kept.
(TF-IDF alone, small, so that the test stays quick.)"""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from inference import registry
from inference.artifacts import read_manifest
from producers.labels import LabelPublisher
from producers.publisher import Publisher
from rakuten_stream.database import make_engine, session_scope
from rakuten_stream.datasets import ListingRecord, load_dataset
from rakuten_stream.kafka import ensure_topics, make_producer
from rakuten_stream.metrics import RetrainMetrics
from schemas import Label, Prediction, RetrainRequest
from schemas.tables import DatasetSnapshot, PredictionRow, RetrainJob
from stream_workers.worker import Worker
from tests.helpers import read_topic, wait_until
from training.pipeline import TrainConfig
from training.release import train_and_release
from training.retrain_worker import RetrainWorker
from training.tfidf_model import TfidfParams

pytestmark = pytest.mark.slow

TEXT_ONLY = {"use_e5": False, "use_image": False, "folds": 2,
             "tfidf": TfidfParams(max_word_features=5_000, max_char_features=8_000, calibration_folds=2)}


def split_sample(data_dir: Path, bootstrap_per_class: int, new_per_class: int):
    by_class: dict[int, list[ListingRecord]] = {}
    for r in load_dataset(data_dir).records:
        by_class.setdefault(r.prdtypecode, []).append(r)
    boot = [r for rows in by_class.values() for r in rows[:bootstrap_per_class]]
    new = [r for rows in by_class.values() for r in rows[bootstrap_per_class:bootstrap_per_class + new_per_class]]
    return boot, new


def write_flat(records: list[ListingRecord], folder: Path) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "products.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["productid", "imageid", "designation", "description", "prdtypecode"])
        for r in records:
            writer.writerow([r.productid, r.imageid or "", r.designation, r.description or "", r.prdtypecode])
    return folder


class Running:
    """A worker (stream or retrain) on a thread, stopped cleanly on exit."""

    def __init__(self, worker) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=worker.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self.worker

    def __exit__(self, *exc) -> None:
        self.worker.stop()
        self.thread.join(60)
        assert not self.thread.is_alive()


def request(settings, request_id: str, times: int = 1) -> None:
    producer = make_producer(settings)
    message = RetrainRequest(request_id=request_id, reason="labels for new listings")
    for _ in range(times):
        producer.produce(settings.topics.retrain_requests, key=request_id.encode(), value=message.to_bytes())
    assert producer.flush(10) == 0


def job(engine, job_id: str) -> RetrainJob:
    with session_scope(engine) as session:
        row = session.get(RetrainJob, job_id)
        session.expunge(row)
        return row


def test_labels_for_new_listings_retrain_gate_and_reach_the_running_worker(settings, fresh_postgres_url, data_dir,
                                                                          tmp_path):
    run = settings.worker.group_id
    settings = settings.with_overrides(database={"url": fresh_postgres_url},
                                       retrain={"group_id": f"retrain-{run}", "sync_group_id": f"sync-{run}",
                                                "sync_interval_s": 0})
    ensure_topics(settings)
    engine = make_engine(fresh_postgres_url)
    boot, new = split_sample(data_dir, bootstrap_per_class=5, new_per_class=15)

    # bootstrap, as `rakuten-stream train --data DIR` does: a production version, its dataset in the database
    boot_dir = write_flat(boot, tmp_path / "boot")
    (boot_dir / "categories.json").write_text('{"10": {"fr": "livres (nommés par ce jeu de données)"}}')
    first = train_and_release(settings, engine, TrainConfig(data=boot_dir, model_dir=settings.models.dir,
                                                            **TEXT_ONLY))
    v1 = first.result.version
    assert first.promoted and registry.production(engine).version == v1
    assert set(registry.get_version(engine, v1).training_rows) <= {r.productid for r in boot}

    with Running(Worker(settings, retry_pause_s=0.2)) as stream_worker:
        assert wait_until(lambda: stream_worker.model_state.serving == v1, 60)
        with Publisher(settings, images="none") as publisher:  # new listings; their labels come later
            assert publisher.publish(new).sent == len(new)
        with LabelPublisher(settings) as labels:
            assert labels.publish([Label(productid=r.productid, prdtypecode=r.prdtypecode, source="review")
                                   for r in new]).sent == len(new)
        assert wait_until(lambda: stream_worker.stats.consumed >= len(new), 120)  # served by v1 first

        # 1. a candidate that must gain more than is possible loses: production and the worker unchanged
        strict = settings.with_overrides(retrain={"min_improvement": 1.0})
        metrics = RetrainMetrics()
        with Running(RetrainWorker(strict, engine, config_overrides=TEXT_ONLY, metrics=metrics)) as retrain:
            request(settings, "loses-1")
            assert wait_until(lambda: retrain.jobs_done == ["loses-1"], 300)
        lost = job(engine, "loses-1")
        assert lost.status == "rejected" and lost.decision["promoted"] is False
        assert "+ 1.0 on the same" in lost.decision["reason"]
        assert [s["step"] for s in lost.steps] == ["request", "sync", "dataset", "train", "gate", "done"]
        assert lost.steps[1]["labels"]["stored"] == len(new) and lost.steps[1]["listings"]["stored"] == len(new)
        assert registry.production(engine).version == v1
        assert registry.get_version(engine, lost.candidate_version).gate_decision["promoted"] is False
        assert metrics.jobs.labels(outcome="rejected")._value.get() == 1
        assert stream_worker.model_state.serving == v1

        # 2. the same request delivered twice: one job, trained on the dataset and every label, and it wins
        with Running(RetrainWorker(settings, engine, config_overrides=TEXT_ONLY)) as retrain:
            request(settings, "wins-2", times=2)
            assert wait_until(lambda: retrain.jobs_done == ["wins-2"], 300)
            assert not wait_until(lambda: len(retrain.jobs_done) > 1, 3)
        won = job(engine, "wins-2")
        v2 = won.candidate_version
        assert won.status == "succeeded" and won.decision["promoted"] is True and v2 != v1
        assert [s["step"] for s in won.steps] == ["request", "sync", "dataset", "train", "gate", "announce", "done"]
        assert won.steps[3]["models"] == ["tfidf"] and won.steps[3]["split"].startswith("production's rows kept")
        gate = won.decision
        assert gate["production"] == v1 and gate["candidate_weighted_f1"] > gate["production_weighted_f1"]
        assert gate["evaluated_labeled_rows"] > 0  # the held-out rows include labels the stream brought
        first_version = registry.get_version(engine, v1)
        assert not set(gate["evaluated_productids"]) & set(first_version.training_rows)
        assert gate["excluded_rows"] == 0  # production's rows kept their side of the split...
        assert set(first_version.held_out_rows) <= set(gate["evaluated_productids"])  # ...its held-out rows scored
        with session_scope(engine) as session:
            snapshot = session.get(DatasetSnapshot, won.snapshot_id)
            assert snapshot.layout == "database" and snapshot.row_count == len(boot) + len(new)
        assert registry.get_version(engine, v2).snapshot_id == won.snapshot_id
        assert set(registry.get_version(engine, v2).training_rows) & {r.productid for r in new}
        assert registry.production(engine).version == v2
        names = read_manifest(Path(registry.get_version(engine, v2).artifact_dir)).category_names
        assert names[10] == "livres (nommés par ce jeu de données)"  # the data folder's names outlive it

        # the running worker switched without a restart and labels its predictions with the new version
        assert wait_until(lambda: stream_worker.model_state.serving == v2, 60)
        later = ListingRecord(productid=999_000_001, designation="Perceuse visseuse sans fil 18V")
        with Publisher(settings, images="none") as publisher:
            publisher.publish([later])
        assert wait_until(lambda: stream_worker.stats.consumed >= len(new) + 1, 60)
    predictions = [Prediction.from_bytes(m.value()) for m in read_topic(settings, settings.topics.predictions,
                                                                        expected=len(new) + 1)]
    assert {p.model_version for p in predictions if p.productid == later.productid} == {v2}
    assert {p.model_version for p in predictions if p.productid != later.productid} == {v1}
    with session_scope(engine) as session:
        stored = session.scalars(select(PredictionRow).where(PredictionRow.productid == later.productid)).all()
        assert [row.model_version for row in stored] == [v2]
    engine.dispose()

