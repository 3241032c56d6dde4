"""The retrain worker's bookkeeping: a job row for each request, its steps, a failure recorded and counted.
(The whole loop, training and the gate included, is tests/training/test_learning_loop.py.)"""

from __future__ import annotations

import json
import threading

from typer.testing import CliRunner

from rakuten_cli.main import app
from rakuten_stream.database import make_engine, session_scope
from rakuten_stream.kafka import ensure_topics, make_producer
from rakuten_stream.metrics import RetrainMetrics
from schemas import RetrainRequest
from schemas.tables import RetrainJob
from tests.helpers import wait_until
from training.retrain_worker import RetrainWorker

runner = CliRunner()


def test_a_request_with_nothing_to_train_on_is_a_failed_job_that_says_what_to_do(settings, fresh_postgres_url):
    run = settings.worker.group_id
    settings = settings.with_overrides(database={"url": fresh_postgres_url},
                                       retrain={"group_id": f"retrain-{run}", "sync_group_id": f"sync-{run}"})
    ensure_topics(settings)
    engine = make_engine(fresh_postgres_url)
    producer = make_producer(settings)
    producer.produce(settings.topics.retrain_requests, key=b"x", value=b"{not a request")  # skipped, logged
    request = RetrainRequest(request_id="empty-db", reason="label_backlog", drift_report_id="not-stored",
                             triggers=["label_backlog"])
    producer.produce(settings.topics.retrain_requests, key=b"r", value=request.to_bytes())
    assert producer.flush(10) == 0

    metrics = RetrainMetrics()
    worker = RetrainWorker(settings, engine, config_overrides={"use_e5": False, "use_image": False}, metrics=metrics)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: worker.jobs_done == ["empty-db"], 60)
    finally:
        worker.stop()
        thread.join(30)

    with session_scope(engine) as session:
        job = session.get(RetrainJob, "empty-db")
        assert job.status == "failed" and job.finished_at is not None
        assert "no labeled rows in the database" in job.decision["error"]
        assert job.drift_report_id is None  # the report is not in drift_reports: noted, not a broken job row
        assert [s["step"] for s in job.steps] == ["request", "sync", "dataset", "failed"]
        assert "not-stored" in job.steps[0]["note"] and job.steps[0]["triggers"] == ["label_backlog"]
        assert job.steps[2]["rows"] == 0
    assert metrics.jobs.labels(outcome="started")._value.get() == 1
    assert metrics.jobs.labels(outcome="failed")._value.get() == 1
    assert metrics.jobs.labels(outcome="promoted")._value.get() == 0
    engine.dispose()

    listed = runner.invoke(app, ["--database-url", fresh_postgres_url, "retrain-jobs"])
    assert listed.exit_code == 0 and "empty-db" in listed.stdout and "failed" in listed.stdout
    assert "no labeled rows in the database" in listed.stdout
    shown = runner.invoke(app, ["--database-url", fresh_postgres_url, "retrain-jobs", "empty-db"])
    assert shown.exit_code == 0
    assert [s["step"] for s in json.loads(shown.stdout)["steps"]] == ["request", "sync", "dataset", "failed"]
    missing = runner.invoke(app, ["--database-url", fresh_postgres_url, "retrain-jobs", "nope"])
    assert missing.exit_code == 2 and "no retrain job 'nope'" in missing.output
