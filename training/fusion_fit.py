"""Fitting the fusion on out-of-fold predictions: weighted log-linear fusion and a stacker.

Both see only out-of-fold probabilities, so neither learns to trust a modality that merely
memorised the training rows. The method with the better cross-validated log-loss on those rows
is the one served.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, log_loss
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from inference.fusion import fuse_weighted, safe_log, stacker_features


@dataclass
class FusionFit:
    method: str
    weights: dict[str, float]
    stacker: LogisticRegression | None
    modalities: list[str]
    scores: dict[str, dict[str, float]]
    #: isotonic knots for the fused confidence (set by the pipeline, fitted out of fold)
    confidence_map: dict[str, list[float]] | None = None


def fit_weights(log_probs: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray], y_index: np.ndarray
                ) -> dict[str, float]:
    """Non-negative weights minimising the log-loss of the fused prediction."""
    names = list(log_probs)
    rows = np.arange(len(y_index))

    def loss(w: np.ndarray) -> float:
        probs, _ = fuse_weighted(log_probs, present, dict(zip(names, w, strict=True)))
        return float(-np.log(np.clip(probs[rows, y_index], 1e-12, 1)).mean())

    start = np.array([1.0 if i == 0 else 0.3 for i in range(len(names))])
    result = minimize(loss, start, method="L-BFGS-B", bounds=[(0.0, 10.0)] * len(names))
    return {n: round(float(w), 6) for n, w in zip(names, result.x, strict=True)}


def fit_fusion(oof: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray], y_index: np.ndarray,
               classes: Sequence[int], seed: int = 0) -> FusionFit:
    modalities = list(oof)
    log_probs = {m: safe_log(p) for m, p in oof.items()}
    weights = fit_weights(log_probs, present, y_index)
    weighted_probs, _ = fuse_weighted(log_probs, present, weights)

    features = stacker_features(log_probs, present, modalities)
    stacker = LogisticRegression(C=0.1, max_iter=300, tol=1e-3)
    folds = min(5, int(np.bincount(y_index).min())) if len(y_index) >= 50 else 0
    scores = {"weighted": _scores(y_index, weighted_probs, classes)}
    if folds >= 2:
        stacked = cross_val_predict(stacker, features, y_index, method="predict_proba",
                                    cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
        scores["stacking"] = _scores(y_index, stacked, classes)
    stacker.fit(features, y_index)
    better_stacking = "stacking" in scores and scores["stacking"]["log_loss"] < scores["weighted"]["log_loss"]
    return FusionFit("stacking" if better_stacking else "weighted", weights, stacker, modalities, scores)


def _scores(y_index: np.ndarray, probs: np.ndarray, classes: Sequence[int]) -> dict[str, float]:
    labels = list(range(len(classes)))
    return {
        "log_loss": round(float(log_loss(y_index, np.clip(probs, 1e-12, 1), labels=labels)), 5),
        "weighted_f1": round(float(f1_score(y_index, probs.argmax(axis=1), average="weighted")), 5),
    }
