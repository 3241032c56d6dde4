"""One typed settings object for every part of the service.

Every value reads from a ``RAKUTEN_*`` environment variable (or a ``.env`` file) and can be
overridden by CLI flags through :meth:`Settings.with_overrides`. Secrets are ``SecretStr`` and
never appear in ``repr``/logs; :meth:`Settings.redacted` gives a printable view.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RAKUTEN_", env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # --- Kafka -----------------------------------------------------------------------------
    kafka_bootstrap_servers: str = Field("127.0.0.1:19092", description="Kafka bootstrap servers")
    kafka_extra: dict[str, str] = Field(
        default_factory=dict,
        repr=False,
        description="Extra librdkafka settings (JSON), e.g. security.protocol, sasl.mechanism, ssl.ca.location",
    )
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    topic_products: str = "products.v1"
    topic_predictions: str = "predictions.v1"
    topic_labels: str = "labels.v1"
    topic_dead_letters: str = "dlq.v1"
    topic_model_updates: str = "model-updates.v1"
    topic_retrain_requests: str = "retrain-requests.v1"
    topic_drift_reports: str = "drift-reports.v1"
    topic_partitions: int = Field(4, ge=1)
    topic_replication_factor: int = Field(1, ge=1)
    topic_max_message_bytes: int = Field(4_194_304, description="max.message.bytes of the products topic")

    # --- Embedded broker (development, tests, the zero-setup demo) ---------------------------
    broker_port: int = 19092
    broker_data_dir: Path = Path("var/broker")

    # --- Storage -------------------------------------------------------------------------------
    database_url: SecretStr = SecretStr("sqlite:///var/rakuten-stream.db")
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    cache_enabled: bool = True
    cache_ttl_seconds: int = 7 * 24 * 3600
    model_dir: Path = Path("var/models")
    report_dir: Path = Path("var/reports")
    data_dir: Path | None = Field(None, description="Rakuten data folder (challenge or flat layout)")

    # --- Worker --------------------------------------------------------------------------------
    worker_group_id: str = "rakuten-workers"
    worker_instance_id: str | None = Field(None, description="static group.instance.id; defaults to host-pid")
    batch_max_messages: int = Field(64, ge=1)
    batch_max_wait_ms: int = Field(200, ge=1)
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    session_timeout_ms: int = Field(45_000, ge=6_000)
    max_image_bytes: int = Field(5_000_000, ge=1)
    image_fetch_timeout_s: float = Field(5.0, gt=0)
    onnx_threads: int = Field(0, ge=0, description="intra-op threads per session; 0 lets onnxruntime choose")
    execution_provider: Literal["auto", "cpu", "cuda"] = "auto"
    top_k: int = Field(3, ge=1)
    metrics_port: int = Field(9108, ge=0, description="Prometheus port; 0 disables the endpoint")

    # --- Helpers -------------------------------------------------------------------------------
    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the given (non-None) values replaced, validated like the environment."""
        values = {k: v for k, v in overrides.items() if v is not None}
        if not values:
            return self
        merged = self.model_dump() | values
        return Settings.model_validate(merged)

    def kafka_config(self) -> dict[str, str]:
        """librdkafka settings common to producers, consumers and admin clients."""
        config: dict[str, str] = {"bootstrap.servers": self.kafka_bootstrap_servers}
        config.update(self.kafka_extra)
        if self.kafka_sasl_username:
            config["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password is not None:
            config["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        return config

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict safe to print: secrets and URL passwords masked."""
        out: dict[str, Any] = {}
        for key, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = redact_url(value.get_secret_value()) if key.endswith("_url") else "**********"
            elif key == "kafka_extra":
                value = {k: ("**********" if _is_secret_key(k) else v) for k, v in value.items()}
            elif isinstance(value, Path):
                value = str(value)
            out[key] = value
        return out


def _is_secret_key(key: str) -> bool:
    return any(word in key.lower() for word in ("password", "secret", "key", "token"))


def redact_url(url: str) -> str:
    """``postgresql://user:pw@host/db`` -> ``postgresql://user:***@host/db``."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)
