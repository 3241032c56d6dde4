"""The one module that calls Evidently (pinned 0.7.23; its API changes between minor versions).

A window and the reference become two small data frames of the same columns (predicted class, has
image: categorical; confidence, text length: numerical); Evidently's data-drift preset compares
them column by column. What comes back is small: the per-column drift p-values and the drifted
share (kept in the drift report's figures) and, when asked, the HTML report, gzip-compressed
(about 1 MB: most of it is Evidently's JavaScript).
"""

from __future__ import annotations

import gzip
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_workers.drift.windows import WindowRow

log = logging.getLogger(__name__)
NUMERICAL = ["confidence", "text_chars"]
CATEGORICAL = ["predicted_class", "has_image"]
_import_lock = threading.Lock()


@dataclass
class EvidentlyResult:
    figures: dict[str, Any]  # {"drifted_share": .25, "columns": {"confidence": {"method": ..., "p_value": ...}}}
    html_gz: bytes | None


def _frame(rows: Sequence[WindowRow]):
    import pandas as pd

    return pd.DataFrame(
        {
            "predicted_class": [str(r.predicted_class) for r in rows],
            "has_image": [int(r.has_image) for r in rows],
            "confidence": [float(r.confidence) for r in rows],
            "text_chars": [float(r.text_chars) if r.text_chars is not None else float("nan") for r in rows],
        }
    )


def compare(window: Sequence[WindowRow], reference: Sequence[WindowRow], html: bool) -> EvidentlyResult:
    """Evidently's data-drift preset on ``window`` against ``reference``. Blocking (run it in a thread)."""
    with _import_lock:  # the first import takes seconds; one thread does it
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=NUMERICAL, categorical_columns=CATEGORICAL)
    current = Dataset.from_pandas(_frame(window), data_definition=definition)
    ref = Dataset.from_pandas(_frame(reference), data_definition=definition)
    snapshot = Report([DataDriftPreset()]).run(current_data=current, reference_data=ref)
    figures: dict[str, Any] = {"columns": {}}
    for metric in snapshot.dict().get("metrics", []):
        config = metric.get("config", {})
        kind = str(config.get("type", ""))
        if kind.endswith("DriftedColumnsCount"):
            figures["drifted_share"] = round(float(metric["value"]["share"]), 4)
        elif kind.endswith("ValueDrift"):
            figures["columns"][config["column"]] = {"method": config.get("method"), "p_value": float(metric["value"])}
    html_gz = None
    if html:
        html_gz = gzip.compress(snapshot.get_html_str(as_iframe=False).encode("utf-8"), compresslevel=6)
    return EvidentlyResult(figures, html_gz)


def write_html(html_gz: bytes, folder: Path, report_id: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{report_id}.html.gz"
    path.write_bytes(html_gz)
    return path
