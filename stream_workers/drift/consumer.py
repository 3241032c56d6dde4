"""What happens when a window closes: figures, estimate, drift score, Evidently, triggers, report, request.

:class:`WindowJudge` is plain Python (no faust): the agents in :mod:`stream_workers.drift.app` hand it
a window's rows and labels, it returns the drift report row, the ``drift-reports.v1`` message and,
when an episode asks for one and the gate lets it through, the ``retrain-requests.v1`` message.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from inference import registry
from inference.reference_profile import ReferenceProfile, read_profile
from rakuten_stream.settings import Settings
from schemas import DriftReport, RetrainRequest
from schemas.drift import RetrainEvidence
from stream_workers.drift import episodes, evidently_adapter, reports, triggers
from stream_workers.drift.calibration import Features, Thresholds, drift_score
from stream_workers.drift.estimation import ConfidenceCalibration, estimate
from stream_workers.drift.monitor import DriftMetrics
from stream_workers.drift.windows import WindowRow, true_performance, window_figures

log = logging.getLogger(__name__)


@dataclass
class Reference:
    """A model version's reference profile, prepared once: rows, features, thresholds, calibration, prior."""

    profile: ReferenceProfile
    rows: list[WindowRow]
    thresholds: Thresholds
    calibration: ConfidenceCalibration
    prior: dict[int, float]

    @classmethod
    def of(cls, profile: ReferenceProfile, settings: Settings) -> Reference:
        k = settings.inference.top_k  # the stream's messages carry this many probabilities
        rows = [WindowRow.of_profile(r, k) for r in profile.rows]
        calibration = ConfidenceCalibration.fit(
            [r.confidence for r in profile.rows], [r.predicted_class == r.true_class for r in profile.rows]
        )
        counts: dict[int, float] = {c: 1.0 for c in profile.classes}  # add-one: no class is impossible
        for r in profile.rows:
            counts[r.true_class] = counts.get(r.true_class, 0.0) + 1
        total = sum(counts.values())
        return cls(
            profile,
            rows,
            Thresholds(Features.of(rows), settings.drift.false_alarm_rate, settings.drift.bootstrap_rounds),
            calibration,
            {c: v / total for c, v in counts.items()},
        )


@dataclass
class ClosedWindow:
    report_row: dict[str, Any]
    report: DriftReport
    request: RetrainRequest | None
    state: episodes.EpisodeState
    triggers: list[str] = field(default_factory=list)


def report_id_for(app_id: str, version: str, seq: int) -> str:
    """``<version>-<app>-w<seq>``: unique per consumer group (``app``: 6 hex digits of its id), at most 64 chars."""
    app = hashlib.sha1(app_id.encode()).hexdigest()[:6]
    return f"{version[:48]}-{app}-w{seq:06d}"


class WindowJudge:
    def __init__(
        self, settings: Settings, engine: Engine, gate: triggers.RetrainGate | None, metrics: DriftMetrics
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.gate = gate
        self.metrics = metrics
        self._references: dict[str, Reference | None] = {}
        self._lock = threading.Lock()

    def reference(self, version: str) -> Reference | None:
        """The version's reference profile (from its artifact folder in the registry); None without one."""
        with self._lock:
            if version not in self._references:
                self._references[version] = self._load(version)
            return self._references[version]

    def _load(self, version: str) -> Reference | None:
        try:
            row = registry.get_version(self.engine, version)
            profile = read_profile(row.artifact_dir)
        except Exception as exc:  # unknown version, unreadable folder: report the window, judge nothing
            log.warning(
                "model version %s: no reference profile (%s); its windows are reported, not judged", version, exc
            )
            return None
        if profile is None or len(profile.rows) < 2:
            log.warning("model version %s has no reference_profile.json: windows are reported, not judged", version)
            return None
        reference = Reference.of(profile, self.settings)
        self.metrics.reference_f1.labels(model_version=version).set(profile.weighted_f1)
        log.info(
            "model version %s: reference of %d held-out rows (F1 %.3f), threshold %.2f at %d predictions",
            version,
            len(profile.rows),
            profile.weighted_f1,
            reference.thresholds.for_size(self.settings.drift.window_messages),
            self.settings.drift.window_messages,
        )
        return reference

    def close(
        self,
        version: str,
        seq: int,
        header: dict[str, Any],
        rows: Sequence[WindowRow],
        pairs: Sequence[tuple[int, int]],
        state: episodes.EpisodeState,
        closed_by: str,
    ) -> ClosedWindow:
        """Judge a closed window; blocking (Evidently, the database, Redis): run it in a thread."""
        s = self.settings.drift
        window_id = f"{version}#{seq}"
        report_id = report_id_for(self.settings.drift.app_id, version, seq)
        start = datetime.fromtimestamp(header["first_at"], UTC)
        end = datetime.fromtimestamp(header["last_at"], UTC)
        figures = window_figures(rows)
        figures.update(true_performance(pairs))
        reference = self.reference(version)
        judged = reference is not None and len(rows) >= s.min_window_messages
        score = threshold = estimated_f1 = None
        if reference is not None and rows:
            found = estimate(rows, reference.profile.classes, reference.prior, reference.calibration)
            figures.update(found.as_dict())
            estimated_f1 = found.weighted_f1
            figures["reference_f1"] = reference.profile.weighted_f1
            figures["calibration_exponent"] = reference.calibration.exponent
        evidently_on = judged and s.evidently
        if judged:
            score, parts = drift_score(Features.of(rows), Features.of(reference.rows))
            threshold = reference.thresholds.for_size(len(rows))
            figures["drift_tests"] = parts
        if evidently_on:
            try:
                result = evidently_adapter.compare(rows, reference.rows, html=False)
                figures["evidently"] = result.figures
            except Exception as exc:  # Evidently is a report, not the alarm: the window goes on
                log.warning("Evidently failed on window %s: %s", window_id, exc)
        judgement = triggers.WindowJudgement(
            score,
            threshold,
            estimated_f1 if judged else None,
            figures.get("true_f1"),
            len(pairs),
            reference.profile.weighted_f1 if reference else None,
        )
        fired = triggers.fired(judgement, s) if judged else []
        state.labels_since_request += len(pairs)
        step = episodes.advance(state, window_id, bool(fired), s.episode_end_windows)
        state = step.state
        request = None
        reason = None
        if step.wants_request:
            reason = fired[0]
        elif state.labels_since_request >= s.label_backlog:
            reason = triggers.LABEL_BACKLOG
            fired = [*fired, triggers.LABEL_BACKLOG]
        if reason is not None:
            episode_id = (
                step.episode_id if reason != triggers.LABEL_BACKLOG else f"{version}#labels{state.backlog_round}"
            )
            request_id = triggers.request_id_for(episode_id)
            if self._acquire(version, request_id):
                request = RetrainRequest(
                    request_id=request_id,
                    reason=reason,
                    drift_report_id=report_id,
                    model_version=version,
                    episode_id=episode_id,
                    triggers=fired,
                    evidence=RetrainEvidence(
                        window_id=window_id,
                        window_start=start,
                        window_end=end,
                        n_predictions=len(rows),
                        n_labels=len(pairs),
                        drift_score=score,
                        drift_threshold=threshold,
                        estimated_f1=estimated_f1,
                        true_f1=figures.get("true_f1"),
                        reference_f1=reference.profile.weighted_f1 if reference else None,
                        labels_since_last_request=state.labels_since_request,
                        figures=figures,
                    ),
                )
                if reason == triggers.LABEL_BACKLOG:
                    state.backlog_round += 1
                else:
                    state.requested = True
                state.labels_since_request = 0
            else:
                figures["request_suppressed"] = "cooldown: another request holds the gate"
                self.metrics.suppressed.inc()
        html_gz = None
        if evidently_on and (s.html_reports == "all" or (s.html_reports == "alarms" and fired)):
            try:
                html_gz = evidently_adapter.compare(rows, reference.rows, html=True).html_gz
            except Exception as exc:
                log.warning("Evidently HTML report failed on window %s: %s", window_id, exc)
        figures["closed_by"] = closed_by
        row = {
            "report_id": report_id,
            "model_version": version,
            "window_start": start,
            "window_end": end,
            "n_predictions": len(rows),
            "n_labels": len(pairs),
            "metrics": figures,
            "drift_detected": bool(fired),
            "report_path": None,
            "window_id": window_id,
            "drift_score": score,
            "drift_threshold": threshold,
            "estimated_f1": estimated_f1,
            "true_f1": figures.get("true_f1"),
            "triggers": fired,
            "episode_id": step.episode_id,
            "retrain_request_id": request.request_id if request else None,
            "report_html_gz": html_gz,
        }
        reports.store(self.engine, row)
        report = DriftReport(
            report_id=report_id,
            model_version=version,
            window_start=start,
            window_end=end,
            n_predictions=len(rows),
            n_labels=len(pairs),
            metrics=figures,
            drift_detected=bool(fired),
        )
        self._observe(version, row, figures, fired, request, closed_by)
        return ClosedWindow(row, report, request, state, fired)

    def _acquire(self, version: str, request_id: str) -> bool:
        if self.gate is None:
            return True
        try:
            return self.gate.acquire(version, request_id)
        except Exception as exc:  # Redis down: this consumer's episode state still raises one request per episode
            log.warning("retrain gate unavailable (%s): the request goes out without the cross-consumer lock", exc)
            return True

    def _observe(
        self,
        version: str,
        row: dict[str, Any],
        figures: dict[str, Any],
        fired: list[str],
        request: RetrainRequest | None,
        closed_by: str,
    ) -> None:
        m, v = self.metrics, {"model_version": version}
        m.windows.labels(model_version=version, closed_by=closed_by).inc()
        m.window_predictions.labels(**v).set(row["n_predictions"])
        m.window_labels.labels(**v).set(row["n_labels"])
        for gauge, value in (
            (m.drift_score, row["drift_score"]),
            (m.drift_threshold, row["drift_threshold"]),
            (m.estimated_f1, row["estimated_f1"]),
            (m.true_f1, row["true_f1"]),
            (m.image_share, figures.get("image_share")),
            (m.mean_confidence, (figures.get("confidence") or {}).get("mean")),
        ):
            if value is not None:
                gauge.labels(**v).set(value)
        m.alarm_active.labels(**v).set(1 if fired else 0)
        for trigger in fired:
            m.alarms.labels(model_version=version, trigger=trigger).inc()
        if request is not None:
            m.retrain_requests.labels(reason=request.reason).inc()
