"""app/settings.py: every key is declared, documented and has an effect; nothing else is taken.

The effects that need a running worker (HTTPS, the ingest path, /health) are observed in
tests/integration/test_settings_effects.py; here each key's mapping to what reads it.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel

from analytics.funnels import FunnelSpec, Stage
from app.faust_app import create_app
from app.settings import (
    DEFAULT_CONFIG_FILE,
    PROJECT_ROOT,
    ConfigurationError,
    HttpSourceSettings,
    Settings,
    load_settings,
)
from app.web_tls import own_server_client_context, server_context
from tests.tls_files import TlsFiles, make_tls_files

CONFIG_DOC = PROJECT_ROOT / "docs" / "configuration.md"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A YAML file of this test's own as ANALYTICS_CONFIG, and no settings from the outside."""
    for name in list(os.environ):
        if name.startswith("ANALYTICS__") or name in ("KAFKA_BOOTSTRAP", "DATABASE_URL"):
            monkeypatch.delenv(name)
    path = tmp_path / "config.yaml"
    path.write_text("{}\n")
    monkeypatch.setenv("ANALYTICS_CONFIG", str(path))
    yield path


def load(config: Path, document: dict[str, Any]) -> Settings:
    config.write_text(yaml.safe_dump(document))
    return load_settings()


def refused(config: Path, document: dict[str, Any]) -> str:
    config.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    return str(raised.value)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"), "worker.example")


# --------------------------------------------------------------------------- keys


def leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every setting as a dotted key."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += leaf_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def yaml_keys(document: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, value in document.items():
        if isinstance(value, dict) and value:
            keys |= yaml_keys(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def test_the_shipped_file_and_the_docs_name_every_setting_and_nothing_else() -> None:
    declared = set(leaf_keys(Settings))
    shipped = yaml.safe_load(DEFAULT_CONFIG_FILE.read_text())
    # group_id is shown commented out: its default follows application.name
    assert yaml_keys(shipped) | {"sources.kafka.group_id"} == declared
    documented = CONFIG_DOC.read_text()
    assert not [key for key in sorted(declared) if f"`{key}`" not in documented]


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"application": {"nmae": "x"}}, "application.nmae"),
        ({"engine": {"grac": "5s"}}, "engine.grac"),
        ({"sources": {"kafka": {"sasl": {"user": "x"}}}}, "sources.kafka.sasl.user"),
        ({"sources": {"http": {"tls": {"certificate": "x"}}}}, "sources.http.tls.certificate"),
        ({"sinks": {"timescaledb": {"tls": {"sslmode": "x"}}}}, "sinks.timescaledb.tls.sslmode"),
        ({"analytics": {"currency": "EUR"}}, "analytics.currency"),
        ({"metrics": {"path": "/m"}}, "metrics.path"),
        ({"logging": {"level": "debug"}}, "logging"),
    ],
)
def test_a_key_no_section_declares_stops_the_start_naming_it(
    config: Path, document: dict[str, Any], key: str
) -> None:
    assert refused(config, document) == f"invalid configuration: {key}: unknown setting"


def test_an_environment_variable_with_a_typo_is_refused(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANALYTICS__ENGINE__GRAC", "5s")
    with pytest.raises(ConfigurationError, match=r"engine\.grac: unknown setting"):
        load_settings()


@pytest.mark.parametrize(
    ("document", "named", "hint"),
    [
        ({"sources": {"kafka": {"topics": ["user-events"]}}}, "sources.kafka.topics", "prefix"),
        ({"sinks": {"kafka": {"brokers": ["k:9092"]}}}, "sinks.kafka", "sources.kafka"),
        ({"sinks": {"kafka": {"topics": {"live-kpis": {}}}}}, "sinks.kafka", "topic_prefix"),
        ({"sources": {"http": {"tls_enabled": True}}}, "sources.http.tls_enabled", "tls.enabled"),
    ],
)
def test_the_retired_keys_are_refused_with_what_to_use_instead(
    config: Path, document: dict[str, Any], named: str, hint: str
) -> None:
    message = refused(config, document)
    assert f"{named}: no longer a setting (" in message
    assert hint in message


# --------------------------------------------------------------------------- application


def test_application_name_is_the_app_id_unless_group_id_is_set(config: Path) -> None:
    named = load(config, {"application": {"name": "shop-analytics", "environment": "staging"}})
    assert named.app_id == "shop-analytics"
    assert create_app(named).conf.id == "shop-analytics"
    assert named.application.environment == "staging"

    grouped = load(
        config, {"application": {"name": "shop"}, "sources": {"kafka": {"group_id": "g-7"}}}
    )
    assert grouped.app_id == "g-7"
    assert create_app(grouped).conf.id == "g-7"


# --------------------------------------------------------------------------- sources.http


@pytest.mark.parametrize("path", ["/events", "/v1/track", "/collect.json"])
def test_the_ingest_path_takes_plain_paths(config: Path, path: str) -> None:
    assert load(config, {"sources": {"http": {"path": path}}}).sources.http.path == path


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("ingest", "must look like /ingest"),
        ("/ingest/", "must look like /ingest"),
        ("/", "must look like /ingest"),
        ("/in gest", "must look like /ingest"),
        ("/{user}", "must look like /ingest"),
        ("/api", "would shadow the endpoint /api"),
        ("/api/ingest", "would shadow the endpoint /api"),
        ("/health", "would shadow the endpoint /health"),
        ("/dashboard/in", "would shadow the endpoint /dashboard"),
        ("/router", "would shadow the endpoint /router"),
    ],
)
def test_an_ingest_path_that_cannot_work_is_refused(config: Path, path: str, problem: str) -> None:
    message = refused(config, {"sources": {"http": {"path": path}}})
    assert message.startswith("invalid configuration: sources.http.path: ")
    assert problem in message


def test_http_tls_needs_both_files_and_refuses_files_it_would_not_use(
    config: Path, tls: TlsFiles
) -> None:
    files = {"cert_file": str(tls.cert), "key_file": str(tls.key)}
    secured = load(config, {"sources": {"http": {"tls": {"enabled": True, **files}}}})
    assert secured.sources.http.scheme == "https"
    assert "sources.http.tls: enabled needs cert_file and key_file" in refused(
        config, {"sources": {"http": {"tls": {"enabled": True, "cert_file": str(tls.cert)}}}}
    )
    assert "are set but enabled is false" in refused(config, {"sources": {"http": {"tls": files}}})
    missing = refused(
        config,
        {"sources": {"http": {"tls": {**files, "enabled": True, "key_file": "/nope/key.pem"}}}},
    )
    assert "sources.http.tls.key_file: Path does not point to a file" in missing


def test_the_web_server_gets_the_tls_context_and_plain_http_none(tls: TlsFiles) -> None:
    plain = HttpSourceSettings()
    assert server_context(plain) is None and own_server_client_context(plain) is None
    assert create_app(Settings()).conf.web_ssl_context is None

    secured = HttpSourceSettings.model_validate(
        {"tls": {"enabled": True, "cert_file": tls.cert, "key_file": tls.key}}
    )
    context = server_context(secured)
    assert isinstance(context, ssl.SSLContext)
    app = create_app(Settings(sources={"http": secured.model_dump()}))
    assert isinstance(app.conf.web_ssl_context, ssl.SSLContext)


def test_a_key_that_does_not_match_the_certificate_is_named(tmp_path: Path) -> None:
    one = make_tls_files(tmp_path / "one")
    other = make_tls_files(tmp_path / "other")
    mismatched = HttpSourceSettings.model_validate(
        {"tls": {"enabled": True, "cert_file": one.cert, "key_file": other.key}}
    )
    with pytest.raises(ConfigurationError, match=r"sources\.http\.tls\.cert_file .*key_file"):
        server_context(mismatched)


async def test_the_worker_reaches_its_own_https_server_and_no_other(
    tls: TlsFiles, tmp_path: Path
) -> None:
    """The dashboard feed calls the worker's own API on 127.0.0.1, a name its certificate (for
    worker.example) does not carry: its client context trusts exactly that certificate."""
    own = HttpSourceSettings.model_validate(
        {"tls": {"enabled": True, "cert_file": tls.cert, "key_file": tls.key}}
    )
    stranger = make_tls_files(tmp_path / "stranger", "worker.example")
    other = HttpSourceSettings.model_validate(
        {"tls": {"enabled": True, "cert_file": stranger.cert, "key_file": stranger.key}}
    )

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    server = web.Application()
    server.router.add_get("/hello", hello)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(own))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def get(context: ssl.SSLContext | None) -> Any:
        connector = aiohttp.TCPConnector(ssl=context or True)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(f"https://127.0.0.1:{port}/hello") as response,
        ):
            return await response.json()

    try:
        assert await get(own_server_client_context(own)) == {"ok": True}
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get(own_server_client_context(other))  # same name, another key
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get(None)  # the system's CAs do not know the test CA
    finally:
        await runner.cleanup()
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- sinks.timescaledb


def test_database_tls_settings_become_libpq_parameters(config: Path, tls: TlsFiles) -> None:
    base = "postgresql://analytics:pw@db.example:5432/analytics?application_name=x"
    settings = load(
        config,
        {
            "sinks": {
                "timescaledb": {
                    "connection_string": base,
                    "tls": {
                        "mode": "verify-full",
                        "ca_file": str(tls.ca),
                        "cert_file": str(tls.cert),
                        "key_file": str(tls.key),
                    },
                }
            }
        },
    )
    params = conninfo_to_dict(settings.database_url)
    assert params == {
        "user": "analytics",
        "password": "pw",
        "host": "db.example",
        "port": "5432",
        "dbname": "analytics",
        "application_name": "x",
        "sslmode": "verify-full",
        "sslrootcert": str(tls.ca),
        "sslcert": str(tls.cert),
        "sslkey": str(tls.key),
    }
    untouched = load(config, {"sinks": {"timescaledb": {"connection_string": base}}})
    assert untouched.database_url == base


def test_database_tls_set_twice_or_half_is_refused(config: Path, tls: TlsFiles) -> None:
    twice = refused(
        config,
        {
            "sinks": {
                "timescaledb": {
                    "connection_string": "postgresql://a@h/d?sslmode=require",
                    "tls": {"mode": "verify-full"},
                }
            }
        },
    )
    assert "sinks.timescaledb: connection_string already sets sslmode" in twice
    assert "go together" in refused(
        config, {"sinks": {"timescaledb": {"tls": {"key_file": str(tls.key)}}}}
    )
    assert "sinks.timescaledb.tls.mode: Input should be" in refused(
        config, {"sinks": {"timescaledb": {"tls": {"mode": "on"}}}}
    )


def test_database_url_from_the_environment_gets_the_tls_parameters(
    config: Path, monkeypatch: pytest.MonkeyPatch, tls: TlsFiles
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://a@h:5/d")
    monkeypatch.setenv("ANALYTICS__SINKS__TIMESCALEDB__TLS__MODE", "verify-ca")
    monkeypatch.setenv("ANALYTICS__SINKS__TIMESCALEDB__TLS__CA_FILE", str(tls.ca))
    params = conninfo_to_dict(load_settings().database_url)
    assert (params["host"], params["sslmode"], params["sslrootcert"]) == (
        "h",
        "verify-ca",
        str(tls.ca),
    )


# --------------------------------------------------------------------------- funnels


def test_funnels_come_from_the_file_or_the_environment(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = load(config, yaml.safe_load(DEFAULT_CONFIG_FILE.read_text()))
    stages = (Stage("page_view", "/products"), Stage("add_to_cart"), Stage("checkout"))
    assert shipped.funnels == (FunnelSpec("checkout", (*stages, Stage("purchase")), 86_400_000),)
    assert load(config, {}).funnels == ()
    monkeypatch.setenv(
        "ANALYTICS__FUNNELS",
        '[{"name": "signup", "window": "30m", "stages": ["page_view:/signup", "signup"]}]',
    )
    signup = (Stage("page_view", "/signup"), Stage("signup"))
    assert load(config, {}).funnels == (FunnelSpec("signup", signup, 1_800_000),)


@pytest.mark.parametrize(
    ("funnels", "problem"),
    [
        ({"name": "f"}, "funnels: must be a list of funnels, got dict"),
        ([{"name": "f", "stages": ["a", "Add"]}], "funnels[0].stages[1]: action must match"),
        ([{"name": "f", "stages": ["a", "b"], "window": "1w"}], "funnels[0].window: '1w' is not"),
        ([{"name": "f", "stages": ["a", "b"]}, {"name": "f", "stages": ["a", "b"]}], "funnels[1]"),
    ],
)
def test_a_funnel_that_cannot_work_stops_the_start_naming_it(
    config: Path, funnels: Any, problem: str
) -> None:
    assert refused(config, {"funnels": funnels}).startswith(f"invalid configuration: {problem}")


# --------------------------------------------------------------------------- secrets


def test_secrets_never_appear_in_errors(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANALYTICS__SOURCES__KAFKA__SASL__PASSWORD", "hunter2-secret")
    message = refused(config, {"sources": {"kafka": {"sasl": {"username": "u"}}}})
    assert "sources.kafka: sasl is set but security_protocol PLAINTEXT" in message
    assert "hunter2" not in message
    monkeypatch.setenv("ANALYTICS__SOURCES__KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    settings = load_settings()
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())


# --------------------------------------------------------------------------- access, roles


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"access": {"ingest_keys": {"shop": "short"}}}, "the key 'shop' is shorter than 16"),
        ({"access": {"ingest_keys": {"Shop Key": "k" * 16}}}, "key name 'Shop Key'"),
        ({"access": {"ingest_rate_limit": "5/second"}}, "no ingest_keys: limits are per key"),
        (
            {"access": {"ingest_keys": {"shop": {"key": "k" * 16, "rate_limit": "lots"}}}},
            "'lots' is not a rate limit",
        ),
        (
            {"access": {"ingest_keys": {"shop": "k" * 16}, "read_token": "k" * 16}},
            "must be different",
        ),
        ({"access": {"read_token": "tiny"}}, "the token is shorter than 16"),
        ({"access": {"cors_origins": ["https://shop.example/page"]}}, "without a path"),
        ({"sinks": {"timescaledb": {"writer": {"user": "Writer"}}}}, "user 'Writer'"),
        (
            {"sinks": {"timescaledb": {"writer": {"user": "analytics"}}}},
            "'analytics' owns the tables",
        ),
        (
            {"sinks": {"timescaledb": {"writer": {"user": "w"}, "reader": {"user": "w"}}}},
            "must be different roles",
        ),
    ],
)
def test_access_and_role_settings_that_cannot_work_are_refused(
    config: Path, document: dict[str, Any], problem: str
) -> None:
    assert problem in refused(config, document)


def test_ingest_keys_come_from_the_file_or_the_environment_and_never_show(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANALYTICS__ACCESS__INGEST_KEYS__APP", "env-key-0123456789")
    settings = load(
        config,
        {
            "access": {
                "ingest_keys": {"shop": {"key": "file-key-0123456789", "rate_limit": "9/second"}},
                "ingest_rate_limit": "100/minute",
            }
        },
    )
    keys = settings.access.ingest_keys
    assert keys["app"].key.get_secret_value() == "env-key-0123456789"
    assert keys["shop"].rate_limit == "9/second"
    assert "0123456789" not in repr(settings)


def test_writer_and_reader_log_in_to_the_same_database_as_themselves(config: Path) -> None:
    settings = load(
        config,
        {
            "sinks": {
                "timescaledb": {
                    "connection_string": "postgresql://owner:pw@db:5433/analytics?sslmode=require",
                    "writer": {"user": "analytics_writer", "password": "p@ss/word"},
                    "reader": {"user": "analytics_reader"},
                }
            }
        },
    )
    database = settings.sinks.timescaledb
    assert database.writer_url == (
        "postgresql://analytics_writer:p%40ss%2Fword@db:5433/analytics?sslmode=require"
    )
    assert database.reader_url == "postgresql://analytics_reader@db:5433/analytics?sslmode=require"
    assert load(config, {}).sinks.timescaledb.writer_url == load(config, {}).database_url


def test_alert_rules_are_read_and_checked(config: Path) -> None:
    rule = {"name": "bounce", "metric": "bounce_rate_percent", "comparator": ">", "threshold": 70}
    settings = load(config, {"alerts": {"rules": [{**rule, "for": 3}]}})
    (read,) = settings.alerts.alert_rules()
    assert (read.name, read.metric, read.comparator, read.threshold, read.windows) == (
        "bounce",
        "bounce_rate_percent",
        ">",
        70,
        3,
    )
    assert load(config, {"alerts": {"rules": [rule]}}).alerts.alert_rules()[0].windows == 1
    assert "comparator" in refused(config, {"alerts": {"rules": [{**rule, "comparator": "=="}]}})
    too_few = refused(config, {"alerts": {"rules": [{**rule, "for": 0}]}})
    assert "alerts.rules.0.for: Input should be greater than or equal to 1" in too_few
    assert "unknown metric 'bounce'" in refused(
        config, {"alerts": {"rules": [{**rule, "metric": "bounce"}]}}
    )
    assert "more than once" in refused(config, {"alerts": {"rules": [rule, rule]}})
    longer = refused(
        config, {"engine": {"history_retention": "1h"}, "alerts": {"rules": [{**rule, "for": 61}]}}
    )
    assert "longer than engine.history_retention" in longer
    custom = {**rule, "metric": "custom.signups"}
    signups = [{"name": "signups", "count": {"action": "signup"}}]
    with_kpi = load(config, {"custom_kpis": signups, "alerts": {"rules": [custom]}})
    assert with_kpi.alerts.rules[0].metric == "custom.signups"
    assert "no custom KPI 'signups' is configured" in refused(
        config, {"custom_kpis": [], "alerts": {"rules": [custom]}}
    )
    hook = {"url": "not a url"}
    assert "alerts.webhook.url" in refused(config, {"alerts": {"webhook": hook}})
