"""Small test helpers: reading a whole topic, registering a model, building listings."""

from __future__ import annotations

import base64
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import TopicPartition

from inference import registry
from inference.artifacts import read_manifest, write_manifest
from rakuten_stream.database import make_engine, upgrade
from rakuten_stream.kafka import make_consumer
from rakuten_stream.settings import Settings

# the Rakuten sample: RAKUTEN_DATA_DIR, else ../shared/data/rakuten beside the checkout
DATA_DIR = Path(os.environ.get("RAKUTEN_DATA_DIR", Path(__file__).resolve().parents[2] / "shared/data/rakuten"))


def missing_data(message: str) -> None:
    """Skip a test that needs the Rakuten sample when it is absent; in CI (CI=true) fail instead."""
    import pytest

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}: the real data sample is required in CI")
    pytest.skip(message)


def read_topic(settings: Settings, topic: str, expected: int | None = None, timeout_s: float = 60.0,
               idle_s: float = 2.0) -> list:
    """Every message of ``topic`` from the beginning: until ``expected`` arrived (then ``idle_s`` more
    to catch extras), or the timeout."""
    consumer = make_consumer(settings, group_id=f"reader-{uuid.uuid4().hex[:8]}")
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
    messages, deadline, last_new = [], time.monotonic() + timeout_s, time.monotonic()
    while time.monotonic() < deadline:
        batch = [m for m in consumer.consume(500, timeout=0.2) if not m.error()]
        if batch:
            messages.extend(batch)
            last_new = time.monotonic()
        elif expected is not None and len(messages) >= expected and time.monotonic() - last_new > idle_s:
            break
        elif expected is None and time.monotonic() - last_new > idle_s:
            break
    consumer.close()
    return messages


def wait_until(condition, timeout_s: float = 60.0, every_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every_s)
    return condition()


def register_production(settings: Settings, artifact_dir: Path) -> str:
    url = settings.database.url.get_secret_value()
    upgrade(url)
    engine = make_engine(url)
    manifest = read_manifest(artifact_dir)
    registry.register(engine, manifest, artifact_dir, None)
    registry.promote(engine, manifest.version)
    engine.dispose()
    return manifest.version


def copy_as_new_version(artifact_dir: Path, target_root: Path, version: str) -> Path:
    """The same graphs under another version id (a stand-in for a retrained model)."""
    target = target_root / version
    shutil.copytree(artifact_dir, target)
    manifest = read_manifest(target).model_copy(update={"version": version})
    write_manifest(target, manifest)
    return target


def listing_json(productid: int, title: str, description: str | None = None, image: bytes | None = None,
                 image_uri: str | None = None, **extra) -> bytes:
    import json

    body: dict = {"schema_version": "1.0", "productid": productid, "designation": title} | extra
    if description:
        body["description"] = description
    if image is not None:
        body["image"] = {"data": base64.b64encode(image).decode()}
    if image_uri is not None:
        body["image"] = {"uri": image_uri}
    return json.dumps(body).encode()


def settings_env(settings: Settings) -> dict[str, str]:
    """The RAKUTEN_* environment that reproduces ``settings`` in a subprocess."""
    return settings.as_environment()


# --- image servers on loopback that misbehave on purpose -----------------------------------------------
class _ImageHandler:
    """Paths: /photo.jpg, /big.jpg (10 MB), /big-unannounced.jpg, /trickle.jpg (a byte every 0.2 s),
    /trickle-headers.jpg, /redirect/N (N hops then the photo), /redirect-to?URI, anything else 404."""

    BIG = 10_000_000

    @staticmethod
    def make(photo: bytes):
        import http.server

        big = b"\xff" * _ImageHandler.BIG

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path
                if path == "/photo.jpg":
                    self._send(photo)
                elif path == "/big.jpg":
                    self._send(big)
                elif path == "/big-unannounced.jpg":  # no Content-Length: only the cap while streaming stops it
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for start in range(0, len(big), 65536):
                        self.wfile.write(big[start:start + 65536])
                elif path == "/trickle.jpg":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(photo)))
                    self.end_headers()
                    for byte in photo:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.2)
                elif path == "/trickle-headers.jpg":
                    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.2)
                elif path.startswith("/redirect/"):
                    hops = int(path.rsplit("/", 1)[1])
                    self._redirect("/photo.jpg" if hops <= 1 else f"/redirect/{hops - 1}")
                elif path.startswith("/redirect-to?"):
                    self._redirect(path.split("?", 1)[1])
                else:
                    self.send_error(404)

            def _send(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def handle(self) -> None:
                try:
                    super().handle()
                except OSError:  # the client hung up on a trickle or a too-large body: expected
                    pass

            def log_message(self, *args) -> None:
                pass

        return Handler


class ImageServers:
    """A misbehaving HTTP image server and a silent one (accepts, never answers), both on loopback."""

    def __init__(self, photo: bytes) -> None:
        import http.server
        import socket
        import threading

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler.make(photo))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._silent = socket.socket()
        self._silent.bind(("127.0.0.1", 0))
        self._silent.listen(128)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self.silent_url = f"http://127.0.0.1:{self._silent.getsockname()[1]}"

    def __enter__(self) -> ImageServers:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._silent.close()


class WorkerThread:
    """A Worker (given, or built from settings) on a thread of the test process; keeps what its loop
    raised (and lets it reach the thread's excepthook as before); stops cleanly on exit."""

    def __init__(self, worker_or_settings, join_s: float = 60) -> None:
        from stream_workers.worker import Worker

        given = isinstance(worker_or_settings, Worker)
        self.worker = worker_or_settings if given else Worker(worker_or_settings, retry_pause_s=0.2)
        self.join_s = join_s
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.error = exc
            raise

    def __enter__(self) -> WorkerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.worker.stop()
        self.thread.join(self.join_s)
        assert not self.thread.is_alive(), "worker did not stop"


@contextmanager
def running_worker(worker_or_settings, join_s: float = 60) -> Iterator:
    """``with running_worker(settings) as worker:`` a Worker running on a thread for the block."""
    with WorkerThread(worker_or_settings, join_s) as running:
        yield running.worker
