"""The `rakuten-stream` command: one console script, a subcommand per job.

Start-up stays light: the command modules import their heavy libraries (sqlalchemy, onnxruntime,
the training stack, ...) inside the commands, so `rakuten-stream lag --help` pays for none of them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import typer

from rakuten_cli import demo, infra_commands, model_commands, stream_commands, worker_commands
from rakuten_cli.context import configure_logging
from rakuten_cli.errors import ReportingGroup, print_error
from rakuten_stream.settings import Settings

app = typer.Typer(help="Classify Rakuten product listings streaming through Kafka.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False, cls=ReportingGroup)


def _version(value: bool) -> None:
    if value:
        try:
            print(f"rakuten-stream {version('rakuten-stream')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            print("rakuten-stream (not installed)")
        raise typer.Exit(0)


@app.callback()
def main(
    ctx: typer.Context,
    bootstrap_servers: str = typer.Option(None, "--bootstrap-servers", help="Kafka (RAKUTEN_KAFKA_BOOTSTRAP_SERVERS)"),
    database_url: str = typer.Option(None, "--database-url", help="SQLAlchemy URL (RAKUTEN_DATABASE_URL)"),
    redis_url: str = typer.Option(None, "--redis-url", help="Redis URL (RAKUTEN_REDIS_URL)"),
    model_dir: Path = typer.Option(None, "--model-dir", help="model artifacts (RAKUTEN_MODEL_DIR)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="print the version and exit"),
) -> None:
    configure_logging(verbose)
    ctx.ensure_object(dict)["settings"] = Settings().with_overrides(
        kafka={"bootstrap_servers": bootstrap_servers}, database={"url": database_url},
        cache={"redis_url": redis_url}, models={"dir": model_dir},
    )


app.command("broker")(infra_commands.broker)
app.command("init-db")(infra_commands.init_db)
app.command("doctor")(infra_commands.doctor)
app.command("config")(infra_commands.show_config)
# -- publish / results / lag (producers and downstream consumers) --
app.command("publish")(stream_commands.publish)
app.command("label")(stream_commands.label)
app.command("results")(stream_commands.results)
app.command("lag")(stream_commands.lag)
# -- training and the model registry --
app.command("load-data")(model_commands.load_data)
app.command("train")(model_commands.train)
app.command("score")(model_commands.score)
app.add_typer(model_commands.models_app, name="models")
app.command("retrain-worker")(model_commands.retrain_worker)
app.command("request-retrain")(model_commands.request_retrain)
app.command("retrain-jobs")(model_commands.retrain_jobs)
# -- the stream worker, replay and the demo --
app.command("worker")(worker_commands.worker)
app.command("replay")(worker_commands.replay)
app.command("demo")(demo.demo)
# -- the HTTP service and its page --
from rakuten_cli import http_commands  # noqa: E402

app.command("serve")(http_commands.serve)
# -- the drift consumer and its reports --
from rakuten_cli import drift_commands  # noqa: E402

app.command("drift-consumer")(drift_commands.drift_consumer)
app.add_typer(drift_commands.drift_app, name="drift")


def run() -> None:
    """The console script: the app, with bad flags and values as one line and exit code 2 too (the app
    itself reports the other errors a user can fix: :mod:`rakuten_cli.errors`)."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:  # Ctrl-C outside a command's own handling
        raise SystemExit(130) from None
    except typer.TyperException as exc:  # a bad flag or value (typer's click exceptions)
        message = exc.format_message()
        if "\n" in message:  # `rakuten-stream` alone: the help, as it is
            print(message)
            raise SystemExit(exc.exit_code) from None
        context = getattr(exc, "ctx", None)
        hint = f" (see `{context.command_path} --help`)" if context is not None else ""
        print_error(message + hint)
        raise SystemExit(exc.exit_code) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()
