"""Latency and throughput of `rakuten-stream serve`, with dynamic batching on and off.

    python bench/http_latency.py --model var/models/<version> [--data ../shared/data/rakuten] [-n 128]

Two services run side by side as their own processes (`rakuten-stream serve`, embedded broker,
SQLite, cache off so every listing is really inferred): batching on (up to 64 listings or 10 ms
per model call) and off (one request, one model call). For text-only listings and listings with
their photo (inline base64), and 1, 8 and 32 concurrent connections, a client sends ``n``
POST /v1/predict requests of one real listing each to one service, then the other (so both see
the same machine load), and the bench prints p50/p99 latency, throughput, the mean listings per
model call (from the service's /metrics) and the on/off throughput ratio. The reference is the
model alone: ``ModelRuntime.predict`` on batches of 64 of the same listings, in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from inference import registry  # noqa: E402
from inference.artifacts import read_manifest  # noqa: E402
from inference.features.text_cleaning import ListingText  # noqa: E402
from inference.runtime import ModelRuntime  # noqa: E402
from rakuten_stream.database import make_engine, upgrade  # noqa: E402
from rakuten_stream.datasets import load_dataset  # noqa: E402
from rakuten_stream.embedded_broker import EmbeddedBroker, free_port  # noqa: E402
from rakuten_stream.settings import Settings  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/rakuten"
CONCURRENCY = (1, 8, 32)


def start_service(settings: Settings, batching: bool, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = os.environ | settings.as_environment() | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "rakuten_cli.main", "serve", "--port", str(port),
               "--batching" if batching else "--no-batching"]
    process = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.terminate()
    raise RuntimeError("the service did not become ready")


def batch_sizes(url: str) -> tuple[float, float]:
    """(sum, count) of the service's listings-per-model-call histogram."""
    text = httpx.get(url + "/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line.startswith(("rakuten_http_batch_listings_sum", "rakuten_http_batch_listings_count")):
            name, value = line.split()
            values[name.rsplit("_", 1)[1]] = float(value)
    return values.get("sum", 0.0), values.get("count", 0.0)


async def warm_up(url: str, bodies: list[dict]) -> None:
    """Sessions, allocator and connections warm before a measurement (and outside its batch counts)."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for body in bodies[-4:]:
            (await client.post("/v1/predict", json=body)).raise_for_status()


async def load(url: str, bodies: list[dict], n: int, concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one_connection() -> None:
            nonlocal next_index
            while next_index < n:
                body = bodies[next_index % len(bodies)]
                next_index += 1
                start = time.perf_counter()
                response = await client.post("/v1/predict", json=body)
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}: {response.text[:300]}")

        start = time.perf_counter()
        await asyncio.gather(*(one_connection() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return latencies, wall


def raw_batched(model_dir: Path, records, with_images: bool, batch: int = 64) -> float:
    """Listings per second of the model alone on batches of ``batch`` (the worker's best case)."""
    from PIL import Image

    runtime = ModelRuntime(model_dir)
    texts = [ListingText.of(r.designation, r.description) for r in records]
    images = [Image.open(r.image_path).convert("RGB") if with_images else None for r in records]
    runtime.predict(texts[:4], images[:4])
    start = time.perf_counter()
    for i in range(0, len(records), batch):
        runtime.predict(texts[i : i + batch], images[i : i + batch])
    return len(records) / (time.perf_counter() - start)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model version directory")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("-n", type=int, default=128, help="requests per measurement")
    args = parser.parse_args()

    records = [r for r in load_dataset(args.data).records if r.image_path is not None and r.description][:256]
    kinds = {
        "text_only": [{"productid": r.productid, "designation": r.designation, "description": r.description}
                      for r in records],
        "with_images": [{"productid": r.productid, "designation": r.designation, "description": r.description,
                         "image": {"data": base64.b64encode(r.image_path.read_bytes()).decode()}} for r in records],
    }
    figures: dict = {"n": args.n, "cells": []}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(free_port(), Path(tmp) / "broker") as broker:
        url = f"sqlite:///{tmp}/bench.db"
        upgrade(url)
        engine = make_engine(url)
        manifest = read_manifest(args.model)
        registry.register(engine, manifest, args.model.resolve(), None)
        registry.promote(engine, manifest.version)
        engine.dispose()
        figures["model"] = manifest.version
        settings = Settings(kafka={"bootstrap_servers": broker.bootstrap_servers}, database={"url": url},
                            cache={"enabled": False}, topics={"partitions": 1},
                            http={"batch_max_listings": 64, "batch_max_wait_ms": 10})
        results: dict[tuple[str, str, int], dict] = {}
        figures["raw_model_per_s"] = {}
        for kind in kinds:
            raw = raw_batched(args.model, records[: args.n], with_images=kind == "with_images")
            figures["raw_model_per_s"][kind] = round(raw, 1)
            print(f"model alone, batches of 64, {kind:11s}: {raw:6.1f} listings/s", flush=True)
        services = {}
        try:
            for mode in ("on", "off"):
                services[mode] = start_service(settings, mode == "on", Path(tmp) / f"serve-{mode}.log")
            for kind, bodies in kinds.items():
                for concurrency in CONCURRENCY:
                    for mode, (_, service) in services.items():
                        asyncio.run(warm_up(service, bodies))
                        before = batch_sizes(service)
                        latencies, wall = asyncio.run(load(service, bodies, args.n, concurrency))
                        after = batch_sizes(service)
                        calls = after[1] - before[1]
                        cell = {"batching": mode, "kind": kind, "concurrency": concurrency,
                                "p50_ms": round(1000 * percentile(latencies, 50), 1),
                                "p99_ms": round(1000 * percentile(latencies, 99), 1),
                                "per_s": round(len(latencies) / wall, 1),
                                "listings_per_call": round((after[0] - before[0]) / calls, 2) if calls else None}
                        results[(mode, kind, concurrency)] = cell
                        figures["cells"].append(cell)
                        print(f"batching {mode:3s} {kind:11s} c={concurrency:2d}  p50 {cell['p50_ms']:7.1f} ms  "
                              f"p99 {cell['p99_ms']:7.1f} ms  {cell['per_s']:6.1f} req/s  "
                              f"{cell['listings_per_call']} listings/call", flush=True)
        finally:
            for process, _ in services.values():
                process.terminate()
                process.wait(30)
        print("\nthroughput, batching on / off:")
        figures["ratios"] = {}
        for kind in kinds:
            for concurrency in CONCURRENCY:
                on, off = results[("on", kind, concurrency)], results[("off", kind, concurrency)]
                ratio = round(on["per_s"] / off["per_s"], 2)
                figures["ratios"][f"{kind}_c{concurrency}"] = ratio
                raw = figures["raw_model_per_s"][kind]
                print(f"  {kind:11s} c={concurrency:2d}  {on['per_s']:6.1f} vs {off['per_s']:6.1f} req/s  x{ratio}"
                      f"   (on / model alone {on['per_s'] / raw:.2f})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
