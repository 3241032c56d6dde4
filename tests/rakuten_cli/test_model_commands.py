"""`models promote` verifies a version before promoting it and refuses a corrupt one in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inference import registry
from inference.artifacts import read_manifest, write_manifest
from rakuten_stream.database import make_engine
from tests.helpers import copy_as_new_version, register_production, settings_env


def promote(settings, version: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAKUTEN_")} | settings_env(settings)
    return subprocess.run([sys.executable, "-m", "rakuten_cli.main", "models", "promote", version],
                          capture_output=True, text=True, env=env, timeout=120)


def register(settings, artifact_dir: Path) -> str:
    engine = make_engine(settings.database.url.get_secret_value())
    manifest = read_manifest(artifact_dir, verify=False)
    registry.register(engine, manifest, artifact_dir, None)
    engine.dispose()
    return manifest.version


def production_version(settings) -> str:
    engine = make_engine(settings.database.url.get_secret_value())
    row = registry.production(engine)
    engine.dispose()
    return row.version


@pytest.fixture
def registry_with_production(settings, tiny_model, tmp_path) -> str:
    """A registry whose production version is a good copy of the tiny model."""
    return register_production(settings, copy_as_new_version(tiny_model, tmp_path, "good-v1"))


def corrupt_bytes(directory: Path) -> None:  # a file no longer matches its sha256
    target = directory / read_manifest(directory).tfidf.classifier
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")


def garbage_graph(directory: Path) -> None:  # hashes match, but the graph is not ONNX
    manifest = read_manifest(directory)
    (directory / manifest.tfidf.classifier).write_bytes(b"not an onnx graph")
    write_manifest(directory, manifest)


def missing_file(directory: Path) -> None:
    (directory / read_manifest(directory).tfidf.featurizer).unlink()


@pytest.mark.parametrize(("damage", "registered_before", "says"), [
    (corrupt_bytes, True, "does not match its sha256"),
    (missing_file, True, "missing"),
    (garbage_graph, False, "does not load"),  # registered as it is: hashes and registry agree
    (garbage_graph, True, "differ from the registry's record"),  # files and manifest swapped after registration
])
def test_a_corrupt_version_is_refused_in_one_line_and_production_stays(
        settings, tiny_model, tmp_path, registry_with_production, damage, registered_before, says):
    candidate = copy_as_new_version(tiny_model, tmp_path, "broken-v2")
    if registered_before:
        register(settings, candidate)
    damage(candidate)
    version = register(settings, candidate) if not registered_before else "broken-v2"

    result = promote(settings, version)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot promote broken-v2" in lines[0] and says in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert production_version(settings) == registry_with_production


def test_a_good_version_is_promoted(settings, tiny_model, tmp_path, registry_with_production):
    version = register(settings, copy_as_new_version(tiny_model, tmp_path, "good-v2"))
    result = promote(settings, version)
    assert result.returncode == 0, result.stderr
    assert production_version(settings) == "good-v2"
