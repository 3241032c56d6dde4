"""The quality gate's rows on the real sample: how many rows a retrain's gate can score on, and
what scoring production on rows it was trained on does to its figure.

    python bench/gate_rows.py [--data ../shared/data/rakuten] [--new-share 0.3] [--no-train]

A stratified share of the sample (``--new-share``) plays the labels the stream brought; the rest
is the loaded dataset, which production was trained on (stratified 80/20). A retrain then splits
the whole: as a fresh stratified split, or keeping production's rows on their side (what
``split_dataset(..., previous=...)`` does). For each it prints the candidate's held-out rows, how
many of them production was trained on, and the rows left for the gate (held out by the candidate,
never seen by production), side by side. Unless ``--no-train``, it trains production (TF-IDF only)
and prints its weighted F1 on the fresh split's held-out rows (what the old gate scored it on)
against the rows it never saw.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.model_selection import train_test_split  # noqa: E402

from rakuten_stream.datasets import Dataset, load_dataset  # noqa: E402
from training.pipeline import PreviousSplit, TrainConfig, split_dataset, train  # noqa: E402
from training.quality_gate import score_version  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/rakuten"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--new-share", type=float, default=0.3, help="share of the sample playing the new labels")
    parser.add_argument("--no-train", action="store_true", help="count rows only")
    args = parser.parse_args()

    sample = load_dataset(args.data)
    rows = [r for r in sample.records if r.prdtypecode is not None]
    loaded, new = train_test_split(rows, test_size=args.new_share, random_state=7,
                                   stratify=[r.prdtypecode for r in rows])
    config = TrainConfig(data=None, model_dir=Path(tempfile.mkdtemp(prefix="bench-gate-")), use_e5=False,
                         use_image=False)
    prod_train, prod_test, _ = split_dataset(Dataset(args.data, "database", loaded, []), config)
    trained = {r.productid for r in prod_train.records}
    previous = PreviousSplit(frozenset(trained), frozenset(r.productid for r in prod_test.records))
    both = Dataset(args.data, "database", loaded + new, [])
    new_ids = {r.productid for r in new}
    splits = {"fresh stratified split": split_dataset(both, config)[1],
              "production's rows kept on their side": split_dataset(both, config, previous)[1]}

    print(f"{len(rows)} labeled rows: {len(loaded)} loaded (production trained on {len(trained)}, held out "
          f"{len(prod_test.records)}), {len(new)} new labels")
    print(f"{'retrain split':<40} {'held out':>9} {'prod. trained on':>17} {'gate rows':>10} {'of them new':>12}")
    gate = {}
    for name, held_out in splits.items():
        ids = [r.productid for r in held_out.records]
        seen = sum(i in trained for i in ids)
        gate[name] = [r for r in held_out.records if r.productid not in trained]
        print(f"{name:<40} {len(ids):>9} {seen:>17} {len(gate[name]):>10} "
              f"{sum(r.productid in new_ids for r in gate[name]):>12}")
    fresh, sticky = (len(v) for v in gate.values())
    print(f"gate rows, kept split / fresh split: x{sticky / fresh:.2f}")

    if args.no_train:
        return
    started = time.perf_counter()
    result = train(config, dataset=Dataset(args.data, "database", loaded, []), snapshot_id="bench")
    fresh_held_out = splits["fresh stratified split"].records
    flattered = score_version(result.artifact_dir, fresh_held_out)
    honest = score_version(result.artifact_dir, gate["fresh stratified split"])
    print(f"production (TF-IDF, trained in {time.perf_counter() - started:.0f} s), weighted F1 on the fresh split's "
          f"{len(fresh_held_out)} held-out rows: {flattered:.3f} (the old gate's figure); on the "
          f"{len(gate['fresh stratified split'])} of them it never saw: {honest:.3f} (+{flattered - honest:.3f} "
          f"from rows it was trained on)")


if __name__ == "__main__":
    main()
