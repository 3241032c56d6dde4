"""What one idle consumer costs on the embedded broker (noida-db): CPU of the broker and of the
client while a consumer polls an empty topic. On Apache Kafka an empty fetch waits
``fetch.wait.max.ms`` on the broker; this broker answers at once, so librdkafka fetches in a loop.

    python bench/broker_fetch_cost.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from rakuten_stream.embedded_broker import EmbeddedBroker, free_port  # noqa: E402
from rakuten_stream.kafka import ensure_topics, make_consumer  # noqa: E402
from rakuten_stream.settings import Settings  # noqa: E402


def cpu_percent(broker: psutil.Process, seconds: float, consumer=None) -> tuple[float, float]:
    me = psutil.Process()
    b0, m0, t0 = sum(broker.cpu_times()[:2]), sum(me.cpu_times()[:2]), time.time()
    end = t0 + seconds
    while time.time() < end:
        consumer.poll(0.2) if consumer is not None else time.sleep(0.2)
    dt = time.time() - t0
    return 100 * (sum(broker.cpu_times()[:2]) - b0) / dt, 100 * (sum(me.cpu_times()[:2]) - m0) / dt


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(free_port(), Path(tmp) / "b") as broker:
        settings = Settings(kafka={"bootstrap_servers": broker.bootstrap_servers})
        ensure_topics(settings)
        process = psutil.Process(broker._process.pid)
        print("no consumer:      broker {:5.1f}%  client {:5.1f}%".format(*cpu_percent(process, 4)))
        for label, overrides in (("default", {}), ("fetch.wait.max.ms=500", {"fetch.wait.max.ms": 500})):
            consumer = make_consumer(settings, f"idle-{label}", **overrides)
            consumer.subscribe([settings.topics.products])
            consumer.poll(2)
            print(f"idle consumer ({label}): broker %5.1f%%  client %5.1f%%" % cpu_percent(process, 4, consumer))
            consumer.close()


if __name__ == "__main__":
    main()
