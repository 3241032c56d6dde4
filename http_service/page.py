"""The web page at ``/``: static HTML, CSS and JavaScript from ``static/`` (no build step, no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter()
INDEX = Path(__file__).parent / "static" / "index.html"


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(INDEX, media_type="text/html")
