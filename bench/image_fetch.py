"""What a batch of images by reference costs the worker: parallel fetches and one batch deadline.

Two loopback servers: one that answers each image after a delay (a slow CDN), one that accepts
connections and never answers. For a batch of URIs it prints the wall time of ``fetch_many``
with one fetch at a time, 8 at a time (the old worker's pool) and all in parallel (now), and, for
the silent server, the old shape (8 threads, no batch deadline, 5 s per fetch) against the
default policy (3 s per fetch, 5 s per batch), side by side in one run.

    python bench/image_fetch.py [--batch 64] [--delay-ms 200] [--silent 32]
"""

from __future__ import annotations

import argparse
import http.server
import io
import socket
import threading
import time

from PIL import Image

from stream_workers.image_sources import ImagePolicy, fetch_many


def photo() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((500, 500), 64).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def slow_server(body: bytes, delay_s: float) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            time.sleep(delay_s)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 1024  # the server must not be what limits a batch's connections
        daemon_threads = True

    httpd = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def timed(uris: dict[int, str], policy: ImagePolicy) -> tuple[float, int]:
    start = time.perf_counter()
    results = fetch_many(uris, policy)
    return time.perf_counter() - start, sum(isinstance(r, bytes) for r in results.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--delay-ms", type=int, default=200)
    parser.add_argument("--silent", type=int, default=32)
    args = parser.parse_args()

    httpd = slow_server(photo(), args.delay_ms / 1000)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1024)
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        uris = {i: f"{base}/{i}.jpg" for i in range(args.batch)}
        print(f"batch of {args.batch} images, each answered after {args.delay_ms} ms")
        rows = []
        for parallel in (1, 8, args.batch):
            policy = ImagePolicy(allowed_hosts=("127.0.0.1",), fetch_timeout_s=30, batch_timeout_s=120,
                                 max_parallel=parallel)
            seconds, ok = timed(uris, policy)
            rows.append((parallel, seconds))
            print(f"  {parallel:>3} at a time: {seconds:6.2f} s ({ok}/{args.batch} fetched)")
        print(f"  all in parallel vs 8 at a time: x{rows[1][1] / rows[2][1]:.1f}; vs one at a time: "
              f"x{rows[0][1] / rows[2][1]:.1f}")

        quiet = {i: f"http://127.0.0.1:{silent.getsockname()[1]}/{i}.jpg" for i in range(args.silent)}
        print(f"batch of {args.silent} URIs on a server that never answers")
        old = ImagePolicy(allowed_hosts=("127.0.0.1",), fetch_timeout_s=5, batch_timeout_s=3600, max_parallel=8)
        new = ImagePolicy(allowed_hosts=("127.0.0.1",))
        old_s, _ = timed(quiet, old)
        print(f"  old shape (8 threads, 5 s per fetch, no batch deadline): {old_s:6.2f} s")
        new_s, _ = timed(quiet, new)
        print(f"  now (all in parallel, {new.fetch_timeout_s:g} s per fetch, {new.batch_timeout_s:g} s per batch): "
              f"{new_s:6.2f} s  (x{old_s / new_s:.1f} shorter)")
    finally:
        httpd.shutdown()
        httpd.server_close()
        silent.close()


if __name__ == "__main__":
    main()
