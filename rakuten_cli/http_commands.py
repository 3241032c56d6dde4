"""`serve`: the HTTP service and its web page (FastAPI + uvicorn; the `serve` extra)."""

from __future__ import annotations

import typer

from rakuten_cli.context import console, settings_of


def serve(
    ctx: typer.Context,
    host: str = typer.Option(None, help="address to listen on (RAKUTEN_HTTP_HOST, default 127.0.0.1)"),
    port: int = typer.Option(None, help="port (RAKUTEN_HTTP_PORT, default 8000)"),
    batching: bool = typer.Option(True, help="gather concurrent requests into micro-batches"),
) -> None:
    """Predictions over HTTP (POST /v1/predict, OpenAPI at /docs) and the web page at /."""
    try:
        import uvicorn

        from http_service.app import create_app
    except ImportError as exc:
        console.print(f"[red]{exc.name} is missing:[/] pip install 'rakuten-stream[serve]'")
        raise typer.Exit(2) from None
    settings = settings_of(ctx).with_overrides(http={"host": host, "port": port})
    # a missing model fails the app's startup: uvicorn logs the reason and exits with status 3
    uvicorn.run(create_app(settings, batching=batching), host=settings.http.host, port=settings.http.port,
                log_level="info", access_log=False, timeout_graceful_shutdown=10)
