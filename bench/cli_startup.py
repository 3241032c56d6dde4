"""Start-up of the `rakuten-stream` command: `lag --help` as the CLI loads it now, beside what the
CLI used to import before any command ran (every command module's libraries), in one run.

    python bench/cli_startup.py [-n 5]

Prints the median wall time of each and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NOW = [sys.executable, "-m", "rakuten_cli.main", "lag", "--help"]
#: what the CLI's modules imported at their top before the imports moved into the commands
EAGER = ("import typer, rich.progress, rich.live, rich.table, numpy, confluent_kafka, sqlalchemy, alembic.command, "
         "onnxruntime, inference.registry, inference.runtime, producers.publisher, producers.synthetic, "
         "rakuten_stream.clients.results, rakuten_stream.clients.lag, rakuten_stream.database, "
         "rakuten_stream.datasets, rakuten_stream.doctor, rakuten_stream.embedded_broker, rakuten_stream.kafka, "
         "rakuten_stream.metrics, stream_workers.worker, stream_workers.model_watcher; "
         "import sys; sys.argv = ['rakuten-stream', 'lag', '--help']; from rakuten_cli.main import run; run()")
BEFORE = [sys.executable, "-c", EAGER]


def median_seconds(command: list[str], n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=5, help="runs of each (median)")
    n = parser.parse_args().n
    median_seconds(NOW, 1)  # warm the file cache
    before, now = median_seconds(BEFORE, n), median_seconds(NOW, n)
    print(f"`rakuten-stream lag --help`, median of {n}: {now:.2f} s now, {before:.2f} s with the old eager imports "
          f"(x{before / now:.1f})")


if __name__ == "__main__":
    main()
