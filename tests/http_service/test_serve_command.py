"""`rakuten-stream serve` as a user runs it: ready, answers, stops on SIGTERM, never prints a key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rakuten_stream.embedded_broker import free_port
from tests.http_service.conftest import API_KEY, service_settings

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def serve(settings, port: int) -> subprocess.Popen:
    env = os.environ | settings.as_environment() | {"PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "rakuten_cli.main", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_serve_answers_then_stops_cleanly_on_sigterm_without_printing_the_key(http_settings):
    port = free_port()
    process = serve(http_settings, port)
    try:
        deadline, ready = time.monotonic() + 60, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert ready is not None and ready.status_code == 200, ready and ready.text
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/predict", json={"designation": "Perceuse sans fil"})
        assert answer.status_code == 200 and answer.json()["category"]
        refused = httpx.post(f"http://127.0.0.1:{port}/v1/listings", json={"productid": 1, "designation": "x"},
                             headers={"X-API-Key": "not-" + API_KEY})
        assert refused.status_code == 403
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    # uvicorn finishes the shutdown, then re-raises the signal it caught so the parent sees it
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert API_KEY not in output


def test_serve_without_a_model_exits_with_the_reason(kafka_bootstrap, tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    from rakuten_stream.database import upgrade

    upgrade(url)
    settings = service_settings(kafka_bootstrap, url, tmp_path)
    process = serve(settings, free_port())
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "no production model" in output
