"""The app factory: ``create_app(settings)`` builds the FastAPI application of ``rakuten-stream serve``.

At start (the lifespan) the app opens what its routes use, as one :class:`Service` object: the
database engine, the workers' inference path (:class:`Predictor`) behind the dynamic batcher, a
background task that swaps in a promoted model version between batches, the Kafka writer, the
live view and the example listings. At stop it closes them in reverse order. Routes reach the
service through ``request.app.state.service``; nothing is global.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine

from http_service import page, routes
from http_service.auth import ApiKeys
from http_service.batcher import DynamicBatcher
from http_service.body_limit import BodySizeLimit
from http_service.examples import ExampleListings
from http_service.listing_requests import ListingProblem, PredictListing, problems_of
from http_service.live import PredictionTail, StreamPulse
from http_service.metrics import HttpMetrics, RequestMetrics
from http_service.predictor import Predictor
from http_service.publishing import TopicWriter
from http_service.service import Service
from rakuten_stream.cache import PredictionCache
from rakuten_stream.database import make_engine, ping
from rakuten_stream.health import DependencyChecks
from rakuten_stream.kafka import ensure_topics, make_admin
from rakuten_stream.settings import Settings

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
MODEL_CHECK_EVERY_S = 2.0


def create_app(settings: Settings, *, batching: bool = True, engine: Engine | None = None) -> FastAPI:
    """The application; ``batching=False`` gives every request its own model call (for comparison)."""
    metrics = HttpMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(ensure_topics, settings)  # as a worker does: the control topic included
        db = engine or make_engine(settings.database.url.get_secret_value())
        cache = None
        if settings.cache.enabled:
            cache = PredictionCache(settings.cache.redis_url.get_secret_value(), settings.cache.ttl_seconds)
        predictor = await asyncio.to_thread(Predictor, settings, db, metrics.service, cache)
        # as in the worker: Redis and the database asked now and then, the gauges follow them down and up
        checks = DependencyChecks(metrics.service, settings.worker.health_check_every_s, database=lambda: ping(db),
                                  cache=cache.ping if cache is not None else None)
        await asyncio.to_thread(checks.start)
        h = settings.http
        batcher = DynamicBatcher(predictor.run_batch, max_items=h.batch_max_listings if batching else 1,
                                 max_wait_ms=h.batch_max_wait_ms if batching else 0, on_batch=metrics.record_batch)
        await batcher.start()
        service = Service(settings, db, metrics, ApiKeys(h.api_keys), predictor, batcher, TopicWriter(settings),
                          PredictionTail(settings), StreamPulse(settings, db),
                          ExampleListings(settings.models.data_dir), make_admin(settings))
        app.state.service = service
        watch = asyncio.create_task(_follow_promotions(service), name="model-promotions")
        log.info("serving model %s (%s), dynamic batching %s", predictor.runtime.version, predictor.runtime.provider,
                 f"up to {h.batch_max_listings} listings or {h.batch_max_wait_ms} ms" if batching else "off")
        try:
            yield
        finally:
            checks.close()
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            await batcher.aclose()
            service.tail.close()
            service.pulse.close()
            await asyncio.to_thread(service.writer.close)
            predictor.close()
            if engine is None:
                db.dispose()
            del app.state.service  # the Kafka clients go with the last reference

    app = FastAPI(title="rakuten-stream", version="1",
                  summary="Categories of Rakuten France listings, on the inference path of the stream workers.",
                  lifespan=lifespan)
    app.include_router(routes.router)
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(BodySizeLimit, max_bytes=settings.http.max_body_bytes)

    @app.exception_handler(ListingProblem)
    async def listing_problem(_: Request, exc: ListingProblem) -> JSONResponse:
        return JSONResponse({"detail": exc.problems}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": problems_of(exc.errors())}, status_code=422)

    app.openapi = lambda: _openapi(app)
    app.state.metrics = metrics
    return app


async def _follow_promotions(service: Service) -> None:
    """Between batches, on the batch thread: switch to a newly promoted model version."""
    while True:
        await asyncio.sleep(MODEL_CHECK_EVERY_S)
        try:
            await service.batcher.run_on_model_thread(service.predictor.reload_if_promoted)
        except Exception:  # a failed reload keeps the current version serving
            log.exception("checking for a promoted model version failed")


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema plus the listing bodies the predict and listings routes read themselves."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        listing = PredictListing.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(listing.pop("$defs", {}))
        components["PredictListing"] = listing
        app.openapi_schema = schema
    return app.openapi_schema
