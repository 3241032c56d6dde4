"""The API routes: predict, publish, read back, feedback, health, metrics, the live view's data."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import select, text

from http_service.auth import API_KEY_HEADER, check_key
from http_service.listing_requests import NO_PRODUCT, ListingProblem, read_listings
from http_service.predictor import Refused
from http_service.publishing import PublishFailed
from http_service.service import Service
from schemas import CategoryScore, Label, Prediction, SourcePosition
from schemas.tables import PredictionRow

router = APIRouter()
FIELD_PREFIX = re.compile(r"^[a-z_]+(\.[a-z_]+)*$")
SSE_HEARTBEAT_S = 15.0


def service_of(request: Request) -> Service:
    return request.app.state.service


def require_key(request: Request, _: str | None = Depends(API_KEY_HEADER)) -> None:
    check_key(service_of(request).keys, request)


def listing_body(description: str) -> dict[str, Any]:
    """The OpenAPI request body of the routes that read listings themselves (JSON or a form)."""
    one = {"$ref": "#/components/schemas/PredictListing"}
    form = {"type": "object", "required": ["designation"], "properties": {
        "designation": {"type": "string"}, "description": {"type": "string"},
        "productid": {"type": "integer"}, "imageid": {"type": "integer"},
        "image": {"type": "string", "format": "binary", "description": "the photo"},
        "image_uri": {"type": "string", "description": "or the photo's file://, http(s):// URI"}}}
    return {"requestBody": {"required": True, "description": description, "content": {
        "application/json": {"schema": {"oneOf": [one, {"type": "array", "items": one}]}},
        "multipart/form-data": {"schema": form}}}}


PROBLEM = {"description": "bad input: `detail` lists each offending `field` with its `reason`"}


# -- predictions ------------------------------------------------------------------------------------
@router.post("/v1/predict", tags=["predictions"], response_model=None,
             responses={200: {"model": Prediction, "description": "a Prediction (a list of them for a list)"},
                        401: {}, 403: {}, 413: {}, 415: {}, 422: PROBLEM},
             openapi_extra=listing_body("one listing (products.v1 fields) or a list; the photo inline (base64), "
                                        "by URI or as a form upload"))
async def predict(request: Request) -> JSONResponse:
    """Classify listings now, on the workers' inference path (the same answer as `predictions.v1`).

    Concurrent requests share model calls (dynamic batching). Needs an API key when
    `RAKUTEN_HTTP_PREDICT_REQUIRES_KEY` is set."""
    service = service_of(request)
    if service.settings.http.predict_requires_key:
        check_key(service.keys, request)
    parsed = await read_listings(request, service.settings.http.max_listings, productid_required=False)
    answers = await service.batcher.submit(parsed.payloads)
    problems = []
    for i, answer in enumerate(answers):
        if isinstance(answer, Refused):
            field, _, _ = answer.error.partition(":")
            where = field if FIELD_PREFIX.match(field) else "(listing)"
            problems.append({"field": f"[{i}].{where}" if parsed.many else where,
                             "reason": f"{answer.reason}: {answer.error}"})
    if problems:
        raise ListingProblem(problems)
    out = [(a.model_copy(update={"productid": NO_PRODUCT}) if anonymous else a).model_dump(mode="json")
           for a, anonymous in zip(answers, parsed.anonymous, strict=True)]
    return JSONResponse(out if parsed.many else out[0])


@router.get("/v1/predictions/{productid}", tags=["predictions"], response_model=Prediction,
            responses={404: {"description": "no stored prediction for this product"}})
def stored_prediction(request: Request, productid: int,
                      model_version: str | None = Query(None, description="default: the latest")) -> Prediction:
    """The prediction a worker stored for a product (PostgreSQL), the newest first. The table keeps the
    prediction itself; the drift figures of `predictions.v1` (text_chars, modality_classes) are not stored."""
    query = select(PredictionRow).where(PredictionRow.productid == productid)
    if model_version is not None:
        query = query.where(PredictionRow.model_version == model_version)
    query = query.order_by(PredictionRow.predicted_at.desc(), PredictionRow.id.desc()).limit(1)
    with service_of(request).engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no stored prediction for productid {productid}"
                            + (f" and model version {model_version}" if model_version else ""))
    source = (SourcePosition(topic=row["source_topic"], partition=row["source_partition"], offset=row["source_offset"])
              if row["source_topic"] is not None else None)
    return Prediction(productid=row["productid"], prdtypecode=row["prdtypecode"], category=row["category"],
                      confidence=row["confidence"], top_k=[CategoryScore(**s) for s in row["top_k"]],
                      contributions=row["contributions"], modalities=row["modalities"],
                      model_version=row["model_version"], source=source, content_hash=row["content_hash"],
                      cached=row["cached"], event_time=row["event_time"], predicted_at=row["predicted_at"])


@router.get("/v1/model", tags=["predictions"])
def model(request: Request) -> dict[str, Any]:
    """The model version serving now (it changes on promotion, without a restart)."""
    runtime = service_of(request).predictor.runtime
    return {"version": runtime.version, "provider": runtime.provider, "classes": len(runtime.classes),
            "modalities": [m for m in ("tfidf", "e5", "image") if getattr(runtime.manifest, m) is not None]}


# -- writes (API key) -------------------------------------------------------------------------------
class Accepted(BaseModel):
    topic: str
    productids: list[int]


class LabelFeedback(BaseModel):
    productid: int = Field(..., gt=0)
    prdtypecode: int = Field(..., description="the true category code")
    source: str | None = Field(None, max_length=200, description="who says so")


@router.post("/v1/listings", tags=["stream"], status_code=202, response_model=Accepted,
             dependencies=[Depends(require_key)], responses={401: {}, 403: {}, 413: {}, 422: PROBLEM, 503: {}},
             openapi_extra=listing_body("one listing (products.v1, productid required) or a list"))
async def publish_listings(request: Request) -> Accepted:
    """Publish listings to `products.v1` for the workers; 202 once the broker has them."""
    service = service_of(request)
    parsed = await read_listings(request, service.settings.http.max_listings, productid_required=True)
    messages, limit = [], service.settings.topics.max_message_bytes
    for i, listing in enumerate(parsed.listings):
        value = listing.to_bytes()
        if len(value) > limit:
            raise ListingProblem([{"field": f"[{i}]" if parsed.many else "(listing)",
                                   "reason": f"{len(value)} bytes is over the topic's {limit}-byte message limit"}],
                                 status_code=413)
        messages.append((listing.key, value))
    topic = service.settings.topics.products
    await _send(service, topic, messages)
    return Accepted(topic=topic, productids=[listing.productid for listing in parsed.listings])


@router.post("/v1/labels", tags=["stream"], status_code=202, response_model=Accepted,
             dependencies=[Depends(require_key)], responses={401: {}, 403: {}, 422: PROBLEM, 503: {}})
async def publish_label(request: Request, feedback: LabelFeedback) -> Accepted:
    """Feedback: a listing's true category, to `labels.v1` (the drift consumer joins it)."""
    service = service_of(request)
    runtime = service.predictor.runtime
    if str(feedback.prdtypecode) not in {str(c) for c in runtime.classes}:
        raise ListingProblem([{"field": "prdtypecode",
                               "reason": f"{feedback.prdtypecode} is not a category of model {runtime.version}"}])
    label = Label(productid=feedback.productid, prdtypecode=feedback.prdtypecode, source=feedback.source)
    topic = service.settings.topics.labels
    await _send(service, topic, [(str(label.productid).encode(), label.to_bytes())])
    return Accepted(topic=topic, productids=[label.productid])


async def _send(service: Service, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    try:
        await run_in_threadpool(service.writer.send, topic, messages)
    except PublishFailed as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None


# -- operations -------------------------------------------------------------------------------------
@router.get("/healthz", tags=["operations"])
def healthz() -> dict[str, str]:
    """The process lives and answers."""
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], responses={503: {"description": "not ready: see `checks`"}})
def readyz(request: Request) -> JSONResponse:
    """Ready to serve: a model is loaded, the broker and the database answer."""
    service = service_of(request)
    checks: dict[str, str] = {"model": service.predictor.runtime.version}
    try:
        service.admin.list_topics(timeout=2.0)
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["broker"] = f"unreachable: {exc}"
    try:
        with service.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["database"] = f"unreachable: {type(exc).__name__}"
    ready = checks["broker"] == "ok" and checks["database"] == "ok"
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", tags=["operations"], response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, dynamic batches, the model version, inference time."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# -- the page's data --------------------------------------------------------------------------------
@router.get("/v1/examples", tags=["page"])
def examples(request: Request) -> dict[str, list[dict]]:
    """Listings of the real sample (from the configured data folder; empty without one)."""
    return {"examples": [e.as_dict() for e in service_of(request).examples.all()]}


@router.get("/v1/examples/{productid}/image", tags=["page"], response_class=FileResponse)
def example_image(request: Request, productid: int) -> FileResponse:
    path = service_of(request).examples.image_path(productid)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no example photo for productid {productid}")
    return FileResponse(path)


@router.get("/v1/stream/stats", tags=["page"])
async def stream_stats(request: Request) -> dict[str, Any]:
    """Throughput of `predictions.v1`, the workers' lag on `products.v1`, the latest drift window."""
    service = service_of(request)
    pulse = await run_in_threadpool(service.pulse.measure)
    return pulse | {"model_version": service.predictor.runtime.version}


@router.get("/v1/stream/predictions", tags=["page"], response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "server-sent events `prediction`, data: a Prediction"}})
async def stream_predictions(request: Request) -> StreamingResponse:
    """The latest predictions of the stream, then each new one as it arrives (server-sent events)."""
    tail = service_of(request).tail
    queue = tail.subscribe()

    async def events():
        try:
            yield "retry: 3000\n\n"
            for text in list(tail.recent):
                yield f"event: prediction\ndata: {text}\n\n"
            while not await request.is_disconnected():
                try:
                    text = await asyncio.wait_for(queue.get(), SSE_HEARTBEAT_S)
                except TimeoutError:
                    yield ": heartbeat\n\n"
                    continue
                yield f"event: prediction\ndata: {text}\n\n"
        finally:
            tail.unsubscribe(queue)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
