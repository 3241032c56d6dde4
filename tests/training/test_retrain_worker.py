"""The retrain worker: a request becomes a trained, gated version; a redelivered one trains nothing."""

from __future__ import annotations

import threading

import pytest

from inference import registry
from rakuten_stream.database import make_engine, session_scope, upgrade
from rakuten_stream.kafka import ensure_topics, make_producer
from schemas import RetrainRequest
from schemas.tables import RetrainJob
from tests.helpers import wait_until
from training.retrain_worker import RetrainWorker

pytestmark = pytest.mark.slow


def test_a_retrain_request_trains_gates_and_records_a_job_once(settings, tiny_data):
    ensure_topics(settings)
    upgrade(settings.database.url.get_secret_value())
    engine = make_engine(settings.database.url.get_secret_value())
    request = RetrainRequest(request_id="drift-2026-11-23", reason="prediction drift on 1560")
    producer = make_producer(settings)
    for _ in range(2):  # the same request delivered twice
        producer.produce(settings.topics.retrain_requests, key=b"r", value=request.to_bytes())
    assert producer.flush(10) == 0

    worker = RetrainWorker(settings, engine, tiny_data, group_id=f"retrain-{settings.worker.group_id}",
                           config_overrides={"use_e5": False, "use_image": False})
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: len(worker.jobs_done) >= 1, 300)
        assert not wait_until(lambda: len(worker.jobs_done) >= 2, 5)  # the second delivery was skipped
    finally:
        worker.stop()
        thread.join(30)

    with session_scope(engine) as session:
        job = session.get(RetrainJob, "drift-2026-11-23")
        assert job.status == "succeeded" and job.finished_at is not None
        assert job.decision["promoted"] is True  # nothing in production yet: the first version passes
    assert registry.production(engine).version == job.candidate_version
