"""The retrain worker: turns retrain requests into trained, gated, announced model versions.

Consumes ``retrain-requests.v1`` in its own group, one request at a time. Each request becomes a
``retrain_jobs`` row (running -> succeeded | rejected | failed) before its offset is committed;
a request whose job already finished is skipped, so a redelivered request never trains twice.

A job, step by step (each step is appended to the job's ``steps`` as it finishes):

0. ``request``: what asked for it (the drift consumer's evidence, when it sent some);
1. ``sync``: the new labels (``labels.v1``) and listings (``products.v1``) into the database
   (:mod:`training.labeled_data`);
2. ``dataset``: the labeled rows, the loaded dataset plus every label received, recorded as a
   dataset snapshot;
3. ``train``: a candidate version on them, registered with its training and held-out rows; production's
   rows keep their side (its held-out rows stay held out, so the gate can score on them);
4. ``gate``: candidate and production on the same held-out rows (:mod:`training.quality_gate`);
5. ``announce``: a promoted version on model-updates, which running workers follow.

While idle it runs step 1 every ``RAKUTEN_RETRAIN_SYNC_INTERVAL_S``, so a job's copy stays short.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime

from sqlalchemy import Engine

from inference.artifacts import read_manifest
from rakuten_stream.database import session_scope
from rakuten_stream.kafka import ensure_topics, make_consumer
from rakuten_stream.metrics import RetrainMetrics
from rakuten_stream.settings import Settings
from schemas import MessageError, RetrainRequest
from schemas.tables import DriftReportRow, RetrainJob
from training.labeled_data import labeled_dataset, sync_labeled_data
from training.pipeline import TrainConfig
from training.release import production_split, train_and_release

log = logging.getLogger(__name__)
FINISHED = ("succeeded", "rejected", "failed")
NO_DATA = ("no labeled rows in the database: load a dataset first (`rakuten-stream load-data --data DIR` or "
           "`rakuten-stream train --data DIR`), or publish labels (`rakuten-stream label --data FILE`)")


class RetrainWorker:
    def __init__(self, settings: Settings, engine: Engine, group_id: str | None = None,
                 config_overrides: dict | None = None, metrics: RetrainMetrics | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.group_id = group_id or settings.retrain.group_id
        self.config_overrides = {"use_e5": settings.retrain.use_e5, "use_image": settings.retrain.use_image,
                                 **(config_overrides or {})}
        self.metrics = metrics or RetrainMetrics()
        self._stop = threading.Event()
        self.jobs_done: list[str] = []

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        ensure_topics(self.settings)
        # a training run takes minutes: allow it between polls (the request is committed after it)
        consumer = make_consumer(self.settings, self.group_id, **{"max.poll.interval.ms": 3_600_000})
        consumer.subscribe([self.settings.topics.retrain_requests])
        interval = self.settings.retrain.sync_interval_s
        last_sync = time.monotonic()
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.5)
                if message is None or message.error():
                    if interval and time.monotonic() - last_sync > interval:
                        self._sync_quietly()
                        last_sync = time.monotonic()
                    continue
                try:
                    request = RetrainRequest.from_bytes(message.value())
                except MessageError as exc:
                    log.error("ignoring an invalid retrain request at offset %d: %s", message.offset(), exc)
                else:
                    self.handle(request)
                    last_sync = time.monotonic()
                consumer.commit(message=message, asynchronous=False)
        finally:
            consumer.close()

    def _sync_quietly(self) -> None:
        try:
            summary = sync_labeled_data(self.settings, self.engine)
            if summary.labels.stored or summary.listings.stored:
                log.info("copied %d label(s) and %d listing(s) into the database", summary.labels.stored,
                         summary.listings.stored)
        except Exception:  # the next sync, or the next job, tries again
            log.exception("copying labels and listings into the database failed")

    def handle(self, request: RetrainRequest) -> str:
        """Run one request to its end; returns the job's final status."""
        with session_scope(self.engine) as session:
            job = session.get(RetrainJob, request.request_id)
            if job is not None and job.status in FINISHED:
                log.info("retrain request %s already %s", request.request_id, job.status)
                return job.status
            report = request.drift_report_id
            known_report = report is not None and session.get(DriftReportRow, report) is not None
            first = {"step": "request", "at": datetime.now(UTC).isoformat(),
                     **request.model_dump(mode="json", exclude={"request_id", "reason"}, exclude_none=True)}
            if report is not None and not known_report:
                first["note"] = f"drift report {report} is not in drift_reports"
            if job is None:
                job = RetrainJob(job_id=request.request_id, status="running", reason=request.reason,
                                 drift_report_id=report if known_report else None, steps=[first])
                session.add(job)
            else:  # a job cut short by a crash starts again
                job.status, job.steps = "running", [first]
        self.metrics.jobs.labels(outcome="started").inc()
        status, candidate, decision = "failed", None, {"error": None}
        try:
            status, candidate, decision = self._run_steps(request.request_id)
        except Exception as exc:  # the job records the failure; the worker lives on
            log.exception("retrain request %s failed", request.request_id)
            decision = {"error": f"{type(exc).__name__}: {exc}"}
            self._step(request.request_id, {"step": "failed", "error": decision["error"]})
        with session_scope(self.engine) as session:
            job = session.get(RetrainJob, request.request_id)
            job.status, job.candidate_version, job.decision = status, candidate, decision
            job.finished_at = datetime.now(UTC)
        outcome = {"succeeded": "promoted", "rejected": "rejected"}.get(status, "failed")
        self.metrics.jobs.labels(outcome=outcome).inc()
        self.jobs_done.append(request.request_id)
        log.info("retrain request %s: %s (candidate %s)", request.request_id, status, candidate)
        return status

    def _run_steps(self, job_id: str) -> tuple[str, str | None, dict]:
        started = time.monotonic()
        sync = sync_labeled_data(self.settings, self.engine)
        self._step(job_id, {"step": "sync", **sync.as_dict()})

        labeled = labeled_dataset(self.engine)
        self.metrics.labeled_rows.set(labeled.from_labels)
        self._step(job_id, {"step": "dataset", **labeled.summary()}, snapshot_id=labeled.snapshot_id)
        if not labeled.dataset.records:
            raise RuntimeError(NO_DATA)

        sticky = production_split(self.engine) is not None
        config = TrainConfig(data=None, model_dir=self.settings.models.dir, **self.config_overrides)

        def trained(result) -> None:
            self._step(job_id, {"step": "train", "version": result.version, "snapshot_id": result.snapshot_id,
                                "train_rows": len(result.train_productids), "held_out_rows": len(result.test_records),
                                "split": "production's rows kept on their side, new rows by hash" if sticky
                                         else "stratified",
                                "weighted_f1_held_out": result.metrics.get("weighted_f1"),
                                "models": read_manifest(result.artifact_dir).modalities})

        release = train_and_release(self.settings, self.engine, config, labeled=labeled,
                                    min_improvement=self.settings.retrain.min_improvement, on_registered=trained)
        result, decision = release.result, release.decision
        gate = {k: v for k, v in decision.items() if k != "evaluated_productids"}
        self._step(job_id, {"step": "gate", **gate})
        if release.promoted:
            self._step(job_id, {"step": "announce", "version": result.version, "announced": release.announced})
        self._step(job_id, {"step": "done", "seconds": round(time.monotonic() - started, 1)})
        return ("succeeded" if release.promoted else "rejected"), result.version, decision

    def _step(self, job_id: str, step: dict, **columns) -> None:
        step = {"at": datetime.now(UTC).isoformat(), **step}
        with session_scope(self.engine) as session:
            job = session.get(RetrainJob, job_id)
            job.steps = [*(job.steps or []), _jsonable(step)]
            for name, value in columns.items():
                setattr(job, name, value)


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))

