"""The artifact contract between training and serving: a version directory with a manifest.

A model version is a folder of ONNX graphs (and the small files their inputs need) plus
``manifest.json``: the classes, preprocessing parameters, fusion weights and the sha256 of
every file. Serving verifies the hashes before it loads anything.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from rakuten_stream.hashing import sha256_of

MANIFEST = "manifest.json"
MODALITIES = ("tfidf", "e5", "image")


class ArtifactError(RuntimeError):
    pass


class TfidfSpec(BaseModel):
    featurizer: str
    classifier: str
    classes: list[int]
    linear: str | None = Field(None, description="the classifier for sparse rows (npz); absent: the ONNX classifier")


class E5Spec(BaseModel):
    encoder: str
    tokenizer: str
    head: str
    classes: list[int]
    max_length: int = 128
    prefix: str = "query: "
    quantized: bool = False
    head_input: Literal["embedding", "tfidf+embedding"] = Field(
        "embedding", description="what the head reads: the embedding, or the TF-IDF vector and the embedding side by "
        "side (the joint text model; the embedding multiplied by embedding_scale)")
    embedding_scale: float = 1.0


class ImageSpec(BaseModel):
    encoder: str
    head: str
    classes: list[int]
    preprocessing: dict[str, Any]


class FusionSpec(BaseModel):
    method: Literal["weighted", "stacking"] = "weighted"
    weights: dict[str, float] = Field(default_factory=dict)
    stacker: str | None = None
    stacker_coef: str | None = None
    modalities: list[str] = Field(default_factory=list, description="order of the stacker's input blocks")
    confidence_map: dict[str, list[float]] | None = Field(
        None, description="isotonic knots x -> y for the fused top probability (fitted out of fold); none: as fused")


class Manifest(BaseModel):
    version: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    classes: list[int]
    category_names: dict[int, str]
    tfidf: TfidfSpec | None = None
    e5: E5Spec | None = None
    image: ImageSpec | None = None
    fusion: FusionSpec = Field(default_factory=FusionSpec)
    cascade: dict[str, Any] | None = Field(
        None, description="threshold, cheap_model, oof_weighted_f1_all, oof_weighted_f1_cascade, cheap_share: "
        "listings whose cheap-model confidence is at least the threshold are answered by the cheap model alone "
        "(chosen out of fold by training); absent or null: every model runs")
    files: dict[str, str] = Field(default_factory=dict, description="file name -> sha256")
    metrics: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if getattr(self, m) is not None]


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Hash every file of the version directory into the manifest and write it."""
    files = {p.name: sha256_of(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = manifest.model_copy(update={"files": files})
    path = directory / MANIFEST
    path.write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    return path


def read_manifest(directory: Path, verify: bool = True) -> Manifest:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"no {MANIFEST} in {directory}")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, OSError) as exc:  # not JSON, not a manifest, unreadable
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ArtifactError(f"{directory}: unreadable {MANIFEST} ({first_line})") from None
    if verify:
        for name, expected in manifest.files.items():
            file = Path(directory) / name
            if not file.is_file():
                raise ArtifactError(f"{directory}: {name} is listed in the manifest but missing")
            if sha256_of(file) != expected:
                raise ArtifactError(f"{directory}: {name} does not match its sha256 in the manifest")
    return manifest


def manifest_sha256(directory: Path) -> str:
    return sha256_of(Path(directory) / MANIFEST)
