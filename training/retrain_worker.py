"""The retrain worker: turns retrain requests into trained, gated, announced model versions.

Consumes ``retrain-requests.v1`` in its own group, one request at a time. Each request becomes a
``retrain_jobs`` row (running -> succeeded | rejected | failed) before its offset is committed;
a request whose job already finished is skipped, so a redelivered request never trains twice.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from rakuten_stream.database import session_scope
from rakuten_stream.kafka import ensure_topics, make_consumer
from rakuten_stream.settings import Settings
from schemas import MessageError, RetrainRequest
from schemas.tables import RetrainJob
from training.pipeline import TrainConfig
from training.release import train_and_release

log = logging.getLogger(__name__)
FINISHED = ("succeeded", "rejected", "failed")


class RetrainWorker:
    def __init__(self, settings: Settings, engine: Engine, data: Path, group_id: str = "retrain-workers",
                 config_overrides: dict | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.data = data
        self.group_id = group_id
        self.config_overrides = config_overrides or {}
        self._stop = threading.Event()
        self.jobs_done: list[str] = []

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        ensure_topics(self.settings)
        # a training run takes minutes: allow it between polls (the request is committed after it)
        consumer = make_consumer(self.settings, self.group_id, **{"max.poll.interval.ms": 3_600_000})
        consumer.subscribe([self.settings.topics.retrain_requests])
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                try:
                    request = RetrainRequest.from_bytes(message.value())
                except MessageError as exc:
                    log.error("ignoring an invalid retrain request at offset %d: %s", message.offset(), exc)
                else:
                    self.handle(request)
                consumer.commit(message=message, asynchronous=False)
        finally:
            consumer.close()

    def handle(self, request: RetrainRequest) -> str:
        """Run one request to its end; returns the job's final status."""
        with session_scope(self.engine) as session:
            job = session.get(RetrainJob, request.request_id)
            if job is not None and job.status in FINISHED:
                log.info("retrain request %s already %s", request.request_id, job.status)
                return job.status
            if job is None:
                session.add(RetrainJob(job_id=request.request_id, status="running", reason=request.reason,
                                       drift_report_id=request.drift_report_id))
        status, candidate, decision = "failed", None, {"error": None}
        try:
            config = TrainConfig(data=self.data, model_dir=self.settings.models.dir, **self.config_overrides)
            release = train_and_release(self.settings, self.engine, config)
            candidate, decision = release.result.version, release.decision
            status = "succeeded" if release.promoted else "rejected"
        except Exception as exc:  # the job records the failure; the worker lives on
            log.exception("retrain request %s failed", request.request_id)
            decision = {"error": f"{type(exc).__name__}: {exc}"}
        with session_scope(self.engine) as session:
            job = session.get(RetrainJob, request.request_id)
            job.status, job.candidate_version, job.decision = status, candidate, decision
            job.finished_at = datetime.now(UTC)
        self.jobs_done.append(request.request_id)
        log.info("retrain request %s: %s (candidate %s)", request.request_id, status, candidate)
        return status
