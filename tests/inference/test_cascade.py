"""The confidence-gated cascade (issue 13): the cheap TF-IDF model answers the listings it is sure
of, every model runs for the others, and the threshold is the manifest's.

Runs the tiny real model (TF-IDF + image, trained on 270 real rows) on real listings of the sample.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from inference.artifacts import read_manifest, write_manifest
from inference.features.text_cleaning import ListingText
from inference.runtime import ModelRuntime
from inference.scoring import ScoredListing, score_batch
from rakuten_stream.datasets import load_dataset
from tests.helpers import copy_as_new_version

TOP_K = 3


def with_cascade(tiny_model, root, version: str, cascade: dict | None):
    """A copy of the tiny model whose manifest holds ``cascade`` (what training writes), rehashed."""
    directory = copy_as_new_version(tiny_model, root, version)
    write_manifest(directory, read_manifest(directory).model_copy(update={"cascade": cascade}))
    return directory


@pytest.fixture(scope="module")
def listings(tiny_data):
    records = [r for r in load_dataset(tiny_data).records if r.image_path is not None][:40]
    texts = [ListingText.of(r.designation, r.description) for r in records]
    images = [Image.open(r.image_path).convert("RGB") for r in records]
    return texts, images


@pytest.fixture(scope="module")
def everything(tiny_model, tmp_path_factory):
    """The tiny model without a cascade key (training writes one): every model runs."""
    return ModelRuntime(with_cascade(tiny_model, tmp_path_factory.mktemp("everything"), "everything", None),
                        providers="cpu")


@pytest.fixture(scope="module")
def threshold(everything, listings):
    """The median cheap confidence of these listings: half of them are confident."""
    texts, _ = listings
    return float(np.median(everything.predict_tfidf(texts).max(axis=1)))


@pytest.fixture(scope="module")
def cascade(tiny_model, tmp_path_factory, threshold):
    directory = with_cascade(tiny_model, tmp_path_factory.mktemp("cascade"), "with-cascade",
                             {"threshold": threshold, "cheap_model": "tfidf", "cheap_share": 0.5})
    return ModelRuntime(directory, providers="cpu")


def cheap_only_answer(runtime: ModelRuntime, text: ListingText) -> ScoredListing:
    """What the TF-IDF model alone says: its own calibrated probabilities, nothing else ran."""
    probs = runtime.predict_tfidf([text])[0]
    order = np.argsort(-probs)[:TOP_K]
    top = [{"prdtypecode": runtime.category(int(i))[0], "category": runtime.category(int(i))[1],
            "probability": round(float(probs[i]), 6)} for i in order]
    return ScoredListing.model_validate({
        "prdtypecode": top[0]["prdtypecode"], "category": top[0]["category"], "confidence": top[0]["probability"],
        "top_k": top, "modalities": ["tfidf"], "contributions": {"tfidf": 1.0}, "text_chars": len(text.full),
        "modality_classes": {"tfidf": top[0]["prdtypecode"]},
    })


def test_the_threshold_comes_from_the_manifest(tiny_model, tmp_path, cascade, everything, threshold):
    assert cascade.cascade_threshold == threshold
    assert everything.cascade_threshold is None  # cascade null
    trained = read_manifest(tiny_model).cascade  # what training chose out of fold
    assert ModelRuntime(tiny_model).cascade_threshold == (trained or {}).get("threshold")
    absent = copy_as_new_version(tiny_model, tmp_path, "no-key")
    raw = json.loads((absent / "manifest.json").read_text())
    raw.pop("cascade", None)  # a version from before the cascade
    (absent / "manifest.json").write_text(json.dumps(raw))
    assert ModelRuntime(absent).cascade_threshold is None
    assert ModelRuntime(with_cascade(tiny_model, tmp_path, "other", {"threshold": 0.4})).cascade_threshold == 0.4


def test_a_confident_listing_gets_the_tfidf_only_answer(cascade, listings, threshold):
    texts, images = listings
    scored = score_batch(cascade, texts, images, TOP_K)
    confident = [i for i, listing in enumerate(scored.listings) if scored.prediction.cheap[i]]
    assert confident and len(confident) < len(texts)
    for i in confident:
        assert cascade.predict_tfidf([texts[i]]).max() >= threshold
        assert scored.listings[i] == cheap_only_answer(cascade, texts[i])


def test_an_unsure_listing_gets_the_full_fusion(cascade, everything, listings, threshold):
    texts, images = listings
    scored = score_batch(cascade, texts, images, TOP_K)
    unsure = [i for i in range(len(texts)) if not scored.prediction.cheap[i]]
    assert unsure
    assert all(cascade.predict_tfidf([texts[i]]).max() < threshold for i in unsure)
    full = score_batch(everything, [texts[i] for i in unsure], [images[i] for i in unsure], TOP_K)
    assert [scored.listings[i] for i in unsure] == full.listings
    assert all(scored.listings[i].modalities == ["tfidf", "image"] for i in unsure)
    # and within the whole batch: the same decisions (ONNX batches of another size round differently)
    whole = score_batch(everything, texts, images, TOP_K)
    assert [scored.listings[i].prdtypecode for i in unsure] == [whole.listings[i].prdtypecode for i in unsure]
    np.testing.assert_allclose(scored.prediction.probs[unsure], whole.prediction.probs[unsure], atol=1e-6)


def test_the_image_encoder_runs_only_for_the_unsure_listings(cascade, listings, monkeypatch):
    texts, images = listings
    seen = []
    original = cascade.image_features
    monkeypatch.setattr(cascade, "image_features", lambda batch: seen.extend(batch) or original(batch))
    scored = score_batch(cascade, texts, images, TOP_K)
    unsure = [images[i] for i in range(len(texts)) if not scored.prediction.cheap[i]]
    assert len(seen) == len(unsure) and all(a is b for a, b in zip(seen, unsure, strict=True))


def test_without_a_threshold_every_model_runs(everything, tiny_model, tmp_path, listings):
    texts, images = listings
    for runtime in (everything, ModelRuntime(with_cascade(tiny_model, tmp_path, "above-one", {"threshold": 1.01}))):
        scored = score_batch(runtime, texts, images, TOP_K)
        assert not scored.prediction.cheap.any()
        assert all(listing.modalities == ["tfidf", "image"] for listing in scored.listings)


def test_a_batch_of_only_confident_listings_runs_no_other_model(tiny_model, tmp_path, listings, monkeypatch):
    texts, images = listings
    runtime = ModelRuntime(with_cascade(tiny_model, tmp_path, "zero", {"threshold": 0.0, "cheap_model": "tfidf"}))
    monkeypatch.setattr(runtime, "image_features", lambda batch: pytest.fail("the image encoder ran"))
    scored = score_batch(runtime, texts, images, TOP_K)
    assert scored.prediction.cheap.all()
    assert scored.listings == [cheap_only_answer(runtime, t) for t in texts]


def test_score_writes_which_models_ran(tiny_model, tiny_data, tmp_path, threshold, sqlite_url):
    import csv

    from typer.testing import CliRunner

    from inference import registry
    from rakuten_cli.main import app
    from rakuten_stream.database import make_engine, upgrade

    directory = with_cascade(tiny_model, tmp_path, "scored", {"threshold": threshold, "cheap_model": "tfidf"})
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    registry.register(engine, read_manifest(directory), directory, None)
    registry.promote(engine, "scored")
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(app, ["--database-url", sqlite_url, "score", "--data", str(tiny_data),
                                      "--out", str(out), "--limit", "60"])
    assert result.exit_code == 0, result.output
    with open(out, encoding="utf-8") as handle:
        ran = [row["modalities"] for row in csv.DictReader(handle)]
    assert len(ran) == 60 and set(ran) <= {"tfidf", "tfidf image"} and "tfidf" in ran and "tfidf image" in ran


def test_the_prediction_cache_keeps_each_versions_answers_and_which_models_ran(cascade, everything, tiny_data,
                                                                               redis_url):
    from rakuten_stream.cache import PredictionCache
    from rakuten_stream.metrics import ServiceMetrics
    from rakuten_stream.settings import Settings
    from stream_workers.batch import BatchProcessor
    from tests.helpers import listing_json
    from tests.stream_workers.stubs import messages

    records = [r for r in load_dataset(tiny_data).records if r.image_path is not None][:24]
    batch = messages([listing_json(r.productid, r.designation, r.description, image=r.image_path.read_bytes())
                      for r in records])
    cache = PredictionCache(redis_url, ttl_seconds=60)
    for key in cache._client.scan_iter("rakuten:pred:with-cascade:*"):  # a previous session's tiny model
        cache._client.delete(key)

    def answers(runtime):
        outcome = BatchProcessor(runtime, cache, ServiceMetrics(), Settings(), "test").process(batch)
        return outcome.cache_hits, {p.productid: (p.prdtypecode, p.confidence, p.modalities)
                                    for p in outcome.predictions}

    hits, first = answers(cascade)
    again_hits, again = answers(cascade)
    assert hits == 0 and again_hits == len(records) and again == first  # cached with the models that ran
    assert {tuple(m) for _, _, m in first.values()} == {("tfidf",), ("tfidf", "image")}
    _, full = answers(everything)  # another version: its own entries, every model ran
    assert {tuple(m) for _, _, m in full.values()} == {("tfidf", "image")}
