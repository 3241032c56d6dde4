"""Evaluating a model version on a held-out set: figures, plots (PNG) and a Markdown report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix, f1_score, log_loss  # noqa: E402


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return round(float(f1_score(y_true, y_pred, average="weighted", zero_division=0)), 4)


def expected_calibration_error(y_index: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_index
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (confidence > lo) & (confidence <= hi)
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return round(float(ece), 4)


def evaluate(y_index: np.ndarray, fused: np.ndarray, modality_probs: Mapping[str, np.ndarray],
             present: Mapping[str, np.ndarray], classes: Sequence[int]) -> dict:
    """Weighted F1 overall, per class, per modality, and on the rows that have an image."""
    labels = list(range(len(classes)))
    pred = fused.argmax(axis=1)
    per_class = f1_score(y_index, pred, labels=labels, average=None, zero_division=0)
    has_image = present.get("image", np.zeros(len(y_index), dtype=bool))
    metrics: dict = {
        "n_rows": int(len(y_index)),
        "n_rows_with_image": int(has_image.sum()),
        "weighted_f1": weighted_f1(y_index, pred),
        "accuracy": round(float((pred == y_index).mean()), 4),
        "log_loss": round(float(log_loss(y_index, np.clip(fused, 1e-12, 1), labels=labels)), 4),
        "ece": expected_calibration_error(y_index, fused),
        "per_class_f1": {str(c): round(float(f), 4) for c, f in zip(classes, per_class, strict=True)},
        "per_modality_f1": {},
        "with_image": {},
    }
    for name, probs in modality_probs.items():
        rows = present[name]
        metrics["per_modality_f1"][name] = weighted_f1(y_index[rows], probs[rows].argmax(axis=1))
    if has_image.any():
        metrics["with_image"]["fused"] = weighted_f1(y_index[has_image], pred[has_image])
        for name, probs in modality_probs.items():
            metrics["with_image"][name] = weighted_f1(y_index[has_image], probs[has_image].argmax(axis=1))
    return metrics


def plot_confusion(y_index: np.ndarray, pred: np.ndarray, classes: Sequence[int], path: Path,
                   title: str = "Confusion matrix, held-out rows (row-normalised)") -> Path:
    matrix = confusion_matrix(y_index, pred, labels=list(range(len(classes))), normalize="true")
    fig, ax = plt.subplots(figsize=(11, 10))
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), [str(c) for c in classes], rotation=90, fontsize=8)
    ax.set_yticks(range(len(classes)), [str(c) for c in classes], fontsize=8)
    ax.set_xlabel("predicted prdtypecode")
    ax.set_ylabel("true prdtypecode")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reliability(y_index: np.ndarray, curves: Mapping[str, np.ndarray], path: Path, bins: int = 10,
                     title: str = "Reliability diagram (held-out rows)") -> Path:
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    edges = np.linspace(0, 1, bins + 1)
    for name, probs in curves.items():
        confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y_index
        xs, ys = [], []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            mask = (confidence > lo) & (confidence <= hi)
            if mask.sum() >= 5:
                xs.append(confidence[mask].mean())
                ys.append(correct[mask].mean())
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(path: Path, version: str, metrics: dict, extra: Mapping[str, object],
                 category_names: Mapping[int, str], images: Sequence[str]) -> Path:
    lines = [
        f"# Evaluation of model version `{version}`", "",
        f"Held-out rows: {metrics['n_rows']} ({metrics['n_rows_with_image']} with an image). "
        "Scored through the ONNX path the workers use.", "",
        "| metric | value |", "|---|---|",
        f"| weighted F1 (fused) | **{metrics['weighted_f1']}** |",
        f"| accuracy | {metrics['accuracy']} |",
        f"| log-loss | {metrics['log_loss']} |",
        f"| expected calibration error | {metrics['ece']} |", "",
        "## Per modality (weighted F1)", "",
        "| modality | all rows it applies to | rows with an image |", "|---|---|---|",
    ]
    for name, value in metrics["per_modality_f1"].items():
        lines.append(f"| {name} | {value} | {metrics['with_image'].get(name, '-')} |")
    lines.append(f"| **fused** | {metrics['weighted_f1']} | {metrics['with_image'].get('fused', '-')} |")
    lines += kfold_section(metrics.get("kfold"), metrics.get("cascade"))
    lines += ["", "## Training details", ""]
    lines += [f"- **{k}**: {v}" for k, v in extra.items()]
    lines += ["", "## Per class (F1)", "", "| prdtypecode | category | F1 |", "|---|---|---|"]
    for code, value in metrics["per_class_f1"].items():
        lines.append(f"| {code} | {category_names.get(int(code), '')} | {value} |")
    lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in images]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def kfold_section(kfold: Mapping | None, cascade: Mapping | None) -> list[str]:
    """The out-of-fold figures of the training rows (mean ± std over the folds) and the cascade."""
    if not kfold:
        return []
    lines = ["", f"## Out of fold ({kfold['n_folds']}-fold stratified, training rows)", "",
             f"{kfold['n_rows']} training rows ({kfold['n_rows_with_image']} with an image); every model fitted on "
             f"the other folds (TF-IDF vocabularies included), the fusion's weights too (cross-fitted). "
             "Every model choice is made on these figures.", "",
             "| model | weighted F1 (mean ± std over folds) | rows with an image | ECE | log-loss |",
             "|---|---|---|---|---|"]
    for name, f in kfold["models"].items():
        label = f"**{name}**" if name == "fused" else name
        lines.append(f"| {label} | {f['weighted_f1']['mean']:.4f} ± {f['weighted_f1']['std']:.4f} | "
                     f"{f['weighted_f1_with_image']['mean']:.4f} ± {f['weighted_f1_with_image']['std']:.4f} | "
                     f"{f['ece']:.4f} | {f['log_loss']:.4f} |")
    if kfold.get("fused_by_e5_head_input"):
        lines += ["", f"Served e5 head: `{kfold['e5_head_input']}` (pooled out-of-fold fused weighted F1 by head: "
                  f"{kfold['fused_by_e5_head_input']}). `joint` is the TF-IDF ⊕ e5 linear model."]
    if cascade:
        lines += ["", "### Cascade", "",
                  f"Listings whose {cascade['cheap_model']} confidence is at least **{cascade['threshold']}** are "
                  f"answered by {cascade['cheap_model']} alone: {cascade['cheap_share']:.1%} of the training rows out "
                  f"of fold, weighted F1 {cascade['oof_weighted_f1_cascade']} against "
                  f"{cascade['oof_weighted_f1_all']} running every model."]
    return lines
