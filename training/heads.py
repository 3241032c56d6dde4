"""Classifier heads on frozen embeddings (e5 text, EfficientNet image): logistic regression,
with out-of-fold probabilities for the fusion."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from training.parallel import expected_worker_restarts


@dataclass(frozen=True)
class HeadParams:
    c: float = 1.0
    standardize: bool = False
    max_iter: int = 2000


def make_head(params: HeadParams) -> Pipeline:
    steps = [StandardScaler()] if params.standardize else []
    return make_pipeline(*steps, LogisticRegression(C=params.c, max_iter=params.max_iter))


def fit_head(features: np.ndarray, labels: np.ndarray, params: HeadParams, classes: list[int],
             oof_folds: int = 5, seed: int = 0) -> tuple[Pipeline, np.ndarray]:
    """Fit on all rows; out-of-fold probabilities are laid out over ``classes`` (absent ones ~0)."""
    head = make_head(params).fit(features, labels)
    folds = oof_folds if len(labels) >= 4 * oof_folds else 0
    oof = np.full((len(labels), len(classes)), 1e-6)
    position = {c: i for i, c in enumerate(classes)}
    if folds >= 2:
        with expected_worker_restarts():
            fold_probs = cross_val_predict(make_head(params), features, labels, method="predict_proba",
                                           cv=StratifiedKFold(folds, shuffle=True, random_state=seed), n_jobs=2)
        columns = [position[int(c)] for c in np.unique(labels)]
        oof[:, columns] = fold_probs
    else:  # too few rows per class for CV: in-sample probabilities (small demo sets only)
        oof[:, [position[int(c)] for c in head.classes_]] = head.predict_proba(features)
    oof /= oof.sum(axis=1, keepdims=True)
    return head, oof


def head_classes(head: Pipeline) -> list[int]:
    return [int(c) for c in head.classes_]
