"""Model versions: a worker waits for a loadable one, keeps serving through a bad promotion, and
treats an announcement as a hint (the registry and the manifest hashes are the truth).

Real broker, a real SQLite registry and the tiny real model; versions are copies of it, damaged
where a test needs a corrupt one.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from inference import registry
from inference.artifacts import manifest_sha256, read_manifest
from rakuten_stream.database import make_engine, upgrade
from rakuten_stream.kafka import ensure_topics, make_producer
from schemas import ModelUpdate, Prediction
from stream_workers.model_watcher import ModelWatcher
from tests.helpers import WorkerThread, copy_as_new_version, listing_json, read_topic, wait_until

pytestmark = pytest.mark.slow




@pytest.fixture
def engine(settings):
    url = settings.database.url.get_secret_value()
    upgrade(url)
    ensure_topics(settings)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def add_version(engine, tiny_model: Path, root: Path, version: str, corrupt: bool = False) -> Path:
    directory = copy_as_new_version(tiny_model, root, version)
    registry.register(engine, read_manifest(directory), directory, None)
    if corrupt:  # after registration: the files no longer match their sha256
        graph = directory / read_manifest(directory).tfidf.classifier
        graph.write_bytes(graph.read_bytes()[:-16] + b"corrupt-corrupt!")
    return directory


def promote(settings, engine, version: str) -> None:
    """What the gate or `models promote` does, without their verification (to get a corrupt one through)."""
    registry.announce(settings, registry.promote(engine, version))


def publish_listing(settings, productid: int) -> None:
    producer = make_producer(settings)
    producer.produce(settings.topics.products, key=str(productid).encode(),
                     value=listing_json(productid, "Piscine tubulaire autoportante 3 m"))
    assert producer.flush(15) == 0


def predicted_versions(settings, expected: int) -> list[str]:
    return [Prediction.from_bytes(m.value()).model_version
            for m in read_topic(settings, settings.topics.predictions, expected=expected, timeout_s=30, idle_s=0.5)]


def test_a_worker_without_a_model_waits_not_ready_and_serves_once_one_is_promoted(settings, engine, tiny_model,
                                                                                  tmp_path):
    with WorkerThread(settings) as running:
        assert wait_until(lambda: running.worker.model_state.waiting_reason is not None, 20)
        state = running.worker.model_state
        assert not state.ready and "no production model" in state.waiting_reason
        assert running.thread.is_alive() and running.error is None
        publish_listing(settings, 1)

        add_version(engine, tiny_model, tmp_path, "first-v1")
        promote(settings, engine, "first-v1")
        assert wait_until(lambda: running.worker.model_state.ready, 60)
        assert running.worker.model_state.serving == "first-v1"
        assert predicted_versions(settings, 1) == ["first-v1"]
    assert running.error is None


def test_a_corrupt_production_version_at_start_is_waited_out_not_crash_looped(settings, engine, tiny_model, tmp_path):
    add_version(engine, tiny_model, tmp_path, "broken-v1", corrupt=True)
    registry.promote(engine, "broken-v1")
    with WorkerThread(settings) as running:
        assert wait_until(lambda: running.worker.model_state.failed_loads >= 1, 30)
        state = running.worker.model_state
        assert not state.ready and "broken-v1" in state.waiting_reason and "sha256" in state.waiting_reason
        time.sleep(3)  # retried after a growing pause, not in a tight loop
        assert running.worker.model_state.failed_loads <= 2 and running.error is None

        add_version(engine, tiny_model, tmp_path, "fixed-v2")
        promote(settings, engine, "fixed-v2")
        assert wait_until(lambda: running.worker.model_state.serving == "fixed-v2", 60)
        publish_listing(settings, 2)
        assert predicted_versions(settings, 1) == ["fixed-v2"]


def test_a_corrupt_hot_reload_keeps_the_version_in_service_and_reports_the_failure(settings, engine, tiny_model,
                                                                                   tmp_path):
    add_version(engine, tiny_model, tmp_path, "good-v1")
    promote(settings, engine, "good-v1")
    with WorkerThread(settings) as running:
        assert wait_until(lambda: running.worker.model_state.serving == "good-v1", 60)
        add_version(engine, tiny_model, tmp_path, "broken-v2", corrupt=True)
        promote(settings, engine, "broken-v2")
        assert wait_until(lambda: running.worker.model_state.failed_loads == 1, 30)
        state = running.worker.model_state
        assert state.serving == "good-v1" and state.last_failure.startswith("broken-v2:")
        publish_listing(settings, 3)
        assert predicted_versions(settings, 1) == ["good-v1"]  # the stream goes on with the old version
        assert running.worker.model_state.failed_loads == 1  # not retried in a loop
    assert running.error is None


# --- announcements are hints ---------------------------------------------------------------------------
@pytest.fixture
def watcher(settings, engine, tiny_model, tmp_path):
    add_version(engine, tiny_model, tmp_path, "ours-v1")
    registry.promote(engine, "ours-v1")
    watcher = ModelWatcher(settings, engine, check_every_s=0)
    assert watcher.initial().version == "ours-v1"
    yield watcher
    watcher.close()


def announce(settings, update: ModelUpdate) -> None:
    producer = make_producer(settings)
    producer.produce(settings.topics.model_updates, key=b"production", value=update.to_bytes())
    assert producer.flush(15) == 0


def next_reload(watcher, current: str, timeout_s: float = 10):
    deadline = time.monotonic() + timeout_s
    before = watcher.state.ignored_announcements
    while time.monotonic() < deadline:
        runtime = watcher.reload(current)
        if runtime is not None or watcher.state.ignored_announcements > before:
            return runtime
        time.sleep(0.2)
    raise AssertionError("the announcement was not seen")


def test_an_announced_version_unknown_to_this_registry_is_ignored(settings, watcher, tiny_model, tmp_path):
    other = copy_as_new_version(tiny_model, tmp_path, "their-v7")  # loadable, but another deployment's
    announce(settings, ModelUpdate(version="their-v7", artifact_dir=str(other), manifest_sha256=manifest_sha256(other)))
    assert next_reload(watcher, "ours-v1") is None
    assert watcher.state.ignored_announcements == 1 and watcher.state.serving == "ours-v1"


def test_an_announcement_whose_manifest_hash_differs_from_the_registry_directory_is_ignored(settings, engine, watcher,
                                                                                           tiny_model, tmp_path):
    directory = add_version(engine, tiny_model, tmp_path, "ours-v2")
    registry.promote(engine, "ours-v2")
    announce(settings, ModelUpdate(version="ours-v2", artifact_dir=str(directory), manifest_sha256="0" * 64))
    assert next_reload(watcher, "ours-v1") is None
    assert watcher.state.ignored_announcements == 1

    announce(settings, ModelUpdate(version="ours-v2", artifact_dir="/somewhere/else",
                                   manifest_sha256=manifest_sha256(directory)))
    runtime = next_reload(watcher, "ours-v1")  # the registry's directory is used, not the announced one
    assert runtime is not None and runtime.version == "ours-v2" and runtime.artifact_dir == directory.resolve()
