"""Text model A: TF-IDF over word (1-2) and character (2-5, within words) n-grams, a linear SVM,
and sigmoid calibration, so its probabilities can be fused.

The analysers come from ``inference.features.tfidf`` (shared with serving); the classifier
is exported with skl2onnx (dense input) and, for serving on sparse rows, as its coefficients
and calibration (``tfidf_linear.npz``, hashed in the manifest like every file).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.svm import LinearSVC

from inference.features.tfidf import ANALYZERS, SparseLinearClassifier, TfidfBlock, TfidfFeaturizer
from training.onnx_export import export_classifier
from training.parallel import expected_worker_restarts


@dataclass(frozen=True)
class TfidfParams:
    max_word_features: int = 40_000
    max_char_features: int = 60_000
    min_df: int = 2
    svm_c: float = 0.5
    calibration_folds: int = 3


@dataclass
class TfidfModel:
    featurizer: TfidfFeaturizer
    vectorizers: list[TfidfVectorizer]
    classifier: CalibratedClassifierCV

    def features(self, texts: Sequence[str]) -> sparse.csr_matrix:
        return sparse.hstack([v.transform(texts) for v in self.vectorizers]).tocsr().astype(np.float32)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return self.classifier.predict_proba(self.features(texts))

    @property
    def classes(self) -> list[int]:
        return [int(c) for c in self.classifier.classes_]

    def sparse_linear(self) -> SparseLinearClassifier | None:
        """The calibrated SVM's numbers for serving on sparse rows (None for a two-class model)."""
        (calibrated,) = self.classifier.calibrated_classifiers_
        svm = calibrated.estimator
        if len(self.classifier.classes_) < 3 or list(svm.classes_) != list(self.classifier.classes_):
            return None
        return SparseLinearClassifier(
            coef=np.ascontiguousarray(svm.coef_.T, dtype=np.float32), intercept=svm.intercept_.astype(np.float64),
            slope=np.asarray([c.a_ for c in calibrated.calibrators], dtype=np.float64),
            offset=np.asarray([c.b_ for c in calibrated.calibrators], dtype=np.float64))

    def export(self, directory: Path) -> tuple[str, str, str | None]:
        """Write the featurizer (npz), the ONNX classifier and the same classifier for sparse rows
        (npz); returns their file names."""
        self.featurizer.save(directory / "tfidf_features.npz")
        export_classifier(self.classifier, self.featurizer.n_features, directory / "tfidf_classifier.onnx")
        linear = self.sparse_linear()
        if linear is None:
            return "tfidf_features.npz", "tfidf_classifier.onnx", None
        linear.save(directory / "tfidf_linear.npz")
        return "tfidf_features.npz", "tfidf_classifier.onnx", "tfidf_linear.npz"


def _vectorizers(params: TfidfParams) -> list[TfidfVectorizer]:
    common = {"sublinear_tf": True, "min_df": params.min_df, "dtype": np.float32, "lowercase": False}
    return [
        TfidfVectorizer(analyzer=ANALYZERS["word"], max_features=params.max_word_features, **common),
        TfidfVectorizer(analyzer=ANALYZERS["char"], max_features=params.max_char_features, **common),
    ]


def _classifier(params: TfidfParams, n_samples_smallest_class: int) -> CalibratedClassifierCV:
    folds = max(2, min(params.calibration_folds, n_samples_smallest_class))
    return CalibratedClassifierCV(LinearSVC(C=params.svm_c), method="sigmoid", cv=folds, ensemble=False)


def fit_tfidf(texts: Sequence[str], labels: np.ndarray, params: TfidfParams = TfidfParams(),
              oof_folds: int = 5, seed: int = 0) -> tuple[TfidfModel, np.ndarray | None]:
    """Fit on all rows; also return out-of-fold probabilities over ``oof_folds`` folds (None for 0)."""
    vectorizers = _vectorizers(params)
    X = sparse.hstack([v.fit_transform(texts) for v in vectorizers]).tocsr().astype(np.float32)
    smallest = int(np.bincount(np.unique(labels, return_inverse=True)[1]).min())
    classifier = _classifier(params, smallest)
    oof = None
    if oof_folds:  # 0: the caller makes its own out-of-fold predictions (training.crossval)
        folds = max(2, min(oof_folds, smallest))
        with expected_worker_restarts():
            oof = cross_val_predict(_classifier(params, smallest - smallest // folds), X, labels,
                                    cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                    method="predict_proba", n_jobs=2)
    classifier.fit(X, labels)
    blocks = [TfidfBlock(name, {t: int(i) for t, i in v.vocabulary_.items()}, v.idf_.astype(np.float64))
              for name, v in zip(("word", "char"), vectorizers, strict=True)]
    return TfidfModel(TfidfFeaturizer(blocks), vectorizers, classifier), oof
