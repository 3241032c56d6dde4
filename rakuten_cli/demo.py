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
from typing import TYPE_CHECKING

import typer

from rakuten_cli.context import console, settings_of
from rakuten_cli.errors import database_url
from rakuten_cli.stream_commands import ImageMode
from rakuten_stream.redaction import redact
from rakuten_stream.settings import Settings

if TYPE_CHECKING:
    from rakuten_stream.datasets import Dataset
    from rakuten_stream.embedded_broker import EmbeddedBroker
    from schemas.tables import ModelVersion
    from stream_workers.worker import Worker

DEMO_DIR = Path("var/demo")


def demo(
    ctx: typer.Context,
    data: Path = typer.Option(None, "--data", help="Rakuten data (flat or challenge layout); default: synthetic"),
    limit: int = typer.Option(300, min=1, help="how many held-out listings to stream"),
    e5: bool = typer.Option(None, "--e5/--no-e5", help="train the e5 text model (default: on with --data)"),
    images: ImageMode = typer.Option(ImageMode.inline, "--images", help="how images travel"),
    port: int = typer.Option(None, "--port", min=1, max=65535,
                             help="the embedded broker's port (default: RAKUTEN_BROKER_PORT or 19092); use another "
                                  "one when something else answers there"),
) -> None:
    """Train if needed, start a worker, stream listings through Kafka, show the predictions."""
    from producers.synthetic import write_synthetic_dataset
    from rakuten_stream.datasets import load_dataset

    settings = settings_of(ctx)
    if port is not None:
        settings = settings.with_overrides(broker={"port": port}, kafka={"bootstrap_servers": f"127.0.0.1:{port}"})
    if data is None:
        data = DEMO_DIR / "synthetic"
        if not (data / "products.csv").is_file():
            write_synthetic_dataset(data)
        console.print(f"using synthetic French listings in {data} (pass --data DIR for the real sample)")
    dataset = load_dataset(data)  # a missing or malformed folder is one line, before anything starts
    broker = _kafka(settings, port)
    try:
        _run(settings, dataset, limit, e5 if e5 is not None else data != DEMO_DIR / "synthetic", images.value,
             broker, port)
    finally:
        if broker is not None:
            broker.stop()


def _kafka(settings: Settings, port: int | None) -> EmbeddedBroker | None:
    from rakuten_stream.doctor import check_kafka
    from rakuten_stream.embedded_broker import EmbeddedBroker

    if check_kafka(settings, timeout_s=2).ok:
        console.print(f"Kafka already answers at {settings.kafka.bootstrap_servers}, not started by this demo (a "
                      "`rakuten-stream broker`, another demo, or your cluster): using it. `--port N` starts the "
                      "demo's own broker on port N instead.", highlight=False, soft_wrap=True)
        return None
    broker = EmbeddedBroker(settings.broker.port, settings.broker.data_dir)
    broker.start()
    console.print(f"started the embedded Kafka-compatible broker at {broker.bootstrap_servers} (it stops with the "
                  "demo; its data stays in " f"{settings.broker.data_dir})", highlight=False, soft_wrap=True)
    return broker


def _model_for(settings: Settings, engine, dataset: Dataset, use_e5: bool) -> ModelVersion:
    """The production model if it was trained on this very dataset snapshot; else one trained on it now."""
    from inference import registry
    from rakuten_cli.model_commands import run_training

    snapshot = dataset.content_hash()
    production = registry.production(engine)
    if production is not None and production.snapshot_id == snapshot:
        console.print(f"model {production.version} (production) was trained on this data (snapshot "
                      f"{snapshot[:12]}): using it", highlight=False, soft_wrap=True)
        return production
    why = ("no model in production yet" if production is None else
           f"the production model {production.version} was trained on other data (snapshot "
           f"{(production.snapshot_id or '?')[:12]}, not {snapshot[:12]})")
    console.print(f"training a model on {dataset.path}: {why}", highlight=False, soft_wrap=True)
    console.rule("training")
    result = run_training(settings, dataset.path, e5=use_e5)
    trained = registry.get_version(engine, result["version"])
    if trained.stage != "production":
        console.print(f"[yellow]the quality gate kept {trained.version} as a candidate[/]: streaming with the "
                      f"production model {production.version}, trained on other data", highlight=False)
        return registry.production(engine)
    return trained


def _run(settings: Settings, dataset: Dataset, limit: int, use_e5: bool, images: str,
         broker: EmbeddedBroker | None, port: int | None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from producers.publisher import Publisher
    from rakuten_stream.clients.results import PredictionStream
    from rakuten_stream.database import make_engine, upgrade
    from rakuten_stream.kafka import ensure_topics
    from stream_workers.worker import Worker

    url = database_url(settings)
    upgrade(url)
    engine = make_engine(url)
    production = _model_for(settings, engine, dataset, use_e5)
    console.rule(f"streaming with model {production.version}")
    stream_rows = _held_out(dataset, production.parameters)[:limit]

    if images == "uri" and not settings.images.file_roots:  # the worker may read the demo's own images
        roots = sorted({r.image_path.resolve().parent for r in stream_rows if r.image_path is not None})
        settings = settings.with_overrides(images={"file_roots": roots})
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
    _summary(settings, production, dataset, labels, seen, elapsed, worker)
    _try_next(settings, dataset, broker, port)


def _held_out(dataset: Dataset, parameters: dict):
    """The rows the model did not train on (the same split as its training), else all rows."""
    from training.pipeline import TrainConfig, split_dataset

    config = (parameters or {}).get("config") or {}
    if Path(str(config.get("data", ""))).resolve() != dataset.path.resolve():
        return dataset.records  # a model trained elsewhere: every row is new to it
    _, test, _ = split_dataset(dataset, TrainConfig(data=dataset.path, model_dir=Path("."),
                                                    seed=config.get("seed", 20240535),
                                                    test_size=config.get("test_size", 0.2)))
    return test.records


def _summary(settings: Settings, model: ModelVersion, dataset: Dataset, labels: dict, seen: dict, elapsed: float,
             worker: Worker) -> None:
    import numpy as np
    from rich.console import Console
    from rich.table import Table
    from sklearn.metrics import f1_score

    from rakuten_stream.clients.lag import consumer_lag

    truth = np.asarray([labels[p] for p in seen])
    pred = np.asarray([seen[p] for p in seen])
    lag = consumer_lag(settings, settings.worker.group_id, settings.topics.products)
    table = Table(title="rakuten-stream demo", show_header=False)
    table.add_row("model version", f"{model.version} (trained on snapshot {(model.snapshot_id or '?')[:12]})")
    table.add_row("data", f"{dataset.path} (snapshot {dataset.content_hash()[:12]})")
    table.add_row("listings streamed", f"{len(labels)} ({len(seen)} predicted, "
                  f"{worker.stats.dead_lettered} dead letters)")
    table.add_row("throughput", f"{len(seen) / elapsed:.1f} predictions/s end to end ({elapsed:.1f}s)")
    if len(seen):
        table.add_row("weighted F1 (labelled rows)", f"{f1_score(truth, pred, average='weighted'):.4f}")
    table.add_row("consumer lag", ", ".join(f"p{p.partition}={p.lag}" for p in lag))
    table.add_row("predictions topic", f"{settings.topics.predictions} @ {settings.kafka.bootstrap_servers}")
    table.add_row("database", redact(settings.database.url.get_secret_value()))
    Console(highlight=False).print(table)  # the result: stdout


def _try_next(settings: Settings, dataset: Dataset, broker: EmbeddedBroker | None, port: int | None) -> None:
    """Commands that work after the demo has exited (its broker stops with it: they start it again)."""
    kafka = f" --bootstrap-servers {settings.kafka.bootstrap_servers}" if port is not None else ""
    lines = ["try next:", "  rakuten-stream models list"]
    if broker is not None:
        lines.append(f"  rakuten-stream broker{f' --port {port}' if port is not None else ''}   "
                     "# in another terminal: the demo's broker again, with its data")
    lines += [f"  rakuten-stream{kafka} results --from-beginning --no-follow --limit 10",
              f"  rakuten-stream{kafka} lag",
              f"  rakuten-stream score --data {dataset.path} --out predictions.csv"]
    console.print("\n".join(lines), highlight=False, soft_wrap=True, markup=False)
