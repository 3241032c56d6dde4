"""Example listings for the page, from the real sample in the configured data folder.

One listing with a photo from each of the first categories (then one text-only listing), read
once from ``settings.models.data_dir`` when it holds a dataset; an empty list otherwise. Their
photos are served by product id only: no path ever comes from the request.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from rakuten_stream.datasets import DatasetError, ListingRecord, load_categories, load_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    record: ListingRecord
    category: str

    def as_dict(self) -> dict:
        r = self.record
        return {"productid": r.productid, "designation": r.designation, "description": r.description,
                "prdtypecode": r.prdtypecode, "category": self.category,
                "image_url": f"/v1/examples/{r.productid}/image" if r.image_path is not None else None}


class ExampleListings:
    def __init__(self, data_dir: Path | None, count: int = 8) -> None:
        self.data_dir = data_dir
        self.count = count
        self._examples: list[Example] | None = None
        self._lock = threading.Lock()

    def all(self) -> list[Example]:
        with self._lock:
            if self._examples is None:
                self._examples = self._load()
            return self._examples

    def image_path(self, productid: int) -> Path | None:
        for example in self.all():
            if example.record.productid == productid:
                return example.record.image_path
        return None

    def _load(self) -> list[Example]:
        if self.data_dir is None or not Path(self.data_dir).is_dir():
            return []
        try:
            records = load_dataset(self.data_dir).records
            names = load_categories(self.data_dir)
        except DatasetError as exc:
            log.warning("no example listings from %s: %s", self.data_dir, exc)
            return []
        chosen: dict[int, ListingRecord] = {}
        for record in records:
            if record.image_path is not None and record.prdtypecode is not None and record.prdtypecode not in chosen:
                chosen[record.prdtypecode] = record
            if len(chosen) == self.count - 1:
                break
        picked = list(chosen.values())
        text_only = next((r for r in records if r.image_path is None and r.description), None)
        if text_only is not None:
            picked.append(text_only)
        return [Example(r, names.get(r.prdtypecode, str(r.prdtypecode))) for r in picked]
