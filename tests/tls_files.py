"""Throw-away certificates for the TLS tests: a CA of their own (trustme) and a leaf it signs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA certificate, a leaf certificate (chain) and the leaf's private key."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path, *hosts: str, ca: trustme.CA | None = None) -> TlsFiles:
    """A leaf for ``hosts`` (names or IP addresses), signed by ``ca`` or by a new CA."""
    ca = ca or trustme.CA()
    leaf = ca.issue_cert(*(hosts or ("127.0.0.1", "localhost")))
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(files.ca))
    for index, blob in enumerate(leaf.cert_chain_pems):
        blob.write_to_path(str(files.cert), append=index > 0)
    leaf.private_key_pem.write_to_path(str(files.key))
    files.key.chmod(0o600)
    return files
