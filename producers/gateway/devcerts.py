"""Throw-away TLS material for a local gateway: a CA, a server and a client certificate.

For development and the gateway benchmark only (``careledger benchmark-gateway``): the
keys are written unencrypted next to the certificates. Production certificates come
from the hospital's PKI. The certificates are made by ``careledger.tls``, as the local
stack's are.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from careledger.tls import issue, key_pem, new_ca

__all__ = ["DevCerts", "write_dev_certs"]

_VALIDITY = dt.timedelta(days=30)


@dataclass(frozen=True)
class DevCerts:
    ca: Path  # CA certificate (PEM): trust it on clients, gateway_tls_client_ca
    server: Path  # server key + certificate (PEM): gateway_tls_cert and gateway_tls_key
    client: Path  # client key + certificate (PEM)
    client_sha256: str  # SHA-256 of the client certificate (DER), for senders.toml


def write_dev_certs(directory: Path, client_name: str = "careledger-dev-client") -> DevCerts:
    directory.mkdir(parents=True, exist_ok=True)
    ca = new_ca("careledger development CA", _VALIDITY)
    server_cert, server_key = issue(
        ca, "localhost", ExtendedKeyUsageOID.SERVER_AUTH, ("localhost", "127.0.0.1"), _VALIDITY
    )
    client_cert, client_key = issue(ca, client_name, ExtendedKeyUsageOID.CLIENT_AUTH, (), _VALIDITY)
    pem = serialization.Encoding.PEM
    paths = DevCerts(
        ca=directory / "ca.pem",
        server=directory / "server.pem",
        client=directory / "client.pem",
        client_sha256=hashlib.sha256(
            client_cert.public_bytes(serialization.Encoding.DER)
        ).hexdigest(),
    )
    paths.ca.write_bytes(ca[0].public_bytes(pem))
    for path, data in (
        (paths.server, key_pem(server_key) + server_cert.public_bytes(pem)),
        (paths.client, key_pem(client_key) + client_cert.public_bytes(pem)),
    ):
        path.write_bytes(data)
        path.chmod(0o600)
    return paths
