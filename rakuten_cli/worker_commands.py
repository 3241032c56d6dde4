"""`worker` and `replay`: the stream side of the service."""

from __future__ import annotations

import typer

from rakuten_cli.context import console, settings_of
from rakuten_cli.errors import database_url, fail, require_kafka
from rakuten_cli.signals import stopping_on_signals


def worker(
    ctx: typer.Context,
    group: str = typer.Option(None, help="consumer group (RAKUTEN_WORKER_GROUP_ID)"),
    instance_id: str = typer.Option(None, help="static group.instance.id, a stable one only (StatefulSet pod name); "
                                                 "unset: dynamic membership (RAKUTEN_WORKER_INSTANCE_ID)"),
    batch_size: int = typer.Option(None, help="max messages per micro-batch (RAKUTEN_BATCH_MAX_MESSAGES)"),
    metrics_port: int = typer.Option(None, help="Prometheus port, 0 = off (RAKUTEN_METRICS_PORT)"),
    migrate: bool = typer.Option(True, "--migrate/--no-migrate",
                                 help="migrate the database schema at start (off where a job runs `init-db`)"),
) -> None:
    """Consume product listings, classify them in micro-batches, write predictions; SIGTERM stops cleanly."""
    from rakuten_stream.database import upgrade
    from rakuten_stream.health import serve_health
    from rakuten_stream.metrics import PrometheusObserver
    from stream_workers.worker import Worker

    settings = settings_of(ctx).with_overrides(worker={"group_id": group, "instance_id": instance_id,
                                                       "batch_max_messages": batch_size, "metrics_port": metrics_port})
    require_kafka(settings)
    url = database_url(settings, wait=True)  # a database down at start: retried with backoff, then one line
    if migrate:
        upgrade(url)
    metrics = PrometheusObserver()
    running = Worker(settings, metrics)
    # /metrics, /healthz (the loop makes progress) and /readyz (model loaded, sinks answer) on one port
    server = serve_health(running.health, metrics.registry, settings.worker.metrics_port)
    try:
        with stopping_on_signals(running.stop):
            stats = running.run()  # without a loadable production model it waits for one (not ready, saying why)
    finally:
        if server is not None:
            server.close()
    console.print(f"worker stopped: {stats.consumed} consumed, {stats.predicted} predicted, "
                  f"{stats.dead_lettered} dead-lettered, {stats.cache_hits} from cache, models {stats.model_versions}")


def replay(
    ctx: typer.Context,
    from_: str = typer.Option(..., "--from", help="offset, ISO time (2026-11-23T10:00Z), time:EPOCH_MS, beginning"),
    to: str = typer.Option("end", "--to", help="same forms; exclusive; default: the end of the topic now"),
    partitions: str = typer.Option(None, help="comma-separated partitions (default: all)"),
    model_version: str = typer.Option(None, "--model-version", help="registered version (default: production)"),
) -> None:
    """Reprocess a range of the products topic (backfill); resumable: rerun the same command to continue."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rakuten_stream.database import upgrade
    from stream_workers.replay import Replayer, plan_replay

    settings = settings_of(ctx)
    require_kafka(settings)
    upgrade(database_url(settings))
    try:
        chosen = [int(p) for p in partitions.split(",")] if partitions else None
    except ValueError:
        fail(f"--partitions {partitions!r}: comma-separated partition numbers, e.g. 0,2")
    plan = plan_replay(settings, from_, to, chosen, model_version)  # a ReplayError is one line (errors.py)
    replayer = Replayer(settings, plan, model_version)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[remaining]} remaining"), TimeElapsedColumn())
    with stopping_on_signals(replayer.stop), Progress(*columns, console=console) as progress:
        task = progress.add_task(f"replay {plan.start} -> {plan.end}", total=plan.total, remaining=plan.total)

        def show(stats) -> None:
            progress.update(task, completed=plan.total - stats.remaining, remaining=stats.remaining)

        stats = replayer.run(show)
    state = "done" if stats.remaining == 0 else f"interrupted, {stats.remaining} left (run again to resume)"
    console.print(f"replay with {stats.model_version}: {stats.processed} messages, {stats.predicted} predictions, "
                  f"{stats.dead_lettered} dead letters; {state} (group {plan.group_id})")
