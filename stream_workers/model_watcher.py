"""Which model version to serve, and hearing of promotions without a restart.

At start the production version comes from the registry (database), or failing that from the
latest record of the compacted model-updates topic. Between batches the watcher checks that
topic's high watermark now and then (a cheap ListOffsets request) and reads only when it
moved; its consumer is unassigned otherwise, so an idle control topic costs no fetch traffic.
The worker swaps a newly promoted version in before its next batch.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

from confluent_kafka import TopicPartition
from sqlalchemy import Engine

from inference import registry
from inference.runtime import ModelRuntime
from rakuten_stream.kafka import make_consumer
from rakuten_stream.settings import Settings
from schemas import MessageError, ModelUpdate

log = logging.getLogger(__name__)


class NoModelError(RuntimeError):
    pass


class ModelWatcher:
    def __init__(self, settings: Settings, engine: Engine, pinned_version: str | None = None,
                 check_every_s: float = 2.0) -> None:
        self.settings = settings
        self.engine = engine
        self.pinned_version = pinned_version
        self._sessions: dict = {}  # shared by successive versions: unchanged graphs are not reloaded
        self._consumer = None
        self.check_every_s = check_every_s
        self._last_check = 0.0
        self._partition = TopicPartition(settings.topics.model_updates, 0)
        self._next_offset = 0
        if pinned_version is None:
            # a private, commit-less reader of the control topic: every worker sees every update
            self._consumer = make_consumer(settings, group_id=f"model-watch-{uuid.uuid4().hex[:12]}",
                                           **{"enable.partition.eof": False})

    def load(self, artifact_dir: Path | str) -> ModelRuntime:
        return ModelRuntime(Path(artifact_dir), providers=self.settings.inference.execution_provider,
                            threads=self.settings.inference.onnx_threads, session_cache=self._sessions)

    def initial(self) -> ModelRuntime:
        if self.pinned_version is not None:
            return self.load(registry.get_version(self.engine, self.pinned_version).artifact_dir)
        row = registry.production(self.engine)
        if row is not None:
            return self.load(row.artifact_dir)
        update = self.poll(timeout_s=2.0, force=True)
        if update is not None:
            return self.load(update.artifact_dir)
        raise NoModelError("no production model: train one with `rakuten-stream train --data DIR` "
                           "(or run `rakuten-stream demo`)")

    def poll(self, timeout_s: float = 5.0, force: bool = False) -> ModelUpdate | None:
        """The newest production update on the control topic since the last call, if any."""
        if self._consumer is None:
            return None
        now = time.monotonic()
        if not force and now - self._last_check < self.check_every_s:
            return None
        self._last_check = now
        _, high = self._consumer.get_watermark_offsets(self._partition, timeout=2, cached=False)
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
