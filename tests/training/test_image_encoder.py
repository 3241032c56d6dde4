"""Specification of the frozen EfficientNet-Lite0 image encoder and its ONNX export."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from inference.features.images import ImagePreprocessing, decode_image, preprocess
from tests.helpers import DATA_DIR, missing_data
from training.image_encoder import (
    FEATURE_DIM,
    PREPROCESSING_METADATA_KEY,
    export_onnx,
    extract_features_onnx,
    load_efficientnet_lite0,
    open_onnx_session,
    packaged_weights_path,
)

PARAMS = ImagePreprocessing()

#: Max |ONNX - torch| over the 1280 features of 16 real product photos.
#: Measured: 6.8e-06 on these 16 (1.0e-05 on 64; features range 0..~5), onnxruntime 1.32, torch 2.14, opset 17.
ONNX_VS_TORCH_TOLERANCE = 1e-4

#: ImageNet class 921, "book jacket".
BOOK_JACKET = 921


def sample_paths(n: int, prdtypecode: str | None = None) -> list[Path]:
    """First n original sample photos (sorted by name), optionally of one Rakuten category."""
    paths = sorted((DATA_DIR / "images").glob("*.jpg"))
    if not paths:
        missing_data(f"Rakuten sample images not found under {DATA_DIR / 'images'} (set RAKUTEN_DATA_DIR)")
    if prdtypecode is not None:
        with open(DATA_DIR / "products.csv", newline="", encoding="utf-8") as f:
            codes = {(r["imageid"], r["productid"]): r["prdtypecode"] for r in csv.DictReader(f)}

        def code_of(path: Path) -> str | None:
            _, imageid, _, productid = path.stem.split("_")  # image_{imageid}_product_{productid}
            return codes.get((imageid, productid))

        paths = [p for p in paths if code_of(p) == prdtypecode]
    return paths[:n]


def pixels_of(paths: list[Path]) -> np.ndarray:
    return preprocess([decode_image(p.read_bytes()) for p in paths], PARAMS)


@pytest.fixture(scope="module")
def encoder() -> torch.nn.Module:
    return load_efficientnet_lite0()


@pytest.fixture(scope="module")
def onnx_path(encoder, tmp_path_factory) -> Path:
    return export_onnx(encoder, tmp_path_factory.mktemp("encoder") / "image_encoder.onnx", PARAMS)


# --- weights ---------------------------------------------------------------------------


def test_packaged_weights_fill_every_tensor_of_the_lite0_architecture():
    packaged = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    model = load_efficientnet_lite0(imagenet_head=True)
    assert list(packaged) == list(model.state_dict())  # load_state_dict(strict=True) passed too
    for key, tensor in packaged.items():
        assert torch.equal(model.state_dict()[key], tensor), key


def test_the_encoder_needs_neither_torchvision_nor_timm():
    """PyPI's torchvision wheels need the CUDA build of torch: the CPU build must be enough."""
    blocked = "import sys; sys.modules['torchvision'] = sys.modules['timm'] = None; "
    code = blocked + "from training.image_encoder import load_efficientnet_lite0; load_efficientnet_lite0()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_encoder_is_lite0_with_pooled_1280_d_features(encoder):
    assert not encoder.training
    n_params = sum(p.numel() for p in encoder.parameters())
    assert 3.3e6 < n_params < 3.5e6  # 4.65M with the 1000-class head, 3.37M without
    with torch.no_grad():
        features = encoder(torch.from_numpy(pixels_of(sample_paths(2))))
    assert features.shape == (2, FEATURE_DIM)
    assert torch.isfinite(features).all()
    assert (features >= 0).all()  # ReLU6 before global average pooling


def test_imagenet_head_recognises_book_covers():
    """Not random weights: photos of books (Rakuten category 10, "livres") look like book jackets.

    Measured on these six photos: five top-1 "book jacket" with p = 0.54..0.94, one
    "envelope". A randomly initialised Lite0 gives top-1 probabilities around 0.05.
    """
    model = load_efficientnet_lite0(imagenet_head=True)
    with torch.no_grad():
        logits = model(torch.from_numpy(pixels_of(sample_paths(6, prdtypecode="10"))))
    assert logits.shape == (6, 1000)
    assert torch.isfinite(logits).all()
    top_probability, top_class = torch.softmax(logits, dim=1).max(dim=1)
    assert (top_class == BOOK_JACKET).sum() >= 4
    assert top_probability[top_class == BOOK_JACKET].min() > 0.3  # 300x chance


# --- ONNX export -----------------------------------------------------------------------


def test_onnx_graph_has_the_worker_interface(onnx_path):
    graph = onnx.load(str(onnx_path))
    assert graph.opset_import[0].version == 17
    (pixels,) = graph.graph.input
    (features,) = graph.graph.output
    assert pixels.name == "pixels" and features.name == "features"
    assert pixels.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert features.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    pixel_dims = [d.dim_param or d.dim_value for d in pixels.type.tensor_type.shape.dim]
    feature_dims = [d.dim_param or d.dim_value for d in features.type.tensor_type.shape.dim]
    assert pixel_dims == ["batch", 3, 224, 224]
    assert feature_dims == ["batch", FEATURE_DIM]
    metadata = {p.key: p.value for p in graph.metadata_props}
    assert ImagePreprocessing.from_dict(json.loads(metadata[PREPROCESSING_METADATA_KEY])) == PARAMS


def test_onnx_features_match_torch_on_real_photos(encoder, onnx_path):
    pixels = pixels_of(sample_paths(16))
    with torch.no_grad():
        expected = encoder(torch.from_numpy(pixels)).numpy()
    session = open_onnx_session(onnx_path, num_threads=2)
    (got,) = session.run(["features"], {"pixels": pixels})
    assert got.shape == (16, FEATURE_DIM) and got.dtype == np.float32
    assert np.abs(got - expected).max() < ONNX_VS_TORCH_TOLERANCE
    # The batch dimension is dynamic and rows are independent of their batch-mates.
    (single,) = session.run(["features"], {"pixels": pixels[3:4]})
    np.testing.assert_allclose(single[0], got[3], rtol=0, atol=ONNX_VS_TORCH_TOLERANCE)


def test_export_leaves_a_training_model_in_training_mode(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    model.train()
    export_onnx(model, tmp_path / "tiny.onnx", ImagePreprocessing(size=32))
    assert model.training
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]  # no temporary file left behind


# --- feature extraction for training ------------------------------------------------------


def test_extract_features_gives_nan_rows_for_undecodable_images(encoder, onnx_path, caplog):
    photos = [p.read_bytes() for p in sample_paths(4)]
    payloads = [photos[0], b"not an image", photos[1], photos[2], photos[3][:1000]]
    calls = []
    with caplog.at_level(logging.WARNING, logger="training.image_encoder"):
        features = extract_features_onnx(
            onnx_path, payloads, PARAMS, batch_size=2, progress=lambda done, total: calls.append((done, total))
        )
    assert features.shape == (5, FEATURE_DIM) and features.dtype == np.float32
    failed = np.isnan(features).any(axis=1)
    assert failed.tolist() == [False, True, False, False, True]
    assert np.isnan(features[failed]).all()  # failed rows are entirely NaN
    assert "2 of 5 images could not be decoded" in caplog.text
    assert calls == [(2, 5), (4, 5), (5, 5)]
    with torch.no_grad():
        expected = encoder(torch.from_numpy(pixels_of(sample_paths(3)))).numpy()
    np.testing.assert_allclose(features[[0, 2, 3]], expected, rtol=0, atol=ONNX_VS_TORCH_TOLERANCE)


def test_extract_features_refuses_preprocessing_the_graph_was_not_exported_for(onnx_path):
    with pytest.raises(ValueError, match="exported for preprocessing"):
        extract_features_onnx(onnx_path, [], ImagePreprocessing(resize_ratio=1.0))
