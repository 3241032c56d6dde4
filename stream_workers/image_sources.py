"""Getting a listing's image bytes: inline, file:// or http(s)://, with timeouts and size limits."""

from __future__ import annotations

import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlparse


class ImageFetchError(OSError):
    pass


def fetch(uri: str, timeout_s: float, max_bytes: int) -> bytes:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ImageFetchError(f"{uri}: {exc.strerror or exc}") from None
        if size > max_bytes:
            raise ImageFetchError(f"{uri}: {size} bytes is over the {max_bytes}-byte limit")
        return path.read_bytes()
    if parsed.scheme in ("http", "https"):
        request = urllib.request.Request(uri, headers={"User-Agent": "rakuten-stream"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - scheme checked
                data = response.read(max_bytes + 1)
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ImageFetchError(f"{uri}: {exc}") from None
        if len(data) > max_bytes:
            raise ImageFetchError(f"{uri}: over the {max_bytes}-byte limit")
        return data
    raise ImageFetchError(f"{uri}: unsupported scheme {parsed.scheme!r}")


def fetch_many(uris: dict[int, str], timeout_s: float, max_bytes: int, threads: int = 8
               ) -> dict[int, bytes | ImageFetchError]:
    """Fetch a batch's URIs concurrently (one slow server does not serialise the batch)."""
    if not uris:
        return {}

    def one(item: tuple[int, str]) -> tuple[int, bytes | ImageFetchError]:
        key, uri = item
        try:
            return key, fetch(uri, timeout_s, max_bytes)
        except ImageFetchError as exc:
            return key, exc

    if len(uris) == 1 or all(u.startswith("file://") for u in uris.values()):
        return dict(map(one, uris.items()))
    with ThreadPoolExecutor(max_workers=min(threads, len(uris))) as pool:
        return dict(pool.map(one, uris.items()))
