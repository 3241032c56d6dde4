"""`publish`, `label`, `results`, `lag`: putting listings on the stream, reading what comes out, watching the gap.

Exit codes: 0 done; 1 some listings failed (`publish`) or a partition's lag is over `--max-lag`
(`lag`); 2 bad input or nothing to measure (missing file or column, unknown topic, Kafka down).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from rakuten_cli.context import console, settings_of
from rakuten_cli.errors import KAFKA_TIMEOUT_S, fail, require_kafka
from rakuten_cli.signals import sigterm_interrupts, stopping_on_signals

if TYPE_CHECKING:
    from producers.publisher import PublishSummary
    from rakuten_stream.clients.lag import LagProbe, PartitionLag
    from schemas import Prediction

out = Console(highlight=False, soft_wrap=True)  # data goes to stdout, messages and progress to stderr
TIMEOUT_HELP = "seconds to wait for Kafka to answer before saying it is unreachable"


class ImageMode(StrEnum):
    inline = "inline"
    uri = "uri"
    none = "none"


class OutputFormat(StrEnum):
    table = "table"
    jsonl = "jsonl"


# -- publish ----------------------------------------------------------------------------------------
def publish(
    ctx: typer.Context,
    data: str = typer.Option(..., "--data", "-d", help="a data folder (challenge or flat layout), a .csv or .jsonl "
                                                       "file, or - for JSON lines on stdin"),
    images: ImageMode = typer.Option(ImageMode.inline, "--images",
                                     help="inline: the image bytes in the message; uri: a file:// URI the workers "
                                          "read; none: text only"),
    limit: int = typer.Option(None, "--limit", min=0, help="publish at most N listings"),
    rate: float = typer.Option(None, "--rate", min=0.01, help="at most N messages per second (default: unpaced)"),
    as_json: bool = typer.Option(False, "--json", help="the summary as one JSON object on stdout"),
    timeout: float = typer.Option(KAFKA_TIMEOUT_S, "--timeout", min=0.1, help=TIMEOUT_HELP),
) -> None:
    """Publish product listings to the products topic, keyed by productid."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from producers.json_lines import read_json_lines
    from producers.publisher import Publisher, PublishProgress
    from rakuten_stream.datasets import DatasetError, load_dataset

    settings = settings_of(ctx)
    if data == "-":
        records, total, origin = read_json_lines(sys.stdin), limit, "stdin"
    else:
        try:
            dataset = load_dataset(Path(data), limit=limit)
        except DatasetError as exc:
            fail(str(exc))
        records, total = dataset.records, len(dataset.records)
        origin = f"{dataset.path} ({dataset.layout} layout, {dataset.with_images} with images)"
    require_kafka(settings, timeout)
    console.print(f"publishing to [bold]{settings.topics.products}[/] at {settings.kafka.bootstrap_servers} "
                  f"from {origin}, images {images.value}" + (f", {rate:g} msg/s" if rate else ""), highlight=False,
                  soft_wrap=True)

    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[delivered]} acked"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("publishing", total=total, delivered=0)
        last_update = 0.0

        def on_progress(p: PublishProgress) -> None:
            nonlocal last_update
            now = time.monotonic()
            if now - last_update >= 0.1 or p.queued == p.total:
                last_update = now
                bar.update(task, completed=p.queued, delivered=p.delivered)

        publisher = None
        try:
            with sigterm_interrupts(), Publisher(settings, images=images.value) as publisher:
                summary = publisher.publish(records, limit=limit, rate=rate, progress=on_progress)
            bar.update(task, completed=summary.sent + summary.failed, delivered=summary.sent)
        except (DatasetError, KeyboardInterrupt) as exc:
            # a malformed line on stdin, or Ctrl-C: what was queued before it has been flushed
            partial = publisher.last_summary if publisher is not None else None
            if partial is not None:
                _print_summary(partial, as_json)
            if isinstance(exc, KeyboardInterrupt):
                fail("interrupted", 130)
            fail(str(exc))
    _print_summary(summary, as_json)
    raise typer.Exit(1 if summary.failed else 0)


def _print_summary(summary: PublishSummary, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"sent": summary.sent, "failed": summary.failed, "bytes": summary.bytes,
                          "seconds": round(summary.seconds, 3),
                          "messages_per_second": round(summary.messages_per_second, 1),
                          "megabytes_per_second": round(summary.megabytes_per_second, 3),
                          "errors": summary.errors}), flush=True)
        return
    colour = "green" if not summary.failed else "yellow"
    console.print(
        f"[{colour}]sent {summary.sent}[/], failed {summary.failed}, {summary.bytes / 1e6:.2f} MB in "
        f"{summary.seconds:.2f}s: {summary.messages_per_second:,.0f} msg/s, "
        f"{summary.megabytes_per_second:.2f} MB/s", highlight=False, soft_wrap=True)
    for error in summary.errors[:10]:
        console.print(f"  [yellow]-[/] {error}", highlight=False, soft_wrap=True)


# -- label ------------------------------------------------------------------------------------------
def label(
    ctx: typer.Context,
    data: str = typer.Option(..., "--data", "-d", help="a .csv or .jsonl file with productid and prdtypecode "
                                                       "(source, event_time optional), or - for stdin"),
    source: str = typer.Option(None, "--source", help="where the labels come from, for rows that do not say"),
    as_json: bool = typer.Option(False, "--json", help="the summary as one JSON object on stdout"),
    timeout: float = typer.Option(KAFKA_TIMEOUT_S, "--timeout", min=0.1, help=TIMEOUT_HELP),
) -> None:
    """Publish labels (a listing's true category, feedback for drift and retraining) to the labels topic.

    Bad rows are reported with their line and reason and not sent; the good ones are. Exit 1 when a
    row was bad or not delivered.
    """
    from producers.labels import LabelPublisher, read_labels

    settings = settings_of(ctx)
    try:
        if data == "-":
            rows = read_labels(sys.stdin, "-", source)
        else:
            with open(data, encoding="utf-8") as handle:
                rows = read_labels(handle, data, source)
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {data}: {getattr(exc, 'strerror', None) or exc}")
    except ValueError as exc:
        fail(str(exc))
    if not rows.labels and not rows.bad:
        fail(f"{data}: no labels in it")
    require_kafka(settings, timeout)
    sent = None
    if rows.labels:
        with sigterm_interrupts(), LabelPublisher(settings) as publisher:
            sent = publisher.publish(rows.labels)
    summary = {"sent": sent.sent if sent else 0, "failed": sent.failed if sent else 0, "bad_rows": len(rows.bad),
               "topic": settings.topics.labels, "format": rows.format,
               "errors": [str(b) for b in rows.bad[:50]] + (sent.errors if sent else [])}
    if as_json:
        print(json.dumps(summary), flush=True)
    else:
        colour = "green" if not (summary["failed"] or rows.bad) else "yellow"
        console.print(f"[{colour}]sent {summary['sent']} label(s)[/] to {summary['topic']}, "
                      f"{len(rows.bad)} bad row(s), {summary['failed']} not delivered", highlight=False, soft_wrap=True)
        for error in summary["errors"][:20]:
            console.print(f"  [yellow]-[/] {error}", highlight=False, soft_wrap=True)
    raise typer.Exit(1 if summary["failed"] or rows.bad else 0)


# -- results ----------------------------------------------------------------------------------------
ROW = "{:>12}  {:>6}  {:<42}  {:>5}  {:<24}  {:<18}  {}"


def results(
    ctx: typer.Context,
    from_beginning: bool = typer.Option(False, "--from-beginning",
                                        help="a group without committed offsets starts at the earliest prediction "
                                             "(default: only new ones)"),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="keep waiting for new predictions, or stop at "
                                                                   "the end of the topic"),
    output: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table for people, jsonl for programs"),
    limit: int = typer.Option(None, "--limit", min=1, help="stop after N predictions"),
    group: str = typer.Option(None, "--group", help="consumer group; its offsets are committed, so the next run "
                                                    "resumes (default: a throwaway group that commits nothing)"),
    timeout: float = typer.Option(KAFKA_TIMEOUT_S, "--timeout", min=0.1, help=TIMEOUT_HELP),
) -> None:
    """Print the predictions written by the workers (the table with category names; jsonl as on the topic)."""
    from rakuten_stream.clients.results import PredictionStream
    from rakuten_stream.datasets import load_categories

    settings = settings_of(ctx)
    require_kafka(settings, timeout)
    categories = load_categories(settings.models.data_dir)
    group_id = group or f"rakuten-results-{uuid.uuid4().hex[:12]}"
    shown = 0
    try:
        with sigterm_interrupts(), PredictionStream(settings, group_id, from_beginning=from_beginning,
                                                     follow=follow, commit=group is not None) as stream:
            if output is OutputFormat.table:
                out.print(ROW.format("productid", "code", "category", "conf", "model", "modalities", "predicted at"))
            for prediction in stream:
                _print_prediction(prediction, categories, output)
                shown += 1
                if limit is not None and shown >= limit:
                    stream.ack()  # printed: handled
                    break
            skipped = stream.skipped
    except KeyboardInterrupt:
        skipped = 0
    note = f", {skipped} invalid message(s) skipped" if skipped else ""
    console.print(f"{shown} prediction(s) from {settings.topics.predictions}{note}", highlight=False, soft_wrap=True)


def _print_prediction(prediction: Prediction, categories: dict[int, str], output: OutputFormat) -> None:
    if output is OutputFormat.jsonl:  # the message contract, as on the topic (category as in top_k)
        print(prediction.model_dump_json(exclude_none=True), flush=True)
        return
    name = categories.get(prediction.prdtypecode, prediction.category)
    out.print(ROW.format(prediction.productid, prediction.prdtypecode, name[:42], f"{prediction.confidence:.2f}",
                         prediction.model_version, ",".join(prediction.modalities)[:18],
                         prediction.predicted_at.isoformat(timespec="seconds")))


# -- lag ----------------------------------------------------------------------------------------------
def lag(
    ctx: typer.Context,
    group: str = typer.Option(None, "--group", help="consumer group (default: the workers' group)"),
    topic: str = typer.Option(None, "--topic", help="topic (default: the products topic)"),
    watch: float = typer.Option(None, "--watch", min=0.1, help="measure again every SECONDS until Ctrl-C"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per measurement on stdout"),
    max_lag: int = typer.Option(None, "--max-lag", min=0, help="exit 1 when a partition's lag exceeds N"),
    metrics_port: int = typer.Option(None, "--metrics-port", min=1,
                                     help="with --watch: serve the rakuten_consumer_lag gauge on this port"),
    groups: bool = typer.Option(False, "--list-groups", help="list the consumer groups and exit"),
    timeout: float = typer.Option(KAFKA_TIMEOUT_S, "--timeout", min=0.1, help=TIMEOUT_HELP),
) -> None:
    """Consumer lag per partition (committed offset, high watermark, lag, time behind)."""
    from confluent_kafka import KafkaException
    from rich.live import Live

    from rakuten_stream.clients.lag import LagError, LagProbe
    from rakuten_stream.metrics import PrometheusObserver

    settings = settings_of(ctx)
    group_id = group or settings.worker.group_id
    topic_name = topic or settings.topics.products
    if metrics_port is not None and watch is None:
        fail("--metrics-port needs --watch (the gauge must be refreshed)")
    if watch is None:  # an exporter (--watch) waits for Kafka to come back instead
        require_kafka(settings, timeout)
    metrics = PrometheusObserver() if metrics_port is not None else None
    code = 0
    # Ctrl-C / SIGTERM end a --watch between measurements, never inside a librdkafka call
    stop = threading.Event()
    try:
        with stopping_on_signals(stop.set), LagProbe(settings) as probe:
            if groups:
                _print_groups(probe, as_json)
                raise typer.Exit(0)
            if metrics is not None:
                metrics.serve(metrics_port)
            # redraw in place on a terminal; print one table per measurement into pipes and logs
            live = Live(console=out, auto_refresh=False) if watch and not as_json and out.is_terminal else None
            if live is not None:
                live.start()
            try:
                while not stop.is_set():
                    try:
                        lags = probe.consumer_lag(group_id, topic_name)
                    except (LagError, KafkaException) as exc:
                        if watch is None:
                            raise
                        # watching (an exporter): say so and measure again, the topic may come back
                        code = 2
                        console.print(f"[yellow]cannot measure:[/] {exc}", highlight=False, soft_wrap=True)
                        stop.wait(watch)
                        continue
                    code = 1 if max_lag is not None and any(p.lag > max_lag for p in lags) else 0
                    if metrics is not None:
                        metrics.lag_measured(group_id, topic_name, lags)
                    if as_json:
                        print(json.dumps(_lag_document(group_id, topic_name, lags, max_lag)), flush=True)
                    elif live is not None:
                        live.update(_lag_table(group_id, topic_name, lags, max_lag), refresh=True)
                    else:
                        out.print(_lag_table(group_id, topic_name, lags, max_lag))
                    if watch is None:
                        break
                    stop.wait(watch)
            finally:
                if live is not None:
                    live.stop()
    except LagError as exc:
        fail(str(exc))
    if code and not as_json:
        console.print(f"[red]lag over {max_lag}[/] on at least one partition", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _print_groups(probe: LagProbe, as_json: bool) -> None:
    from rich.table import Table

    found = probe.list_groups()
    if as_json:
        print(json.dumps([{"group": g.group_id, "state": g.state, "simple": g.simple} for g in found]))
        return
    table = Table("group", "state", title="consumer groups")
    for g in found:
        table.add_row(g.group_id, g.state)
    out.print(table)


def _lag_document(group: str, topic: str, lags: list[PartitionLag], max_lag: int | None) -> dict[str, object]:
    return {
        "group": group, "topic": topic, "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "total_lag": sum(p.lag for p in lags), "max_lag": max_lag,
        "exceeded": max_lag is not None and any(p.lag > max_lag for p in lags),
        "partitions": [p.as_dict() for p in lags],
    }


def _lag_table(group: str, topic: str, lags: list[PartitionLag], max_lag: int | None):
    from rich.table import Table

    table = Table(title=f"lag of {group} on {topic}", caption=datetime.now().strftime("%H:%M:%S"))
    for header in ("partition", "committed", "high watermark", "lag", "behind"):
        table.add_column(header, justify="right")
    for p in lags:
        over = max_lag is not None and p.lag > max_lag
        table.add_row(str(p.partition), "-" if p.committed is None else str(p.committed), str(p.high_watermark),
                      f"[red]{p.lag}[/]" if over else str(p.lag), format_duration(p.seconds_behind))
    oldest = max((p.seconds_behind for p in lags if p.seconds_behind is not None), default=None)
    table.add_section()
    table.add_row("total", "", str(sum(p.high_watermark for p in lags)), str(sum(p.lag for p in lags)),
                  format_duration(oldest))
    return table


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(seconds)
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
