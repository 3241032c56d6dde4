"""`rakuten-stream demo`: a model trained on the data it streams, a broker it names, hints that work."""

from __future__ import annotations

import shlex

import pytest
import typer

from rakuten_cli import demo
from rakuten_cli.main import app
from rakuten_stream.database import make_engine, session_scope, upgrade
from rakuten_stream.datasets import load_dataset
from schemas.tables import DatasetSnapshot, ModelVersion


def add_version(engine, version: str, snapshot_id: str, stage: str) -> None:
    with session_scope(engine) as session:
        if session.get(DatasetSnapshot, snapshot_id) is None:
            session.add(DatasetSnapshot(snapshot_id=snapshot_id, source_path="x", layout="flat", row_count=1,
                                        image_count=0, class_counts={}, files={}))
        session.add(ModelVersion(version=version, stage=stage, snapshot_id=snapshot_id, artifact_dir="/x",
                                 artifacts={}, parameters={}, metrics={}, gate_decision=None))


@pytest.fixture
def dataset(tmp_path):
    from producers.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data")
    return load_dataset(tmp_path / "data")


@pytest.fixture
def engine(sqlite_url):
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


def test_a_production_model_trained_on_other_data_is_not_used_a_model_is_trained_on_this_data(
        settings, engine, dataset, monkeypatch, capsys):
    add_version(engine, "synthetic-model", "0" * 64, "production")
    trained = []

    def run_training(settings, data, e5):  # the real one trains, registers and gates (tests/training)
        trained.append(data)
        add_version(engine, "real-model", dataset.content_hash(), "candidate")
        from inference import registry
        registry.promote(engine, "real-model")
        return {"version": "real-model"}

    monkeypatch.setattr("rakuten_cli.model_commands.run_training", run_training)
    model = demo._model_for(settings, engine, dataset, use_e5=False)
    assert model.version == "real-model" and trained == [dataset.path]
    assert "trained on other data" in capsys.readouterr().err


def test_a_production_model_trained_on_this_snapshot_is_reused_and_the_demo_says_so(
        settings, engine, dataset, monkeypatch, capsys):
    add_version(engine, "same-data", dataset.content_hash(), "production")
    monkeypatch.setattr("rakuten_cli.model_commands.run_training", lambda *a, **k: pytest.fail("trained again"))
    assert demo._model_for(settings, engine, dataset, use_e5=False).version == "same-data"
    assert "was trained on this data" in capsys.readouterr().err


def test_a_broker_already_answering_is_named_not_claimed_and_port_is_offered(settings, capsys):
    assert demo._kafka(settings, None) is None  # the tests' broker answers: the demo starts none
    message = capsys.readouterr().err
    assert settings.kafka.bootstrap_servers in message and "not started by this demo" in message
    assert "--port" in message


@pytest.mark.parametrize("started_broker", [True, False])
def test_the_try_next_hints_are_commands_that_exist_with_flags_they_accept(settings, dataset, capsys,
                                                                          started_broker):
    demo._try_next(settings, dataset, object() if started_broker else None, port=29999)
    hints = [line.split("#")[0].strip() for line in capsys.readouterr().err.splitlines()[1:]]
    assert hints and all(h.startswith("rakuten-stream ") for h in hints)
    assert any(h == "rakuten-stream broker --port 29999" for h in hints) == started_broker
    commands = typer.main.get_command(app).commands
    for hint in hints:
        args = shlex.split(hint)[1:]
        if args[0] == "--bootstrap-servers":  # the global flag, then the subcommand
            assert args[1] == settings.kafka.bootstrap_servers
            args = args[2:]
        name, *rest = args
        commands[name].make_context(name, rest)  # raises on an unknown option or a bad value
