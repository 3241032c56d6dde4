"""Combining the per-modality probabilities into one calibrated decision (serving and training).

Weighted late fusion is log-linear: ``z = sum_m w_m * log p_m`` over the modalities a listing
has, then a softmax; the weights are fitted on out-of-fold predictions by log-loss, so their
overall scale doubles as the temperature that calibrates the result. A missing image (or any
modality) simply drops its term. The stacking alternative feeds the same log-probabilities and
presence flags to a logistic regression (an ONNX graph).

Each modality's contribution to a decision is its share of the margin of the chosen class over
the average class, so the shares of a prediction add up to 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

EPS = 1e-6


def safe_log(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs, EPS, 1.0))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def weighted_logits(log_probs: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray],
                    weights: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Per-modality terms ``w_m * log p_m`` (zero where the modality is missing)."""
    return {m: weights.get(m, 0.0) * lp * present[m][:, None] for m, lp in log_probs.items()}


def fuse_weighted(log_probs: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray],
                  weights: Mapping[str, float]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    terms = weighted_logits(log_probs, present, weights)
    probs = softmax(sum(terms.values()))
    return probs, contribution_shares(terms, probs.argmax(axis=1))


def stacker_features(log_probs: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray],
                     modalities: Sequence[str]) -> np.ndarray:
    """[log p_m * present_m for m] + [present_m for m]: the stacker's input, float32."""
    blocks = [log_probs[m] * present[m][:, None] for m in modalities]
    blocks += [present[m][:, None].astype(np.float64) for m in modalities]
    return np.hstack(blocks).astype(np.float32)


def stacker_contributions(features: np.ndarray, coef: np.ndarray, modalities: Sequence[str], n_classes: int,
                          chosen: np.ndarray) -> dict[str, np.ndarray]:
    """Linear decomposition of the stacker's logit of the chosen class, block by modality."""
    centred = coef - coef.mean(axis=0, keepdims=True)  # margin over the average class
    terms = {}
    for i, m in enumerate(modalities):
        block = slice(i * n_classes, (i + 1) * n_classes)
        presence = len(modalities) * n_classes + i
        per_class = features[:, block] @ centred[:, block].T + features[:, [presence]] * centred[:, presence]
        terms[m] = per_class
    return contribution_shares(terms, chosen, already_centred=True)


def contribution_shares(terms: Mapping[str, np.ndarray], chosen: np.ndarray,
                        already_centred: bool = False) -> dict[str, np.ndarray]:
    rows = np.arange(len(chosen))
    margins = {}
    for m, t in terms.items():
        margin = t[rows, chosen]
        if not already_centred:
            margin = margin - t.mean(axis=1)
        margins[m] = np.abs(margin)
    total = sum(margins.values())
    total = np.where(total > 0, total, 1.0)
    return {m: v / total for m, v in margins.items()}


def expand_to_classes(probs: np.ndarray, head_classes: Sequence[int], classes: Sequence[int]) -> np.ndarray:
    """A head trained on a subset of the classes (few images of a class): put its columns in place."""
    if list(head_classes) == list(classes):
        return probs
    full = np.full((probs.shape[0], len(classes)), EPS, dtype=probs.dtype)
    position = {c: i for i, c in enumerate(classes)}
    full[:, [position[c] for c in head_classes]] = probs
    return full / full.sum(axis=1, keepdims=True)


def recalibrate_confidence(probs: np.ndarray, confidence_map: Mapping[str, Sequence[float]] | None) -> np.ndarray:
    """The top probability of each row mapped through ``confidence_map`` (knots ``x`` -> ``y``,
    linear in between, fitted out of fold by training), the other classes rescaled to sum to 1.

    The decision never changes: the top class keeps at least its lead over the second.
    """
    if not confidence_map or len(probs) == 0:
        return probs
    rows = np.arange(len(probs))
    chosen = probs.argmax(axis=1)
    top = probs[rows, chosen]
    second = np.partition(probs, -2, axis=1)[:, -2] if probs.shape[1] > 1 else np.zeros(len(probs))
    target = np.interp(top, confidence_map["x"], confidence_map["y"])
    rest = 1.0 - top
    # after rescaling, the second is second * (1 - target) / rest: keep it below the top
    floor = np.divide(second, rest + second, out=np.zeros_like(top), where=(rest + second) > 0) + 1e-6
    target = np.clip(np.maximum(target, floor), 0.0, 1.0)
    scale = np.divide(1.0 - target, rest, out=np.zeros_like(rest), where=rest > 0)
    out = probs * scale[:, None]
    out[rows, chosen] = target
    return out / out.sum(axis=1, keepdims=True)
