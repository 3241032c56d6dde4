"""Accuracy and training time on the real sample: the figures of the README's model table.

    python bench/train_full.py [--data ../shared/data/rakuten] [--cache-dir /work/cache/bench]
                               [--folds 5] [--no-train] [--out /tmp/bench-models] [--no-e5] [--no-image]

1. Stratified k-fold over every labelled row: each model (TF-IDF, e5 head, joint TF-IDF ⊕ e5,
   image head) fitted on k-1 folds, vectorisers included, and the fusion cross-fitted; prints the
   weighted F1 of each, mean ± std over the folds, overall and on rows with an image, the
   calibration error, which e5 head the release would serve and the cascade threshold chosen
   on these predictions with its cheap share.
2. Unless --no-train: the release's own run (a stratified 80% for training, its own k-fold on
   those rows for its choices, the other 20% scored through the ONNX path the workers use):
   held-out weighted F1, the e5 int8 cost, the time of each step and the peak memory.

--cache-dir keeps the e5 embeddings, the image features and the out-of-fold predictions on disk
(each keyed by everything that determines it: inputs, encoder settings, folds, model parameters):
the first run computes them, later runs reuse them. Keep it outside the repository.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.crossval import format_figures  # noqa: E402
from training.pipeline import TrainConfig, default_progress, kfold_only, train  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/rakuten"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache of e5 embeddings and image features")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--no-train", action="store_true", help="the k-fold figures only")
    parser.add_argument("--no-kfold", action="store_true", help="the release run only")
    parser.add_argument("--no-e5", action="store_true")
    parser.add_argument("--no-image", action="store_true")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-models-"))
    config = TrainConfig(
        data=args.data,
        model_dir=out,
        use_e5=not args.no_e5,
        use_image=not args.no_image,
        folds=args.folds,
        cache_dir=args.cache_dir,
    )

    summary: dict = {}
    if not args.no_kfold:
        summary["kfold"] = _kfold(config)
    if not args.no_train:
        start = time.perf_counter()
        with default_progress() as progress:
            result = train(config, progress)
        minutes = (time.perf_counter() - start) / 60
        m = result.metrics
        with_image = m["with_image"]
        best_held_out = max(with_image.get("tfidf", 0), with_image.get("e5", 0))
        print(
            f"release run {result.version}: held-out weighted F1 fused {m['weighted_f1']} | per modality "
            f"{m['per_modality_f1']} | rows with image: fused {with_image.get('fused')} vs best text "
            f"{best_held_out} | ECE {m['ece']} | cascade {m.get('cascade')} | {minutes:.1f} min | peak "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB | report {result.report}"
        )
        summary["release"] = {
            "version": result.version,
            "train_minutes": round(minutes, 1),
            "weighted_f1": m["weighted_f1"],
            "per_modality_f1": m["per_modality_f1"],
            "with_image": with_image,
            "ece": m["ece"],
            "fusion": m["fusion"],
            "cascade": m.get("cascade"),
            "e5_int8_cost": m.get("e5_int8_cost"),
            "serving_parity": m.get("serving_parity"),
            "timings_s": m["timings"],
            "report": str(result.report),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
    print(json.dumps(summary))


def _kfold(config: TrainConfig) -> dict:
    start = time.perf_counter()
    with default_progress() as progress:
        kfold = kfold_only(config, progress)
    kfold_minutes = (time.perf_counter() - start) / 60
    f = kfold.figures
    models = f["models"]
    text_models = [m for m in ("tfidf", "e5", "joint") if m in models]
    best_text = max(text_models, key=lambda m: models[m]["weighted_f1_with_image"]["mean"])
    print(
        f"{f['n_folds']}-fold stratified, out of fold, on {f['n_rows']} rows ({f['n_rows_with_image']} with an "
        f"image); mean ± std over the folds:"
    )
    print("\n".join(format_figures(f)))
    fused = models["fused"]
    print(
        f"fused (e5 head: {kfold.e5_head_input}; fused F1 by e5 head {f.get('fused_by_e5_head_input')}) "
        f"{fused['weighted_f1']['mean']:.4f} ± {fused['weighted_f1']['std']:.4f} (target >= 0.81) | rows with an "
        f"image: fused {fused['weighted_f1_with_image']['mean']:.4f} vs best text ({best_text}) "
        f"{models[best_text]['weighted_f1_with_image']['mean']:.4f} | ECE {fused['ece']:.4f} (target <= 0.015)"
    )
    if kfold.cascade is not None:
        c = kfold.cascade
        print(
            f"cascade: threshold {c.threshold} on the {c.cheap_model} confidence -> {c.cheap_share:.1%} answered "
            f"by {c.cheap_model} alone, weighted F1 {c.oof_weighted_f1_cascade} vs {c.oof_weighted_f1_all} "
            f"running everything (allowed loss {config.cascade_max_loss})"
        )
    print(f"k-fold: {kfold_minutes:.1f} min {json.dumps({k: round(v) for k, v in kfold.timings.items()})}")
    return {
        "figures": f,
        "cascade": kfold.cascade.to_manifest() if kfold.cascade else None,
        "e5_head_input": kfold.e5_head_input,
        "minutes": round(kfold_minutes, 1),
    }


if __name__ == "__main__":
    main()
