"""`rakuten-stream demo`: the whole system on one machine, on embedded defaults.

Embedded broker (unless Kafka already answers), SQLite unless a database URL is set, Redis if
it answers. Trains a model if none is in production, starts a worker, publishes listings the
model has not been trained on, shows the predictions arriving, and sums up.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from inference import registry
from producers.publisher import Publisher
from producers.synthetic import write_synthetic_dataset
from rakuten_cli.context import console, settings_of
from rakuten_cli.model_commands import run_training
from rakuten_stream.clients.lag import consumer_lag
from rakuten_stream.clients.results import PredictionStream
from rakuten_stream.database import make_engine, upgrade
from rakuten_stream.datasets import load_dataset
from rakuten_stream.doctor import check_kafka
from rakuten_stream.embedded_broker import EmbeddedBroker
from rakuten_stream.kafka import ensure_topics
from rakuten_stream.settings import Settings, redact_url
from stream_workers.worker import Worker

DEMO_DIR = Path("var/demo")


def demo(
    ctx: typer.Context,
    data: Path = typer.Option(None, "--data", help="Rakuten data (flat or challenge layout); default: synthetic"),
    limit: int = typer.Option(300, help="how many held-out listings to stream"),
    e5: bool = typer.Option(None, "--e5/--no-e5", help="train the e5 text model (default: on with --data)"),
    images: str = typer.Option("inline", help="how images travel: inline | uri | none"),
) -> None:
    """Train if needed, start a worker, stream listings through Kafka, show the predictions."""
    settings = settings_of(ctx)
    broker = _kafka(settings)
    try:
        _run(settings, data, limit, e5 if e5 is not None else data is not None, images)
    finally:
        if broker is not None:
            broker.stop()


def _kafka(settings: Settings) -> EmbeddedBroker | None:
    if check_kafka(settings, timeout_s=2).ok:
        console.print(f"Kafka answers at {settings.kafka.bootstrap_servers}: using it")
        return None
    broker = EmbeddedBroker(settings.broker.port, settings.broker.data_dir)
    broker.start()
    console.print(f"started the embedded Kafka-compatible broker at {broker.bootstrap_servers}")
    return broker


def _run(settings: Settings, data: Path | None, limit: int, use_e5: bool, images: str) -> None:
    url = settings.database.url.get_secret_value()
    upgrade(url)
    engine = make_engine(url)
    if data is None:
        data = DEMO_DIR / "synthetic"
        if not (data / "products.csv").is_file():
            write_synthetic_dataset(data)
        console.print(f"using synthetic French listings in {data} (pass --data DIR for the real sample)")
    if registry.production(engine) is None:
        console.rule("training a first model")
        run_training(settings, data, e5=use_e5)
    production = registry.production(engine)
    console.rule(f"streaming with model {production.version}")
    stream_rows = _held_out(data, production.parameters)[:limit]

    ensure_topics(settings)
    worker = Worker(settings, engine=engine)
    thread = threading.Thread(target=worker.run, name="worker", daemon=True)
    thread.start()
    reader = PredictionStream(settings, group_id=f"demo-{uuid.uuid4().hex[:8]}", from_beginning=True, follow=True)
    started_at = datetime.now(UTC)
    labels = {r.productid: r.prdtypecode for r in stream_rows}
    seen: dict[int, int] = {}
    start = time.monotonic()
    with Publisher(settings, images=images) as publisher:
        publisher.publish(stream_rows)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("predictions arriving", total=len(stream_rows))
        deadline = time.monotonic() + 600
        for prediction in reader:
            fresh = prediction.predicted_at >= started_at  # not from an earlier demo run
            if fresh and prediction.productid in labels and prediction.productid not in seen:
                seen[prediction.productid] = prediction.prdtypecode
                progress.advance(task)
            if len(seen) >= len(labels) or time.monotonic() > deadline:
                break
    elapsed = time.monotonic() - start
    reader.close()
    worker.stop()
    thread.join(60)
    _summary(settings, production.version, labels, seen, elapsed, worker)


def _held_out(data: Path, parameters: dict):
    """The rows the production model did not train on (same split as training), else all rows."""
    from training.pipeline import TrainConfig, split_dataset

    dataset = load_dataset(data)
    config = (parameters or {}).get("config") or {}
    if Path(str(config.get("data", ""))).resolve() != data.resolve():
        return dataset.records  # a model trained elsewhere: every row is new to it
    _, test, _ = split_dataset(dataset, TrainConfig(data=data, model_dir=Path("."), seed=config.get("seed", 20240535),
                                                    test_size=config.get("test_size", 0.2)))
    return test.records


def _summary(settings: Settings, version: str, labels: dict, seen: dict, elapsed: float, worker: Worker) -> None:
    from sklearn.metrics import f1_score

    truth = np.asarray([labels[p] for p in seen])
    pred = np.asarray([seen[p] for p in seen])
    lag = consumer_lag(settings, settings.worker.group_id, settings.topics.products)
    table = Table(title="rakuten-stream demo", show_header=False)
    table.add_row("model version", version)
    table.add_row("listings streamed", f"{len(labels)} ({len(seen)} predicted, "
                  f"{worker.stats.dead_lettered} dead letters)")
    table.add_row("throughput", f"{len(seen) / elapsed:.1f} predictions/s end to end ({elapsed:.1f}s)")
    if len(seen):
        table.add_row("weighted F1 (labelled rows)", f"{f1_score(truth, pred, average='weighted'):.4f}")
    table.add_row("consumer lag", ", ".join(f"p{p.partition}={p.lag}" for p in lag))
    table.add_row("predictions topic", f"{settings.topics.predictions} @ {settings.kafka.bootstrap_servers}")
    table.add_row("database", redact_url(settings.database.url.get_secret_value()))
    table.add_row("try next", "rakuten-stream results --from-beginning --no-follow | rakuten-stream models list")
    console.print(table)
