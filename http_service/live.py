"""The live view: predictions as they reach ``predictions.v1``, throughput, consumer lag, drift.

:class:`PredictionTail` reads the predictions topic from its end with an assign-only consumer
(no group, no commits: it never disturbs anyone) and fans each prediction out to the page's
server-sent-event streams. It runs only while at least one page listens: an idle consumer costs
the broker fetch traffic. :class:`StreamPulse` measures, on request, the throughput of the
predictions topic (its high watermarks between two calls), the workers' lag on the products
topic (``rakuten_stream.clients.lag``) and the latest drift window (:mod:`http_service.drift`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from typing import Any

from confluent_kafka import OFFSET_END, TopicPartition
from sqlalchemy import Engine

from http_service.drift import latest_drift_window
from rakuten_stream.clients.lag import LagProbe
from rakuten_stream.kafka import make_consumer
from rakuten_stream.settings import Settings
from schemas import MessageError, Prediction

log = logging.getLogger(__name__)


class PredictionTail:
    def __init__(self, settings: Settings, keep: int = 15) -> None:
        self.settings = settings
        self.recent: deque[str] = deque(maxlen=keep)  # JSON of the latest predictions, newest last
        self._listeners: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[str]]] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def subscribe(self) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=200)
        with self._lock:
            self._listeners.add((asyncio.get_running_loop(), queue))
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="prediction-tail", daemon=True)
                self._thread.start()
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str]) -> None:
        with self._lock:
            self._listeners = {(loop, q) for loop, q in self._listeners if q is not queue}
            if not self._listeners:
                self._stop.set()
                self._thread = None

    def close(self) -> None:
        with self._lock:
            self._listeners.clear()
            self._stop.set()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)

    def _run(self) -> None:
        stop = self._stop
        topic = self.settings.topics.predictions
        consumer = make_consumer(self.settings, group_id=f"http-live-{uuid.uuid4().hex[:12]}",
                                 **{"enable.partition.eof": False, "fetch.wait.max.ms": 250})
        try:
            partitions = consumer.list_topics(topic, timeout=5).topics.get(topic)
            while not stop.is_set() and (partitions is None or not partitions.partitions):
                stop.wait(2.0)  # the workers have not created the topic yet
                partitions = consumer.list_topics(topic, timeout=5).topics.get(topic)
            if stop.is_set():
                return
            consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in partitions.partitions])
            while not stop.is_set():
                for message in consumer.consume(100, timeout=0.5):
                    if message.error() is not None:
                        continue
                    try:
                        text = Prediction.from_bytes(message.value()).model_dump_json()
                    except MessageError:
                        continue
                    self._publish(text)
        except Exception:  # the live view is a convenience: it must never take the service down
            log.exception("the live predictions view stopped")
        finally:
            consumer.close()

    def _publish(self, text: str) -> None:
        with self._lock:
            self.recent.append(text)
            listeners = list(self._listeners)
        for loop, queue in listeners:
            loop.call_soon_threadsafe(_offer, queue, text)


def _offer(queue: asyncio.Queue[str], text: str) -> None:
    if queue.full():  # a slow page skips predictions rather than holding memory
        queue.get_nowait()
    queue.put_nowait(text)


class StreamPulse:
    """Throughput, lag and drift for the page (blocking calls: run them off the event loop)."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self._probe: LagProbe | None = None
        self._last: tuple[float, int] | None = None  # (time, sum of the predictions topic's high watermarks)
        self._lock = threading.Lock()

    def measure(self) -> dict[str, Any]:
        with self._lock:
            return {"throughput_per_s": self._throughput(), "lag": self._lag(),
                    "drift": latest_drift_window(self.engine)}

    def _lag_probe(self) -> LagProbe:
        if self._probe is None:
            self._probe = LagProbe(self.settings, timeout_s=3.0)
        return self._probe

    def _throughput(self) -> float | None:
        topic = self.settings.topics.predictions
        try:
            probe = self._lag_probe()
            total = sum(probe.watermarks(topic, p)[1] for p in probe.partitions(topic))
        except Exception as exc:  # noqa: BLE001 - a missing topic or broker: nothing to show
            log.debug("throughput of %s not measured: %s", topic, exc)
            return None
        now, previous = time.monotonic(), self._last
        self._last = (now, total)
        if previous is None or now - previous[0] <= 0:
            return None
        return round(max(0, total - previous[1]) / (now - previous[0]), 2)

    def _lag(self) -> dict[str, Any] | None:
        group, topic = self.settings.worker.group_id, self.settings.topics.products
        try:
            partitions = self._lag_probe().consumer_lag(group, topic)
        except Exception as exc:  # noqa: BLE001 - LagError, or an unreachable broker
            log.debug("lag of %s on %s not measured: %s", group, topic, exc)
            return None
        return {"group": group, "topic": topic, "total": sum(p.lag for p in partitions),
                "partitions": [p.as_dict() for p in partitions]}

    def close(self) -> None:
        with self._lock:
            if self._probe is not None:
                self._probe.close()
                self._probe = None
