"""Text model A: the serving featurizer (sparse) and both serving classifiers (ONNX on dense rows,
numpy on sparse rows) reproduce scikit-learn exactly."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from inference.features.text_cleaning import clean_text, listing_text
from inference.features.tfidf import (
    SparseLinearClassifier,
    TfidfBlock,
    TfidfFeaturizer,
    _ReferenceGrams,
    char_ngrams,
    word_ngrams,
)
from rakuten_stream.datasets import load_dataset
from training.tfidf_model import TfidfParams, fit_tfidf

# float32 ONNX arithmetic against float64 scikit-learn: probabilities agree to ~1e-6
ONNX_PROBABILITY_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def fitted(tiny_data, tmp_path_factory):
    records = load_dataset(tiny_data).records
    texts = [listing_text(r.designation, r.description) for r in records]
    codes = sorted({r.prdtypecode for r in records})
    y = np.asarray([codes.index(r.prdtypecode) for r in records])
    model, oof = fit_tfidf(texts, y, TfidfParams(max_word_features=5000, max_char_features=8000))
    out = tmp_path_factory.mktemp("tfidf")
    model.export(out)
    return model, oof, texts, y, out


def test_cleaning_undoes_html_and_double_escaped_entities():
    assert clean_text("Luc a des id&amp;eacute;es <strong>de</strong>&nbsp;grandeur") == "Luc a des idées de grandeur"
    assert listing_text("Lampe", None) == "Lampe"


def test_the_serving_featurizer_equals_scikit_learn_on_real_rows(fitted):
    model, _, texts, _, out = fitted
    ours = TfidfFeaturizer.load(out / "tfidf_features.npz").transform(texts[:80])
    theirs = model.features(texts[:80])
    assert ours.format == "csr" and ours.nnz == theirs.nnz  # sparse from text to scores, the same cells
    np.testing.assert_allclose(ours.toarray(), theirs.toarray(), atol=1e-6)


def test_the_serving_featurizer_equals_scikit_learn_on_odd_text(fitted):
    model, _, texts, _, out = fitted
    odd = ["", "   ", "a", "é", "x\x00y ab\x00", "lone \udc80 surrogate", "İstanbul ÉTÉ Ⅻ ß",
           "\t tab\u00a0nbsp\u2028line", "mot mot mot mot", texts[0] * 3, "🙂 emoji 🙂🙂"]
    ours = TfidfFeaturizer.load(out / "tfidf_features.npz").transform(odd)
    np.testing.assert_allclose(ours.toarray(), model.features(odd).toarray(), atol=1e-6)


def test_the_vectorised_analysers_find_the_n_grams_the_reference_analysers_find():
    text = "Lampe  de chevet, lampe LED\tbleue; bleue lampe x"
    vocabularies = {"word": sorted(set(word_ngrams(text)) | {"absent", "de lampe", "lampe inconnu"}),
                    "char": sorted(set(char_ngrams(text)) | {"zz", " zz ", "é"})}
    blocks = [TfidfBlock(a, {g: i for i, g in enumerate(grams)}, np.linspace(1, 2, len(grams)))
              for a, grams in vocabularies.items()]
    vectorised = TfidfFeaturizer(blocks)
    reference = TfidfFeaturizer(blocks)
    reference._grams = [_ReferenceGrams(b.analyzer, b.vocabulary) for b in blocks]
    assert not any(isinstance(g, _ReferenceGrams) for g in vectorised._grams)
    batch = [text, "", "bleue lampe", text.upper()]
    np.testing.assert_allclose(vectorised.transform(batch).toarray(), reference.transform(batch).toarray(), atol=1e-7)


def test_the_onnx_classifier_matches_scikit_learn_on_real_rows(fitted):
    model, _, texts, _, out = fitted
    features = TfidfFeaturizer.load(out / "tfidf_features.npz").transform(texts[:80])
    session = ort.InferenceSession(str(out / "tfidf_classifier.onnx"), providers=["CPUExecutionProvider"])
    onnx_probs = session.run(["probabilities"], {"features": features.toarray()})[0]
    np.testing.assert_allclose(onnx_probs, model.predict_proba(texts[:80]), atol=ONNX_PROBABILITY_TOLERANCE)


def test_the_sparse_classifier_gives_todays_onnx_scores_on_real_rows(fitted):
    _, _, texts, _, out = fitted
    features = TfidfFeaturizer.load(out / "tfidf_features.npz").transform(texts[:80])
    session = ort.InferenceSession(str(out / "tfidf_classifier.onnx"), providers=["CPUExecutionProvider"])
    onnx_probs = session.run(["probabilities"], {"features": features.toarray()})[0]
    sparse_probs = SparseLinearClassifier.load(out / "tfidf_linear.npz").predict_proba(features)
    assert np.abs(sparse_probs - onnx_probs).max() < ONNX_PROBABILITY_TOLERANCE


def test_out_of_fold_probabilities_are_honest_and_calibrated_rows(fitted):
    model, oof, texts, y, _ = fitted
    np.testing.assert_allclose(oof.sum(axis=1), 1, atol=1e-6)
    in_sample = (model.predict_proba(texts).argmax(axis=1) == y).mean()
    out_of_fold = (oof.argmax(axis=1) == y).mean()
    assert out_of_fold < in_sample  # the fusion is fitted on rows the model did not see
    assert out_of_fold > 0.3  # far above the 1/27 of chance, even on 270 rows
