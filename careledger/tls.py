"""TLS material of the local stack: a CA made on its first start, and server
certificates it signs for the stack's members (ADR 0032).

Everything lives under ``<run_dir>/tls``: ``ca.pem`` (trust it on clients), ``ca.key``
and each member's ``<name>.key`` (mode 0600, owner only), ``<name>.pem``. A CA or
certificate is made once and kept; a server certificate is made again when it is
missing, expires within ``RENEW_BEFORE`` or was not signed by the current CA. A
*member* certificate (``member_cert``: a Kafka broker, which is also a TLS client of
its controllers) carries both the server and the client authentication usage, and is
made again when it lacks one of them. ``write_pem_keystore`` writes a member's key and
certificate as one owner-only file (Kafka's ``ssl.keystore.type=PEM``). A production
deployment brings certificates from the hospital's PKI instead (settings
``clickhouse_ca_file`` and the server's own configuration).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_FILE",
    "LOOPBACK_NAMES",
    "MEMBER_USAGES",
    "RENEW_BEFORE",
    "ServerCert",
    "issue",
    "key_pem",
    "local_ca_file",
    "member_cert",
    "new_ca",
    "pem_keystore",
    "server_cert",
    "write_pem_keystore",
]

#: a DNS name: dot-separated labels of letters, digits and inner hyphens
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")

CA_FILE = "ca.pem"
#: a server certificate closer than this to its end is made again
RENEW_BEFORE = dt.timedelta(days=30)
_CA_VALIDITY = dt.timedelta(days=3650)
_SERVER_VALIDITY = dt.timedelta(days=397)
#: the names a loopback member answers to
LOOPBACK_NAMES: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")
#: the usages of a member certificate: it answers as a server and dials as a client
MEMBER_USAGES: tuple[x509.ObjectIdentifier, ...] = (
    ExtendedKeyUsageOID.SERVER_AUTH,
    ExtendedKeyUsageOID.CLIENT_AUTH,
)


@dataclass(frozen=True)
class ServerCert:
    ca: Path  # the CA certificate (PEM) clients trust
    cert: Path  # the server's certificate (PEM)
    key: Path  # its private key (PEM, mode 0600)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "careledger"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write an owner-only file atomically: a reader (a Kafka node starting while the
    next node's configuration rewrites the shared keystore) sees the old bytes or the
    new ones, never a truncated file (seen: "No matching PRIVATE KEY entries")."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # whatever the umask, or an older file's mode
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def new_ca(
    common_name: str, validity: dt.timedelta = _CA_VALIDITY
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new self-signed CA (P-256) that may sign leaves only (``path_length=0``)."""
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    common_name: str,
    usage: x509.ObjectIdentifier | Sequence[x509.ObjectIdentifier],
    hosts: Sequence[str] = (),
    validity: dt.timedelta = _SERVER_VALIDITY,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate (P-256) signed by ``ca`` for ``usage`` (server or client
    authentication, or several of them), naming ``hosts`` (IP addresses or DNS names)
    when given."""
    usages = [usage] if isinstance(usage, x509.ObjectIdentifier) else list(usage)
    if not usages:
        raise ValueError("a certificate needs at least one extended key usage")
    ca_cert, ca_key = ca
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if hosts:
        alt: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM (write it owner-only)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_FILE, directory / "ca.key"
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError):
            pass  # unreadable: a new CA (its servers' certificates are made again)
        else:
            if isinstance(key, ec.EllipticCurvePrivateKey):
                return cert, key
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    cert, key = new_ca("careledger local CA")
    _write_private(key_path, key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def local_ca_file(directory: Path) -> Path:
    """The local CA's certificate, made (with its key) on first use."""
    _ca(directory)
    return directory / CA_FILE


def _current(
    cert_path: Path,
    ca: x509.Certificate,
    hosts: Sequence[str],
    usages: Sequence[x509.ObjectIdentifier] = (),
) -> bool:
    """Whether the certificate at ``cert_path`` may be kept: signed by ``ca``, naming
    every one of ``hosts``, carrying every one of ``usages`` and far from its end."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if usages:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            if not set(usages) <= set(eku):
                return False
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    have = {str(n) for n in names.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in names.get_values_for_type(x509.IPAddress)
    }
    wanted = {str(ipaddress.ip_address(h)) if _is_ip(h) else h for h in hosts}
    return wanted <= have and cert.not_valid_after_utc - RENEW_BEFORE > dt.datetime.now(dt.UTC)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _leaf(
    directory: Path,
    name: str,
    hosts: Sequence[str],
    usages: Sequence[x509.ObjectIdentifier],
    renew_without: Sequence[x509.ObjectIdentifier],
) -> ServerCert:
    ca_cert, ca_key = _ca(directory)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    if key_path.exists() and _current(cert_path, ca_cert, hosts, renew_without):
        return ServerCert(directory / CA_FILE, cert_path, key_path)
    cert, key = issue((ca_cert, ca_key), f"careledger {name}", usages, hosts)
    _write_private(key_path, key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ServerCert(directory / CA_FILE, cert_path, key_path)


def server_cert(directory: Path, name: str, hosts: Sequence[str] = LOOPBACK_NAMES) -> ServerCert:
    """``<name>.pem`` and ``<name>.key`` for a server answering to ``hosts``, signed by
    the local CA (both made when missing, stale or signed by another CA)."""
    return _leaf(directory, name, hosts, (ExtendedKeyUsageOID.SERVER_AUTH,), ())


def member_cert(directory: Path, name: str, hosts: Sequence[str] = LOOPBACK_NAMES) -> ServerCert:
    """Like :func:`server_cert`, for a member that is also a TLS client of its peers (a
    Kafka broker dials its controllers with this certificate): server and client
    authentication, and made again when an existing certificate lacks either."""
    return _leaf(directory, name, hosts, MEMBER_USAGES, MEMBER_USAGES)


def pem_keystore(cert: ServerCert) -> bytes:
    """``cert``'s private key (PKCS#8 PEM) followed by its certificate (PEM): the one
    file Kafka's ``ssl.keystore.type=PEM`` reads. Secret: write it owner-only
    (:func:`write_pem_keystore`)."""
    key = cert.key.read_bytes()
    certificate = cert.cert.read_bytes()
    return key.rstrip(b"\n") + b"\n" + certificate.rstrip(b"\n") + b"\n"


def write_pem_keystore(cert: ServerCert, path: Path | None = None) -> Path:
    """Write :func:`pem_keystore` of ``cert`` to ``path`` (default: beside the key,
    ``<name>.keystore.pem``), mode 0600 whatever was there; returns the path."""
    target = path if path is not None else cert.key.with_name(f"{cert.key.stem}.keystore.pem")
    _write_private(target, pem_keystore(cert))
    return target


def configure_tls_certs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        required=True,
        help="where the CA is kept (ca.pem, ca.key: made when missing) and the server's "
        "certificate written (<name>.pem, <name>.key, mode 600)",
    )
    parser.add_argument("--name", required=True, help="the server certificate's file name")
    parser.add_argument(
        "--hosts",
        required=True,
        help="comma-separated DNS names and IP addresses the server answers to",
    )
    parser.add_argument(
        "--member",
        action="store_true",
        help="a cluster member's certificate: also a TLS client of its peers (Kafka brokers "
        "dialling their controllers)",
    )
    parser.add_argument(
        "--keystore",
        action="store_true",
        help="also write <name>.keystore.pem (key and certificate in one file, mode 600: "
        "Kafka's ssl.keystore.type=PEM)",
    )


def command_tls_certs(args: argparse.Namespace, settings: Any) -> int:
    """``careledger tls-certs``: a CA and a server certificate for named hosts, made
    once and again when stale (docker-compose.yml's ``certs`` service; ADR 0032)."""
    hosts = tuple(h.strip() for h in str(args.hosts).split(",") if h.strip())
    bad = [h for h in hosts if not (_is_ip(h) or _HOST.fullmatch(h))]
    if not hosts or bad:
        print(f"careledger tls-certs: not a DNS name or IP address: {bad or args.hosts!r}")
        return 2
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(args.name)):
        print(f"careledger tls-certs: --name {args.name!r} is not a plain file name")
        return 2
    try:
        make = member_cert if getattr(args, "member", False) else server_cert
        cert = make(Path(args.dir), str(args.name), hosts)
        keystore = write_pem_keystore(cert) if getattr(args, "keystore", False) else None
    except OSError as exc:
        print(f"careledger tls-certs: cannot write {args.dir}: {exc.strerror}")
        return 2
    print(f"CA certificate: {cert.ca} (trust it on clients)")
    print(f"certificate: {cert.cert} for {', '.join(hosts)}")
    print(f"private key: {cert.key} (mode 600)")
    if keystore is not None:
        print(f"keystore: {keystore} (mode 600)")
    return 0
