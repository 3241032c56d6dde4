"""The embedded Kafka-compatible broker (noida-db) for development, tests and the demo.

Production uses Apache Kafka (docker-compose.yml); nothing in the service depends on this
broker. We exec the packaged binary itself (its console-script wrapper does not forward
SIGTERM), bind it to loopback, and wait until a Kafka admin request answers.
"""

from __future__ import annotations

import importlib.resources
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from confluent_kafka.admin import AdminClient


class BrokerError(RuntimeError):
    pass


def binary_path() -> Path:
    try:
        path = Path(str(importlib.resources.files("noida_db") / "noida-db"))
    except ModuleNotFoundError as exc:  # pragma: no cover - the package is a runtime dependency
        raise BrokerError("the embedded broker needs the noida-db package: pip install noida-db==0.2.3") from exc
    if not path.is_file():
        raise BrokerError(f"noida-db binary not found at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_kafka(bootstrap_servers: str, timeout_s: float = 20.0) -> None:
    """Poll ``list_topics`` until the cluster answers or the timeout passes."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1)
            return
        except Exception as exc:  # KafkaException while the port is not yet open
            last_error = exc
            time.sleep(0.1)
    raise BrokerError(f"Kafka at {bootstrap_servers} did not answer within {timeout_s:.0f}s: {last_error}")


class EmbeddedBroker:
    """A noida-db process speaking only Kafka on ``127.0.0.1:port``.

    Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(self, port: int, data_dir: Path, log_path: Path | None = None) -> None:
        self.port = port
        self.data_dir = Path(data_dir)
        self.log_path = log_path or self.data_dir / "broker.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(binary_path()), "start", "--only", "kafka", "--host", "127.0.0.1",
            "--kafka-port", str(self.port), "--data-dir", str(self.data_dir),
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        try:
            wait_for_kafka(self.bootstrap_servers, timeout_s)
        except BrokerError:
            self.stop()
            raise BrokerError(f"embedded broker did not start; see {self.log_path}") from None
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (the broker saves its data), then SIGKILL if it does not exit in time."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def terminate(self) -> None:
        """Ask the broker to exit (safe from a signal handler: sends SIGTERM, does not wait)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        """Block until the broker process exits (the `broker` CLI command)."""
        assert self._process is not None
        return self._process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
