"""How every Kafka client of the project authenticates: one mapping of ``sources.kafka``.

Faust's own clients take ``faust_credentials``; the aiokafka consumers, producers and admin
clients the project creates itself take ``aiokafka_kwargs`` (Faust's own translation of the
same credentials, so both kinds of client always agree); a confluent-kafka (librdkafka) client
takes ``librdkafka_config``. Secrets stay in ``SecretStr`` until a client needs them.
"""

from __future__ import annotations

import ssl
from typing import Any

import faust

from app.faust_compat import aiokafka_auth
from app.settings import ConfigurationError, KafkaSourceSettings, Settings

__all__ = [
    "aiokafka_kwargs",
    "aiokafka_security",
    "faust_credentials",
    "librdkafka_config",
    "ssl_context",
]


def ssl_context(kafka: KafkaSourceSettings) -> ssl.SSLContext:
    """A client context that checks the broker certificates (``tls.ca_file``, else the system's
    CAs) and their host names, and presents ``tls.cert_file`` when set."""
    tls = kafka.tls
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None
        )
    except ssl.SSLError as exc:
        raise ConfigurationError(f"sources.kafka.tls.ca_file {tls.ca_file}: {exc}") from None
    if tls.cert_file is not None and tls.key_file is not None:
        password = tls.key_password.get_secret_value() if tls.key_password else None
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file), password)
        except ssl.SSLError as exc:
            raise ConfigurationError(
                f"sources.kafka.tls.cert_file {tls.cert_file} / key_file {tls.key_file}: {exc}"
            ) from None
    return context


def faust_credentials(settings: Settings) -> faust.SSLCredentials | faust.SASLCredentials | None:
    """Faust's ``broker_credentials``; None for PLAINTEXT."""
    kafka = settings.sources.kafka
    protocol = kafka.security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(ssl_context(kafka))
    return faust.SASLCredentials(
        username=kafka.sasl.username,
        password=kafka.sasl.password.get_secret_value(),
        mechanism=kafka.sasl.mechanism,
        ssl_context=ssl_context(kafka) if protocol == "SASL_SSL" else None,
    )


def aiokafka_security(settings: Settings) -> dict[str, Any]:
    """The security options of an aiokafka client, derived as Faust derives its own:
    ``security_protocol``, and ``ssl_context`` and ``sasl_*`` where they apply."""
    return aiokafka_auth(faust_credentials(settings))


def aiokafka_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaConsumer, AIOKafkaProducer and AIOKafkaAdminClient:
    ``bootstrap_servers`` and the security options."""
    return {"bootstrap_servers": ",".join(settings.brokers), **aiokafka_security(settings)}


def librdkafka_config(settings: Settings) -> dict[str, str]:
    """librdkafka properties (confluent-kafka ``Producer``/``Consumer`` config) for the same
    cluster: ``bootstrap.servers``, ``security.protocol`` and the ``ssl.*``/``sasl.*`` that apply.

    librdkafka checks host names (``ssl.endpoint.identification.algorithm=https``, its default)
    and, without ``ssl.ca.location``, the system's CAs, like the Python clients."""
    kafka = settings.sources.kafka
    config = {
        "bootstrap.servers": ",".join(kafka.brokers),
        "security.protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        tls = kafka.tls
        files = {
            "ssl.ca.location": tls.ca_file,
            "ssl.certificate.location": tls.cert_file,
            "ssl.key.location": tls.key_file,
        }
        config.update({name: str(path) for name, path in files.items() if path is not None})
        if tls.key_password is not None:
            config["ssl.key.password"] = tls.key_password.get_secret_value()
    if kafka.security_protocol.startswith("SASL_"):
        config.update(
            {
                "sasl.mechanism": kafka.sasl.mechanism,
                "sasl.username": kafka.sasl.username,
                "sasl.password": kafka.sasl.password.get_secret_value(),
            }
        )
    return config
