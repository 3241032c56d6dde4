"""Which model version to serve, hearing of promotions without a restart, and never serving a bad one.

The registry (database) and the manifest hashes are the truth; an announcement on the compacted
model-updates topic is only a hint to look again. At start a worker waits, not ready and saying
why, until the registry names a production version that loads (none yet, or a corrupt or
missing one, is a reason to wait, not to crash). Between batches the watcher checks that
topic's high watermark now and then (a cheap ListOffsets request) and reads only when it moved;
a hint is followed only when the version is in this deployment's registry as production, the
announced manifest sha256 matches the registry's directory, and the files match the manifest
and the registry's record. A version that fails to load is reported (:attr:`ModelWatcher.state`)
and retried only after a growing pause; the worker keeps serving the version it has.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import TopicPartition
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from inference import registry
from inference.artifacts import manifest_sha256, read_manifest
from inference.runtime import ModelRuntime
from rakuten_stream.kafka import make_consumer
from rakuten_stream.metrics import Observer
from rakuten_stream.redaction import redact
from rakuten_stream.settings import Settings
from schemas import MessageError, ModelUpdate
from schemas.tables import ModelVersion

log = logging.getLogger(__name__)

NO_MODEL = "no production model: train one with `rakuten-stream train --data DIR` (or run `rakuten-stream demo`)"


class NoModelError(RuntimeError):
    pass


@dataclass
class ModelState:
    """What the worker serves, for readiness checks and metrics."""

    serving: str | None = None  # the version in use; None while waiting
    waiting_reason: str | None = None  # why nothing is served yet
    failed_loads: int = 0  # versions that did not load, counted once per attempt
    last_failure: str | None = None  # "VERSION: why", the latest failed load
    ignored_announcements: int = 0  # unknown versions, hash mismatches
    changed_at: float = field(default_factory=time.time)

    @property
    def ready(self) -> bool:
        return self.serving is not None


@dataclass
class _Attempt:
    key: tuple[str, str]  # (version, manifest sha256) tried
    failures: int = 0
    next_try: float = 0.0


class ModelWatcher:
    def __init__(self, settings: Settings, engine: Engine, pinned_version: str | None = None,
                 check_every_s: float = 2.0, retry_base_s: float = 5.0, retry_max_s: float = 300.0,
                 observer: Observer | None = None) -> None:
        self.settings = settings
        self.observer = observer or Observer()
        self.engine = engine
        self.pinned_version = pinned_version
        self.state = ModelState()
        self._sessions: dict = {}  # shared by successive versions: unchanged graphs are not reloaded
        self._consumer = None
        self.check_every_s = check_every_s
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        self._attempts: dict[tuple[str, str], _Attempt] = {}
        self._last_check = 0.0
        self._partition = TopicPartition(settings.topics.model_updates, 0)
        self._next_offset = 0
        if pinned_version is None:
            # a private, commit-less reader of the control topic: every worker sees every update
            self._consumer = make_consumer(settings, group_id=f"model-watch-{uuid.uuid4().hex[:12]}",
                                           **{"enable.partition.eof": False})

    # --- loading ---------------------------------------------------------------------------------
    def load(self, row: ModelVersion) -> ModelRuntime:
        """The version of a registry row, checked against the registry's record of its files."""
        manifest = read_manifest(Path(row.artifact_dir), verify=False)
        if row.artifacts and manifest.files != row.artifacts:
            raise RuntimeError("the manifest's files differ from the registry's record of this version")
        return ModelRuntime(Path(row.artifact_dir), providers=self.settings.inference.execution_provider,
                            threads=self.settings.inference.onnx_threads, session_cache=self._sessions)

    def _try_load(self, row: ModelVersion) -> ModelRuntime | None:
        """Load ``row``, or record the failure and hold further attempts at it back for a while."""
        try:
            sha = manifest_sha256(Path(row.artifact_dir))
        except OSError:
            sha = "missing"
        key = (row.version, sha)
        attempt = self._attempts.get(key)
        if attempt is not None and time.monotonic() < attempt.next_try:
            return None
        try:
            runtime = self.load(row)
        except Exception as exc:  # corrupt, missing, unloadable: a state to report, not a crash
            attempt = self._attempts.setdefault(key, _Attempt(key))
            attempt.failures += 1
            pause = min(self.retry_max_s, self.retry_base_s * 2 ** (attempt.failures - 1))
            attempt.next_try = time.monotonic() + pause
            why = redact((str(exc).strip().splitlines() or [type(exc).__name__])[0][:300])
            self.state.failed_loads += 1
            self.state.last_failure = f"{row.version}: {why}"
            self.observer.model_load_failed(row.version, why)
            log.error("model version %s does not load (%s); next try in %.0f s", row.version, why, pause)
            return None
        self._attempts.pop(key, None)
        return runtime

    def _serve(self, runtime: ModelRuntime) -> ModelRuntime:
        self.state.serving, self.state.waiting_reason, self.state.changed_at = runtime.version, None, time.time()
        return runtime

    def _wait_because(self, reason: str) -> None:
        if reason != self.state.waiting_reason:  # said once per reason, not once per check
            log.warning("not ready: %s", reason)
            self.state.waiting_reason, self.state.changed_at = reason, time.time()

    # --- at start ----------------------------------------------------------------------------------
    def initial(self) -> ModelRuntime:
        """The pinned or production version now, or :class:`NoModelError` (for one-shot jobs like replay)."""
        try:
            row = (registry.get_version(self.engine, self.pinned_version) if self.pinned_version is not None
                   else registry.production(self.engine))
        except registry.RegistryError as exc:
            raise NoModelError(str(exc)) from None
        if row is None:
            raise NoModelError(NO_MODEL)
        runtime = self._try_load(row)
        if runtime is None:
            raise NoModelError(f"model version {self.state.last_failure}")
        return self._serve(runtime)

    def wait_for_model(self, stop: threading.Event, every_s: float = 2.0) -> ModelRuntime | None:
        """The production version as soon as one loads; None if ``stop`` is set first.

        While waiting the worker is not ready and :attr:`state` says why: no production model,
        a production model that does not load (retried after a growing pause), or a registry
        that does not answer.
        """
        while not stop.is_set():
            runtime = self._production_now()
            if runtime is not None:
                return self._serve(runtime)
            self.poll(timeout_s=1.0, force=True)  # consume hints meanwhile, so they are not replayed later
            stop.wait(every_s)
        return None

    def _production_now(self) -> ModelRuntime | None:
        try:
            row = registry.production(self.engine)
        except SQLAlchemyError as exc:
            self._wait_because(f"the registry does not answer ({redact(str(exc).splitlines()[0][:200])})")
            return None
        if row is None:
            self._wait_because(f"{NO_MODEL}; waiting for one to be promoted")
            return None
        runtime = self._try_load(row)
        if runtime is None:
            self._wait_because(f"production version {self.state.last_failure}; waiting for a loadable version "
                               "to be promoted")
        return runtime

    # --- between batches -------------------------------------------------------------------------
    def reload(self, current_version: str) -> ModelRuntime | None:
        """A newly promoted, verified version to swap in before the next batch, or None: keep serving."""
        update = self.poll()
        if update is None:
            return None
        try:
            row = registry.get_version(self.engine, update.version)
        except registry.RegistryError:
            self.state.ignored_announcements += 1
            log.warning("ignoring the announcement of model version %s: not in this deployment's registry "
                        "(another deployment sharing the broker?)", update.version)
            return None
        except SQLAlchemyError as exc:
            log.warning("cannot look up announced model version %s (%s): keeping %s", update.version,
                        redact(str(exc).splitlines()[0][:200]), current_version)
            return None
        if row.version == current_version:
            return None
        if row.stage != "production":
            self.state.ignored_announcements += 1
            log.warning("ignoring the announcement of model version %s: the registry has it as %s", row.version,
                        row.stage)
            return None
        try:
            on_disk = manifest_sha256(Path(row.artifact_dir))
        except OSError:
            on_disk = "missing"
        if on_disk != update.manifest_sha256:
            self.state.ignored_announcements += 1
            log.warning("ignoring the announcement of model version %s: its manifest sha256 does not match the "
                        "registry's directory %s", row.version, row.artifact_dir)
            return None
        runtime = self._try_load(row)
        if runtime is None:
            log.warning("keeping model version %s", current_version)
            return None
        return self._serve(runtime)

    def poll(self, timeout_s: float = 5.0, force: bool = False) -> ModelUpdate | None:
        """The newest production update on the control topic since the last call, if any."""
        if self._consumer is None:
            return None
        now = time.monotonic()
        if not force and now - self._last_check < self.check_every_s:
            return None
        self._last_check = now
        try:
            _, high = self._consumer.get_watermark_offsets(self._partition, timeout=2, cached=False)
        except Exception as exc:  # the control topic is a hint: no answer now, ask again later
            log.debug("model-updates watermark unavailable: %s", exc)
            return None
        if high <= self._next_offset:
            return None
        # assigned only while there is something to read: an idle control topic costs no fetches
        self._consumer.assign([TopicPartition(self._partition.topic, 0, self._next_offset)])
        messages: list = []
        deadline = time.monotonic() + timeout_s
        try:  # read up to the high watermark: only the newest update matters
            while self._next_offset < high and time.monotonic() < deadline:
                batch = self._consumer.consume(num_messages=500, timeout=max(0.0, deadline - time.monotonic()))
                batch = [m for m in batch if not m.error()]
                messages.extend(batch)
                if batch:
                    self._next_offset = max(self._next_offset, batch[-1].offset() + 1)
        finally:
            self._consumer.unassign()
        latest = None
        for message in messages:
            try:
                update = ModelUpdate.from_bytes(message.value())
            except MessageError as exc:
                log.warning("ignoring a bad model update at offset %s: %s", message.offset(), exc)
                continue
            if update.stage == "production":
                latest = update
        return latest

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
