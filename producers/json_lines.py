"""Listings as JSON lines on a stream (``rakuten-stream publish --data -``), read lazily.

Each line is one of:
- a ``products.v1`` message (it has ``image`` or ``schema_version``): sent as it is;
- a dataset row: ``productid``, ``designation`` and optionally ``description``, ``imageid``,
  ``image_path`` (relative paths are taken from the current directory) — the publisher's image
  mode then decides how the image travels.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from rakuten_stream.datasets import DatasetError, ListingRecord
from schemas import MessageError, ProductListing


def read_json_lines(stream: TextIO | None = None, name: str = "<stdin>") -> Iterator[ListingRecord | ProductListing]:
    """Yield one listing per non-blank line; a malformed line raises ``DatasetError`` naming it."""
    stream = sys.stdin if stream is None else stream
    for line_no, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{name}:{line_no}: not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{name}:{line_no}: expected a JSON object, got {type(row).__name__}")
        if "image" in row or "schema_version" in row:
            try:
                yield ProductListing.from_bytes(line)
            except MessageError as exc:
                raise DatasetError(f"{name}:{line_no}: {exc}") from None
            continue
        try:
            yield ListingRecord(
                productid=int(row["productid"]),
                designation=str(row["designation"]),
                description=row.get("description") or None,
                imageid=int(row["imageid"]) if row.get("imageid") else None,
                image_path=Path(row["image_path"]).expanduser() if row.get("image_path") else None,
            )
        except KeyError as exc:
            raise DatasetError(f"{name}:{line_no}: missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{name}:{line_no}: {exc}") from None
