"""The `rakuten-stream` command: one console script, a subcommand per job."""

from __future__ import annotations

from pathlib import Path

import typer

from rakuten_cli import demo, infra_commands, model_commands, worker_commands
from rakuten_cli.context import configure_logging
from rakuten_stream.settings import Settings

app = typer.Typer(help="Classify Rakuten product listings streaming through Kafka.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)


@app.callback()
def main(
    ctx: typer.Context,
    bootstrap_servers: str = typer.Option(None, "--bootstrap-servers", help="Kafka (RAKUTEN_KAFKA_BOOTSTRAP_SERVERS)"),
    database_url: str = typer.Option(None, "--database-url", help="SQLAlchemy URL (RAKUTEN_DATABASE_URL)"),
    redis_url: str = typer.Option(None, "--redis-url", help="Redis URL (RAKUTEN_REDIS_URL)"),
    model_dir: Path = typer.Option(None, "--model-dir", help="model artifacts (RAKUTEN_MODEL_DIR)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
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
from rakuten_cli import stream_commands  # noqa: E402

app.command("publish")(stream_commands.publish)
app.command("results")(stream_commands.results)
app.command("lag")(stream_commands.lag)
# -- training and the model registry --
app.command("load-data")(model_commands.load_data)
app.command("train")(model_commands.train)
app.command("score")(model_commands.score)
app.add_typer(model_commands.models_app, name="models")
app.command("retrain-worker")(model_commands.retrain_worker)
app.command("request-retrain")(model_commands.request_retrain)
# -- the stream worker, replay and the demo --
app.command("worker")(worker_commands.worker)
app.command("replay")(worker_commands.replay)
app.command("demo")(demo.demo)

if __name__ == "__main__":
    app()
