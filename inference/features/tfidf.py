"""TF-IDF features of the word and character n-gram model, shared by training and serving.

skl2onnx cannot convert character n-gram vectorisers, so the analysers live here as plain
functions: training hands them to scikit-learn's ``TfidfVectorizer(analyzer=...)`` and keeps
its vocabulary and idf weights; serving rebuilds exactly the same vectors with numpy and feeds
them to the ONNX classifier. A test checks the two agree.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


class TfidfFeaturizer:
    """Dense float32 rows: the blocks side by side, each block l2-normalised (a FeatureUnion)."""

    def __init__(self, blocks: Sequence[TfidfBlock]) -> None:
        self.blocks = list(blocks)
        self.offsets = np.cumsum([0] + [b.size for b in self.blocks])

    @property
    def n_features(self) -> int:
        return int(self.offsets[-1])

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.n_features), dtype=np.float32)
        for row, text in enumerate(texts):
            for block, offset in zip(self.blocks, self.offsets, strict=False):
                counts = Counter(ANALYZERS[block.analyzer](text))
                columns, values = [], []
                for gram, count in counts.items():
                    column = block.vocabulary.get(gram)
                    if column is not None:
                        columns.append(column)
                        values.append((1.0 + math.log(count)) * block.idf[column])
                if not columns:
                    continue
                vector = np.asarray(values, dtype=np.float64)
                vector /= np.sqrt(np.dot(vector, vector))
                out[row, offset + np.asarray(columns)] = vector
        return out

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
