"""`drift-consumer`, `drift list` and `drift show`: the drift side of the learning loop."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import typer

from rakuten_cli.context import console, settings_of
from rakuten_cli.errors import database_url, fail, require_kafka

drift_app = typer.Typer(help="Drift reports of the drift consumer (one per closed window).", no_args_is_help=True)


def drift_consumer(
    ctx: typer.Context,
    window_messages: int = typer.Option(None, help="predictions per window (RAKUTEN_DRIFT_WINDOW_MESSAGES)"),
    window_seconds: float = typer.Option(None, help="longest window in seconds (RAKUTEN_DRIFT_WINDOW_SECONDS)"),
    metrics_port: int = typer.Option(None, help="Prometheus port, 0 = off (RAKUTEN_DRIFT_METRICS_PORT)"),
    migrate: bool = typer.Option(
        True, "--migrate/--no-migrate", help="migrate the database schema at start (off where a job runs `init-db`)"
    ),
) -> None:
    """Window the predictions (and the labels that come back), compare each window with the production
    version's reference profile, store drift reports, and raise one retrain request per drift episode."""
    import redis

    from rakuten_stream.database import make_engine, upgrade
    from rakuten_stream.kafka import ensure_topics
    from stream_workers.drift.app import run
    from stream_workers.drift.consumer import WindowJudge
    from stream_workers.drift.monitor import DriftMetrics
    from stream_workers.drift.triggers import RetrainGate

    settings = settings_of(ctx).with_overrides(
        drift={"window_messages": window_messages, "window_seconds": window_seconds, "metrics_port": metrics_port}
    )
    require_kafka(settings)
    url = database_url(settings)
    if migrate:
        upgrade(url)
    ensure_topics(settings)
    metrics = DriftMetrics()
    metrics.serve(settings.drift.metrics_port)
    gate = RetrainGate(
        redis.Redis.from_url(settings.cache.redis_url.get_secret_value(), socket_timeout=5),
        settings.drift.cooldown_seconds,
        prefix=f"rakuten:drift:retrain:{settings.drift.app_id}",  # shared by the consumers of one group
    )
    judge = WindowJudge(settings, make_engine(url), gate, metrics)
    console.print(
        f"drift consumer {settings.drift.app_id}: windows of {settings.drift.window_messages} predictions "
        f"or {settings.drift.window_seconds:g}s, state in {settings.drift.data_dir}"
    )
    run(settings, judge)


@drift_app.command("list")
def list_reports(
    ctx: typer.Context,
    limit: int = typer.Option(20, help="most recent windows first"),
    model_version: str = typer.Option(None, "--model-version"),
    as_json: bool = typer.Option(False, "--json", help="one JSON array on stdout"),
) -> None:
    """The latest drift reports: window, predictions, labels, score/threshold, F1 (estimated, true), triggers."""
    from rich.table import Table

    from rakuten_stream.database import make_engine, upgrade
    from stream_workers.drift import reports

    url = database_url(settings_of(ctx))
    upgrade(url)
    rows = [reports.summary(r) for r in reports.list_reports(make_engine(url), limit, model_version)]
    if as_json:
        for r in rows:
            r.pop("metrics")
        print(json.dumps(rows, indent=2))
        return
    table = Table(
        "report", "window end", "preds", "labels", "score / threshold", "est. F1", "true F1", "triggers", "retrain"
    )
    for r in rows:
        score = "-" if r["drift_score"] is None else f"{r['drift_score']:.2f} / {r['drift_threshold']:.2f}"
        table.add_row(
            r["report_id"],
            r["window_end"][:19],
            str(r["n_predictions"]),
            str(r["n_labels"]),
            score,
            _f(r["estimated_f1"]),
            _f(r["true_f1"]),
            ", ".join(r["triggers"]) or "-",
            (r["retrain_request_id"] or "-")[:8],
        )
    console.print(table)


@drift_app.command("show")
def show(
    ctx: typer.Context,
    report_id: str = typer.Argument(..., help="an id from `drift list`"),
    html: Path = typer.Option(None, "--html", help="write Evidently's HTML report there (alarming windows have one)"),
) -> None:
    """One drift report in full (JSON on stdout): figures, tests, Evidently's per-column results, triggers."""
    from rakuten_stream.database import make_engine, upgrade
    from stream_workers.drift import reports

    url = database_url(settings_of(ctx))
    upgrade(url)
    row = reports.get_report(make_engine(url), report_id)
    if row is None:
        fail(f"no drift report {report_id!r} (see `rakuten-stream drift list`)", code=1)
    print(json.dumps(reports.summary(row), indent=2, default=str))
    if html is not None:
        if row.report_html_gz is None:
            fail(
                f"drift report {report_id} has no HTML report (RAKUTEN_DRIFT_HTML_REPORTS keeps alarming windows')",
                code=1,
            )
        html.write_bytes(gzip.decompress(row.report_html_gz))
        console.print(f"HTML report written to {html}")


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
