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
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import limits
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from analytics.alerts import AlertRule, metric_problem
from analytics.cohorts import CohortsSpec
from analytics.custom_kpis import NO_CUSTOM_KPIS, CustomKpis, parse_custom_kpis
from analytics.experiments import ExperimentsSpec
from analytics.funnels import FunnelSpec, parse_funnels
from analytics.privacy import IpMode

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


class Section(BaseModel):
    """A block of the YAML file: a key it does not declare is an error, never ignored."""

    model_config = ConfigDict(extra="forbid")


class ApplicationSettings(Section):
    """``name`` is the Faust app id (consumer group, changelog topic prefix) unless
    ``sources.kafka.group_id`` is set; both are shown in /health and the ready line."""

    name: str = Field("analytics-dashboard", min_length=1)
    environment: str = "development"


class EngineSettings(Section):
    topic_partitions: int = Field(8, ge=1, le=1024)
    topic_prefix: str = ""
    batch_size: int = Field(2_000, ge=1, le=100_000)
    batch_within: Duration = timedelta(milliseconds=200)
    round_interval: Duration = timedelta(milliseconds=10)
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
    rocksdb_wal: bool = True
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


KafkaProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaTlsSettings(Section):
    """TLS towards the brokers (security_protocol SSL or SASL_SSL); files are PEM."""

    ca_file: FilePath | None = None  # CAs the broker certificates are checked against
    cert_file: FilePath | None = None  # client certificate, for brokers that ask for one
    key_file: FilePath | None = None  # its private key
    key_password: SecretStr | None = None  # when the key file is encrypted

    @model_validator(mode="after")
    def _pairs(self) -> KafkaTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        if self.key_password is not None and self.key_file is None:
            raise ValueError("key_password is set but key_file is not")
        return self

    @property
    def configured(self) -> bool:
        return any(v is not None for v in (self.ca_file, self.cert_file, self.key_file))


class KafkaSaslSettings(Section):
    """SASL authentication (security_protocol SASL_PLAINTEXT or SASL_SSL)."""

    mechanism: SaslMechanism = "PLAIN"
    username: str = ""
    password: SecretStr = SecretStr("")

    @property
    def configured(self) -> bool:
        return bool(self.username or self.password.get_secret_value())


class KafkaSourceSettings(Section):
    """The Kafka cluster of the whole pipeline: its input, output and changelog topics."""

    brokers: Brokers = ["127.0.0.1:9092"]
    group_id: str | None = Field(None, min_length=1)  # default: application.name
    # static group membership: a stable name per worker (its host or pod name) lets a
    # restarted worker take its partitions back at once instead of after session_timeout
    group_instance_id: str | None = Field(None, min_length=1)
    security_protocol: KafkaProtocol = "PLAINTEXT"
    tls: KafkaTlsSettings = KafkaTlsSettings()
    sasl: KafkaSaslSettings = KafkaSaslSettings()

    @model_validator(mode="after")
    def _security_consistent(self) -> KafkaSourceSettings:
        protocol = self.security_protocol
        uses_tls = protocol in ("SSL", "SASL_SSL")
        uses_sasl = protocol.startswith("SASL_")
        if self.tls.configured and not uses_tls:
            raise ValueError(f"tls files are set but security_protocol {protocol} does not use TLS")
        if self.sasl.configured and not uses_sasl:
            raise ValueError(f"sasl is set but security_protocol {protocol} does not use SASL")
        if uses_sasl and not (self.sasl.username and self.sasl.password.get_secret_value()):
            raise ValueError(f"security_protocol {protocol} needs sasl.username and sasl.password")
        return self


class HttpTlsSettings(Section):
    """HTTPS for the web server (ingestion, API, dashboard, /health)."""

    enabled: bool = False
    cert_file: FilePath | None = None  # PEM certificate chain, the server's first
    key_file: FilePath | None = None  # its PEM private key (unencrypted)

    @model_validator(mode="after")
    def _files(self) -> HttpTlsSettings:
        if self.enabled and (self.cert_file is None or self.key_file is None):
            raise ValueError("enabled needs cert_file and key_file")
        if not self.enabled and (self.cert_file or self.key_file):
            raise ValueError("cert_file/key_file are set but enabled is false")
        return self


#: paths of the other endpoints, ours and Faust's, which the ingestion path must leave alone
RESERVED_PATHS = (
    *("/api", "/dashboard", "/health", "/metrics", "/openapi.json"),
    *("/router", "/table", "/graph", "/performance", "/assignment"),
)
_URL_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")


class HttpSourceSettings(Section):
    listen_addr: str = "127.0.0.1:6066"
    path: str = "/ingest"  # POST <path> takes one event, POST <path>/batch a batch
    tls: HttpTlsSettings = HttpTlsSettings()
    #: the longest an ingest request waits for Kafka to confirm its events; then 503
    publish_timeout: Duration = timedelta(seconds=5)
    #: the Retry-After of a 503 while Kafka is unreachable (whole seconds, rounded up)
    retry_after: Duration = timedelta(seconds=5)
    #: events waiting for Kafka's confirmation, over all requests; beyond it new requests get 503
    max_pending_mib: int = Field(64, ge=1, le=4096)

    @property
    def scheme(self) -> str:
        return "https" if self.tls.enabled else "http"

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

    @field_validator("path")
    @classmethod
    def _ingest_path(cls, value: str) -> str:
        if not _URL_PATH.match(value):
            raise ValueError(
                f"path {value!r} must look like /ingest: segments of letters, digits and ._~- "
                "after a slash each, no trailing slash"
            )
        for reserved in RESERVED_PATHS:
            if value == reserved or value.startswith(reserved + "/"):
                raise ValueError(f"path {value!r} would shadow the endpoint {reserved}")
        return value


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$|^\*$")
_KEY_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MIN_SECRET_CHARS = 16


def _rate_limit(value: str) -> str:
    """A rate in the syntax of the limits library: ``100/second``, ``6000 per minute``."""
    try:
        limits.parse(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a rate limit (write it like 100/second or 6000/minute)"
        ) from None
    return value


RateLimit = Annotated[str, AfterValidator(_rate_limit)]


def _strong(secret: SecretStr, what: str) -> SecretStr:
    if len(secret.get_secret_value()) < MIN_SECRET_CHARS:
        raise ValueError(f"{what} is shorter than {MIN_SECRET_CHARS} characters")
    return secret


def _key_shorthand(value: Any) -> Any:
    """``name: secret`` stands for ``name: {key: secret}``."""
    return {"key": value} if isinstance(value, str) else value


class IngestKey(Section):
    """One named ingest API key; ``rate_limit`` replaces ``access.ingest_rate_limit`` for it."""

    key: SecretStr
    rate_limit: RateLimit | None = None


class AccessSettings(Section):
    """Who may call the web server (web/access.py). Nothing set: everything open but the
    destructive operations, which need ``admin_token``."""

    ingest_keys: dict[str, Annotated[IngestKey, BeforeValidator(_key_shorthand)]] = {}
    ingest_rate_limit: RateLimit | None = None  # per key, unless the key names its own
    read_token: SecretStr | None = None  # the web API, the dashboard and its stream
    admin_token: SecretStr | None = None  # destructive operations (also reads)
    cors_origins: list[str] = []  # web pages that may POST events from a browser
    cors_max_age: Duration = timedelta(minutes=10)  # how long a browser keeps a preflight

    @field_validator("ingest_keys")
    @classmethod
    def _keys(cls, value: dict[str, IngestKey]) -> dict[str, IngestKey]:
        for name, entry in value.items():
            if not _KEY_NAME.match(name):
                raise ValueError(
                    f"key name {name!r}: lower-case letters, digits, _ and -, at most 63"
                )
            _strong(entry.key, f"the key {name!r}")
        return value

    @field_validator("read_token", "admin_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else _strong(value, "the token")

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not _ORIGIN.match(origin):
                raise ValueError(
                    f"origin {origin!r} must be scheme://host[:port] without a path, or *"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AccessSettings:
        named = [entry.rate_limit for entry in self.ingest_keys.values()]
        if (self.ingest_rate_limit or any(named)) and not self.ingest_keys:
            raise ValueError("ingest_rate_limit is set but no ingest_keys: limits are per key")
        secrets = [entry.key.get_secret_value() for entry in self.ingest_keys.values()]
        secrets += [t.get_secret_value() for t in (self.read_token, self.admin_token) if t]
        if len(set(secrets)) != len(secrets):
            raise ValueError("every ingest key, read_token and admin_token must be different")
        return self


class SourcesSettings(Section):
    kafka: KafkaSourceSettings = KafkaSourceSettings()
    http: HttpSourceSettings = HttpSourceSettings()


PostgresSslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class DatabaseTlsSettings(Section):
    """TLS towards PostgreSQL: libpq's sslmode, sslrootcert, sslcert and sslkey.

    Unset values leave libpq's own (and the connection string's) in force."""

    mode: PostgresSslMode | None = None
    ca_file: FilePath | None = None  # sslrootcert: CAs for verify-ca / verify-full
    cert_file: FilePath | None = None  # sslcert: client certificate
    key_file: FilePath | None = None  # sslkey: its private key (unencrypted)

    @model_validator(mode="after")
    def _pairs(self) -> DatabaseTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        if self.mode == "disable" and any((self.ca_file, self.cert_file)):
            raise ValueError("tls files are set but mode is disable")
        return self

    def libpq_parameters(self) -> dict[str, str]:
        """The connection parameters these settings stand for."""
        values = {
            "sslmode": self.mode,
            "sslrootcert": self.ca_file,
            "sslcert": self.cert_file,
            "sslkey": self.key_file,
        }
        return {name: str(value) for name, value in values.items() if value is not None}


_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class DatabaseRoleSettings(Section):
    """A login role the migrations create with only the privileges it needs (sinks/roles.py).

    An empty ``user`` means none: its work is done as the connection string's user."""

    user: str = ""
    password: SecretStr = SecretStr("")

    @field_validator("user")
    @classmethod
    def _role_name(cls, value: str) -> str:
        if value and not _ROLE_NAME.match(value):
            raise ValueError(
                f"user {value!r}: lower-case letters, digits and _, not starting with a digit"
            )
        return value


def with_login(url: str, role: DatabaseRoleSettings) -> str:
    """``url`` logging in as ``role`` (user and password replaced), or ``url`` without one."""
    if not role.user:
        return url
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    password = role.password.get_secret_value()
    login = quote(role.user, safe="") + (":" + quote(password, safe="") if password else "")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    query = [(k, v) for k, v in query if k not in ("user", "password")]
    return urlunsplit(parts._replace(netloc=f"{login}@{host}", query=urlencode(query, safe="/")))


#: the tables the database sinks can write (sinks/schema.py TABLES; settings cannot import it)
SINK_TABLES = (
    "session_metrics",
    "page_view_stats",
    "kpi_metrics",
    "dimension_stats",
    "funnel_stats",
    "experiment_stats",
    "cohort_stats",
)


class DatabaseSinkSettings(Section):
    connection_string: str = "postgresql://analytics@127.0.0.1:5432/analytics"
    #: the sinks write as this role: SELECT, INSERT, UPDATE on their tables, nothing else
    writer: DatabaseRoleSettings = DatabaseRoleSettings()
    #: the web API's history queries read as this role: SELECT on the sink tables
    reader: DatabaseRoleSettings = DatabaseRoleSettings()
    tables: list[str] = list(SINK_TABLES)
    batch_size: int = Field(100, ge=1, le=100_000)
    flush_interval: Duration = timedelta(seconds=5)
    retry_initial: Duration = timedelta(milliseconds=200)
    retry_max: Duration = timedelta(seconds=5)
    startup_timeout: Duration = timedelta(seconds=30)
    compress_after: Duration = timedelta(days=7)
    retention: Duration = timedelta(days=90)
    tls: DatabaseTlsSettings = DatabaseTlsSettings()

    @property
    def url(self) -> str:
        """``connection_string`` with the ``tls`` parameters added to its query."""
        extra = self.tls.libpq_parameters()
        if not extra:
            return self.connection_string
        parts = urlsplit(self.connection_string)
        query = parse_qsl(parts.query, keep_blank_values=True)
        return urlunsplit(parts._replace(query=urlencode([*query, *extra.items()], safe="/")))

    @property
    def writer_url(self) -> str:
        """Where the sinks write: ``url`` as the writer role, when there is one."""
        return with_login(self.url, self.writer)

    @property
    def reader_url(self) -> str:
        """Where the web API reads: ``url`` as the reader role, when there is one."""
        return with_login(self.url, self.reader)

    @model_validator(mode="after")
    def _roles_apart(self) -> DatabaseSinkSettings:
        owner = urlsplit(self.connection_string).username
        users = [role.user for role in (self.writer, self.reader) if role.user]
        if len(set(users)) != len(users):
            raise ValueError("writer.user and reader.user must be different roles")
        if owner in users:
            raise ValueError(
                f"{owner!r} owns the tables (connection_string); writer and reader must be "
                "other roles"
            )
        return self

    @model_validator(mode="after")
    def _tls_not_twice(self) -> DatabaseSinkSettings:
        in_url = {name for name, _ in parse_qsl(urlsplit(self.connection_string).query)}
        if twice := sorted(in_url & set(self.tls.libpq_parameters())):
            raise ValueError(
                f"connection_string already sets {', '.join(twice)}; "
                "set TLS either there or in tls, not both"
            )
        return self

    @field_validator("connection_string")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("connection_string must be a postgresql:// URL")
        return value

    @field_validator("tables")
    @classmethod
    def _known_tables(cls, value: list[str]) -> list[str]:
        if unknown := sorted(set(value) - set(SINK_TABLES)):
            raise ValueError(f"unknown tables {unknown}; known: {sorted(SINK_TABLES)}")
        return value


class SinksSettings(Section):
    timescaledb: DatabaseSinkSettings = DatabaseSinkSettings()


class AnalyticsSettings(Section):
    conversion_actions: list[str] = ["purchase", "signup", "subscribe", "download", "submit_form"]
    high_value_revenue: Decimal = Decimal("100.00")
    high_value_duration_ms: int = Field(30_000, ge=0)
    future_tolerance: Duration = timedelta(minutes=10)


class ExperimentsSettings(Section):
    """A/B tests (SPEC 9): checked by analytics.experiments, which computes them."""

    enabled: bool = True  # false: no experiment-stats, and no per-user state for them
    control_variant: str = "control"  # the variant the others are compared with
    min_users: int = 100  # both variants need this many users to be ``significant``
    alpha: float = 0.05  # ``significant``: p_value below this
    publish_interval: Duration = timedelta(seconds=1)  # experiment-stats at most this often

    @field_validator("publish_interval")
    @classmethod
    def _whole_milliseconds(cls, value: timedelta) -> timedelta:
        if value < timedelta(milliseconds=1):
            raise ValueError("must be at least 1ms")
        return value

    @model_validator(mode="after")
    def _checked(self) -> ExperimentsSettings:
        self.spec()
        return self

    def spec(self) -> ExperimentsSpec:
        return ExperimentsSpec.parse(
            {
                "control_variant": self.control_variant,
                "min_users": self.min_users,
                "alpha": self.alpha,
                "publish_interval_ms": self.publish_interval // timedelta(milliseconds=1),
            },
            where="",
        )


class CohortsSettings(Section):
    """Cohorts and retention (SPEC 8): checked by analytics.cohorts, which computes them."""

    enabled: bool = True  # false: no cohort-stats, and no per-user state for them
    max_day_offset: int = 90  # rows for day offsets 0 to this

    @model_validator(mode="after")
    def _checked(self) -> CohortsSettings:
        self.spec()
        return self

    def spec(self) -> CohortsSpec:
        return CohortsSpec.parse({"max_day_offset": self.max_day_offset}, where="")


class AlertWebhookSettings(Section):
    """Where transitions are POSTed (JSON, header Idempotency-Key), and how hard to try."""

    url: AnyHttpUrl
    timeout: Duration = timedelta(seconds=5)  # one attempt
    attempts: int = Field(5, ge=1, le=100)  # in all, the first included
    backoff_initial: Duration = timedelta(milliseconds=500)  # then doubling...
    backoff_max: Duration = timedelta(seconds=30)  # ...up to this between attempts


class AlertRuleSettings(Section):
    """One rule (SPEC 10): ``metric comparator threshold`` for ``for`` final windows."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    metric: str
    comparator: Literal[">", ">=", "<", "<="]
    threshold: float
    for_: int = Field(1, ge=1, le=10_000, alias="for")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        if problem := metric_problem(value, None):
            raise ValueError(problem)
        return value

    def rule(self) -> AlertRule:
        return AlertRule(self.name, self.metric, self.comparator, self.threshold, self.for_)


class AlertsSettings(Section):
    """Alert rules over final KPI windows (SPEC 10; agents/kpi_alerts.py evaluates them)."""

    rules: list[AlertRuleSettings] = []
    webhook: AlertWebhookSettings | None = None

    @field_validator("rules")
    @classmethod
    def _unique(cls, value: list[AlertRuleSettings]) -> list[AlertRuleSettings]:
        names = [rule.name for rule in value]
        if twice := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"rule names must be unique: {twice} appear more than once")
        return value

    def checked(
        self, custom_kpis: list[str] | None, kpi_window: timedelta, kept: timedelta
    ) -> None:
        """Rules against the rest of the configuration: ``custom.<name>`` names a configured
        custom KPI, and ``for`` windows fit in the final windows kept (a restart re-reads
        them, agents/kpi_alerts.py)."""
        for index, rule in enumerate(self.rules):
            if problem := metric_problem(rule.metric, custom_kpis):
                raise ValueError(f"alerts.rules[{index}] ({rule.name}): {problem}")
            if rule.for_ * kpi_window > kept:
                raise ValueError(
                    f"alerts.rules[{index}] ({rule.name}): for {rule.for_} windows of "
                    f"{kpi_window} is longer than engine.history_retention ({kept})"
                )

    def alert_rules(self) -> tuple[AlertRule, ...]:
        return tuple(rule.rule() for rule in self.rules)


class MetricsSettings(Section):
    enabled: bool = True
    port: int = Field(9091, ge=0, lt=65536)
    namespace: str = "analytics_dashboard"


class ErasureSettings(Section):
    """``DELETE /api/users/{user_id}`` (analytics.erasure): how long the request waits for
    the tracker to have erased the user before answering 202 (queued) instead of 200."""

    wait: Duration = timedelta(seconds=10)


class PrivacySettings(Section):
    """SPEC 10: what leaves the tracker of an event's ``ip_address`` (analytics.privacy)."""

    ip: IpMode = "anonymize"  # anonymize: IPv4 /24, IPv6 /48; drop: null; keep: unchanged


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
    experiments: ExperimentsSettings = ExperimentsSettings()
    cohorts: CohortsSettings = CohortsSettings()
    metrics: MetricsSettings = MetricsSettings()
    access: AccessSettings = AccessSettings()
    alerts: AlertsSettings = AlertsSettings()
    erasure: ErasureSettings = ErasureSettings()

    privacy: PrivacySettings = PrivacySettings()
    #: SPEC 7 funnels, read by analytics.funnels.parse_funnels (durations as everywhere here)
    funnels: tuple[FunnelSpec, ...] = ()
    #: SPEC 10 custom KPIs, read by analytics.custom_kpis.parse_custom_kpis
    custom_kpis: CustomKpis = NO_CUSTOM_KPIS

    @model_validator(mode="before")
    @classmethod
    def _specs(cls, data: Any) -> Any:
        """The ``funnels`` and ``custom_kpis`` lists become specs here, so their errors name
        the entry and field (``funnels[1].stages[2]: ...``, ``custom_kpis[0].count: ...``)
        rather than pydantic's view of the dataclasses."""
        if isinstance(data, dict) and "funnels" in data:
            data = {**data, "funnels": parse_funnels(data["funnels"], parse_duration)}
        if isinstance(data, dict) and "custom_kpis" in data:
            data = {**data, "custom_kpis": parse_custom_kpis(data["custom_kpis"])}
        return data

    @model_validator(mode="after")
    def _alerts(self) -> Settings:
        self.alerts.checked(
            list(self.custom_kpis.names), self.engine.kpi_window, self.engine.history_retention
        )
        return self

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
    def app_id(self) -> str:
        """The Faust app id: the consumer group and the prefix of the changelog topics."""
        return self.sources.kafka.group_id or self.application.name

    @property
    def database_url(self) -> str:
        """The database's URL, TLS parameters included (sinks.timescaledb.tls)."""
        return self.sinks.timescaledb.url


class _ShortcutSource(PydanticBaseSettingsSource):
    """KAFKA_BOOTSTRAP and DATABASE_URL, the variables every script and test exports."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        brokers = os.environ.get("KAFKA_BOOTSTRAP")
        if brokers:
            values["sources"] = {"kafka": {"brokers": brokers}}
        database_url = os.environ.get("DATABASE_URL")
        if database_url:
            values.setdefault("sinks", {})["timescaledb"] = {"connection_string": database_url}
        return values


class ConfigurationError(RuntimeError):
    """The configuration cannot be used; the message says which setting and why."""


#: keys that configured nothing and were removed, and what to use instead
RETIRED_KEYS = {
    "sources.kafka.topics": "the input topic is always <engine.topic_prefix>user-events",
    "sinks.kafka": (
        "every output topic goes to the cluster of sources.kafka under a fixed name "
        "(README, Topics); engine.topic_prefix renames them all"
    ),
    "sources.http.tls_enabled": "use sources.http.tls.enabled, tls.cert_file and tls.key_file",
}


def _problem(error: Any) -> str:
    """One validation error as ``dotted.key: what is wrong``."""
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        for retired, instead in RETIRED_KEYS.items():
            if key == retired or key.startswith(retired + "."):
                return f"{retired}: no longer a setting ({instead})"
        return f"{key}: unknown setting"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{key}: {message}" if key else message


def load_settings() -> Settings:
    """Read and validate the configuration, turning pydantic's report into one clear error."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(dict.fromkeys(_problem(error) for error in exc.errors()))
        raise ConfigurationError(f"invalid configuration: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
