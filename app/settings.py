"""Typed settings: one YAML file (configs/analytics-dashboard.yaml) plus environment overrides.

Every setting is declared once here with its type and default. Values come, lowest precedence
first, from the defaults, the YAML file named by ``ANALYTICS_CONFIG``, ``ANALYTICS__SECTION__KEY``
variables, and the shortcuts ``KAFKA_BOOTSTRAP`` and ``DATABASE_URL``.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = PROJECT_ROOT / "configs" / "analytics-dashboard.yaml"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> timedelta:
    """Read ``500ms``, ``10s``, ``30m``, ``24h``, ``1d`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or text like 10s")
    if isinstance(value, int | float):
        return timedelta(seconds=float(value))
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    raise ValueError(f"{value!r} is not a duration (use 500ms, 10s, 30m, 24h or seconds)")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _split_brokers(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


Brokers = Annotated[list[str], BeforeValidator(_split_brokers), Field(min_length=1)]


class ApplicationSettings(BaseModel):
    name: str = "analytics-dashboard"
    environment: str = "development"


class EngineSettings(BaseModel):
    topic_partitions: int = Field(8, ge=1, le=1024)
    topic_prefix: str = ""
    batch_size: int = Field(10_000, ge=1, le=100_000)
    batch_within: Duration = timedelta(milliseconds=200)
    grace: Duration = timedelta(seconds=10)
    session_gap: Duration = timedelta(minutes=30)
    kpi_window: Duration = timedelta(seconds=60)
    dedup_window: Duration = timedelta(hours=24)
    history_retention: Duration = timedelta(hours=24)
    watermark_interval: Duration = timedelta(seconds=1)
    idle_timeout: Duration = timedelta(seconds=5)
    store: str = "rocksdb://"
    rocksdb_block_cache_mib: int = Field(8, ge=1, le=4096)
    rocksdb_write_buffer_mib: int = Field(8, ge=1, le=1024)
    max_cached_users: int = Field(200_000, ge=0)
    gc_threshold: int = Field(100_000, ge=0)
    processing_guarantee: str = "at_least_once"
    session_timeout: Duration = timedelta(seconds=60)
    heartbeat_interval: Duration = timedelta(seconds=3)

    @field_validator("kpi_window")
    @classmethod
    def _whole_seconds(cls, value: timedelta) -> timedelta:
        if value.total_seconds() < 1 or value.total_seconds() != int(value.total_seconds()):
            raise ValueError("kpi_window must be a whole number of seconds, at least 1s")
        return value

    @field_validator("processing_guarantee")
    @classmethod
    def _guarantee(cls, value: str) -> str:
        if value not in ("at_least_once", "exactly_once"):
            raise ValueError("processing_guarantee must be at_least_once or exactly_once")
        return value


class KafkaSourceSettings(BaseModel):
    brokers: Brokers = ["127.0.0.1:9092"]
    topics: list[str] = ["user-events"]
    group_id: str = "analytics-dashboard"


class HttpSourceSettings(BaseModel):
    listen_addr: str = "127.0.0.1:6066"
    path: str = "/ingest"
    tls_enabled: bool = False

    @property
    def host(self) -> str:
        host = self.listen_addr.rpartition(":")[0]
        return host or "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.listen_addr.rpartition(":")[2])

    @field_validator("listen_addr")
    @classmethod
    def _has_port(cls, value: str) -> str:
        port = value.rpartition(":")[2]
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"listen_addr {value!r} needs a port, like 127.0.0.1:6066")
        return value


class SourcesSettings(BaseModel):
    kafka: KafkaSourceSettings = KafkaSourceSettings()
    http: HttpSourceSettings = HttpSourceSettings()


class KafkaSinkSettings(BaseModel):
    brokers: Brokers = ["127.0.0.1:9092"]
    topics: dict[str, dict[str, Any]] = {}


class DatabaseSinkSettings(BaseModel):
    connection_string: str = "postgresql://analytics@127.0.0.1:5432/analytics"
    tables: list[str] = ["session_metrics", "page_view_stats", "kpi_metrics", "dimension_stats"]
    batch_size: int = Field(100, ge=1, le=100_000)
    flush_interval: Duration = timedelta(seconds=5)
    retry_initial: Duration = timedelta(milliseconds=200)
    retry_max: Duration = timedelta(seconds=5)
    startup_timeout: Duration = timedelta(seconds=30)
    compress_after: Duration = timedelta(days=7)
    retention: Duration = timedelta(days=90)

    @field_validator("connection_string")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("connection_string must be a postgresql:// URL")
        return value

    @field_validator("tables")
    @classmethod
    def _known_tables(cls, value: list[str]) -> list[str]:
        known = {"session_metrics", "page_view_stats", "kpi_metrics", "dimension_stats"}
        if unknown := sorted(set(value) - known):
            raise ValueError(f"unknown tables {unknown}; known: {sorted(known)}")
        return value


class SinksSettings(BaseModel):
    kafka: KafkaSinkSettings = KafkaSinkSettings()
    timescaledb: DatabaseSinkSettings = DatabaseSinkSettings()


class AnalyticsSettings(BaseModel):
    conversion_actions: list[str] = ["purchase", "signup", "subscribe", "download", "submit_form"]
    high_value_revenue: Decimal = Decimal("100.00")
    high_value_duration_ms: int = Field(30_000, ge=0)
    future_tolerance: Duration = timedelta(minutes=10)


class MetricsSettings(BaseModel):
    enabled: bool = True
    port: int = Field(9091, ge=0, lt=65536)
    namespace: str = "analytics_dashboard"


class Settings(BaseSettings):
    """The whole configuration of one worker."""

    model_config = SettingsConfigDict(
        env_prefix="ANALYTICS__", env_nested_delimiter="__", extra="forbid"
    )

    application: ApplicationSettings = ApplicationSettings()
    engine: EngineSettings = EngineSettings()
    sources: SourcesSettings = SourcesSettings()
    sinks: SinksSettings = SinksSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()
    metrics: MetricsSettings = MetricsSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = Path(os.environ.get("ANALYTICS_CONFIG", DEFAULT_CONFIG_FILE))
        if not config_file.is_file():
            raise ConfigurationError(f"configuration file {config_file} does not exist")
        return (
            init_settings,
            _ShortcutSource(settings_cls),
            env_settings,
            YamlConfigSettingsSource(settings_cls, yaml_file=config_file),
        )

    @property
    def brokers(self) -> list[str]:
        return self.sources.kafka.brokers

    @property
    def database_url(self) -> str:
        return self.sinks.timescaledb.connection_string


class _ShortcutSource(PydanticBaseSettingsSource):
    """KAFKA_BOOTSTRAP and DATABASE_URL, the variables every script and test exports."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        brokers = os.environ.get("KAFKA_BOOTSTRAP")
        if brokers:
            values["sources"] = {"kafka": {"brokers": brokers}}
            values["sinks"] = {"kafka": {"brokers": brokers}}
        database_url = os.environ.get("DATABASE_URL")
        if database_url:
            values.setdefault("sinks", {})["timescaledb"] = {"connection_string": database_url}
        return values


class ConfigurationError(RuntimeError):
    """The configuration cannot be used; the message says which setting and why."""


def load_settings() -> Settings:
    """Read and validate the configuration, turning pydantic's report into one clear error."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
