"""The faust application of ``rakuten-stream drift-consumer``: two agents, four tables, one timer.

- ``join`` consumes ``predictions.v1`` and ``labels.v1`` (both keyed by productid, so a product's
  prediction and label meet on one partition). Tables ``predicted`` and ``waiting_labels`` hold the
  side that came first, keyed by productid: a label may come before its prediction or long after.
  Every prediction, and every (predicted, true) pair once both are known, goes on to the internal
  ``<app_id>-windows`` topic keyed by model version.
- ``windows`` consumes that topic: all events of one model version reach one partition and one
  consumer. Table ``open_windows`` holds each version's open window header (number, count, times),
  ``window_entries`` its rows and label pairs (one small entry per message, deduplicated by
  productid, so a redelivered message is not counted twice), ``episodes`` the drift-episode state.
  A window closes at ``RAKUTEN_DRIFT_WINDOW_MESSAGES`` predictions or ``RAKUTEN_DRIFT_WINDOW_SECONDS``
  after its first one, whichever comes first (a timer sends a tick to versions whose window is due).
- Every table has its changelog topic; the store is in memory, rebuilt from the changelog at start,
  so a restarted consumer resumes its open windows. Default at-least-once processing.

faust's own windowed tables (``Table.tumbling``) close windows by time only; windows that also close
by count need the open window as state, hence plain tables here.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust

from rakuten_stream.settings import Settings
from schemas import DeadLetter, Label, MessageError, Prediction
from stream_workers.drift import episodes
from stream_workers.drift.consumer import WindowJudge
from stream_workers.drift.windows import WindowRow

log = logging.getLogger(__name__)


def broker_options(settings: Settings) -> dict[str, Any]:
    servers = [s.strip() for s in settings.kafka.bootstrap_servers.split(",") if s.strip()]
    options: dict[str, Any] = {"broker": [f"kafka://{s}" for s in servers]}
    extra = settings.kafka.extra
    protocol = extra.get("security.protocol", "PLAINTEXT").upper()
    if settings.kafka.sasl_username:
        password = settings.kafka.sasl_password.get_secret_value() if settings.kafka.sasl_password else ""
        options["broker_credentials"] = faust.SASLCredentials(
            username=settings.kafka.sasl_username,
            password=password,
            mechanism=extra.get("sasl.mechanism", "PLAIN"),
            ssl_context=ssl.create_default_context(cafile=extra.get("ssl.ca.location")) if "SSL" in protocol else None,
        )
    elif protocol == "SSL":
        options["broker_credentials"] = ssl.create_default_context(cafile=extra.get("ssl.ca.location"))
    return options


class DriftApp:
    """The faust app and its agents, built around a :class:`WindowJudge`."""

    def __init__(self, settings: Settings, judge: WindowJudge) -> None:
        self.settings = settings
        self.judge = judge
        s, t = settings.drift, settings.topics
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            s.app_id,
            **broker_options(settings),
            store="memory://",
            datadir=str(s.data_dir),
            topic_partitions=t.partitions,
            topic_replication_factor=t.replication_factor,
            table_standby_replicas=0,
            web_enabled=False,
            autodiscover=False,
            processing_guarantee="at_least_once",
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
        )
        app = self.app
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="drift-judge")
        self.source = app.topic(t.predictions, t.labels, key_serializer="raw", value_serializer="raw")
        self.windows_topic = app.topic(
            f"{s.app_id}-windows",
            internal=True,
            partitions=t.partitions,
            key_type=str,
            key_serializer="json",
            value_serializer="json",
        )
        self.reports_topic = app.topic(t.drift_reports, key_serializer="raw", value_serializer="raw")
        self.requests_topic = app.topic(t.retrain_requests, key_serializer="raw", value_serializer="raw")
        self.dead_letters_topic = app.topic(t.dead_letters, key_serializer="raw", value_serializer="raw")

        def table(name: str) -> faust.Table:
            return app.Table(name, default=None, partitions=t.partitions)  # keys and values: JSON

        self.predicted = table("predicted")
        self.waiting_labels = table("waiting-labels")
        self.open_windows = table("open-windows")
        self.entries = table("window-entries")
        self.episodes = table("episodes")
        app.agent(self.source, name=f"{s.app_id}.join")(self._join)
        app.agent(self.windows_topic, name=f"{s.app_id}.windows")(self._windows)
        app.timer(interval=max(min(s.window_seconds / 4, 5.0), 0.5))(self._tick)

    # -- join: predictions and labels by productid ------------------------------------------------
    async def _join(self, stream) -> None:
        t = self.settings.topics
        async for event in stream.events():
            message = event.message
            self.judge.metrics.messages.labels(topic=message.topic).inc()
            try:
                if message.topic == t.labels:
                    await self._on_label(Label.from_bytes(event.value))
                else:
                    await self._on_prediction(Prediction.from_bytes(event.value))
            except MessageError as exc:
                await self._dead_letter(message, exc.reason, str(exc))
            except Exception as exc:  # one bad message never stops the consumer
                log.exception(
                    "drift consumer: message %s[%d]@%d failed", message.topic, message.partition, message.offset
                )
                await self._dead_letter(message, "processing_error", f"{type(exc).__name__}: {exc}")

    async def _on_prediction(self, p: Prediction) -> None:
        pid = str(p.productid)
        at = p.predicted_at.timestamp()
        await self.windows_topic.send(
            key=p.model_version, value={"kind": "p", "pid": pid, "at": at, "row": WindowRow.of_prediction(p).to_dict()}
        )
        label = self.waiting_labels.get(pid)
        if label is not None:
            del self.waiting_labels[pid]
            await self._pair(p.model_version, pid, p.prdtypecode, int(label), at)
        else:
            self.predicted[pid] = {"v": p.model_version, "c": p.prdtypecode}

    async def _on_label(self, label: Label) -> None:
        pid = str(label.productid)
        seen = self.predicted.get(pid)
        if seen is None:
            self.waiting_labels[pid] = label.prdtypecode
            return
        del self.predicted[pid]
        await self._pair(seen["v"], pid, int(seen["c"]), label.prdtypecode, label.event_time.timestamp())

    async def _pair(self, version: str, pid: str, predicted: int, true: int, at: float) -> None:
        await self.windows_topic.send(key=version, value={"kind": "l", "pid": pid, "at": at, "pair": [predicted, true]})

    async def _dead_letter(self, message, reason: str, text: str) -> None:
        self.judge.metrics.dead_letters.labels(reason=reason).inc()
        letter = DeadLetter(
            original=message.value or b"",
            original_key=message.key,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            error_class=reason,
            error_message=text[:2000],
            worker_id=f"drift-consumer:{self.settings.drift.app_id}",
        )
        await self.dead_letters_topic.send(key=message.key, value=letter.to_bytes())

    # -- windows: per model version ---------------------------------------------------------------
    async def _windows(self, stream) -> None:
        async for event in stream.events():
            version = event.key
            value = event.value
            try:
                await self._on_window_event(version, value)
            except Exception:
                log.exception("drift consumer: window event of %s failed", version)

    async def _on_window_event(self, version: str, value: dict[str, Any]) -> None:
        s = self.settings.drift
        header = dict(self.open_windows.get(version) or {"seq": 0, "n": 0, "n_labels": 0})
        kind = value.get("kind")
        changed = False
        if kind == "p":
            key = f"{version}|{header['seq']}|p|{value['pid']}"
            if self.entries.get(key) is None:
                self.entries[key] = value["row"]
                if header["n"] == 0:
                    header["opened_at"] = time.time()
                    header["first_at"] = value["at"]
                header["n"] += 1
                header["first_at"] = min(header.get("first_at", value["at"]), value["at"])
                header["last_at"] = max(header.get("last_at", value["at"]), value["at"])
                changed = True
        elif kind == "l":
            key = f"{version}|{header['seq']}|l|{value['pid']}"
            if self.entries.get(key) is None:
                self.entries[key] = value["pair"]
                header["n_labels"] += 1
                changed = True
        if changed:
            self.open_windows[version] = header
            self.judge.metrics.open_window.labels(model_version=version).set(header["n"])
        if header["n"] >= s.window_messages:
            await self._close(version, header, "count")
        elif header["n"] > 0 and time.time() - header.get("opened_at", time.time()) >= s.window_seconds:
            await self._close(version, header, "time")

    async def _close(self, version: str, header: dict[str, Any], closed_by: str) -> None:
        seq = header["seq"]
        prefix = f"{version}|{seq}|"
        keys = [k for k in list(self.entries.keys()) if k.startswith(prefix)]
        rows, pairs = [], []
        for k in keys:
            value = self.entries.get(k)
            if value is None:
                continue
            if k[len(prefix)] == "p":
                rows.append(WindowRow.from_dict(value))
            else:
                pairs.append((int(value[0]), int(value[1])))
        state = episodes.EpisodeState.from_dict(self.episodes.get(version))
        loop = asyncio.get_running_loop()
        closed = await loop.run_in_executor(
            self.executor, self.judge.close, version, seq, header, rows, pairs, state, closed_by
        )
        key = version.encode()
        await self.reports_topic.send(key=key, value=closed.report.to_bytes())
        if closed.request is not None:
            await self.requests_topic.send(key=key, value=closed.request.to_bytes())
            log.warning(
                "retrain requested for %s: %s (window %s, report %s)",
                version,
                closed.request.reason,
                closed.report_row["window_id"],
                closed.report.report_id,
            )
        self.episodes[version] = closed.state.to_dict()
        for k in keys:
            del self.entries[k]
        self.open_windows[version] = {"seq": seq + 1, "n": 0, "n_labels": 0}
        self.judge.metrics.open_window.labels(model_version=version).set(0)
        log.info(
            "window %s#%d closed by %s: %d predictions, %d labels, score %s / %s, triggers %s",
            version,
            seq,
            closed_by,
            len(rows),
            len(pairs),
            closed.report_row["drift_score"],
            closed.report_row["drift_threshold"],
            closed.triggers or "none",
        )

    async def _tick(self) -> None:
        """Send a tick to every version whose open window is due by time (the agent closes it)."""
        now = time.time()
        for version, header in list(self.open_windows.items()):
            if (
                header
                and header.get("n", 0) > 0
                and now - header.get("opened_at", now) >= self.settings.drift.window_seconds
            ):
                await self.windows_topic.send(key=version, value={"kind": "tick"})


def run(settings: Settings, judge: WindowJudge, loglevel: str = "info") -> None:
    """Run the consumer until SIGTERM/SIGINT (faust's worker stops it cleanly)."""
    from faust.worker import Worker

    drift = DriftApp(settings, judge)
    worker = Worker(drift.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
