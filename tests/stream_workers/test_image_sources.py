"""Images by reference: file:// and http(s):// with size limits and timeouts (a loopback server)."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import pytest

from stream_workers.image_sources import ImageFetchError, fetch, fetch_many


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/slow.jpg":
            time.sleep(2)
        if self.path in ("/photo.jpg", "/slow.jpg"):
            body = self.server.photo
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def photo(data_dir: Path) -> bytes:
    return next((data_dir / "images").glob("*.jpg")).read_bytes()


@pytest.fixture(scope="module")
def server(photo):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.photo = photo
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_an_http_image_arrives_byte_for_byte(server, photo):
    assert fetch(f"{server}/photo.jpg", timeout_s=5, max_bytes=5_000_000) == photo


def test_a_missing_http_image_is_an_error_not_a_crash(server):
    with pytest.raises(ImageFetchError, match="404"):
        fetch(f"{server}/missing.jpg", timeout_s=5, max_bytes=5_000_000)


def test_an_oversized_image_is_refused(server, photo, tmp_path):
    with pytest.raises(ImageFetchError, match="limit"):
        fetch(f"{server}/photo.jpg", timeout_s=5, max_bytes=len(photo) - 1)
    big = tmp_path / "big.jpg"
    big.write_bytes(photo)
    with pytest.raises(ImageFetchError, match="limit"):
        fetch(f"file://{big}", timeout_s=5, max_bytes=10)


def test_a_slow_server_times_out_without_holding_up_the_others(server, photo):
    start = time.monotonic()
    results = fetch_many({0: f"{server}/slow.jpg", 1: f"{server}/photo.jpg", 2: "file:///nonexistent.jpg"},
                         timeout_s=0.5, max_bytes=5_000_000)
    assert time.monotonic() - start < 1.9
    assert isinstance(results[0], ImageFetchError) and results[1] == photo
    assert isinstance(results[2], ImageFetchError)
