"""`broker`, `init-db`, `doctor`, `config`: the ground the rest stands on."""

from __future__ import annotations

import json
import signal
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console

from rakuten_cli.context import console, settings_of
from rakuten_cli.errors import database_url
from rakuten_cli.signals import stopping_on_signals
from rakuten_stream.redaction import redact

out = Console(highlight=False, soft_wrap=True)  # data to stdout


def broker(
    ctx: typer.Context,
    port: int = typer.Option(None, help="Kafka port on 127.0.0.1 (default: RAKUTEN_BROKER_PORT or 19092)"),
    data_dir: Path = typer.Option(None, help="where the broker keeps its data (default: var/broker)"),
) -> None:
    """Run the embedded Kafka-compatible broker (noida-db) on loopback until Ctrl-C / SIGTERM."""
    from rakuten_stream.embedded_broker import EmbeddedBroker

    settings = settings_of(ctx)
    embedded = EmbeddedBroker(port or settings.broker.port, data_dir or settings.broker.data_dir)
    embedded.start()
    console.print(f"[green]Kafka ready[/] at [bold]{embedded.bootstrap_servers}[/] "
                  f"(data in {embedded.data_dir}); Ctrl-C stops it")

    try:
        with stopping_on_signals(embedded.terminate, (signal.SIGTERM,)):
            embedded.wait()
    except KeyboardInterrupt:
        embedded.stop()
    console.print("broker stopped (data saved)")


def init_db(ctx: typer.Context) -> None:
    """Create or upgrade the database schema (Alembic migrations)."""
    from rakuten_stream.database import upgrade

    url = database_url(settings_of(ctx), wait=True)
    upgrade(url)
    console.print(f"[green]database ready[/] at {redact(url)}")


def doctor(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="one JSON object per service on stdout (a JSON list)"),
) -> None:
    """Check Kafka, the database and Redis; say what is reachable and what to do about the rest.
    Exit 1 when Kafka or the database is down (Redis is optional)."""
    from rich.table import Table

    from rakuten_stream.doctor import run_checks

    results = run_checks(settings_of(ctx))
    if as_json:
        print(json.dumps([asdict(r) | {"seconds": round(r.seconds, 3)} for r in results], indent=2))
    else:
        table = Table("service", "status", "target", "detail", "what to do", title="rakuten-stream doctor")
        for r in results:
            status = "[green]ok[/]" if r.ok else "[red]unreachable[/]"
            table.add_row(r.name, status, r.target, f"{r.detail} ({r.seconds:.2f}s)", r.advice)
        out.print(table)
    required_down = [r for r in results if not r.ok and r.name != "redis"]
    raise typer.Exit(1 if required_down else 0)


def show_config(ctx: typer.Context) -> None:
    """Print the effective settings (secrets masked)."""
    print(json.dumps(settings_of(ctx).redacted(), indent=2, default=str))
