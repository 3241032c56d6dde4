"""`worker` and `replay`: the stream side of the service."""

from __future__ import annotations

import signal

import typer

from rakuten_cli.context import console, settings_of
from rakuten_stream.database import upgrade
from rakuten_stream.metrics import ServiceMetrics
from stream_workers.model_watcher import NoModelError
from stream_workers.worker import Worker


def worker(
    ctx: typer.Context,
    group: str = typer.Option(None, help="consumer group (RAKUTEN_WORKER_GROUP_ID)"),
    instance_id: str = typer.Option(None, help="static group.instance.id (RAKUTEN_WORKER_INSTANCE_ID)"),
    batch_size: int = typer.Option(None, help="max messages per micro-batch (RAKUTEN_BATCH_MAX_MESSAGES)"),
    metrics_port: int = typer.Option(None, help="Prometheus port, 0 = off (RAKUTEN_METRICS_PORT)"),
) -> None:
    """Consume product listings, classify them in micro-batches, write predictions; SIGTERM stops cleanly."""
    settings = settings_of(ctx).with_overrides(worker_group_id=group, worker_instance_id=instance_id,
                                               batch_max_messages=batch_size, metrics_port=metrics_port)
    upgrade(settings.database_url.get_secret_value())
    metrics = ServiceMetrics()
    metrics.serve(settings.metrics_port)
    running = Worker(settings, metrics)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: running.stop())
    try:
        stats = running.run()
    except NoModelError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    console.print(f"worker stopped: {stats.consumed} consumed, {stats.predicted} predicted, "
                  f"{stats.dead_lettered} dead-lettered, {stats.cache_hits} from cache, models {stats.model_versions}")
