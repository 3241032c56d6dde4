"""Running one model version's ONNX graphs on a batch: the path the workers, `score` and the
quality gate all use.

Only onnxruntime, numpy, tokenizers and Pillow: no torch here. Sessions use the CUDA provider
when it is present (and asked for) and the CPU otherwise; the active provider is reported, so a
silent fallback to CPU is visible.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from inference.artifacts import ArtifactError, Manifest, read_manifest
from inference.features.images import ImagePreprocessing, preprocess
from inference.features.text_cleaning import ListingText
from inference.features.text_embedding import embed_in_batches, load_tokenizer
from inference.features.tfidf import SparseLinearClassifier, TfidfFeaturizer
from inference.fusion import (
    expand_to_classes,
    fuse_weighted,
    recalibrate_confidence,
    safe_log,
    stacker_contributions,
    stacker_features,
)

log = logging.getLogger(__name__)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(preference: str = "auto") -> list[str]:
    available = ort.get_available_providers()
    if preference in ("auto", "cuda") and CUDA in available:
        return [CUDA, CPU]
    if preference == "cuda":
        log.warning("CUDA execution provider requested but not available (%s): using the CPU", available)
    return [CPU]


@dataclass
class BatchPrediction:
    """Fused probabilities and what went into them, one row per input."""

    probs: np.ndarray
    modality_probs: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    contributions: dict[str, np.ndarray]
    seconds: dict[str, float] = field(default_factory=dict)
    #: rows the cascade answered with the cheap model alone (``present`` then says only it ran)
    cheap: np.ndarray | None = None

    def top_k(self, row: int, k: int) -> list[tuple[int, float]]:
        order = np.argsort(-self.probs[row])[:k]
        return [(int(i), float(self.probs[row, i])) for i in order]


class ModelRuntime:
    """One model version, loaded and verified, ready to predict batches."""

    def __init__(self, artifact_dir: Path, providers: str = "auto", threads: int = 0,
                 session_cache: dict[str, ort.InferenceSession] | None = None) -> None:
        self.artifact_dir = Path(artifact_dir)
        self.manifest: Manifest = read_manifest(self.artifact_dir, verify=True)
        self._providers = choose_providers(providers)
        self._threads = threads
        # sessions keyed by file hash: a retrained head does not reload an unchanged encoder
        self._sessions = session_cache if session_cache is not None else {}
        m = self.manifest
        self.classes = np.asarray(m.classes)
        if m.tfidf:
            self.featurizer = TfidfFeaturizer.load(self.artifact_dir / m.tfidf.featurizer)
            self.tfidf = self._session(m.tfidf.classifier)  # loaded either way: a version is verified whole
            # sparse rows through the sparse classifier; a version without one: dense rows through ONNX
            self.tfidf_linear = (SparseLinearClassifier.load(self.artifact_dir / m.tfidf.linear)
                                 if m.tfidf.linear else None)
        if m.e5:
            self.tokenizer = load_tokenizer(self.artifact_dir / m.e5.tokenizer, m.e5.max_length)
            self.e5_encoder = self._session(m.e5.encoder)
            self.e5_head = self._session(m.e5.head)
        if m.image:
            self.image_params = ImagePreprocessing.from_dict(m.image.preprocessing)
            self.image_encoder = self._session(m.image.encoder)
            self.image_head = self._session(m.image.head)
        if m.fusion.method == "stacking":
            self.stacker = self._session(m.fusion.stacker)
            self.stacker_coef = np.load(self.artifact_dir / m.fusion.stacker_coef)
        self.provider = next(iter(self._sessions.values())).get_providers()[0] if self._sessions else CPU
        if CUDA in self._providers and self.provider != CUDA:
            log.warning("asked for CUDA but onnxruntime runs %s on %s", self.version, self.provider)

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def has_image_model(self) -> bool:
        return self.manifest.image is not None

    def category(self, class_index: int) -> tuple[int, str]:
        code = int(self.classes[class_index])
        return code, self.manifest.category_names.get(code, str(code))

    def _session(self, name: str) -> ort.InferenceSession:
        key = self.manifest.files.get(name, name)
        if key not in self._sessions:
            options = ort.SessionOptions()
            if self._threads:
                options.intra_op_num_threads = self._threads
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._sessions[key] = ort.InferenceSession(str(self.artifact_dir / name), options,
                                                       providers=self._providers)
        return self._sessions[key]

    @staticmethod
    def _probabilities(session: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> np.ndarray:
        outputs = session.run(None, inputs)
        names = [o.name for o in session.get_outputs()]
        return np.asarray(outputs[names.index("probabilities") if "probabilities" in names else -1],
                          dtype=np.float64)

    # --- per modality ------------------------------------------------------------------------
    def predict_tfidf(self, texts: Sequence[ListingText]) -> np.ndarray:
        features = self.featurizer.transform([t.title_weighted for t in texts])
        if self.tfidf_linear is not None:
            probs = self.tfidf_linear.predict_proba(features)
        else:
            probs = self._probabilities(self.tfidf, {self.tfidf.get_inputs()[0].name: features.toarray()})
        return expand_to_classes(probs, self.manifest.tfidf.classes, self.manifest.classes)

    def embed_e5(self, texts: Sequence[str]) -> np.ndarray:
        return embed_in_batches(self.e5_encoder, self.tokenizer, texts, batch_size=16, prefix=self.manifest.e5.prefix)

    def predict_e5(self, texts: Sequence[ListingText]) -> np.ndarray:
        return self.e5_head_probabilities(self.embed_e5([t.full for t in texts]), texts)

    def e5_head_probabilities(self, embeddings: np.ndarray, texts: Sequence[ListingText] | None = None) -> np.ndarray:
        """The e5 head on ``embeddings``; a joint head also reads the TF-IDF vector of ``texts``."""
        spec = self.manifest.e5
        inputs = embeddings.astype(np.float32)
        if spec.head_input == "tfidf+embedding":
            if texts is None:
                raise ValueError("the joint e5 head reads the TF-IDF vector too: pass the texts")
            tfidf = self.featurizer.transform([t.title_weighted for t in texts])
            tfidf = tfidf.toarray() if hasattr(tfidf, "toarray") else np.asarray(tfidf)  # sparse or dense rows
            inputs = np.hstack([tfidf.astype(np.float32), inputs * np.float32(spec.embedding_scale)])
        probs = self._probabilities(self.e5_head, {self.e5_head.get_inputs()[0].name: inputs})
        return expand_to_classes(probs, spec.classes, self.manifest.classes)

    def image_features(self, images: Sequence[Image.Image]) -> np.ndarray:
        pixels = preprocess(images, self.image_params)
        return self.image_encoder.run(None, {"pixels": pixels})[0]

    def predict_image(self, images: Sequence[Image.Image]) -> np.ndarray:
        features = self.image_features(images).astype(np.float32)
        probs = self._probabilities(self.image_head, {self.image_head.get_inputs()[0].name: features})
        return expand_to_classes(probs, self.manifest.image.classes, self.manifest.classes)

    # --- the whole model ---------------------------------------------------------------------
    @property
    def cascade_threshold(self) -> float | None:
        """The manifest's cascade threshold (chosen out of fold by training), None: every model runs.

        A listing whose cheap (TF-IDF) calibrated confidence is at least the threshold is answered
        by the cheap model alone; e5 and the image encoder run only for the others.
        """
        cascade = self.manifest.cascade or {}
        threshold = cascade.get("threshold")
        cheap = cascade.get("cheap_model", "tfidf")
        if threshold is None or cheap != "tfidf" or not self.manifest.tfidf or self.manifest.modalities == ["tfidf"]:
            return None
        return float(threshold)

    def predict(self, texts: Sequence[ListingText], images: Sequence[Image.Image | None] | None = None,
                image_batch_size: int = 32, cascade: bool = True) -> BatchPrediction:
        """Prediction for ``texts[i]`` with optional ``images[i]`` (None: no photo): the cheap
        model's own answer where the cascade stops there, the fusion of every model elsewhere
        (``cascade=False`` or no threshold in the manifest: the fusion everywhere)."""
        n = len(texts)
        images = list(images) if images is not None else [None] * n
        seconds: dict[str, float] = {}
        threshold = self.cascade_threshold if cascade else None
        cheap_probs = None
        if self.manifest.tfidf:
            start = time.perf_counter()
            cheap_probs = self.predict_tfidf(texts)
            seconds["tfidf"] = time.perf_counter() - start
        cheap = (cheap_probs.max(axis=1) >= threshold) if threshold is not None else np.zeros(n, dtype=bool)
        rest = np.flatnonzero(~cheap)
        if len(rest) == n:
            full = self._predict_all(texts, images, cheap_probs, image_batch_size, seconds)
            full.cheap = cheap
            return full
        n_classes = len(self.classes)
        probs = cheap_probs.copy()
        modality_probs = {m: np.full((n, n_classes), 1.0 / n_classes) for m in self.manifest.modalities}
        modality_probs["tfidf"] = cheap_probs
        present = {m: np.zeros(n, dtype=bool) for m in self.manifest.modalities}
        present["tfidf"][:] = True
        contributions = {m: np.zeros(n) for m in self.manifest.modalities}
        contributions["tfidf"][cheap] = 1.0
        if len(rest):
            part = self._predict_all([texts[i] for i in rest], [images[i] for i in rest], cheap_probs[rest],
                                     image_batch_size, seconds)
            probs[rest] = part.probs
            for m in part.modality_probs:
                modality_probs[m][rest] = part.modality_probs[m]
                present[m][rest] = part.present[m]
                contributions[m][rest] = part.contributions[m]
        return BatchPrediction(probs, modality_probs, present, contributions, seconds, cheap)

    def _predict_all(self, texts: Sequence[ListingText], images: list[Image.Image | None],
                     tfidf_probs: np.ndarray | None, image_batch_size: int, seconds: dict[str, float]
                     ) -> BatchPrediction:
        """Every model on every row, fused."""
        n = len(texts)
        modality_probs: dict[str, np.ndarray] = {}
        present: dict[str, np.ndarray] = {}
        n_classes = len(self.classes)
        if tfidf_probs is not None:
            modality_probs["tfidf"] = tfidf_probs
            present["tfidf"] = np.ones(n, dtype=bool)
        if self.manifest.e5:
            start = time.perf_counter()
            modality_probs["e5"] = self.predict_e5(texts)
            present["e5"] = np.ones(n, dtype=bool)
            seconds["e5"] = time.perf_counter() - start
        if self.manifest.image:
            start = time.perf_counter()
            has = np.asarray([img is not None for img in images], dtype=bool)
            probs = np.full((n, n_classes), 1.0 / n_classes)
            rows = np.flatnonzero(has)
            for chunk in range(0, len(rows), image_batch_size):
                part = rows[chunk : chunk + image_batch_size]
                probs[part] = self.predict_image([images[i] for i in part])
            modality_probs["image"], present["image"] = probs, has
            seconds["image"] = time.perf_counter() - start
        start = time.perf_counter()
        fused, contributions = self.fuse(modality_probs, present)
        seconds["fusion"] = time.perf_counter() - start
        return BatchPrediction(fused, modality_probs, present, contributions, seconds)

    def fuse(self, modality_probs: dict[str, np.ndarray], present: dict[str, np.ndarray]
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        spec = self.manifest.fusion
        log_probs = {m: safe_log(p) for m, p in modality_probs.items()}
        if spec.method == "weighted":
            probs, contributions = fuse_weighted(log_probs, present, spec.weights)
        else:
            features = stacker_features(log_probs, present, spec.modalities)
            probs = self._probabilities(self.stacker, {self.stacker.get_inputs()[0].name: features})
            contributions = stacker_contributions(features.astype(np.float64), self.stacker_coef, spec.modalities,
                                                  len(self.classes), probs.argmax(axis=1))
        return recalibrate_confidence(probs, spec.confidence_map), contributions


def verify_version(artifact_dir: Path | str, registered_files: dict[str, str] | None = None) -> ModelRuntime:
    """The version loaded and run once, or :class:`ArtifactError` with one line saying what is wrong.

    Checks the manifest against the registry's record of the files (when given), every file
    against its sha256 in the manifest, that each ONNX graph loads in onnxruntime, and that one
    listing (text and, if the version has an image model, a blank photo) goes through the
    whole path. What ``models promote`` and a worker's reload run before trusting a version.
    """
    directory = Path(artifact_dir)
    try:
        manifest = read_manifest(directory, verify=True)
        if registered_files is not None and manifest.files != registered_files:
            raise ArtifactError(f"{directory}: the manifest's files differ from the registry's record of this version")
        runtime = ModelRuntime(directory, providers="cpu")
        photo = [Image.new("RGB", (256, 256), (255, 255, 255))] if runtime.has_image_model else [None]
        runtime.predict([ListingText.of("vérification du modèle", None)], photo)
    except ArtifactError:
        raise
    except Exception as exc:  # a graph that does not load or run, a broken tokenizer, a bad manifest
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ArtifactError(f"{directory}: does not load or run ({type(exc).__name__}: {first_line})") from None
    return runtime
