"""scikit-learn classifiers to ONNX (skl2onnx): a float input, a ``probabilities`` output."""

from __future__ import annotations

from pathlib import Path

import onnx
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType

OPSET = {"": 17, "ai.onnx.ml": 3}


def export_classifier(estimator, n_features: int, path: Path) -> Path:
    """Convert a fitted classifier (or pipeline ending in one); outputs ``label`` and ``probabilities``."""
    options = {id(estimator): {"zipmap": False}}
    model = to_onnx(estimator, initial_types=[("features", FloatTensorType([None, n_features]))],
                    options=options, target_opset=OPSET)
    onnx.save_model(model, str(path))
    return path
