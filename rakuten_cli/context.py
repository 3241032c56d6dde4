"""What every command shares: the settings (env + global flags) and the console."""

from __future__ import annotations

import logging

import typer
from rich.console import Console
from rich.logging import RichHandler

from rakuten_stream.redaction import RedactingFilter
from rakuten_stream.settings import Settings

console = Console(stderr=True)


def settings_of(ctx: typer.Context) -> Settings:
    return ctx.ensure_object(dict)["settings"]


def configure_logging(verbose: bool) -> None:
    handler = RichHandler(console=console, show_path=False, rich_tracebacks=True)
    handler.addFilter(RedactingFilter())  # no password reaches a log line, whoever logs it
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", datefmt="[%X]",
                        handlers=[handler], force=True)
    for noisy in ("alembic", "httpx", "urllib3", "librdkafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
