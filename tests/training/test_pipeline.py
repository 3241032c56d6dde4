"""The training pipeline on a small real subset: artifacts, report, runtime behaviour, registry."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from inference import registry
from inference.artifacts import ArtifactError, read_manifest
from inference.features.text_cleaning import ListingText
from inference.reference_profile import read_profile
from inference.runtime import ModelRuntime
from rakuten_cli.main import app
from rakuten_stream.database import make_engine, upgrade
from rakuten_stream.datasets import Dataset, ListingRecord, load_dataset
from rakuten_stream.hashing import sha256_of
from tests.helpers import copy_as_new_version
from training.pipeline import PreviousSplit, TrainConfig, split_dataset
from training.quality_gate import decide, score_version


def test_a_version_holds_onnx_graphs_a_manifest_with_hashes_a_report_and_plots(tiny_model):
    manifest = read_manifest(tiny_model)
    assert manifest.modalities == ["tfidf", "image"]
    assert len(manifest.classes) == 27
    for name, digest in manifest.files.items():
        assert sha256_of(tiny_model / name) == digest
    assert {"confusion_matrix.png", "reliability.png", "report.md"} <= set(manifest.files)
    report = (tiny_model / "report.md").read_text()
    assert "weighted F1" in report and "Per class" in report
    assert Image.open(tiny_model / "confusion_matrix.png").size[0] > 500
    metrics = manifest.metrics
    assert 0 < metrics["weighted_f1"] <= 1
    assert set(metrics["per_modality_f1"]) == {"tfidf", "image"}
    assert metrics["fusion"]["method"] in ("weighted", "stacking")


def test_a_version_holds_the_reference_profile_of_its_held_out_predictions(tiny_model):
    manifest = read_manifest(tiny_model)
    assert "reference_profile.json" in manifest.files  # hashed with the version
    profile = read_profile(tiny_model)
    assert len(profile.rows) == manifest.parameters["n_test"]
    served = (manifest.metrics.get("cascade") or {}).get("held_out_weighted_f1", manifest.metrics["weighted_f1"])
    assert profile.weighted_f1 == pytest.approx(served, abs=1e-3)  # what the workers serve, the cascade included
    row = profile.rows[0]
    assert row.predicted_class == row.top_k[0][0] and row.confidence == row.top_k[0][1]
    assert len(row.top_k) == 5 and row.text_chars > 0 and "tfidf" in row.modality_classes
    assert any(r.has_image for r in profile.rows)  # the tiny subset prefers rows with an image


def test_a_version_reports_out_of_fold_figures_with_their_spread_and_its_cascade_threshold(tiny_model):
    manifest = read_manifest(tiny_model)
    kfold = manifest.metrics["kfold"]
    assert kfold["n_folds"] == 5 and kfold["n_rows"] == manifest.parameters["n_train"]
    assert set(kfold["models"]) == {"tfidf", "image", "fused"}
    for figures in kfold["models"].values():
        assert len(figures["weighted_f1_folds"]) == 5
        assert 0 < figures["weighted_f1"]["mean"] <= 1 and figures["weighted_f1"]["std"] >= 0
        assert 0 <= figures["ece"] <= 1
    cascade = manifest.cascade
    assert set(cascade) == {"threshold", "cheap_model", "oof_weighted_f1_all", "oof_weighted_f1_cascade", "cheap_share"}
    assert cascade["cheap_model"] == "tfidf" and 0 <= cascade["cheap_share"] <= 1
    assert cascade["oof_weighted_f1_cascade"] >= cascade["oof_weighted_f1_all"] - 0.003 - 1e-4
    assert cascade["oof_weighted_f1_all"] == kfold["models"]["fused"]["pooled_weighted_f1"]
    report = (tiny_model / "report.md").read_text()
    assert "Out of fold (5-fold stratified" in report and "± " in report and "### Cascade" in report
    assert {"oof_confusion_matrix.png", "oof_reliability.png"} <= set(manifest.files)


def test_the_served_version_gives_the_fused_probabilities_training_computed(tiny_model):
    parity = read_manifest(tiny_model).metrics["serving_parity"]
    assert parity["rows"] == 8 and parity["max_abs_diff"] < 1e-4


def test_a_tampered_artifact_is_refused(tiny_model, tmp_path):
    copy = copy_as_new_version(tiny_model, tmp_path, "tampered")
    with open(copy / "image_head.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="sha256"):
        ModelRuntime(copy)


def test_the_runtime_handles_a_missing_image_and_reports_contributions(tiny_model, tiny_data):
    runtime = ModelRuntime(tiny_model)
    record = next(r for r in load_dataset(tiny_data).records if r.image_path is not None)
    photo = Image.open(record.image_path).convert("RGB")
    text = ListingText.of(record.designation, record.description)
    batch = runtime.predict([text, text], [photo, None], cascade=False)  # the fusion itself, even where sure
    np.testing.assert_allclose(batch.probs.sum(axis=1), 1, atol=1e-6)
    assert batch.present["image"].tolist() == [True, False]
    assert batch.contributions["image"][1] == 0  # no image, no say
    for row in range(2):
        assert sum(c[row] for c in batch.contributions.values()) == pytest.approx(1, abs=1e-6)
    text_only = runtime.predict([text], cascade=False)
    np.testing.assert_allclose(text_only.probs[0], batch.probs[1], atol=1e-6)


def test_the_gate_scores_both_versions_on_the_same_rows_none_of_which_production_trained_on(
        tiny_model, tmp_path, sqlite_url, tiny_data):
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    dataset = load_dataset(tiny_data)
    train_split, _, _ = split_dataset(dataset, TrainConfig(data=tiny_data, model_dir=tmp_path))  # tiny_model's split
    trained = {r.productid for r in train_split.records}
    production = read_manifest(tiny_model).version
    registry.register(engine, read_manifest(tiny_model), tiny_model, None, training_rows=sorted(trained))
    registry.promote(engine, production)
    candidate = copy_as_new_version(tiny_model, tmp_path, "candidate-same-graphs")
    registry.register(engine, read_manifest(candidate), candidate, None)

    held_out = dataset.records[:120]  # a candidate's held-out rows: most of them production was trained on
    unseen = [r for r in held_out if r.productid not in trained]
    assert 0 < len(unseen) < len(held_out)
    decision = decide(engine, "candidate-same-graphs", held_out)

    assert decision["evaluated_productids"] == sorted(r.productid for r in unseen)
    assert decision["excluded_rows"] == len(held_out) - len(unseen)
    # the same graphs on the same rows score the same: the figures are comparable, and a tie is not promoted
    assert decision["candidate_weighted_f1"] == decision["production_weighted_f1"] == score_version(tiny_model, unseen)
    assert decision["promoted"] is False and "on the same" in decision["reason"]
    assert registry.production(engine).version == production
    assert registry.get_version(engine, "candidate-same-graphs").gate_decision["promoted"] is False
    # what scoring production on rows it has seen would have done: flatter it
    assert score_version(tiny_model, held_out) > score_version(tiny_model, unseen)


def test_a_retrain_keeps_productions_rows_on_their_side_and_splits_new_rows_stably(tmp_path):
    old = [ListingRecord(productid=i, designation=f"old {i}", prdtypecode=10 + i % 3) for i in range(1, 61)]
    new = [ListingRecord(productid=i, designation=f"new {i}", prdtypecode=10 + i % 3) for i in range(1001, 1301)]
    config = TrainConfig(data=None, model_dir=tmp_path)
    first_train, first_test, _ = split_dataset(Dataset(tmp_path, "database", old, []), config)
    previous = PreviousSplit(frozenset(r.productid for r in first_train.records),
                             frozenset(r.productid for r in first_test.records))

    both = Dataset(tmp_path, "database", old + new, [])
    train, test, _ = split_dataset(both, config, previous)
    assert previous.train <= {r.productid for r in train.records}  # what production learnt is learnt again
    assert previous.held_out <= {r.productid for r in test.records}  # what it held out stays held out
    new_test = {r.productid for r in test.records} - previous.held_out
    assert 0.1 < len(new_test) / len(new) < 0.3  # about test_size of the new rows
    again, _, _ = split_dataset(Dataset(tmp_path, "database", list(reversed(old + new)), []), config, previous)
    assert {r.productid for r in again.records} == {r.productid for r in train.records}  # by id, not by order


def test_the_gate_promotes_the_first_version_and_archives_none(tiny_model, sqlite_url, tiny_data):
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    version = read_manifest(tiny_model).version
    registry.register(engine, read_manifest(tiny_model), tiny_model, None)
    decision = decide(engine, version, load_dataset(tiny_data).records[:30])
    assert decision["promoted"] is True and decision["reason"] == "no production version yet"
    assert decision["evaluated_rows"] == 30 and 0 < decision["candidate_weighted_f1"] <= 1
    assert registry.production(engine).version == version


def test_load_data_is_idempotent_and_records_a_snapshot(tiny_data, sqlite_url):
    runner = CliRunner()
    first = runner.invoke(app, ["--database-url", sqlite_url, "load-data", "--data", str(tiny_data)])
    second = runner.invoke(app, ["--database-url", sqlite_url, "load-data", "--data", str(tiny_data)])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert "already loaded, nothing changed" in second.output
    from sqlalchemy import text

    with make_engine(sqlite_url).connect() as connection:
        assert connection.execute(text("select count(*) from products")).scalar() == 270
        assert connection.execute(text("select count(*) from dataset_snapshots")).scalar() == 1


def test_score_writes_one_prediction_per_row_through_the_onnx_path(tiny_model, tiny_data, sqlite_url, tmp_path):
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    registry.register(engine, read_manifest(tiny_model), tiny_model, None)
    registry.promote(engine, read_manifest(tiny_model).version)
    out = tmp_path / "predictions.csv"
    result = CliRunner().invoke(app, ["--database-url", sqlite_url, "score", "--data", str(tiny_data),
                                      "--out", str(out), "--limit", "50"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert len(rows) == 50
    assert set(rows[0]) == {"productid", "prdtypecode", "category", "confidence", "modalities", "p_tfidf", "p_image"}
    assert {r["modalities"] for r in rows} <= {"tfidf", "tfidf image"}  # no cascade key: every model that can, ran
    assert all(0 < float(r["confidence"]) <= 1 for r in rows)


def test_every_progress_row_of_a_phase_finishes_when_the_phase_is_done():
    """No row is left at 0/? with a growing timer: each phase's rows end full, with ✓ and its time."""
    from rich.console import Console
    from rich.progress import Progress

    from training.pipeline import _Steps

    progress = Progress(console=Console(file=open("/dev/null", "w")))  # noqa: SIM115
    steps = _Steps(progress)
    steps.start("converting")  # no total: a spinner row
    advance = steps.start("embedding", 10)
    advance(10)
    steps.done("e5 (3s)")
    steps.done("a phase with no row of its own")
    assert all(task.finished for task in progress.tasks)
    assert [t.description for t in progress.tasks if "✓" in t.description] == [
        "[green]✓[/] e5 (3s)", "[green]✓[/] a phase with no row of its own"]
