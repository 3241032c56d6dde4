"""Out-of-fold figures that can be trusted, and the choices made on them.

One stratified k-fold assignment is shared by every model (TF-IDF, e5 head, joint TF-IDF ⊕ e5,
image head) and by the fusion, so every row gets exactly one out-of-fold prediction per model
from models that never saw it, and each fold's figures compare the models on the same rows.
The fusion's weights for fold k are fitted on the other folds' out-of-fold predictions
(cross-fitting), so the fused figure is out of fold too.

Everything the release chooses (which fusion, the cascade threshold) is chosen here, on these
predictions only; the held-out rows are kept for the quality gate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold

from inference.fusion import fuse_weighted, safe_log
from training.evaluation import expected_calibration_error


def stratified_folds(y_index: np.ndarray, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """The fold (0..n_folds-1) of every row, stratified by class."""
    counts = np.bincount(y_index)
    smallest = int(counts[counts > 0].min())
    n_folds = max(2, min(n_folds, smallest))
    folds = np.zeros(len(y_index), dtype=np.int64)
    splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(y_index)), y_index)):
        folds[test] = k
    return folds


def weighted_f1_fast(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """scikit-learn's ``f1_score(average="weighted")`` in a few numpy calls (the threshold search calls it often)."""
    if len(y_true) == 0:
        return 0.0
    hit = y_true == y_pred
    tp = np.bincount(y_true[hit], minlength=n_classes).astype(np.float64)
    support = np.bincount(y_true, minlength=n_classes).astype(np.float64)
    predicted = np.bincount(y_pred, minlength=n_classes).astype(np.float64)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros(n_classes), where=denom > 0)
    return float((f1 * support).sum() / support.sum())


# --- the fusion, out of fold ---------------------------------------------------------------------
def cross_fitted_fusion(
    oof: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray], y_index: np.ndarray, folds: np.ndarray
) -> np.ndarray:
    """Fused out-of-fold probabilities: fold k fused with weights fitted on the other folds only."""
    from training.fusion_fit import fit_weights

    log_probs = {m: safe_log(p) for m, p in oof.items()}
    fused = np.zeros_like(next(iter(oof.values())))
    for k in np.unique(folds):
        fit_rows, rows = folds != k, folds == k
        weights = fit_weights(
            {m: lp[fit_rows] for m, lp in log_probs.items()},
            {m: p[fit_rows] for m, p in present.items()},
            y_index[fit_rows],
        )
        fused[rows], _ = fuse_weighted(
            {m: lp[rows] for m, lp in log_probs.items()}, {m: p[rows] for m, p in present.items()}, weights
        )
    return fused


# --- figures -----------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(array.mean()), 4), "std": round(float(array.std(ddof=1)) if len(array) > 1 else 0.0, 4)}


def kfold_figures(
    y_index: np.ndarray,
    probs: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray],
    has_image: np.ndarray,
    folds: np.ndarray,
) -> dict:
    """Per model: weighted F1 (mean ± std over the folds) on the rows it applies to and on the rows
    with an image, pooled out-of-fold weighted F1, log-loss and expected calibration error."""
    n_classes = next(iter(probs.values())).shape[1]
    labels = list(range(n_classes))
    figures: dict = {
        "n_rows": int(len(y_index)),
        "n_rows_with_image": int(has_image.sum()),
        "n_folds": int(len(np.unique(folds))),
        "models": {},
    }
    for name, p in probs.items():
        rows = present.get(name, np.ones(len(y_index), dtype=bool))
        pred = p.argmax(axis=1)
        per_fold, per_fold_image, per_fold_ece = [], [], []
        for k in np.unique(folds):
            in_fold = (folds == k) & rows
            per_fold.append(weighted_f1_fast(y_index[in_fold], pred[in_fold], n_classes))
            image_rows = in_fold & has_image
            per_fold_image.append(weighted_f1_fast(y_index[image_rows], pred[image_rows], n_classes))
            per_fold_ece.append(expected_calibration_error(y_index[in_fold], p[in_fold]))
        figures["models"][name] = {
            "weighted_f1": _mean_std(per_fold),
            "weighted_f1_with_image": _mean_std(per_fold_image),
            "weighted_f1_folds": [round(f, 4) for f in per_fold],
            "pooled_weighted_f1": round(weighted_f1_fast(y_index[rows], pred[rows], n_classes), 4),
            "log_loss": round(float(log_loss(y_index[rows], np.clip(p[rows], 1e-12, 1), labels=labels)), 4),
            "ece": expected_calibration_error(y_index[rows], p[rows]),
            "ece_folds": _mean_std(per_fold_ece),
        }
    return figures


def format_figures(figures: Mapping) -> list[str]:
    """One line per model: ``name  F1 0.812 ± 0.008 | image rows 0.830 ± 0.02 | ECE 0.012``."""
    lines = []
    for name, f in figures["models"].items():
        lines.append(
            f"{name:<10} weighted F1 {f['weighted_f1']['mean']:.4f} ± {f['weighted_f1']['std']:.4f} | "
            f"rows with an image {f['weighted_f1_with_image']['mean']:.4f} ± "
            f"{f['weighted_f1_with_image']['std']:.4f} | ECE {f['ece']:.4f} | log-loss {f['log_loss']:.4f}"
        )
    return lines


# --- the cascade threshold ---------------------------------------------------------------------
@dataclass(frozen=True)
class CascadeChoice:
    """What the manifest's ``cascade`` key holds: listings whose cheap confidence is at least
    ``threshold`` are answered by the cheap model alone, the others by the full fusion."""

    threshold: float
    cheap_model: str
    oof_weighted_f1_all: float
    oof_weighted_f1_cascade: float
    cheap_share: float

    def to_manifest(self) -> dict:
        return asdict(self)


def choose_cascade_threshold(
    cheap_probs: np.ndarray,
    fused_probs: np.ndarray,
    y_index: np.ndarray,
    max_loss: float = 0.003,
    cheap_model: str = "tfidf",
) -> CascadeChoice:
    """The lowest cheap-confidence threshold whose cascade loses at most ``max_loss`` of weighted F1
    against running everything, with every higher threshold within that loss too (so one lucky dip
    does not pick it): the largest share answered cheaply at that cost.

    Rows with confidence >= threshold take the cheap model's answer. A threshold above 1 means
    "always run everything".
    """
    n_classes = fused_probs.shape[1]
    confidence = cheap_probs.max(axis=1)
    cheap_pred, fused_pred = cheap_probs.argmax(axis=1), fused_probs.argmax(axis=1)
    f1_all = weighted_f1_fast(y_index, fused_pred, n_classes)
    best_threshold, best_f1 = 1.01, f1_all  # nobody on the cheap path
    for threshold in np.unique(confidence)[::-1]:  # from the most confident down
        pred = np.where(confidence >= threshold, cheap_pred, fused_pred)
        f1 = weighted_f1_fast(y_index, pred, n_classes)
        if f1 < f1_all - max_loss:
            break
        best_threshold, best_f1 = float(threshold), f1
    best_threshold = math.floor(best_threshold * 1e6) / 1e6  # rounded down: no row changes side
    share = float((confidence >= best_threshold).mean())
    return CascadeChoice(best_threshold, cheap_model, round(f1_all, 4), round(best_f1, 4), round(share, 4))


# --- the models, out of fold -------------------------------------------------------------------
@dataclass(frozen=True)
class JointParams:
    """The joint text model: one linear SVM over the TF-IDF vector and the e5 embedding side by
    side (each block l2-normalised; the embedding scaled by ``e5_scale``), sigmoid-calibrated."""

    e5_scale: float = 1.0
    svm_c: float = 0.5


def joint_features(tfidf_features, embeddings: np.ndarray, e5_scale: float):
    from scipy import sparse

    return sparse.hstack([sparse.csr_matrix(tfidf_features), sparse.csr_matrix(embeddings * e5_scale)]).tocsr()


def _in_place(probs: np.ndarray, estimator_classes: np.ndarray, n_classes: int) -> np.ndarray:
    full = np.full((probs.shape[0], n_classes), 1e-6)
    full[:, np.asarray(estimator_classes, dtype=int)] = probs
    return full / full.sum(axis=1, keepdims=True)


@dataclass
class OutOfFold:
    probs: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    folds: np.ndarray


def _one_fold(
    k,
    texts,
    y_index,
    folds,
    n_classes,
    tfidf_params,
    embeddings,
    e5_head_params,
    joint_params,
    image_features,
    has_image,
    image_head_params,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every model fitted on the rows outside fold ``k``: {model: (rows of fold k, their probabilities)}."""
    from scipy import sparse
    from sklearn.base import clone

    from training.heads import make_head
    from training.tfidf_model import _classifier, _vectorizers

    train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
    vectorizers = _vectorizers(tfidf_params)
    x_train = sparse.hstack([v.fit_transform([texts[i] for i in train]) for v in vectorizers]).tocsr()
    x_test = sparse.hstack([v.transform([texts[i] for i in test]) for v in vectorizers]).tocsr()
    counts = np.bincount(y_index[train])
    smallest = int(counts[counts > 0].min())
    model = _classifier(tfidf_params, smallest).fit(x_train, y_index[train])
    out = {"tfidf": (test, _in_place(model.predict_proba(x_test), model.classes_, n_classes))}
    if embeddings is not None:
        head = make_head(e5_head_params).fit(embeddings[train], y_index[train])
        out["e5"] = (test, _in_place(head.predict_proba(embeddings[test]), head.classes_, n_classes))
        if joint_params is not None:
            joint = clone(_classifier(tfidf_params, smallest)).set_params(estimator__C=joint_params.svm_c)
            joint.fit(joint_features(x_train, embeddings[train], joint_params.e5_scale), y_index[train])
            j_test = joint_features(x_test, embeddings[test], joint_params.e5_scale)
            out["joint"] = (test, _in_place(joint.predict_proba(j_test), joint.classes_, n_classes))
    if image_features is not None:
        i_train, i_test = train[has_image[train]], test[has_image[test]]
        if len(i_test) and len(np.unique(y_index[i_train])) >= 2:
            head = make_head(image_head_params).fit(image_features[i_train], y_index[i_train])
            out["image"] = (i_test, _in_place(head.predict_proba(image_features[i_test]), head.classes_, n_classes))
    return out


def out_of_fold(
    texts: Sequence[str],
    y_index: np.ndarray,
    folds: np.ndarray,
    n_classes: int,
    tfidf_params,
    embeddings: np.ndarray | None = None,
    e5_head_params=None,
    joint_params: JointParams | None = None,
    image_features: np.ndarray | None = None,
    has_image: np.ndarray | None = None,
    image_head_params=None,
    progress=None,
    n_jobs: int = 2,
) -> OutOfFold:
    """Every model fitted on k-1 folds (vectorisers included) and predicting the k-th; the folds run
    ``n_jobs`` at a time (joblib processes).

    ``image_features`` has one row per row of ``texts`` (anything where ``has_image`` is False).
    """
    from joblib import Parallel, delayed

    from training.parallel import expected_worker_restarts

    n = len(y_index)
    probs: dict[str, np.ndarray] = {"tfidf": np.zeros((n, n_classes))}
    present = {"tfidf": np.ones(n, dtype=bool)}
    if embeddings is not None:
        probs["e5"], present["e5"] = np.zeros((n, n_classes)), np.ones(n, dtype=bool)
        if joint_params is not None:
            probs["joint"], present["joint"] = np.zeros((n, n_classes)), np.ones(n, dtype=bool)
    if image_features is not None and has_image is not None and has_image.any():
        probs["image"] = np.full((n, n_classes), 1.0 / n_classes)
        present["image"] = has_image.copy()
    else:
        image_features = None
    texts = list(texts)
    jobs = (
        delayed(_one_fold)(
            k,
            texts,
            y_index,
            folds,
            n_classes,
            tfidf_params,
            embeddings,
            e5_head_params,
            joint_params,
            image_features,
            has_image,
            image_head_params,
        )
        for k in np.unique(folds)
    )
    with expected_worker_restarts():
        for result in Parallel(n_jobs=n_jobs, return_as="generator_unordered")(jobs):
            for name, (rows, fold_probs) in result.items():
                probs[name][rows] = fold_probs
            if progress is not None:
                progress(1)
    return OutOfFold(probs, present, folds)


# --- calibration of the fused confidence ---------------------------------------------------------
def fit_confidence_map(probs: np.ndarray, y_index: np.ndarray) -> dict[str, list[float]]:
    """An isotonic map from the fused top probability to the observed accuracy (what
    ``inference.fusion.recalibrate_confidence`` applies): the knots, rounded to 6 decimals."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    iso.fit(probs.max(axis=1), (probs.argmax(axis=1) == y_index).astype(np.float64))
    return {"x": [round(float(v), 6) for v in iso.X_thresholds_], "y": [round(float(v), 6) for v in iso.y_thresholds_]}


def cross_fitted_confidence(probs: np.ndarray, y_index: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """``probs`` with fold k's confidence recalibrated by a map fitted on the other folds."""
    from inference.fusion import recalibrate_confidence

    out = np.empty_like(probs)
    for k in np.unique(folds):
        rows = folds == k
        out[rows] = recalibrate_confidence(probs[rows], fit_confidence_map(probs[~rows], y_index[~rows]))
    return out
