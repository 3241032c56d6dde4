"""TF-IDF features of the word and character n-gram model, shared by training and serving.

skl2onnx cannot convert character n-gram vectorisers, so the analysers live here as plain
functions: training hands them to scikit-learn's ``TfidfVectorizer(analyzer=...)`` and keeps
its vocabulary and idf weights; serving rebuilds exactly the same vectors, sparse, with numpy
and scipy, and applies the linear classifier to them as a sparse product
(:class:`SparseLinearClassifier`). Tests check both agree with scikit-learn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
from scipy import sparse

_WORD = re.compile(r"(?u)\b\w\w+\b")
_SPACE = re.compile(r"\s+")
WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (2, 5)


def word_ngrams(text: str) -> list[str]:
    tokens = _WORD.findall(text.lower())
    grams = list(tokens)
    grams.extend(f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False))
    return grams


def char_ngrams(text: str) -> list[str]:
    """Character n-grams inside word boundaries, words padded with a space (like sklearn's char_wb)."""
    low, high = CHAR_NGRAMS
    grams: list[str] = []
    for word in _SPACE.sub(" ", text.lower()).split():
        padded = f" {word} "
        length = len(padded)
        for n in range(low, min(high, length) + 1):
            grams.extend(padded[i : i + n] for i in range(length - n + 1))
    return grams


ANALYZERS = {"word": word_ngrams, "char": char_ngrams}


@dataclass(frozen=True)
class TfidfBlock:
    """One analyser's vocabulary and idf weights (sublinear tf, l2-normalised rows)."""

    analyzer: str
    vocabulary: dict[str, int]
    idf: np.ndarray

    @property
    def size(self) -> int:
        return len(self.idf)


class _KeyTable:
    """Integer keys to vocabulary columns: an open-addressing hash table probed with numpy.

    A quarter full, so most n-grams that are not in the vocabulary meet an empty slot at once;
    the keys are exact (no hashing of the n-grams themselves), only their slots are hashed.
    """

    EMPTY = -1

    def __init__(self, keys: np.ndarray, columns: np.ndarray) -> None:
        self.bits = max(4, int(np.ceil(np.log2(max(len(keys), 1) * 4))))
        self.mask = (1 << self.bits) - 1
        self.keys = np.full(1 << self.bits, self.EMPTY, dtype=np.int64)
        self.columns = np.full(1 << self.bits, -1, dtype=np.int64)
        self.max_probe = 0
        for key, column, slot in zip(keys.tolist(), columns.tolist(), self._slots(keys).tolist(), strict=True):
            probe = 0
            while self.keys[(slot + probe) & self.mask] not in (self.EMPTY, key):
                probe += 1
            self.keys[(slot + probe) & self.mask] = key
            self.columns[(slot + probe) & self.mask] = column
            self.max_probe = max(self.max_probe, probe)

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        mixed = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # wraps modulo 2**64
        return (mixed >> np.uint64(64 - self.bits)).astype(np.int64)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """The column of each key, -1 where it is not in the vocabulary."""
        out = np.full(len(keys), -1, dtype=np.int64)
        pending = np.arange(len(keys))
        slots = self._slots(keys)
        for probe in range(self.max_probe + 1):
            slot = (slots[pending] + probe) & self.mask
            stored = self.keys[slot]
            hit = stored == keys[pending]
            out[pending[hit]] = self.columns[slot[hit]]
            pending = pending[~hit & (stored != self.EMPTY)]
            if not len(pending):
                break
        return out


class _CharGrams:
    """Vectorised ``char_ngrams`` of a whole batch against one vocabulary.

    Every vocabulary term is written as a number: its characters as digits (1..A, A the size of
    the vocabulary's alphabet) in base A + 1. A batch becomes one array of digits (a character
    outside the alphabet is 0, so is the separator between two padded words), each n-gram's
    number is a sum of shifted digit arrays, and a hash table finds the columns. Exact: with at
    most 5 characters the numbers fit in 63 bits for alphabets up to ~6,000 characters.
    """

    def __init__(self, vocabulary: dict[str, int]) -> None:
        alphabet = sorted({c for term in vocabulary for c in term})
        if "\0" in alphabet or any(len(t) > CHAR_NGRAMS[1] or len(t) < 1 for t in vocabulary):
            raise ValueError("vocabulary not representable")
        self.base = len(alphabet) + 1
        if self.base ** CHAR_NGRAMS[1] >= 2**63:
            raise ValueError("alphabet too large")
        self.table = np.zeros(ord(alphabet[-1]) + 2 if alphabet else 1, dtype=np.int64)
        digit = {c: i + 1 for i, c in enumerate(alphabet)}
        for c, d in digit.items():
            self.table[ord(c)] = d
        keys = np.asarray([sum(digit[c] * self.base**j for j, c in enumerate(t)) for t in vocabulary], dtype=np.int64)
        self.lookup = _KeyTable(keys, np.fromiter(vocabulary.values(), dtype=np.int64, count=len(vocabulary)))

    def hits(self, lowered: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(document, column) of every n-gram of the batch that is in the vocabulary."""
        pieces = []
        for text in lowered:  # padded words, separated by NUL (no n-gram crosses a separator)
            words = _SPACE.sub(" ", text).split()
            pieces.append(" " + " \0 ".join(words) + " " if words else "")
        batch = "\0".join(pieces)
        codepoints = np.frombuffer(batch.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        digits = self.table[np.minimum(codepoints, len(self.table) - 1)]
        document = np.repeat(np.arange(len(pieces)), [len(p) + 1 for p in pieces])[: len(digits)]
        low, high = CHAR_NGRAMS
        key, valid = digits.copy(), digits > 0
        docs, columns = [], []
        for n in range(2, high + 1):
            length = len(digits) - n + 1
            if length <= 0:
                break
            key = key[:length] + digits[n - 1 :] * self.base ** (n - 1)
            valid = valid[:length] & (digits[n - 1 :] > 0)
            if n < low:
                continue
            starts = np.flatnonzero(valid)
            column = self.lookup.find(key[starts])
            found = column >= 0
            docs.append(document[starts[found]])
            columns.append(column[found])
        return _joined(docs), _joined(columns)


class _WordGrams:
    """Vectorised ``word_ngrams``: tokens to ids with one dict pass, bigrams as id pairs."""

    def __init__(self, vocabulary: dict[str, int]) -> None:
        parts = {t: t.split(" ") for t in vocabulary}
        if any(len(p) > 2 or "" in p for p in parts.values()):
            raise ValueError("vocabulary not representable")
        self.ids = {w: i for i, w in enumerate(sorted({w for p in parts.values() for w in p}))}
        self.n_tokens = len(self.ids)
        self.unigram = np.full(self.n_tokens + 1, -1, dtype=np.int64)  # last entry: unknown token
        pairs, columns = [], []
        for term, p in parts.items():
            if len(p) == 1:
                self.unigram[self.ids[p[0]]] = vocabulary[term]
            else:
                pairs.append(self.ids[p[0]] * self.n_tokens + self.ids[p[1]])
                columns.append(vocabulary[term])
        self.bigrams = _KeyTable(np.asarray(pairs, dtype=np.int64), np.asarray(columns, dtype=np.int64))

    def hits(self, lowered: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        unknown = self.n_tokens
        token_lists = [_WORD.findall(text) for text in lowered]
        tokens = [t for ts in token_lists for t in ts]
        ids = np.asarray(list(map(self.ids.get, tokens, repeat(unknown, len(tokens)))), dtype=np.int64)
        document = np.repeat(np.arange(len(token_lists)), [len(t) for t in token_lists])
        uni = self.unigram[ids]
        docs, columns = [document[uni >= 0]], [uni[uni >= 0]]
        starts = np.flatnonzero((document[:-1] == document[1:]) & (ids[:-1] != unknown) & (ids[1:] != unknown))
        column = self.bigrams.find(ids[starts] * self.n_tokens + ids[starts + 1])
        docs.append(document[starts[column >= 0]])
        columns.append(column[column >= 0])
        return _joined(docs), _joined(columns)


class _ReferenceGrams:
    """The analysers n-gram by n-gram (for a vocabulary the vectorised forms cannot represent)."""

    def __init__(self, analyzer: str, vocabulary: dict[str, int]) -> None:
        self.analyzer = ANALYZERS[analyzer]
        self.vocabulary = vocabulary

    def hits(self, lowered: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        docs, columns = [], []
        for row, text in enumerate(lowered):
            for gram in self.analyzer(text):
                column = self.vocabulary.get(gram)
                if column is not None:
                    docs.append(row)
                    columns.append(column)
        return np.asarray(docs, dtype=np.int64), np.asarray(columns, dtype=np.int64)


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)


def _grams(block: TfidfBlock) -> _CharGrams | _WordGrams | _ReferenceGrams:
    try:
        return {"char": _CharGrams, "word": _WordGrams}[block.analyzer](block.vocabulary)
    except (KeyError, ValueError):
        return _ReferenceGrams(block.analyzer, block.vocabulary)


class TfidfFeaturizer:
    """Sparse float32 rows (CSR): the blocks side by side, each block l2-normalised (a FeatureUnion).

    The same numbers as scikit-learn's ``TfidfVectorizer(analyzer=..., sublinear_tf=True)`` of
    each block, built for the whole batch with numpy (no Python loop per n-gram) and never
    densified: a row has a few hundred non-zeros among its ~100,000 columns.
    """

    def __init__(self, blocks: Sequence[TfidfBlock]) -> None:
        self.blocks = list(blocks)
        self.offsets = np.cumsum([0] + [b.size for b in self.blocks])
        self._grams = [_grams(b) for b in self.blocks]
        self.idf = np.concatenate([b.idf for b in self.blocks]) if self.blocks else np.zeros(0)

    @property
    def n_features(self) -> int:
        return int(self.offsets[-1])

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        n = len(texts)
        lowered = [t.lower() for t in texts]
        docs, columns = [], []
        for offset, grams in zip(self.offsets[:-1], self._grams, strict=True):
            d, c = grams.hits(lowered)
            docs.append(d)
            columns.append(c + offset)
        docs, columns = _joined(docs), _joined(columns)
        # counts per (document, column): one sort of the batch's cell numbers (int32 when they fit)
        cells = docs * self.n_features + columns
        if n * self.n_features < 2**31:
            cells = cells.astype(np.int32)
        cells.sort()
        first = np.ones(len(cells), dtype=bool)
        first[1:] = cells[1:] != cells[:-1]
        starts = np.flatnonzero(first)
        counts = np.diff(np.append(starts, len(cells)))
        row, column = np.divmod(cells[starts].astype(np.int64), self.n_features)
        block = np.searchsorted(self.offsets, column, side="right") - 1
        values = (1.0 + np.log(counts)) * self.idf[column]
        cell_block = row * len(self.blocks) + block
        norms = np.sqrt(np.bincount(cell_block, weights=values * values, minlength=n * len(self.blocks)))
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(row, minlength=n), out=indptr[1:])
        return sparse.csr_matrix(((values / norms[cell_block]).astype(np.float32), column.astype(np.int32), indptr),
                                 shape=(n, self.n_features))

    def save(self, path: Path) -> None:
        # terms as one UTF-8 blob per block (string arrays would need pickle to load back)
        arrays = {}
        for i, block in enumerate(self.blocks):
            terms = sorted(block.vocabulary, key=block.vocabulary.__getitem__)
            arrays[f"{i}_{block.analyzer}_terms"] = np.frombuffer("\n".join(terms).encode("utf-8"), dtype=np.uint8)
            arrays[f"{i}_{block.analyzer}_idf"] = block.idf.astype(np.float64)
        with open(path, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    @classmethod
    def load(cls, path: Path) -> TfidfFeaturizer:
        data = np.load(path, allow_pickle=False)
        blocks = []
        index = 0
        while True:
            names = [k for k in data.files if k.startswith(f"{index}_") and k.endswith("_terms")]
            if not names:
                break
            analyzer = names[0].split("_")[1]
            terms = bytes(data[names[0]]).decode("utf-8").split("\n")
            idf = data[f"{index}_{analyzer}_idf"]
            blocks.append(TfidfBlock(analyzer, {t: i for i, t in enumerate(terms)}, idf))
            index += 1
        return cls(blocks)


@dataclass(frozen=True)
class SparseLinearClassifier:
    """The TF-IDF model's linear SVM and its sigmoid calibration, applied to sparse rows.

    scikit-learn's ``CalibratedClassifierCV(LinearSVC, method="sigmoid", ensemble=False)``:
    one-vs-rest decision values ``s = x W + b``, each calibrated as ``1 / (1 + exp(a s + c))``,
    then normalised to sum to 1 (uniform where every class calibrates to 0). The same file the
    ONNX classifier was exported from, so the two agree (a test checks it); this one costs a
    sparse product over a row's non-zeros instead of a dense 100,000-column one.
    """

    coef: np.ndarray  # (n_features, n_classes) float32
    intercept: np.ndarray  # (n_classes,)
    slope: np.ndarray  # sigmoid a per class
    offset: np.ndarray  # sigmoid b per class

    def predict_proba(self, features: sparse.csr_matrix) -> np.ndarray:
        decision = np.asarray(features @ self.coef, dtype=np.float64) + self.intercept
        probs = 1.0 / (1.0 + np.exp(decision * self.slope + self.offset))
        total = probs.sum(axis=1, keepdims=True)
        probs = np.divide(probs, total, out=np.full_like(probs, 1.0 / probs.shape[1]), where=total != 0)
        probs[(probs > 1.0) & (probs <= 1.0 + 1e-5)] = 1.0
        return probs

    def save(self, path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, coef=self.coef.astype(np.float32), intercept=self.intercept.astype(np.float64),
                     slope=self.slope.astype(np.float64), offset=self.offset.astype(np.float64))

    @classmethod
    def load(cls, path: Path) -> SparseLinearClassifier:
        data = np.load(path, allow_pickle=False)
        return cls(np.ascontiguousarray(data["coef"], dtype=np.float32), data["intercept"], data["slope"],
                   data["offset"])
