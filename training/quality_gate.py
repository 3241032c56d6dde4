"""The quality gate: a candidate is promoted only if it beats production on the same rows.

The rows: the candidate's held-out rows (which include held-out rows among the labels the stream
brought) minus every row the production version was trained on (its ``training_rows`` in the
registry), so production is not scored on rows it has seen. Both versions are scored here, through
the ONNX runtime the workers use, on exactly those rows; the decision names them
(``evaluated_productids``) and both scores, and is recorded on the candidate's registry row.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import Engine

from inference import registry
from inference.runtime import ModelRuntime
from rakuten_stream.datasets import ListingRecord
from training.evaluation import weighted_f1
from training.pipeline import score_records


def score_version(artifact_dir: Path | str, records: list[ListingRecord]) -> float:
    """Weighted F1 of one version on ``records`` through the serving path."""
    runtime = ModelRuntime(Path(artifact_dir), providers="cpu")
    scored = score_records(runtime, records)
    codes = np.asarray(runtime.classes)[scored.probs.argmax(axis=1)]
    truth = np.asarray([r.prdtypecode for r in records])
    return weighted_f1(truth, codes)


def gate_rows(held_out: list[ListingRecord], production_training_rows: Collection[int] | None) -> list[ListingRecord]:
    """The held-out rows the production version was not trained on."""
    seen = set(production_training_rows or ())
    return [r for r in held_out if r.productid not in seen]


def decide(engine: Engine, version: str, held_out: list[ListingRecord], min_improvement: float = 0.0,
           labeled_productids: Collection[int] = ()) -> dict:
    """Score candidate and production on the same rows, record the decision, promote a better candidate.

    ``labeled_productids``: the rows whose label came on ``labels.v1`` (counted in the decision).
    """
    candidate = registry.get_version(engine, version)
    current = registry.production(engine)
    decision: dict = {"candidate": version, "decided_at": datetime.now(UTC).isoformat(),
                      "min_improvement": min_improvement, "held_out_rows": len(held_out)}
    if current is None or current.version == version:
        rows = held_out
        decision |= {"production": None, "production_weighted_f1": None, "promoted": True,
                     "reason": "no production version yet"}
    else:
        rows = gate_rows(held_out, current.training_rows)
        decision |= {"production": current.version, "excluded_rows": len(held_out) - len(rows),
                     "production_training_rows_known": current.training_rows is not None}
        if not rows:
            decision |= {"production_weighted_f1": None, "promoted": False,
                         "reason": "no held-out row the production version was not trained on: kept as candidate"}
    labeled = set(labeled_productids)
    decision |= {"evaluated_rows": len(rows), "evaluated_labeled_rows": sum(r.productid in labeled for r in rows),
                 "evaluated_productids": sorted(r.productid for r in rows)}
    if rows:
        decision["candidate_weighted_f1"] = score_version(candidate.artifact_dir, rows)
    if current is not None and current.version != version and rows:
        prod_f1 = score_version(current.artifact_dir, rows)
        cand_f1 = decision["candidate_weighted_f1"]
        promoted = cand_f1 > prod_f1 + min_improvement
        decision |= {"production_weighted_f1": prod_f1, "promoted": promoted,
                     "reason": (f"candidate {cand_f1:.4f} {'>' if promoted else '<='} production {prod_f1:.4f} + "
                                f"{min_improvement} on the same {len(rows)} held-out rows")}
    if decision["promoted"]:
        registry.promote(engine, version, decision)
    else:
        registry.record_decision(engine, version, decision)
    return decision
