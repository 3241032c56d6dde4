"""The quality gate: a candidate is promoted only if it beats production on the same rows.

Both versions are scored through the ONNX runtime on the candidate's held-out rows; the
decision and both scores are recorded on the candidate's registry row.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from sqlalchemy import Engine

from inference import registry
from inference.runtime import ModelRuntime
from rakuten_stream.datasets import ListingRecord
from training.evaluation import weighted_f1
from training.pipeline import score_records


def production_score(engine: Engine, records: list[ListingRecord]) -> tuple[str, float] | None:
    row = registry.production(engine)
    if row is None:
        return None
    runtime = ModelRuntime(row.artifact_dir, providers="cpu")
    scored = score_records(runtime, records)
    codes = np.asarray(runtime.classes)[scored.probs.argmax(axis=1)]
    truth = np.asarray([r.prdtypecode for r in records])
    return row.version, weighted_f1(truth, codes)


def decide(engine: Engine, version: str, candidate_f1: float, records: list[ListingRecord],
           min_improvement: float = 0.0) -> dict:
    """Record and return the decision; promotes the candidate when it passes."""
    current = production_score(engine, records)
    decision = {"candidate": version, "candidate_weighted_f1": candidate_f1, "evaluated_rows": len(records),
                "decided_at": datetime.now(UTC).isoformat(), "min_improvement": min_improvement}
    if current is None:
        decision |= {"production": None, "production_weighted_f1": None, "promoted": True,
                     "reason": "no production version yet"}
    else:
        prod_version, prod_f1 = current
        promoted = candidate_f1 > prod_f1 + min_improvement
        decision |= {"production": prod_version, "production_weighted_f1": prod_f1, "promoted": promoted,
                     "reason": (f"candidate {candidate_f1:.4f} {'>' if promoted else '<='} production "
                                f"{prod_f1:.4f} + {min_improvement}")}
    if decision["promoted"]:
        registry.promote(engine, version, decision)
    else:
        registry.record_decision(engine, version, decision)
    return decision
