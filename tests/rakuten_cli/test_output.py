"""Data on stdout, messages on stderr; `--json` where a program reads the output; `--version`; whole
version ids in `models list`, whatever the terminal's width (issue 12)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from rakuten_cli.main import app
from rakuten_stream.database import make_engine, session_scope, upgrade
from rakuten_stream.embedded_broker import free_port
from schemas.tables import ModelVersion

runner = CliRunner()
LONG_VERSION = "20261203-121138-a95cf0f9-a-version-id-far-longer-than-eighty-columns-would-let-a-table-show"


@pytest.fixture
def registry_url(sqlite_url) -> str:
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    with session_scope(engine) as session:
        for version, stage in ((LONG_VERSION, "production"), ("20261203-090000-0badcafe", "candidate")):
            session.add(ModelVersion(version=version, stage=stage, artifact_dir=f"/var/lib/rakuten/models/{version}",
                                     artifacts={}, parameters={}, gate_decision=None,
                                     metrics={"weighted_f1": 0.8012, "fusion": {"method": "weighted"}}))
    engine.dispose()
    return sqlite_url


def test_models_list_prints_whole_version_ids_on_stdout_one_per_line(registry_url):
    result = runner.invoke(app, ["--database-url", registry_url, "models", "list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["version", "stage"]
    [row] = [line for line in lines if line.startswith(LONG_VERSION)]  # `models list | grep` finds it whole
    assert row.split()[:2] == [LONG_VERSION, "production"]
    assert result.stderr == ""


def test_models_list_as_json(registry_url):
    result = runner.invoke(app, ["--database-url", registry_url, "models", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {r["version"]: r["stage"] for r in rows} == {LONG_VERSION: "production",
                                                         "20261203-090000-0badcafe": "candidate"}
    assert {r["weighted_f1"] for r in rows} == {0.8012}


def test_an_empty_registry_says_what_to_do(sqlite_url):
    result = runner.invoke(app, ["--database-url", sqlite_url, "models", "list"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "rakuten-stream train --data" in result.stderr


def test_doctor_as_json_names_every_service_and_exits_1_when_kafka_is_down(sqlite_url):
    result = runner.invoke(app, ["--database-url", sqlite_url, "--bootstrap-servers", f"127.0.0.1:{free_port()}",
                                 "doctor", "--json"])
    assert result.exit_code == 1, result.output
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert set(checks) == {"kafka", "database", "redis"}
    assert checks["kafka"]["ok"] is False and checks["database"]["ok"] is True
    assert checks["kafka"]["advice"]


def test_publish_summary_as_json(settings, tmp_path):
    listings = "\n".join(json.dumps({"productid": i, "designation": f"piscine gonflable {i}"}) for i in range(1, 4))
    env = settings.as_environment()
    result = runner.invoke(app, ["publish", "--data", "-", "--json"], env=env, input=listings)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["sent"] == 3 and summary["failed"] == 0


def test_version():
    result = subprocess.run([sys.executable, "-m", "rakuten_cli.main", "--version"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("rakuten-stream ")


def test_lag_help_imports_none_of_the_heavy_libraries():
    """Start-up: a command's --help loads no database, model, training or plotting library."""
    code = ("import sys; sys.argv = ['rakuten-stream', 'lag', '--help']\n"
            "from rakuten_cli.main import run\n"
            "try:\n    run()\nexcept SystemExit:\n    pass\n"
            "heavy = {'sqlalchemy', 'alembic', 'onnxruntime', 'numpy', 'sklearn', 'torch', 'matplotlib', 'training',"
            " 'stream_workers', 'confluent_kafka'}\n"
            "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "[]"
