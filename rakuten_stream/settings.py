"""One typed settings object for every part of the service, in named groups.

``Settings`` holds one small settings class per concern (``kafka``, ``topics``, ``broker``,
``database``, ``cache``, ``models``, ``worker``, ``images``, ``limits``, ``inference``, ``http``,
``drift``, ``retrain``) and is passed whole.
Every value reads from a ``RAKUTEN_*`` environment variable (or a ``.env`` file): a group's prefix
plus the field name (``RAKUTEN_KAFKA_BOOTSTRAP_SERVERS``, ``RAKUTEN_TOPIC_PRODUCTS``), except where
a field names its variable itself (``RAKUTEN_REDIS_URL``, ``RAKUTEN_BATCH_MAX_MESSAGES``). CLI flags
override values through :meth:`Settings.with_overrides`. Secrets are ``SecretStr`` and never appear
in ``repr``/logs; :meth:`Settings.redacted` gives a printable view.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from rakuten_stream.redaction import redact, redact_mapping
from schemas import ListingLimits


def _group(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=".env", env_file_encoding="utf-8", extra="ignore",
                              frozen=True, populate_by_name=True)


def _env(field: str, variable: str) -> AliasChoices:
    """A field read from a variable outside its group's prefix (kept for stable names)."""
    return AliasChoices(field, variable)


class KafkaSettings(BaseSettings):
    model_config = _group("RAKUTEN_KAFKA_")

    bootstrap_servers: str = Field("127.0.0.1:19092", description="Kafka bootstrap servers")
    extra: dict[str, str] = Field(
        default_factory=dict, repr=False,
        description="Extra librdkafka settings (JSON), e.g. security.protocol, sasl.mechanism, ssl.ca.location",
    )
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None

    def client_config(self) -> dict[str, str]:
        """librdkafka settings common to producers, consumers and admin clients."""
        config: dict[str, str] = {"bootstrap.servers": self.bootstrap_servers}
        config.update(self.extra)
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            config["sasl.password"] = self.sasl_password.get_secret_value()
        return config


class TopicSettings(BaseSettings):
    model_config = _group("RAKUTEN_TOPIC_")

    products: str = "products.v1"
    predictions: str = "predictions.v1"
    labels: str = "labels.v1"
    dead_letters: str = "dlq.v1"
    model_updates: str = "model-updates.v1"
    retrain_requests: str = "retrain-requests.v1"
    drift_reports: str = "drift-reports.v1"
    partitions: int = Field(4, ge=1)
    replication_factor: int = Field(1, ge=1)
    max_message_bytes: int = Field(4_194_304, description="max.message.bytes of the products topic")


class EmbeddedBrokerSettings(BaseSettings):
    """The embedded broker of development, the tests and the zero-setup demo."""

    model_config = _group("RAKUTEN_BROKER_")

    port: int = 19092
    data_dir: Path = Path("var/broker")


class DatabaseSettings(BaseSettings):
    model_config = _group("RAKUTEN_DATABASE_")

    url: SecretStr = SecretStr("sqlite:///var/rakuten-stream.db")
    startup_wait_s: float = Field(60.0, ge=0, description="at start, how long commands retry (with backoff) a "
                                  "database that does not answer before giving up in one line")


class CacheSettings(BaseSettings):
    model_config = _group("RAKUTEN_CACHE_")

    redis_url: SecretStr = Field(SecretStr("redis://127.0.0.1:6379/0"),
                                 validation_alias=_env("redis_url", "RAKUTEN_REDIS_URL"))
    enabled: bool = True
    ttl_seconds: int = 7 * 24 * 3600


class ModelStoreSettings(BaseSettings):
    model_config = _group("RAKUTEN_MODEL_")

    dir: Path = Path("var/models")
    report_dir: Path = Field(Path("var/reports"), validation_alias=_env("report_dir", "RAKUTEN_REPORT_DIR"))
    data_dir: Path | None = Field(None, validation_alias=_env("data_dir", "RAKUTEN_DATA_DIR"),
                                  description="Rakuten data folder (challenge or flat layout)")


class WorkerSettings(BaseSettings):
    model_config = _group("RAKUTEN_WORKER_")

    group_id: str = "rakuten-workers"
    instance_id: str | None = Field(
        None, description="static group.instance.id from a stable source (StatefulSet pod name, configured id); "
                          "unset: dynamic membership")
    processing_guarantee: Literal["at-least-once", "exactly-once"] = Field(
        "at-least-once", validation_alias=_env("processing_guarantee", "RAKUTEN_PROCESSING_GUARANTEE"),
        description="exactly-once: predictions, dead letters and offsets in one Kafka transaction per batch")
    retry_initial_s: float = Field(0.5, gt=0, description="first pause after a failed sink write (doubles, jittered)")
    retry_max_s: float = Field(30.0, gt=0, description="longest pause between attempts of a failed sink write")
    batch_max_messages: int = Field(64, ge=1, validation_alias=_env("batch_max_messages", "RAKUTEN_BATCH_MAX_MESSAGES"))
    batch_max_wait_ms: int = Field(200, ge=1, validation_alias=_env("batch_max_wait_ms", "RAKUTEN_BATCH_MAX_WAIT_MS"))
    max_poll_interval_ms: int = Field(300_000, ge=10_000,
                                      validation_alias=_env("max_poll_interval_ms", "RAKUTEN_MAX_POLL_INTERVAL_MS"))
    session_timeout_ms: int = Field(45_000, ge=6_000,
                                    validation_alias=_env("session_timeout_ms", "RAKUTEN_SESSION_TIMEOUT_MS"))
    metrics_port: int = Field(9108, ge=0, validation_alias=_env("metrics_port", "RAKUTEN_METRICS_PORT"),
                              description="Prometheus and health port (/metrics, /healthz, /readyz); 0 disables it")
    liveness_timeout_s: float = Field(60.0, gt=0, description="/healthz fails when the poll loop made no progress "
                                      "for this long (longer than the slowest batch)")
    health_check_every_s: float = Field(5.0, gt=0, description="how often Redis and the database are pinged "
                                        "(the rakuten_*_available gauges and /readyz)")


def _list_of_strings(value: Any) -> Any:
    """A list from the environment: a JSON list, or comma-separated (``/data/images,/mnt/photos``)."""
    if isinstance(value, str):
        value = value.strip()
        return json.loads(value) if value.startswith("[") else [v.strip() for v in value.split(",") if v.strip()]
    return value


class ImageSettings(BaseSettings):
    """Images inline and by reference: what a message may make a worker read, fetch and decode."""

    model_config = _group("RAKUTEN_IMAGE_")

    max_bytes: int = Field(5_000_000, ge=1, validation_alias=_env("max_bytes", "RAKUTEN_MAX_IMAGE_BYTES"))
    max_pixels: int = Field(40_000_000, ge=1, description="decoded size limit (decompression bombs)")
    fetch_timeout_s: float = Field(3.0, gt=0, description="total deadline of one fetch: connect, headers, body")
    batch_timeout_s: float = Field(5.0, gt=0, description="deadline of all fetches of a batch (run in parallel)")
    file_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="folders file:// URIs may read (comma-separated); none: file:// refused")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="hosts or CIDRs http(s) may reach although loopback/private/link-local")
    max_redirects: int = Field(3, ge=0)
    max_parallel_fetches: int = Field(64, ge=1)

    @field_validator("file_roots", "allowed_hosts", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _list_of_strings(value)


class LimitSettings(BaseSettings):
    """Limits on one untrusted listing; a listing over one is a dead letter with the limit's reason."""

    model_config = _group("RAKUTEN_")

    max_message_bytes: int = Field(4_194_304, ge=1, description="size of one products.v1 message")
    max_json_depth: int = Field(32, ge=2, description="nesting of arrays and objects")
    max_title_chars: int = Field(1_000, ge=1)
    max_description_chars: int = Field(50_000, ge=0, description="longer is rejected, not truncated")

    def listing_limits(self) -> ListingLimits:
        return ListingLimits(max_message_bytes=self.max_message_bytes, max_depth=self.max_json_depth,
                             max_title_chars=self.max_title_chars, max_description_chars=self.max_description_chars)


class InferenceSettings(BaseSettings):
    model_config = _group("RAKUTEN_")

    onnx_threads: int = Field(0, ge=0, description="intra-op threads per session; 0 lets onnxruntime choose")
    execution_provider: Literal["auto", "cpu", "cuda"] = "auto"
    top_k: int = Field(3, ge=1)


class HttpSettings(BaseSettings):
    """``rakuten-stream serve``: the HTTP service and its page."""

    model_config = _group("RAKUTEN_HTTP_")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: SecretStr = Field(SecretStr(""), validation_alias=_env("api_keys", "RAKUTEN_API_KEYS"),
                                description="comma-separated keys that may write (and predict, if keyed)")
    predict_requires_key: bool = Field(False, description="POST /v1/predict needs an API key too")
    max_body_bytes: int = Field(8_000_000, ge=1024, description="larger request bodies are refused unread (413)")
    max_listings: int = Field(64, ge=1, description="listings in one POST /v1/predict")
    batch_max_listings: int = Field(64, ge=1, description="dynamic batching: listings per model call")
    batch_max_wait_ms: float = Field(10.0, ge=0, description="dynamic batching: longest wait of the oldest request")


class DriftSettings(BaseSettings):
    """``rakuten-stream drift-consumer``: windows over the predictions, drift alarms, retrain requests."""

    model_config = _group("RAKUTEN_DRIFT_")

    app_id: str = Field("rakuten-drift", description="faust application id (consumer group, table topics)")
    state_dir: Path = Field(Path("var/state"), validation_alias=_env("state_dir", "RAKUTEN_STATE_DIR"),
                            description="local state of the stream apps (the drift consumer's faust data folder "
                            "and reports go in <state_dir>/drift)")
    window_messages: int = Field(500, ge=10, description="a window closes after this many predictions ...")
    window_seconds: float = Field(600.0, gt=0, description="... or this long after its first one")
    min_window_messages: int = Field(50, ge=1, description="smaller windows (closed by time) are reported, not judged")
    false_alarm_rate: float = Field(0.01, gt=0, lt=0.5,
                                    description="share of windows of the training distribution allowed to alarm")
    bootstrap_rounds: int = Field(2000, ge=200, description="bootstrap windows that calibrate the threshold")
    max_f1_drop: float = Field(0.10, ge=0, le=1, description="alarm when the (estimated or true) weighted F1 "
                               "falls this far below the reference's")
    min_f1: float | None = Field(None, ge=0, le=1, description="alarm when the weighted F1 falls below this")
    min_true_f1_labels: int = Field(100, ge=1, description="labels a window needs before its true F1 is judged")
    label_backlog: int = Field(10_000, ge=1, description="new labels that ask for a retrain by themselves")
    cooldown_seconds: int = Field(3600, ge=1, description="at most one retrain request per model version per cooldown")
    episode_end_windows: int = Field(3, ge=1, description="healthy windows in a row that end a drift episode")
    evidently: bool = Field(True, description="compare every judged window with the reference through Evidently")
    html_reports: Literal["alarms", "all", "none"] = Field(
        "alarms", description="which windows keep Evidently's HTML report (gzip, about 1 MB each)")
    metrics_port: int = Field(9108, ge=0, description="Prometheus port of the drift consumer; 0 disables it")

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "drift"


class RetrainSettings(BaseSettings):
    """The retrain worker: its consumer groups, how it reads the labels the stream brought, the gate."""

    model_config = _group("RAKUTEN_RETRAIN_")

    group_id: str = Field("retrain-workers", description="consumer group of retrain-requests.v1")
    sync_group_id: str = Field("retrain-labeled-data",
                               description="consumer groups (-labels, -listings) that copy labels.v1 and "
                                           "products.v1 into the database")
    sync_batch_rows: int = Field(500, ge=1, description="rows per upsert (and per offset commit) of that copy")
    sync_interval_s: float = Field(300.0, ge=0, description="copy the new labels and listings this often while "
                                                              "idle (0: only when a retrain starts)")
    min_improvement: float = Field(0.0, ge=0, description="weighted F1 a candidate must gain over production")
    use_e5: bool = Field(True, description="train the e5 text model (if installed)")
    use_image: bool = Field(True, description="train the image model (if installed)")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAKUTEN_SETTINGS_", extra="ignore", frozen=True)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    broker: EmbeddedBrokerSettings = Field(default_factory=EmbeddedBrokerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    models: ModelStoreSettings = Field(default_factory=ModelStoreSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)

    def with_overrides(self, **groups: dict[str, Any] | None) -> Settings:
        """A copy with values replaced, validated like the environment:
        ``settings.with_overrides(worker={"instance_id": "a"}, cache={"enabled": False})``.
        A None value (group or field) keeps what is there, so CLI flags can be passed as they are."""
        merged = self.model_dump()
        changed = False
        for group, values in groups.items():
            if group not in merged:
                raise ValueError(f"no settings group {group!r}")
            kept = {k: v for k, v in (values or {}).items() if v is not None}
            if kept:
                merged[group] = merged[group] | kept
                changed = True
        return Settings.model_validate(merged) if changed else self

    @classmethod
    def environment_names(cls) -> set[str]:
        """Every ``RAKUTEN_*`` variable the settings read."""
        return {_variable(group.annotation, name) for group in cls.model_fields.values()
                for name in group.annotation.model_fields}

    def as_environment(self) -> dict[str, str]:
        """The ``RAKUTEN_*`` variables that reproduce these settings (for a subprocess); holds secrets."""
        env: dict[str, str] = {}
        for group_name in type(self).model_fields:
            group = getattr(self, group_name)
            for name in type(group).model_fields:
                value = getattr(group, name)
                if value is None:
                    continue
                if isinstance(value, SecretStr):
                    value = value.get_secret_value()
                elif isinstance(value, dict):
                    value = json.dumps(value)
                elif isinstance(value, list):
                    value = json.dumps([str(v) for v in value])
                env[_variable(type(group), name)] = str(value)
        return env

    def kafka_config(self) -> dict[str, str]:
        return self.kafka.client_config()

    def redacted(self) -> dict[str, dict[str, Any]]:
        """Settings as a dict safe to print: secrets, URL passwords and secret parameters masked."""
        out: dict[str, dict[str, Any]] = {}
        for group, values in self.model_dump().items():
            shown: dict[str, Any] = {}
            for key, value in values.items():
                if isinstance(value, SecretStr):
                    value = redact(value.get_secret_value()) if key.endswith("url") else "**********"
                elif key == "extra" and isinstance(value, dict):
                    value = redact_mapping(value)
                elif isinstance(value, Path):
                    value = str(value)
                elif isinstance(value, str):
                    value = redact(value)
                shown[key] = value
            out[group] = shown
        return out


def _variable(group: type[BaseSettings], name: str) -> str:
    alias = group.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[-1])
    return f"{group.model_config.get('env_prefix', '')}{name}".upper()
