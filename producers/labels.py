"""Publish labels (feedback: a listing's true category) to ``labels.v1``.

    rows = read_labels(open("labels.csv"), "labels.csv")     # CSV or JSON lines
    with LabelPublisher(settings) as publisher:
        summary = publisher.publish(rows.labels)

- CSV needs the columns ``productid`` and ``prdtypecode`` (``source`` and ``event_time`` optional);
  JSON lines are objects with the same fields. ``-`` (stdin) is read as JSON lines when its first
  non-blank character is ``{``, as CSV otherwise.
- A bad row (not JSON, missing field, not an integer, not positive, unknown extra field types) is
  not sent: it is reported with its line number and the reason; the good rows are still sent.
- Each label is keyed by ``productid`` (every label of a product on one partition, in order), with
  the idempotent producer, and counted as sent only on its delivery report.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO

from pydantic import ValidationError

from rakuten_stream.kafka import (
    DeliveryTracker,
    ensure_topics,
    make_producer,
    produce_with_backpressure,
    service_topics,
)
from rakuten_stream.settings import Settings
from schemas import Label

REQUIRED = ("productid", "prdtypecode")


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class LabelRows:
    labels: list[Label] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    format: str = "csv"


@dataclass
class LabelSummary:
    sent: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def label_format(name: str, text: str) -> str:
    """``csv`` or ``jsonl``, from the file name, or from the content for stdin."""
    lowered = name.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    return "jsonl" if text.lstrip().startswith("{") else "csv"


def read_labels(handle: IO[str], name: str = "-", source: str | None = None) -> LabelRows:
    """Every row of ``handle`` as a :class:`Label` or a :class:`BadRow`; raises ValueError only when the
    input as a whole cannot be read (a CSV without the required columns)."""
    text = handle.read()
    fmt = label_format(name, text)
    rows = LabelRows(format=fmt)
    for line, raw in (_csv_rows(text, name) if fmt == "csv" else _jsonl_rows(text)):
        if isinstance(raw, str):
            rows.bad.append(BadRow(line, raw))
            continue
        label = _label(raw, source)
        if isinstance(label, str):
            rows.bad.append(BadRow(line, label))
        else:
            rows.labels.append(label)
    return rows


def _csv_rows(text: str, name: str) -> Iterable[tuple[int, dict | str]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if missing := [c for c in REQUIRED if c not in columns]:
        raise ValueError(f"{name}: missing column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'}); "
                         "labels need productid and prdtypecode")
    reader.fieldnames = columns
    for row in reader:
        line = reader.line_num
        if None in row:
            yield line, f"{len(row[None])} more field(s) than the header has"
            continue
        yield line, {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items() if v not in ("", None)}


def _jsonl_rows(text: str) -> Iterable[tuple[int, dict | str]]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield line, f"not JSON ({exc.msg} at column {exc.colno})"
            continue
        yield line, value if isinstance(value, dict) else f"not a JSON object ({type(value).__name__})"


def _label(raw: dict, source: str | None) -> Label | str:
    if missing := [c for c in REQUIRED if raw.get(c) in (None, "")]:
        return f"missing {', '.join(missing)}"
    values = {}
    for column in REQUIRED:
        value = raw[column]
        if isinstance(value, bool) or not isinstance(value, int | str):
            return f"{column} {value!r} is not an integer"
        try:
            values[column] = int(value)
        except ValueError:
            return f"{column} {value!r} is not an integer"
        if values[column] <= 0:
            return f"{column} {value!r} is not a positive integer"
    fields = {"productid": values["productid"], "prdtypecode": values["prdtypecode"],
              "source": raw.get("source") or source}
    if raw.get("event_time"):
        fields["event_time"] = raw["event_time"]
    try:
        return Label(**fields)
    except ValidationError as exc:
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])


class LabelPublisher:
    """One idempotent producer writing to the labels topic (created when missing)."""

    def __init__(self, settings: Settings, flush_timeout_s: float = 30.0) -> None:
        self.topic = settings.topics.labels
        self.flush_timeout_s = flush_timeout_s
        ensure_topics(settings, [s for s in service_topics(settings) if s.name == self.topic])
        self._producer = make_producer(settings)

    def publish(self, labels: Iterable[Label]) -> LabelSummary:
        tracker = DeliveryTracker()
        start = time.perf_counter()
        queued = 0
        for label in labels:
            produce_with_backpressure(self._producer, self.topic, label.to_bytes(), key=str(label.productid).encode(),
                                      on_delivery=tracker)
            queued += 1
        remaining = self._producer.flush(self.flush_timeout_s)
        summary = LabelSummary(sent=tracker.delivered, failed=queued - tracker.delivered,
                               seconds=time.perf_counter() - start, errors=list(tracker.errors)[:20])
        if remaining and not summary.errors:
            summary.errors.append(f"{remaining} label(s) not acknowledged within {self.flush_timeout_s:.0f} s")
        return summary

    def close(self) -> None:
        self._producer.flush(self.flush_timeout_s)

    def __enter__(self) -> LabelPublisher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
