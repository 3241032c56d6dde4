"""Sentence embeddings from an exported e5 encoder: tokenizer.json + ONNX graph (no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length)
    pad_id = tokenizer.token_to_id("<pad>")
    tokenizer.enable_padding(pad_id=1 if pad_id is None else pad_id, pad_token="<pad>")
    return tokenizer


def embed(session: ort.InferenceSession, tokenizer: Tokenizer, texts: Sequence[str], prefix: str = "query: "
          ) -> np.ndarray:
    """L2-normalised mean-pooled embeddings, float32 [len(texts), hidden]."""
    encodings = tokenizer.encode_batch([prefix + t for t in texts])
    ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
    mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
    return session.run(None, {"input_ids": ids, "attention_mask": mask})[0].astype(np.float32)


def embed_in_batches(session: ort.InferenceSession, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 32,
                     prefix: str = "query: ", progress=None) -> np.ndarray:
    """Sorted by length and cut into small batches so padding stays short (attention cost grows
    with the longest row of a batch); returned in the input order."""
    order = np.argsort([len(t) for t in texts])
    out = None
    for start in range(0, len(texts), batch_size):
        part = order[start : start + batch_size]
        vectors = embed(session, tokenizer, [texts[i] for i in part], prefix)
        if out is None:
            out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        out[part] = vectors
        if progress is not None:
            progress(len(part))
    return out if out is not None else np.zeros((0, 384), dtype=np.float32)
