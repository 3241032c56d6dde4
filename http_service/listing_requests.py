"""Reading listings out of a request: JSON (one object or a list) or a multipart form.

The fields are those of ``products.v1``; the image comes inline (``image.data``, base64), by
reference (``image.uri``, fetched under the workers' policy) or, in a form, as an uploaded file.
Each listing is validated against the ``products.v1`` contract here, so a bad request is a 422
naming the field (``[1].designation``, ``image``) before it reaches a batch; what the workers'
decoding refuses beyond that (a payload that is not an image, a limit) is a 422 too, with their
reason code. ``POST /v1/predict`` may leave ``productid`` out: the answer then carries 0.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from schemas import ProductImage, ProductListing

NO_PRODUCT = 0  # the productid of an answer to a listing that came without one
_PLACEHOLDER_ID = 1  # what such a listing carries through the workers' decoding (productid must be > 0)
FORM_FIELDS = ("productid", "imageid", "designation", "description", "image_uri")


class ListingProblem(Exception):
    """Bad input: one entry per offending field, each naming it and saying what is wrong."""

    def __init__(self, problems: list[dict[str, str]], status_code: int = 422) -> None:
        super().__init__("; ".join(f"{p['field']}: {p['reason']}" for p in problems))
        self.problems = problems
        self.status_code = status_code


class PredictListing(BaseModel):
    """A listing to classify: the ``products.v1`` fields, ``productid`` optional (OpenAPI schema)."""

    productid: int | None = Field(None, gt=0, description="echoed in the answer (0 when left out)")
    imageid: int | None = Field(None, gt=0)
    designation: str = Field(..., description="the listing's title (French)")
    description: str | None = None
    image: ProductImage | None = Field(None, description="inline base64 (`data`) or a `uri`, not both")
    schema_version: str = "1.0"


@dataclass(frozen=True)
class ParsedListings:
    listings: list[ProductListing]
    payloads: list[bytes]  # each listing as products.v1 JSON, as a worker would read it
    anonymous: list[bool]  # came without a productid
    many: bool  # the body was a list (answer with a list)


def problems_of(errors: Sequence[Any], prefix: str = "") -> list[dict[str, str]]:
    """pydantic's errors as ``{"field", "reason"}`` entries (the shape of every 4xx detail here)."""
    out = []
    for error in errors:
        field = ".".join(str(p) for p in error["loc"] if p not in ("body",))
        out.append({"field": f"{prefix}{field}" if field else (prefix.rstrip(".") or "(body)"),
                    "reason": error["msg"]})
    return out


async def read_listings(request: Request, max_listings: int, productid_required: bool) -> ParsedListings:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ListingProblem([{"field": "(body)", "reason": f"not JSON: {exc}"}]) from None
        many = isinstance(body, list)
        entries = body if many else [body]
    elif content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        many, entries = False, [await _form_listing(request)]
    else:
        reason = "send application/json, multipart/form-data or a urlencoded form"
        raise ListingProblem([{"field": "content-type", "reason": reason}], status_code=415)
    if not entries:
        raise ListingProblem([{"field": "(body)", "reason": "an empty list: give at least one listing"}])
    if len(entries) > max_listings:
        raise ListingProblem([{"field": "(body)",
                               "reason": f"{len(entries)} listings: at most {max_listings} per request"}])
    problems: list[dict[str, str]] = []
    listings, payloads, anonymous = [], [], []
    for i, entry in enumerate(entries):
        prefix = f"[{i}]." if many else ""
        if not isinstance(entry, dict):
            problems.append({"field": prefix.rstrip(".") or "(body)", "reason": "expected a JSON object (a listing)"})
            continue
        missing_id = entry.get("productid") is None
        if missing_id and productid_required:
            problems.append({"field": f"{prefix}productid", "reason": "Field required"})
            continue
        fields = entry | {"productid": _PLACEHOLDER_ID} if missing_id else entry
        try:
            listing = ProductListing.model_validate(fields)
        except ValidationError as exc:
            problems.extend(problems_of(exc.errors(), prefix))
            continue
        listings.append(listing)
        payloads.append(json.dumps(fields, ensure_ascii=False).encode())
        anonymous.append(missing_id)
    if problems:
        raise ListingProblem(problems)
    return ParsedListings(listings, payloads, anonymous, many)


async def _form_listing(request: Request) -> dict[str, Any]:
    form = await request.form(max_files=1, max_fields=len(FORM_FIELDS) + 1)
    entry: dict[str, Any] = {}
    for name in ("productid", "imageid"):
        value = form.get(name)
        if isinstance(value, str) and value.strip():
            entry[name] = value.strip()
    for name in ("designation", "description"):
        value = form.get(name)
        if isinstance(value, str) and (value.strip() or name == "designation"):
            entry[name] = value
    upload, uri = form.get("image"), form.get("image_uri")
    if isinstance(upload, UploadFile) and upload.filename is not None:
        data = await upload.read()
        if data:
            entry["image"] = {"data": base64.b64encode(data).decode("ascii"),
                              "content_type": upload.content_type}
    elif isinstance(uri, str) and uri.strip():
        entry["image"] = {"uri": uri.strip()}
    await form.close()
    return entry
