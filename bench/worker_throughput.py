"""Worker throughput against the raw ONNX throughput of the same model on the same batches.

    python bench/worker_throughput.py --model var/models/<version> [--data ../shared/data/rakuten] [-n 400]

Prints, for listings with images (inline) and for text-only listings:
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
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from inference import registry  # noqa: E402
from inference.artifacts import read_manifest  # noqa: E402
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
                            cache={"enabled": False}, worker={"metrics_port": 0, "batch_max_wait_ms": 50},
                            topics={"partitions": 4})
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
