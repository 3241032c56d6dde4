"""An explicit on-disk cache of expensive features (e5 embeddings, image features) for reruns.

Off unless a directory is given (`train --cache-dir`, `bench/train_full.py --cache-dir`). An entry
is one ``.npy`` file named by the sha256 of everything that determines its content: the encoder's
identity and parameters and the exact inputs (texts, or image files' paths, sizes and mtimes). A
changed input is a new entry, never a stale hit. Keep the directory outside the repository.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def cache_key(kind: str, parameters: dict, inputs: Sequence[str]) -> str:
    digest = hashlib.sha256()
    digest.update(kind.encode())
    digest.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    for item in inputs:
        digest.update(item.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return f"{kind}-{digest.hexdigest()[:32]}"


def image_inputs(paths: Sequence[Path]) -> list[str]:
    """What identifies image files for the cache: path, size and modification time."""
    out = []
    for path in paths:
        stat = Path(path).stat()
        out.append(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
    return out


def cached_array(cache_dir: Path | None, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``, or the array stored under ``key`` in ``cache_dir`` (None: no cache)."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{key}.npy"
    if path.is_file():
        log.info("feature cache hit: %s", path)
        return np.load(path, allow_pickle=False)
    array = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, array, allow_pickle=False)
    partial.replace(path)
    return array
