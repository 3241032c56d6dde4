"""One typed settings object: environment, CLI overrides, secrets kept out of logs."""

from rakuten_stream.settings import Settings


def test_settings_read_rakuten_environment_variables(monkeypatch):
    monkeypatch.setenv("RAKUTEN_KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("RAKUTEN_DATABASE_URL", "postgresql://svc:hunter2@db/rakuten")
    monkeypatch.setenv("RAKUTEN_MODEL_DIR", "/models")
    monkeypatch.setenv("RAKUTEN_KAFKA_EXTRA", '{"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}')
    s = Settings()
    assert s.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert str(s.models.dir) == "/models"
    assert s.kafka_config()["security.protocol"] == "SASL_SSL"


def test_cli_overrides_win_and_none_means_keep():
    s = Settings(worker={"batch_max_messages": 10}).with_overrides(worker={"batch_max_messages": 99},
                                                                   cache={"redis_url": None})
    assert s.worker.batch_max_messages == 99
    assert s.cache.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"


def test_secrets_never_appear_in_repr_or_redacted_view():
    s = Settings(database={"url": "postgresql://svc:hunter2@db/rakuten"},
                 kafka={"sasl_password": "s3cret", "extra": {"ssl.key.password": "k3y"}})
    for text in (repr(s), str(s.redacted())):
        assert "hunter2" not in text and "s3cret" not in text and "k3y" not in text
    assert s.kafka_config()["sasl.password"] == "s3cret"
    assert s.redacted()["database"]["url"] == "postgresql://svc:***@db/rakuten"
