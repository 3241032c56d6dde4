"""The drift consumer's judgement on the real sample: false alarms, detection delay, F1 estimate error.

A TF-IDF model is trained on a random share of the sample (its held-out rows are the reference
profile, as in production); the rows it never saw are scored once, text only, and windows are drawn
from them with replacement. Each window goes through what the consumer does when it closes one
(drift score against the calibrated threshold, estimated F1, the performance trigger), without the
broker: this measures the statistics, the consumer tests measure the plumbing.

- false alarms per 100 windows of the training distribution (unshifted);
- detection delay, in windows after the shift starts (0: the first shifted window alarms), for a
  class-mix shift (a share of each window from 3 random categories only) and a text shift (listings
  without their description, rescored);
- mean absolute error of the estimated weighted F1 against the true one, per window.

    python bench/drift_loop.py --data /work/shared/data/rakuten [--window 500] [--windows 100]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from inference.features.text_cleaning import ListingText  # noqa: E402
from inference.reference_profile import read_profile  # noqa: E402
from inference.runtime import ModelRuntime  # noqa: E402
from inference.scoring import score_batch  # noqa: E402
from rakuten_stream.datasets import load_dataset  # noqa: E402
from rakuten_stream.settings import Settings  # noqa: E402
from stream_workers.drift import triggers  # noqa: E402
from stream_workers.drift.calibration import Features, drift_score  # noqa: E402
from stream_workers.drift.consumer import Reference  # noqa: E402
from stream_workers.drift.estimation import estimate  # noqa: E402
from stream_workers.drift.windows import WindowRow, true_performance  # noqa: E402


def score(runtime: ModelRuntime, records, drop_description: bool = False) -> list[tuple[WindowRow, int]]:
    out = []
    for start in range(0, len(records), 256):
        part = records[start : start + 256]
        texts = [ListingText.of(r.designation, None if drop_description else r.description) for r in part]
        for r, s in zip(part, score_batch(runtime, texts, [None] * len(part), top_k=3).listings, strict=True):
            row = WindowRow(
                s.prdtypecode,
                s.confidence,
                tuple((c.prdtypecode, c.probability) for c in s.top_k),
                s.text_chars,
                False,
                s.modality_classes,
            )
            out.append((row, r.prdtypecode))
    return out


def judge(window: list[tuple[WindowRow, int]], reference: Reference, settings: Settings) -> tuple[bool, float, float]:
    rows = [r for r, _ in window]
    value, _ = drift_score(Features.of(rows), Features.of(reference.rows))
    estimated = estimate(rows, reference.profile.classes, reference.prior, reference.calibration).weighted_f1
    true = true_performance([(r.predicted_class, t) for r, t in window])["true_f1"]
    j = triggers.WindowJudgement(
        value, reference.thresholds.for_size(len(rows)), estimated, true, len(window), reference.profile.weighted_f1
    )
    return bool(triggers.fired(j, settings.drift)), estimated, true


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--train-rows", type=int, default=1500)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--windows", type=int, default=100, help="unshifted windows")
    parser.add_argument("--trials", type=int, default=10, help="shift trials per kind")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()

    from training.pipeline import TrainConfig, train
    from training.tfidf_model import TfidfParams

    records = [r for r in load_dataset(args.data).records if r.prdtypecode is not None]
    random.Random(args.seed).shuffle(records)
    chosen, unseen = records[: args.train_rows], records[args.train_rows :]
    settings = Settings(drift={"window_messages": args.window})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        folder.mkdir()
        with open(folder / "products.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["productid", "imageid", "designation", "description", "prdtypecode"])
            for r in chosen:
                writer.writerow([r.productid, r.imageid or "", r.designation, r.description or "", r.prdtypecode])
        started = time.perf_counter()
        result = train(
            TrainConfig(
                data=folder,
                model_dir=Path(tmp) / "models",
                use_e5=False,
                use_image=False,
                tfidf=TfidfParams(max_word_features=20000, max_char_features=20000),
            )
        )
        runtime = ModelRuntime(result.artifact_dir, providers="cpu")
        pool = score(runtime, unseen)
        no_description = score(runtime, unseen, drop_description=True)
        profile = read_profile(result.artifact_dir)
        print(
            f"model: TF-IDF on {len(chosen)} random rows ({time.perf_counter() - started:.0f}s), held-out "
            f"F1 {profile.weighted_f1:.3f} on {len(profile.rows)} reference rows; {len(pool)} unseen rows; "
            f"windows of {args.window}, false-alarm rate {settings.drift.false_alarm_rate}"
        )
    started = time.perf_counter()
    reference = Reference.of(profile, settings)
    print(
        f"threshold {reference.thresholds.for_size(args.window):.2f} ({settings.drift.bootstrap_rounds} bootstrap "
        f"windows, {time.perf_counter() - started:.1f}s); confidence calibration exponent "
        f"{reference.calibration.exponent}"
    )
    rng = np.random.default_rng(args.seed)

    def draw(source, n):
        return [source[i] for i in rng.integers(0, len(source), n)]

    alarms, errors = 0, []
    for _ in range(args.windows):
        alarmed, estimated, true = judge(draw(pool, args.window), reference, settings)
        alarms += alarmed
        errors.append(abs(estimated - true))
    print(
        f"unshifted: {alarms} false alarms in {args.windows} windows = {100 * alarms / args.windows:.1f} per 100 "
        f"windows (target <= {100 * settings.drift.false_alarm_rate:g}); estimated F1 MAE {np.mean(errors):.4f} "
        f"(max {np.max(errors):.4f})"
    )

    classes = sorted({t for _, t in pool})
    by_class = {c: [x for x in pool if x[1] == c] for c in classes}

    def delay(make_window, limit: int = 10) -> int | None:
        for k in range(limit):
            if judge(make_window(), reference, settings)[0]:
                return k
        return None

    for share in (1.0, 0.5, 0.25):
        delays, shifted_errors = [], []
        for _ in range(args.trials):
            few = rng.choice([c for c in classes if len(by_class[c]) >= 20], 3, replace=False)
            rows = [x for c in few for x in by_class[int(c)]]

            def window(rows=rows, share=share):
                k = int(round(share * args.window))
                return draw(rows, k) + draw(pool, args.window - k)

            delays.append(delay(window))
            _, estimated, true = judge(window(), reference, settings)
            shifted_errors.append(abs(estimated - true))
        _print_delays(f"class-mix shift ({share:.0%} of each window from 3 categories)", delays, shifted_errors)
    for share in (1.0, 0.5):
        delays, shifted_errors = [], []
        for _ in range(args.trials):

            def window(share=share):
                k = int(round(share * args.window))
                return draw(no_description, k) + draw(pool, args.window - k)

            delays.append(delay(window))
            _, estimated, true = judge(window(), reference, settings)
            shifted_errors.append(abs(estimated - true))
        _print_delays(f"text shift ({share:.0%} of each window without its description)", delays, shifted_errors)


def _print_delays(what: str, delays: list[int | None], errors: list[float]) -> None:
    found = [d for d in delays if d is not None]
    mean = f"{np.mean(found):.2f}" if found else "-"
    print(
        f"{what}: detected in {len(found)}/{len(delays)} trials, delay mean {mean} windows, max "
        f"{max(found) if found else '-'} (0 = the first shifted window); estimated F1 MAE {np.mean(errors):.4f}"
    )


if __name__ == "__main__":
    main()
