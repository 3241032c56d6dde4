"""Soak: a worker at ~80% of its measured capacity for N minutes, the second half with faults.

    python bench/soak.py [--minutes 10] [--model DIR] [--data ../shared/data/rakuten] [--out DIR]

Real components: an embedded noida-db broker and a private PostgreSQL (both started here, in a
temporary folder, on free ports), the machine's Redis (never stopped; keys expire after 10 min),
and the worker as it is on this branch, run as its own process (``rakuten-stream worker``). The
model is TF-IDF only (trained once on the sample into var/bench/soak-model unless ``--model`` names one).

1. Capacity: a backlog of unique text listings, drained by the worker; capacity = listings / seconds.
2. Steady phase (first half of ``--minutes``): unique listings at ``--load`` (0.8) of that capacity.
3. Fault phase (second half), same rate: the broker is killed (SIGKILL, a crash) and restarted;
   later PostgreSQL is stopped for ``--db-outage-s`` and started again.
4. Drain: publishing stops; wait for lag 0; SIGTERM the worker.

Printed: lag over time, p50/p99 end-to-end latency (event time to ``predicted_at`` of the stored
row) per phase, the worker's RSS, and the count check. The count check compares with what the
products topic actually holds, not with what the publisher was acknowledged: a broker crash
loses about the last second of acknowledged writes (BROKER.md, gap 3), so both are printed.
PNG plots of throughput, lag and latency over time go to the folder printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import KafkaException, TopicPartition  # noqa: E402
from sqlalchemy import select  # noqa: E402

from inference import registry  # noqa: E402
from inference.artifacts import read_manifest  # noqa: E402
from producers.publisher import Publisher  # noqa: E402
from rakuten_stream.clients.lag import LagProbe  # noqa: E402
from rakuten_stream.database import make_engine, upgrade  # noqa: E402
from rakuten_stream.datasets import load_dataset  # noqa: E402
from rakuten_stream.embedded_broker import EmbeddedBroker, free_port  # noqa: E402
from rakuten_stream.kafka import ensure_topics, make_consumer  # noqa: E402
from rakuten_stream.settings import Settings  # noqa: E402
from schemas import ProductListing  # noqa: E402
from schemas.tables import PredictionRow  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared/data/rakuten"
if not DEFAULT_DATA.is_dir():
    DEFAULT_DATA = Path("/work/shared/data/rakuten")


# --- a private PostgreSQL -------------------------------------------------------------------------
class PrivatePostgres:
    """initdb + pg_ctl in a folder of its own, as the ``postgres`` user when we are root."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "pg"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *command: str) -> None:
        subprocess.run([*self._as, *command], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def init(self) -> PrivatePostgres:
        self.dir.mkdir(parents=True)
        if self._as:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.dir), "-A", "trust", "-U", "postgres", "--no-sync")
        return self.start()

    def start(self) -> PrivatePostgres:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.dir), "-o", options, "-l", str(self.dir / "log"), "-w", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.dir), "-m", mode, "-w", "stop")


# --- what we sample while it runs ------------------------------------------------------------------
@dataclass
class Samples:
    t0: float = field(default_factory=time.monotonic)
    lag: list[tuple[float, int | None]] = field(default_factory=list)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    labels: list[tuple[float, str]] = field(default_factory=list)  # the short ones, drawn on the plots

    def now(self) -> float:
        return time.monotonic() - self.t0

    def mark(self, what: str, label: str | None = None) -> None:
        self.events.append((self.now(), what))
        if label is not None:
            self.labels.append((self.now(), label))
        print(f"[{self.now():7.1f} s] {what}", flush=True)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Sampler(threading.Thread):
    """Every second: the group's total lag (the one lag computation, ``LagProbe``) and the worker's RSS."""

    def __init__(self, settings: Settings, pid: int, samples: Samples) -> None:
        super().__init__(daemon=True)
        self.settings, self.pid, self.samples = settings, pid, samples
        self.stop = threading.Event()
        self.last_lag: int | None = None

    def run(self) -> None:
        probe = None
        while not self.stop.is_set():
            try:
                if probe is None:
                    probe = LagProbe(self.settings, timeout_s=2.0)
                lags = probe.consumer_lag(self.settings.worker.group_id, self.settings.topics.products)
                self.last_lag = sum(p.lag for p in lags)
            except Exception:  # the broker is down (restarting): no measurement now
                self.last_lag = None
                if probe is not None:
                    probe.close()
                    probe = None
            self.samples.lag.append((self.samples.now(), self.last_lag))
            rss = rss_mb(self.pid)
            if rss is not None:
                self.samples.rss_mb.append((self.samples.now(), rss))
            self.stop.wait(1.0)
        if probe is not None:
            probe.close()


# --- helpers ---------------------------------------------------------------------------------------------
def tfidf_model(data: Path, out: Path) -> Path:
    """A TF-IDF-only version trained on the sample, kept in ``out`` for the next run."""
    from training.pipeline import TrainConfig, train

    found = sorted(p.parent for p in out.glob("*/manifest.json"))
    if found:
        return found[-1]
    print(f"training a TF-IDF-only model on the sample into {out} (once) ...", flush=True)
    return train(TrainConfig(data=data, model_dir=out, use_e5=False, use_image=False)).artifact_dir


class Listings:
    """Unique text listings (a serial in the title, so the cache never answers): every one is inferred."""

    def __init__(self, records, first_id: int = 50_000_000) -> None:
        self.records = [r for r in records if r.designation.strip()]
        self.next_id = first_id

    def take(self, n: int | None, stop: threading.Event | None = None):
        i = 0
        while (n is None or i < n) and not (stop is not None and stop.is_set()):
            r = self.records[self.next_id % len(self.records)]
            listing = ProductListing(productid=self.next_id, designation=f"{r.designation} #{self.next_id}"[:250],
                                     description=(r.description or "")[:600] or None,
                                     event_time=datetime.now(UTC))  # made when it is sent: latency from here
            self.next_id += 1
            i += 1
            yield listing


def wait_for(condition, timeout_s: float, every_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every_s)
    return condition()


def read_all(settings: Settings, topic: str) -> list:
    consumer = make_consumer(settings, group_id=f"soak-read-{uuid.uuid4().hex[:8]}",
                             **{"enable.partition.eof": False})
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    ends, assign = {}, []
    for p in metadata.partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
        if high > low:
            ends[p] = high
            assign.append(TopicPartition(topic, p, low))
    out, position = [], dict.fromkeys(ends, 0)
    consumer.assign(assign)
    deadline = time.monotonic() + 300
    while any(position[p] < ends[p] for p in ends) and time.monotonic() < deadline:
        for m in consumer.consume(1000, timeout=1.0):
            if m.error() is None:
                out.append(m)
                position[m.partition()] = m.offset() + 1
    consumer.close()
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def plot(out: Path, rows, samples: Samples, phases: dict[str, tuple[float, float]], t0_wall: float) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def decorate(ax, title: str, ylabel: str) -> None:
        for t, what in samples.labels:
            ax.axvline(t, color="grey", linestyle=":", linewidth=1)
            ax.text(t, ax.get_ylim()[1], what, rotation=90, va="top", ha="right", fontsize=7, color="grey")
        for name, (a, _) in phases.items():
            ax.axvline(a, color="black", linewidth=0.8)
            ax.text(a, ax.get_ylim()[0], f" {name}", fontsize=8, va="bottom")
        ax.set_title(title)
        ax.set_xlabel("seconds since start")
        ax.set_ylabel(ylabel)

    files = []
    stored = sorted(r.predicted_at.timestamp() - t0_wall for r in rows)
    width = 5.0
    if stored:
        bins = int(max(stored) // width) + 1
        counts = [0] * bins
        for t in stored:
            counts[int(t // width)] += 1
        fig, ax = plt.subplots(figsize=(10, 3.5))
        ax.plot([i * width for i in range(bins)], [c / width for c in counts], drawstyle="steps-post")
        decorate(ax, "Throughput: predictions stored per second (5 s bins)", "predictions / s")
        files.append(out / "throughput.png")
        fig.tight_layout()
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot([t for t, v in samples.lag if v is not None], [v for _, v in samples.lag if v is not None], ".-",
            markersize=2)
    decorate(ax, "Consumer lag (messages; gaps: broker down)", "lag")
    files.append(out / "lag.png")
    fig.tight_layout()
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    latency = sorted((r.predicted_at.timestamp() - t0_wall, (r.predicted_at - r.event_time).total_seconds())
                     for r in rows if r.event_time is not None)
    if latency:
        fig, ax = plt.subplots(figsize=(10, 3.5))
        bins: dict[int, list[float]] = {}
        for t, v in latency:
            bins.setdefault(int(t // width), []).append(v)
        xs = sorted(bins)
        ax.plot([x * width for x in xs], [percentile(bins[x], 0.5) for x in xs], label="p50")
        ax.plot([x * width for x in xs], [percentile(bins[x], 0.99) for x in xs], label="p99")
        ax.set_yscale("log")
        ax.legend()
        decorate(ax, "End-to-end latency, event time to stored prediction (5 s bins)", "seconds")
        files.append(out / "latency.png")
        fig.tight_layout()
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    return files


# --- the run -----------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="steady + fault phases together")
    parser.add_argument("--model", type=Path,
                        help="a model version directory (default: TF-IDF only, trained once into var/bench/soak-model)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--load", type=float, default=0.8, help="fraction of the measured capacity")
    parser.add_argument("--capacity-n", type=int, default=3000, help="backlog listings for the capacity phase")
    parser.add_argument("--db-outage-s", type=float, default=20.0)
    parser.add_argument("--out", type=Path, help="folder for the plots (default: var/bench/soak-<time>)")
    args = parser.parse_args()

    out = args.out or REPO / "var" / "bench" / f"soak-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    tmp.chmod(0o755)  # the private PostgreSQL runs as postgres
    records = load_dataset(args.data).records
    model_dir = args.model or tfidf_model(args.data, REPO / "var" / "bench" / "soak-model")
    broker = EmbeddedBroker(free_port(), tmp / "broker").start()
    pg = PrivatePostgres(tmp).init()
    worker = None
    samples = Samples()
    try:
        upgrade(pg.url)
        engine = make_engine(pg.url)
        manifest = read_manifest(model_dir)
        registry.register(engine, manifest, model_dir, None)
        registry.promote(engine, manifest.version)
        run = uuid.uuid4().hex[:6]
        settings = Settings(
            kafka={"bootstrap_servers": broker.bootstrap_servers}, database={"url": pg.url},
            cache={"ttl_seconds": 600}, topics={"partitions": 4, "products": f"soak-products-{run}",
                                                "predictions": f"soak-predictions-{run}",
                                                "dead_letters": f"soak-dlq-{run}"},
            worker={"group_id": f"soak-{run}", "instance_id": f"soak-worker-{run}", "metrics_port": free_port()})
        ensure_topics(settings)
        listings = Listings(records)

        # 1. capacity: a backlog, drained flat out
        with Publisher(settings, images="none") as publisher:
            backlog = publisher.publish(listings.take(args.capacity_n))
        env = os.environ | settings.as_environment() | {"PYTHONPATH": str(REPO), "COLUMNS": "200"}
        log_path = out / "worker.log"
        worker = subprocess.Popen([sys.executable, "-m", "rakuten_cli.main", "worker"], env=env, cwd=tmp,
                                  stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        sampler = Sampler(settings, worker.pid, samples)
        sampler.start()
        samples.mark(f"capacity: {backlog.sent} listings queued, worker started (pid {worker.pid})")
        assert wait_for(lambda: sampler.last_lag is not None and sampler.last_lag < backlog.sent, 180, 0.2), \
            f"the worker did not start consuming; see {log_path}"
        start = time.monotonic()
        assert wait_for(lambda: sampler.last_lag == 0, 900, 0.2), f"the backlog was not drained; see {log_path}"
        capacity = backlog.sent / (time.monotonic() - start)
        rate = args.load * capacity
        samples.mark(f"capacity {capacity:.0f}/s; soaking at {rate:.0f}/s")

        # 2-3. steady, then faults, at the same rate
        half = args.minutes * 60 / 2
        stop = threading.Event()
        published = {"acked": 0}

        def publish() -> None:
            # a broker crash forgets the last idempotent sequence numbers it acknowledged: the producer's
            # next request is refused as out of order, a fatal error. A producer application starts a new one.
            while not stop.is_set():
                with Publisher(settings, images="none", flush_timeout_s=120) as p:
                    try:
                        p.publish(listings.take(None, stop), rate=rate)
                    except KafkaException as exc:
                        samples.mark(f"publisher: {exc.args[0].str()[:60]}...; a new producer goes on")
                    finally:
                        published["acked"] += p.last_summary.sent if p.last_summary else 0

        first_soak_id = listings.next_id
        publisher = threading.Thread(target=publish, daemon=True)
        steady_from = samples.now()
        publisher.start()
        time.sleep(half)
        fault_from = samples.now()
        samples.mark("fault phase")
        time.sleep(half * 0.15)
        samples.mark("broker killed (SIGKILL)", "broker killed")
        os.killpg(broker._process.pid, signal.SIGKILL)
        broker._process.wait()
        broker._process = None
        broker.start(timeout_s=60)
        samples.mark("broker restarted", "broker up")
        time.sleep(max(1.0, half * 0.45 - (samples.now() - fault_from)))
        samples.mark("PostgreSQL stopped", "PostgreSQL stopped")
        pg.stop("immediate")
        time.sleep(args.db_outage_s)
        pg.start()
        samples.mark("PostgreSQL started", "PostgreSQL up")
        time.sleep(max(0.0, fault_from + half - samples.now()))
        stop.set()
        publisher.join(300)
        last_soak_id = listings.next_id
        drain_from = samples.now()
        samples.mark(f"publishing stopped ({published['acked']} acknowledged); draining")
        drained = wait_for(lambda: sampler.last_lag == 0, 300, 0.5)
        drained_after = samples.now() - drain_from
        samples.mark(f"lag 0 after {drained_after:.0f} s" if drained else "lag NOT 0 after 300 s")
        time.sleep(2)  # a last lag sample at 0, then stop the worker cleanly
        worker.send_signal(signal.SIGTERM)
        worker.wait(120)
        sampler.stop.set()
        sampler.join(10)
        end = samples.now()

        # 4. the count check, against what the topics and the table hold
        held = read_all(settings, settings.topics.products)
        predictions = read_all(settings, settings.topics.predictions)
        letters = read_all(settings, settings.topics.dead_letters)
        with engine.connect() as connection:
            rows = connection.execute(select(PredictionRow.productid, PredictionRow.event_time,
                                             PredictionRow.predicted_at)).all()
        held_ids = {json.loads(m.value())["productid"] for m in held}
        row_ids = {r.productid for r in rows}
        letter_count = len(letters)
        topic_ids = [json.loads(m.value())["productid"] for m in predictions]
        missing = held_ids - row_ids
        acked_total = backlog.sent + published["acked"]
        final_lag = sampler.last_lag
        balanced = len(held_ids) == len(held_ids & row_ids) + letter_count

        t0_wall = time.time() - (samples.now())  # wall clock of samples.t0
        phases = {"capacity": (0.0, steady_from), "steady": (steady_from, fault_from), "faults": (fault_from,
                  drain_from), "drain": (drain_from, end)}
        print("\n== soak figures ==")
        print(f"model {manifest.version} (TF-IDF only), {args.minutes:g} min soak + capacity + drain, "
              f"4 partitions, batch {settings.worker.batch_max_messages}")
        print(f"capacity {capacity:.0f} listings/s (backlog of {backlog.sent}); load {rate:.0f}/s "
              f"({args.load:.0%})")
        soak_ids = set(range(first_soak_id, last_soak_id))
        for name, (a, b) in phases.items():
            if name == "capacity":
                continue
            if name == "drain":
                print(f"drain    lag 0 {drained_after:.0f} s after publishing stopped" if drained
                      else "drain    lag NOT 0 300 s after publishing stopped")
                continue
            span = [r for r in rows if r.productid in soak_ids and a <= r.event_time.timestamp() - t0_wall < b]
            lat = [(r.predicted_at - r.event_time).total_seconds() for r in span]
            lags = [v for t, v in samples.lag if a <= t < b and v is not None]
            p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
            print(f"{name:8s} {len(span):6d} listings  e2e p50 {p50 or 0:7.3f} s  p99 {p99 or 0:7.3f} s  "
                  f"lag max {max(lags) if lags else '-'}  mean {statistics.fmean(lags) if lags else 0:.0f}")
        rss = [v for _, v in samples.rss_mb]
        print(f"worker RSS: start {rss[0]:.0f} MB, max {max(rss):.0f} MB, end {rss[-1]:.0f} MB")
        print("lag over time (s: messages): " + ", ".join(
            f"{t:.0f}: {v if v is not None else 'down'}" for t, v in samples.lag[:: max(1, len(samples.lag) // 40)]))
        print("count check (against the products topic as it holds, not the publisher's acks; a broker crash "
              "loses about the last second of acknowledged writes, BROKER.md gap 3):")
        print(f"  publisher acknowledged {acked_total}; products topic holds {len(held)} "
              f"({len(held_ids)} distinct); lost by the broker {acked_total - len(held_ids)}")
        print(f"  held = rows + dead letters: {len(held_ids)} = {len(held_ids & row_ids)} + {letter_count} -> "
              f"{'OK' if balanced else 'MISMATCH'} ({len(missing)} held listings without a row)")
        print(f"  rows {len(rows)} ({len(row_ids - held_ids)} for listings the broker lost after they were read); "
              f"duplicate rows 0 (primary key); predictions topic {len(topic_ids)} records, "
              f"{len(topic_ids) - len(set(topic_ids))} duplicates (at-least-once redelivery)")
        print(f"  final lag {final_lag}")
        files = plot(out, [r for r in rows if r.event_time is not None], samples, phases, t0_wall)
        (out / "figures.json").write_text(json.dumps({
            "capacity_per_s": capacity, "rate_per_s": rate, "acked": acked_total, "held": len(held_ids),
            "rows": len(rows), "rows_for_held": len(held_ids & row_ids), "dead_letters": letter_count,
            "missing": len(missing), "topic_duplicates": len(topic_ids) - len(set(topic_ids)),
            "final_lag": final_lag, "rss_max_mb": max(rss), "events": samples.events}, indent=1))
        print(f"plots and figures: {out} ({', '.join(f.name for f in files)}, figures.json, worker.log)")
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        broker.stop()
        try:
            pg.stop("fast")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
