"""Worker throughput against the raw throughput of the same model on the same batches.

    python bench/worker_throughput.py --model var/models/<version> --cascade \
        --database-url postgresql://postgres@127.0.0.1/bench [-n 240] [--cheap-n 3000] [--threshold T]

``--cascade`` (issue 13) measures side by side in one run, each a copy of ``--model`` promoted in
turn: the cheap model alone (TF-IDF only), all models, and the confidence-gated cascade (the
manifest's threshold, or ``--threshold``). For each: the raw throughput (``ModelRuntime.predict``
on pre-decoded batches, no Kafka), one worker end to end (embedded broker, PostgreSQL, Redis
cache on but cold: fresh version ids), their ratio; per model the raw throughput of its own
stage; the cascade's cheap share and the weighted F1 of all models vs the cascade on the
version's held-out rows (the training split, rows it never saw); and the load average.

    python bench/worker_throughput.py --model var/models/<version> [--data ../shared/data/rakuten] [-n 400]

Without ``--cascade``, prints, for listings with images and for text-only listings:
- raw: ``ModelRuntime.predict`` on pre-decoded batches (the models alone: features, ONNX, fusion);
- end to end: one worker on the embedded broker, from publish to the last committed batch
  (decode, validate, base64, images, inference, predictions topic, database upsert, commit);
- the ratio end-to-end / raw;
and micro-batched (64) versus one message at a time on the same text-only stream.
The prediction cache is off, so every message is really inferred.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from inference import registry  # noqa: E402
from inference.artifacts import FusionSpec, read_manifest, write_manifest  # noqa: E402
from inference.features.text_cleaning import ListingText  # noqa: E402
from inference.runtime import ModelRuntime  # noqa: E402
from producers.publisher import Publisher  # noqa: E402
from rakuten_stream.database import make_engine, upgrade  # noqa: E402
from rakuten_stream.datasets import load_dataset  # noqa: E402
from rakuten_stream.embedded_broker import EmbeddedBroker, free_port  # noqa: E402
from rakuten_stream.kafka import ensure_topics, make_admin  # noqa: E402
from rakuten_stream.settings import Settings  # noqa: E402
from stream_workers.worker import Worker  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/rakuten"


def raw_throughput(model_dir: Path, records, batch: int, with_images: bool) -> float:
    runtime = ModelRuntime(model_dir)
    batches = []
    for start in range(0, len(records), batch):
        part = records[start : start + batch]
        texts = [ListingText.of(r.designation, r.description) for r in part]
        images = [Image.open(r.image_path).convert("RGB") if with_images and r.image_path else None for r in part]
        batches.append((texts, images))
    runtime.predict(*batches[0])  # warm-up
    start = time.perf_counter()
    for texts, images in batches:
        runtime.predict(texts, images)
    return len(records) / (time.perf_counter() - start)


def end_to_end(base: Settings, model_dir: Path, records, batch: int, images: str) -> float:
    run = uuid.uuid4().hex[:8]
    settings = base.with_overrides(
        topics={"products": f"bench-products-{run}", "predictions": f"bench-pred-{run}",
                "dead_letters": f"bench-dlq-{run}"},
        worker={"group_id": f"bench-{run}", "batch_max_messages": batch},
        images={"file_roots": sorted({r.image_path.resolve().parent for r in records if r.image_path is not None})})
    ensure_topics(settings)
    with Publisher(settings, images=images) as publisher:  # a backlog: the worker runs flat out
        publisher.publish(records)
    worker = Worker(settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    while not worker.assignment:  # model loaded, group joined
        time.sleep(0.01)
    start = time.perf_counter()
    while worker.stats.consumed < len(records):
        time.sleep(0.005)
    seconds = time.perf_counter() - start
    worker.stop()
    thread.join(30)
    # the embedded broker rewrites a snapshot of everything it stores about once a second: drop
    # what this run wrote so it does not tax the next one (see BROKER.md)
    admin = make_admin(settings)
    for future in admin.delete_topics([settings.topics.products, settings.topics.predictions,
                                       settings.topics.dead_letters]).values():
        future.result()
    stages = {}
    for metric in worker.metrics.stage_seconds.collect():
        sums = {s.labels["stage"]: s.value for s in metric.samples if s.name.endswith("_sum")}
        counts = {s.labels["stage"]: s.value for s in metric.samples if s.name.endswith("_count")}
        stages = {k: round(1000 * sums[k] / counts[k], 1) for k in sums if counts.get(k)}
    print(f"  batches {worker.stats.batches}, mean ms per batch and stage: {stages}", flush=True)
    return len(records) / seconds


def variant(model_dir: Path, root: Path, name: str, run: str, cascade: dict | None, cheap_only: bool = False) -> Path:
    """A copy of the version (files linked, not copied) under a fresh id, its manifest changed."""
    manifest = read_manifest(model_dir)
    target = root / f"{manifest.version}-{name}-{run}"
    target.mkdir()
    keep = set(manifest.files)
    update: dict = {"version": target.name, "cascade": cascade}
    if cheap_only:
        update |= {"e5": None, "image": None, "fusion": FusionSpec(method="weighted", weights={"tfidf": 1.0})}
        keep = {manifest.tfidf.featurizer, manifest.tfidf.classifier, manifest.tfidf.linear} - {None}
    for file in keep:
        (target / file).symlink_to((model_dir / file).resolve())
    write_manifest(target, manifest.model_copy(update=update))
    return target


def per_model_raw(runtime: ModelRuntime, records, batch: int) -> dict[str, float]:
    """Listings per second of each model's own stage alone (features and ONNX, no fusion)."""
    texts = [ListingText.of(r.designation, r.description) for r in records]
    out = {}
    stages = {"tfidf": runtime.predict_tfidf}
    if runtime.manifest.e5:
        stages["e5"] = runtime.predict_e5
    for name, stage in stages.items():
        stage(texts[:batch])
        start = time.perf_counter()
        for i in range(0, len(texts), batch):
            stage(texts[i : i + batch])
        out[name] = len(texts) / (time.perf_counter() - start)
    if runtime.has_image_model:
        images = [Image.open(r.image_path).convert("RGB") for r in records if r.image_path is not None]
        runtime.predict_image(images[:8])
        start = time.perf_counter()
        for i in range(0, len(images), 32):
            runtime.predict_image(images[i : i + 32])
        out["image"] = len(images) / (time.perf_counter() - start)
    return out


def choose_threshold(cheap_probs: np.ndarray, fused_probs: np.ndarray, y: np.ndarray, max_loss: float = 0.003
                     ) -> float:
    """The lowest cheap-confidence threshold whose cascade (and every higher one) loses at most
    ``max_loss`` of weighted F1 against every model: the rule training uses out of fold."""
    from training.evaluation import weighted_f1

    confidence = cheap_probs.max(axis=1)
    cheap_pred, fused_pred = cheap_probs.argmax(axis=1), fused_probs.argmax(axis=1)
    f1_all = weighted_f1(y, fused_pred)
    best = 1.01
    for threshold in np.unique(np.round(confidence, 3))[::-1]:
        if weighted_f1(y, np.where(confidence >= threshold, cheap_pred, fused_pred)) < f1_all - max_loss:
            break
        best = float(threshold)
    return best


def cascade_comparison(args, settings: Settings, engine, tmp: Path) -> dict:
    from training.evaluation import weighted_f1
    from training.pipeline import TrainConfig, score_records, split_dataset

    manifest = read_manifest(args.model)
    dataset = load_dataset(args.data)
    config = manifest.parameters.get("config", {})
    split = {k: config[k] for k in ("seed", "test_size") if k in config}
    _, held_out, classes = split_dataset(dataset, TrainConfig(data=args.data, model_dir=tmp, **split))
    rows = held_out.records[: args.f1_rows] if args.f1_rows else held_out.records
    y = np.asarray([classes.index(r.prdtypecode) for r in rows])
    all_scored = score_records(ModelRuntime(args.model), rows, cascade=False)  # every model, every held-out row
    threshold = args.threshold if args.threshold is not None else (manifest.cascade or {}).get("threshold")
    evaluated = np.ones(len(rows), dtype=bool)
    if threshold is None:  # a version trained before training chose one: choose it on one half, judge on the other
        half = np.arange(len(rows)) % 2 == 0
        threshold = choose_threshold(all_scored.modality_probs["tfidf"][half], all_scored.probs[half], y[half])
        evaluated = ~half
        print(f"no cascade threshold in the manifest: {threshold} chosen on {half.sum()} held-out rows "
              f"(at most 0.3 points of weighted F1 lost), judged on the other {evaluated.sum()}", flush=True)
    run = uuid.uuid4().hex[:6]
    variants = {
        "cheap_only": variant(args.model, tmp, "cheap", run, None, cheap_only=True),
        "all_models": variant(args.model, tmp, "all", run, None),
        "cascade": variant(args.model, tmp, "cascade", run, {"threshold": threshold, "cheap_model": "tfidf"}),
    }
    stream = held_out.records[: args.n]  # the held-out rows as they come (about a fifth with a photo)
    cheap_stream = [r for r in dataset.records][: args.cheap_n]  # distinct listings: no cache hit
    figures: dict = {"model": manifest.version, "threshold": threshold, "n": len(stream),
                     "cheap_n": len(cheap_stream), "batch": args.batch, "load_before": os.getloadavg()}
    print(f"load average before: {figures['load_before']}", flush=True)
    runtime = ModelRuntime(variants["all_models"])
    figures["per_model_raw_per_s"] = {k: round(v, 1) for k, v in per_model_raw(runtime, stream, args.batch).items()}
    print(f"raw, per model: {figures['per_model_raw_per_s']}", flush=True)
    for name, directory in variants.items():
        records = cheap_stream if name == "cheap_only" else stream
        version = read_manifest(directory).version
        registry.register(engine, read_manifest(directory), directory, None)
        registry.promote(engine, version)
        raw = raw_throughput(directory, records, args.batch, with_images=name != "cheap_only")
        e2e = end_to_end(settings, directory, records, args.batch, "uri")
        figures[name] = {"raw_per_s": round(raw, 1), "end_to_end_per_s": round(e2e, 1), "ratio": round(e2e / raw, 3),
                         "load": os.getloadavg()[0]}
        print(f"{name:11s} raw {raw:8.1f}/s  end to end {e2e:8.1f}/s  ratio {e2e / raw:.3f}  "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
    figures["cascade_vs_all_end_to_end"] = round(figures["cascade"]["end_to_end_per_s"]
                                                 / figures["all_models"]["end_to_end_per_s"], 2)
    figures["cascade_vs_all_raw"] = round(figures["cascade"]["raw_per_s"] / figures["all_models"]["raw_per_s"], 2)
    # quality: the same held-out rows through the one scoring entry point, every model vs the cascade
    cascade_runtime = ModelRuntime(variants["cascade"])
    cascade_scored = score_records(cascade_runtime, rows)
    cheap = ~cascade_scored.present["e5"] if "e5" in cascade_scored.present else np.ones(len(rows), dtype=bool)
    figures["f1_rows"] = int(evaluated.sum())
    figures["weighted_f1_all_models"] = weighted_f1(y[evaluated], all_scored.probs[evaluated].argmax(axis=1))
    figures["weighted_f1_cascade"] = weighted_f1(y[evaluated], cascade_scored.probs[evaluated].argmax(axis=1))
    figures["cheap_share_held_out"] = round(float(cheap[evaluated].mean()), 4)
    stream_cheap = cascade_runtime.predict([ListingText.of(r.designation, r.description) for r in stream],
                                           [None] * len(stream)).cheap
    figures["cheap_share_stream"] = round(float(stream_cheap.mean()), 4)
    figures["load_after"] = os.getloadavg()
    print(f"cascade vs all models: x{figures['cascade_vs_all_end_to_end']} end to end, "
          f"x{figures['cascade_vs_all_raw']} raw; cheap share {figures['cheap_share_stream']:.1%} of the stream, "
          f"{figures['cheap_share_held_out']:.1%} of {figures['f1_rows']} held-out rows; weighted F1 all models "
          f"{figures['weighted_f1_all_models']} vs cascade {figures['weighted_f1_cascade']}", flush=True)
    print(f"load average after: {figures['load_after']}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model version directory")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("-n", type=int, default=400, help="listings per measurement")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--single-n", type=int, default=150, help="listings for the one-at-a-time run")
    parser.add_argument("--images", choices=("uri", "inline"), default="uri",
                        help="how images travel (inline multiplies what the embedded broker must snapshot)")
    parser.add_argument("--database-url", help="e.g. postgresql://postgres@127.0.0.1/bench (default: a temp SQLite)")
    parser.add_argument("--cascade", action="store_true", help="cheap model alone vs all models vs the cascade")
    parser.add_argument("--cheap-n", type=int, default=3000, help="listings for the cheap model's end-to-end run")
    parser.add_argument("--threshold", type=float, help="cascade threshold (default: the manifest's)")
    parser.add_argument("--f1-rows", type=int, default=0, help="held-out rows for the F1 figures (0: all)")
    args = parser.parse_args()

    records = [r for r in load_dataset(args.data).records if r.image_path is not None][: args.n]
    parser_url = args.database_url
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(free_port(), Path(tmp) / "broker") as broker:
        url = parser_url or f"sqlite:///{tmp}/bench.db"
        upgrade(url)
        engine = make_engine(url)
        manifest = read_manifest(args.model)
        registry.register(engine, manifest, args.model, None)
        registry.promote(engine, manifest.version)
        settings = Settings(kafka={"bootstrap_servers": broker.bootstrap_servers}, database={"url": url},
                            cache={"enabled": args.cascade}, worker={"metrics_port": 0, "batch_max_wait_ms": 50},
                            topics={"partitions": 4})
        if args.cascade:
            print(json.dumps(cascade_comparison(args, settings, engine, Path(tmp))))
            return
        figures = {"model": manifest.version, "n": len(records), "batch": args.batch}
        for label, with_images, mode in (("with_images", True, args.images), ("text_only", False, "none")):
            raw = raw_throughput(args.model, records, args.batch, with_images)
            e2e = end_to_end(settings, args.model, records, args.batch, mode)
            figures[label] = {"raw_onnx_per_s": round(raw, 1), "end_to_end_per_s": round(e2e, 1),
                              "ratio": round(e2e / raw, 3)}
            print(f"{label:12s} raw ONNX {raw:8.1f}/s  end to end {e2e:8.1f}/s  ratio {e2e / raw:.3f}", flush=True)
        single = records[: args.single_n]
        batched = end_to_end(settings, args.model, single, args.batch, "none")
        one = end_to_end(settings, args.model, single, 1, "none")
        figures["micro_batching"] = {"batched_per_s": round(batched, 1), "one_at_a_time_per_s": round(one, 1),
                                     "ratio": round(batched / one, 2)}
        print(f"micro-batch {args.batch} {batched:.1f}/s vs one at a time {one:.1f}/s: x{batched / one:.2f}")
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
