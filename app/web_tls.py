"""HTTPS for the worker's web server (``sources.http.tls``): the server's TLS context, and the
context the worker itself uses to call its own API (the dashboard feed does)."""

from __future__ import annotations

import ssl

from app.settings import ConfigurationError, HttpSourceSettings


def server_context(http: HttpSourceSettings) -> ssl.SSLContext | None:
    """The web server's context (Faust's ``web_ssl_context``); None serves plain HTTP."""
    tls = http.tls
    if not tls.enabled or tls.cert_file is None or tls.key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except ssl.SSLError as exc:
        raise ConfigurationError(
            f"sources.http.tls.cert_file {tls.cert_file} / key_file {tls.key_file}: {exc}"
        ) from None
    return context


def own_server_client_context(http: HttpSourceSettings) -> ssl.SSLContext | None:
    """A client context that trusts exactly the server's own certificate, whatever host name
    it was issued for: the worker reaches itself on a loopback or bind address. None for HTTP."""
    tls = http.tls
    if not tls.enabled or tls.cert_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.cert_file))
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself is the anchor
    return context
