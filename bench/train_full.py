"""Accuracy and training time on the real sample: the figures of the README's model table.

    python bench/train_full.py [--data ../shared/data/rakuten] [--out /tmp/bench-models] [--no-e5]

Trains every model on a stratified 80% of the data, scores the other 20% through the ONNX path
the workers use, and prints weighted F1 (fused, per modality, on rows with an image), the e5
int8 cost, the time of each step and the peak memory.
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

from training.pipeline import TrainConfig, default_progress, train  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/rakuten"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-e5", action="store_true")
    parser.add_argument("--no-image", action="store_true")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-models-"))
    start = time.perf_counter()
    with default_progress() as progress:
        result = train(TrainConfig(data=args.data, model_dir=out, use_e5=not args.no_e5,
                                   use_image=not args.no_image), progress)
    minutes = (time.perf_counter() - start) / 60
    m = result.metrics
    with_image = m["with_image"]
    best_text = max(with_image.get("tfidf", 0), with_image.get("e5", 0))
    figures = {
        "version": result.version, "train_minutes": round(minutes, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "weighted_f1": m["weighted_f1"], "per_modality_f1": m["per_modality_f1"], "with_image": with_image,
        "fused_minus_best_text_on_image_rows": round(with_image.get("fused", 0) - best_text, 4),
        "ece": m["ece"], "fusion": m["fusion"], "e5_int8_cost": m.get("e5_int8_cost"), "timings_s": m["timings"],
        "report": str(result.report),
    }
    print(f"weighted F1 fused {m['weighted_f1']} (target 0.80) | per modality {m['per_modality_f1']} | "
          f"rows with image: fused {with_image.get('fused')} vs best text {best_text} | "
          f"{minutes:.1f} min (target < 20)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
