"""sources.kafka security → Faust credentials, aiokafka options and librdkafka properties."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import faust
import pytest
from pydantic import ValidationError

from app.kafka_security import (
    aiokafka_kwargs,
    aiokafka_security,
    faust_credentials,
    librdkafka_config,
)
from app.settings import ConfigurationError, Settings
from tests.tls_files import TlsFiles, make_tls_files

BROKERS = ["kafka-1:9093", "kafka-2:9093"]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("kafka-tls"), "kafka-1")


def settings(**kafka: Any) -> Settings:
    return Settings(sources={"kafka": {"brokers": BROKERS, **kafka}})


def sasl(mechanism: str = "PLAIN") -> dict[str, str]:
    return {"mechanism": mechanism, "username": "analytics", "password": "s3cret-pw"}


def mutual(tls: TlsFiles) -> dict[str, str]:
    return {"ca_file": str(tls.ca), "cert_file": str(tls.cert), "key_file": str(tls.key)}


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    plain = settings()
    assert faust_credentials(plain) is None
    assert aiokafka_kwargs(plain) == {
        "bootstrap_servers": "kafka-1:9093,kafka-2:9093",
        "security_protocol": "PLAINTEXT",
    }
    assert librdkafka_config(plain) == {
        "bootstrap.servers": "kafka-1:9093,kafka-2:9093",
        "security.protocol": "PLAINTEXT",
    }


def test_ssl_with_a_client_certificate(tls: TlsFiles) -> None:
    secured = settings(security_protocol="SSL", tls=mutual(tls))
    credentials = faust_credentials(secured)
    assert isinstance(credentials, faust.SSLCredentials)
    context = credentials.context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()]  # the CA file, not an empty store

    options = aiokafka_kwargs(secured)
    assert options["security_protocol"] == "SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["bootstrap_servers"] == "kafka-1:9093,kafka-2:9093"
    assert "sasl_plain_password" not in options

    assert librdkafka_config(secured) == {
        "bootstrap.servers": "kafka-1:9093,kafka-2:9093",
        "security.protocol": "SSL",
        "ssl.ca.location": str(tls.ca),
        "ssl.certificate.location": str(tls.cert),
        "ssl.key.location": str(tls.key),
    }


def test_ssl_without_files_trusts_the_system_cas() -> None:
    secured = settings(security_protocol="SSL")
    credentials = faust_credentials(secured)
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.context.verify_mode == ssl.CERT_REQUIRED
    assert librdkafka_config(secured) == {
        "bootstrap.servers": "kafka-1:9093,kafka-2:9093",
        "security.protocol": "SSL",
    }


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext(mechanism: str) -> None:
    secured = settings(security_protocol="SASL_PLAINTEXT", sasl=sasl(mechanism))
    credentials = faust_credentials(secured)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.ssl_context is None
    assert aiokafka_security(secured) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "analytics",
        "sasl_plain_password": "s3cret-pw",
        "ssl_context": None,
    }
    assert librdkafka_config(secured) == {
        "bootstrap.servers": "kafka-1:9093,kafka-2:9093",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": "analytics",
        "sasl.password": "s3cret-pw",
    }


def test_sasl_ssl(tls: TlsFiles) -> None:
    secured = settings(
        security_protocol="SASL_SSL",
        sasl=sasl("SCRAM-SHA-512"),
        tls={"ca_file": str(tls.ca)},
    )
    credentials = faust_credentials(secured)
    assert isinstance(credentials, faust.SASLCredentials)
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    options = aiokafka_security(secured)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["ssl_context"].get_ca_certs() == credentials.ssl_context.get_ca_certs() != []
    assert librdkafka_config(secured) == {
        "bootstrap.servers": "kafka-1:9093,kafka-2:9093",
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(tls.ca),
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "analytics",
        "sasl.password": "s3cret-pw",
    }


def test_an_encrypted_client_key_is_opened_with_its_password(tmp_path: Path) -> None:
    import trustme
    from cryptography.hazmat.primitives import serialization

    ca = trustme.CA()
    leaf = ca.issue_cert("kafka-1")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"key-pw"),
    )
    (tmp_path / "key.pem").write_bytes(encrypted)
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    files = {"cert_file": str(tmp_path / "cert.pem"), "key_file": str(tmp_path / "key.pem")}

    right = settings(security_protocol="SSL", tls={**files, "key_password": "key-pw"})
    assert isinstance(faust_credentials(right), faust.SSLCredentials)
    assert librdkafka_config(right)["ssl.key.password"] == "key-pw"

    wrong = settings(security_protocol="SSL", tls={**files, "key_password": "nope"})
    with pytest.raises(ConfigurationError, match=r"sources\.kafka\.tls\.cert_file .* key_file"):
        faust_credentials(wrong)


def test_a_file_that_is_no_certificate_is_named(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    broken = settings(security_protocol="SSL", tls={"ca_file": str(bogus)})
    with pytest.raises(ConfigurationError, match=r"sources\.kafka\.tls\.ca_file .*ca\.pem"):
        aiokafka_kwargs(broken)


@pytest.mark.parametrize(
    ("kafka", "problem"),
    [
        ({"security_protocol": "SASL_SSL"}, "needs sasl.username and sasl.password"),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl": {"username": "a"}},
            "needs sasl.username and sasl.password",
        ),
        ({"sasl": {"username": "a", "password": "b"}}, "does not use SASL"),
        ({"security_protocol": "SSL", "sasl": sasl()}, "does not use SASL"),
        ({"security_protocol": "GSSAPI"}, "security_protocol"),
        (
            {"security_protocol": "SASL_SSL", "sasl": {**sasl(), "mechanism": "OAUTHBEARER"}},
            "mechanism",
        ),
    ],
)
def test_security_settings_that_would_do_nothing_or_cannot_work_are_refused(
    kafka: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        settings(**kafka)


def test_tls_files_without_a_tls_protocol_are_refused(tls: TlsFiles) -> None:
    with pytest.raises(ValidationError, match="PLAINTEXT does not use TLS"):
        settings(tls={"ca_file": str(tls.ca)})
    with pytest.raises(ValidationError, match="cert_file and key_file go together"):
        settings(security_protocol="SSL", tls={"cert_file": str(tls.cert)})
    with pytest.raises(ValidationError, match="ca_file"):
        settings(security_protocol="SSL", tls={"ca_file": "/nonexistent/ca.pem"})


def test_the_password_stays_out_of_reprs_and_errors() -> None:
    secured = settings(security_protocol="SASL_SSL", sasl=sasl())
    for text in (repr(secured), str(secured), repr(faust_credentials(secured))):
        assert "s3cret-pw" not in text
    assert "s3cret-pw" not in secured.model_dump_json()
