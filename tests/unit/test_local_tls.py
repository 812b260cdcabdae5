"""The local stack's TLS material (careledger.tls, ADR 0032): a server certificate is
kept while good and made again when it is about to expire, was signed by another CA,
lacks a name the server answers to, or is unreadable; private keys are owner-only; a
client that trusts the CA verifies the server by name, and one that does not, fails."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from careledger import tls


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_a_good_certificate_is_kept_and_its_key_is_owner_only(tmp_path: Path) -> None:
    first = tls.server_cert(tmp_path, "ch")
    again = tls.server_cert(tmp_path, "ch")
    assert _load(first.cert).serial_number == _load(again.cert).serial_number
    for secret in (first.key, tmp_path / "ca.key"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700
    names = _load(first.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert {str(v) for v in names.value.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "::1",
    }
    assert names.value.get_values_for_type(x509.DNSName) == ["localhost"]


def test_a_certificate_near_its_end_is_made_again(tmp_path: Path) -> None:
    first = tls.server_cert(tmp_path, "ch")
    ca_cert = _load(tmp_path / "ca.pem")
    ca_key = serialization.load_pem_private_key((tmp_path / "ca.key").read_bytes(), None)
    short, _key = tls.issue(
        (ca_cert, ca_key),  # type: ignore[arg-type]
        "careledger ch",
        ExtendedKeyUsageOID.SERVER_AUTH,
        tls.LOOPBACK_NAMES,
        tls.RENEW_BEFORE - dt.timedelta(days=1),
    )
    first.cert.write_bytes(short.public_bytes(serialization.Encoding.PEM))
    renewed = tls.server_cert(tmp_path, "ch")
    assert _load(renewed.cert).serial_number != short.serial_number
    assert _load(renewed.cert).not_valid_after_utc > dt.datetime.now(dt.UTC) + tls.RENEW_BEFORE


def test_a_certificate_of_another_ca_is_made_again(tmp_path: Path) -> None:
    first = tls.server_cert(tmp_path, "ch")
    stranger, _key = tls.issue(
        tls.new_ca("someone else"), "careledger ch", ExtendedKeyUsageOID.SERVER_AUTH
    )
    first.cert.write_bytes(stranger.public_bytes(serialization.Encoding.PEM))
    renewed = tls.server_cert(tmp_path, "ch")
    _load(renewed.cert).verify_directly_issued_by(_load(tmp_path / "ca.pem"))


@pytest.mark.parametrize("damage", [b"", b"not a certificate", b"-----BEGIN CERTIFICATE-----\n"])
def test_an_unreadable_certificate_or_ca_is_made_again(tmp_path: Path, damage: bytes) -> None:
    first = tls.server_cert(tmp_path, "ch")
    first.cert.write_bytes(damage)
    _load(tls.server_cert(tmp_path, "ch").cert)
    (tmp_path / "ca.pem").write_bytes(damage)
    renewed = tls.server_cert(tmp_path, "ch")
    _load(renewed.cert).verify_directly_issued_by(_load(tmp_path / "ca.pem"))


def test_a_new_name_makes_a_new_certificate(tmp_path: Path) -> None:
    tls.server_cert(tmp_path, "ch")
    wider = tls.server_cert(tmp_path, "ch", ("127.0.0.1", "ch-1.hospital.example"))
    names = _load(wider.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "ch-1.hospital.example" in names.value.get_values_for_type(x509.DNSName)


def _handshake(server: tls.ServerCert, trust: Path, host: str) -> None:
    srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv_ctx.load_cert_chain(server.cert, server.key)
    cli_ctx = ssl.create_default_context(cafile=str(trust))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with srv_ctx.wrap_socket(conn, server_side=True) as s:
                s.recv(1)
        except (ssl.SSLError, OSError):
            pass
        finally:
            listener.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            cli_ctx.wrap_socket(raw, server_hostname=host) as c,
        ):
            c.sendall(b"x")
    finally:
        t.join(5)


def test_a_client_trusting_the_ca_verifies_the_server_by_name(tmp_path: Path) -> None:
    server = tls.server_cert(tmp_path / "stack", "ch")
    _handshake(server, server.ca, "127.0.0.1")
    _handshake(server, server.ca, "localhost")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, server.ca, "ch.elsewhere.example")  # not a name it answers to
    other = tls.server_cert(tmp_path / "other", "ch")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, other.ca, "127.0.0.1")  # a CA the client does not trust


def test_the_tls_certs_command_names_the_hosts_and_refuses_bad_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from commands.cli import main

    hosts = "clickhouse-1,replica-clickhouse,127.0.0.1"
    assert main(["tls-certs", "--dir", str(tmp_path), "--name", "ch", "--hosts", hosts]) == 0
    assert "private key" in capsys.readouterr().out
    names = _load(tmp_path / "ch.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert set(names.value.get_values_for_type(x509.DNSName)) == {
        "clickhouse-1",
        "replica-clickhouse",
    }
    for bad in (
        ["--name", "ch", "--hosts", "bad host"],
        ["--name", "ch", "--hosts", ","],
        ["--name", "../escape", "--hosts", "a"],
        ["--name", "ch", "--hosts=-x.example"],
        ["--name", "ch", "--hosts", "x_y.example"],
    ):
        assert main(["tls-certs", "--dir", str(tmp_path), *bad]) == 2, bad
    assert not (tmp_path.parent / "escape.pem").exists()


def _usages(path: Path) -> set[x509.ObjectIdentifier]:
    eku = _load(path).extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    return set(eku.value)


def _mutual(server: tls.ServerCert, client: tls.ServerCert) -> BaseException | None:
    """A TLS handshake where the server asks for and verifies the client's certificate;
    what the server refused it with, or None."""
    srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv_ctx.load_cert_chain(server.cert, server.key)
    srv_ctx.load_verify_locations(server.ca)
    srv_ctx.verify_mode = ssl.CERT_REQUIRED
    cli_ctx = ssl.create_default_context(cafile=str(server.ca))
    cli_ctx.load_cert_chain(client.cert, client.key)
    listener = socket.create_server(("127.0.0.1", 0))
    refused: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with srv_ctx.wrap_socket(conn, server_side=True) as s:
                s.sendall(b"y")
        except (ssl.SSLError, OSError) as exc:
            refused.append(exc)
        finally:
            listener.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with (
            socket.create_connection(listener.getsockname()[:2]) as raw,
            cli_ctx.wrap_socket(raw, server_hostname="localhost") as c,
        ):
            c.recv(1)
    except (ssl.SSLError, OSError):
        pass  # the server's refusal, seen from the client
    finally:
        t.join(5)
    return refused[0] if refused else None


def test_a_member_certificate_serves_and_dials_its_peers(tmp_path: Path) -> None:
    broker = tls.member_cert(tmp_path, "kafka-1")
    assert _usages(broker.cert) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    controller = tls.member_cert(tmp_path, "kafka-2")
    assert _mutual(controller, broker) is None  # a broker dials its controller
    server_only = tls.server_cert(tmp_path, "ch")
    refused = _mutual(controller, server_only)  # not a client certificate: refused
    assert isinstance(refused, ssl.SSLCertVerificationError)
    assert "certificate purpose" in str(refused)


def test_a_server_only_certificate_is_made_again_as_a_member(tmp_path: Path) -> None:
    server = tls.server_cert(tmp_path, "kafka-1")
    assert _usages(server.cert) == {ExtendedKeyUsageOID.SERVER_AUTH}
    before = _load(server.cert).serial_number
    member = tls.member_cert(tmp_path, "kafka-1")
    serial = _load(member.cert).serial_number
    assert serial != before
    assert ExtendedKeyUsageOID.CLIENT_AUTH in _usages(member.cert)
    assert _load(tls.member_cert(tmp_path, "kafka-1").cert).serial_number == serial  # kept
    # a server certificate is not asked to be a client one: the member's is kept too
    assert _load(tls.server_cert(tmp_path, "kafka-1").cert).serial_number == serial


def test_issue_takes_one_usage_or_several(tmp_path: Path) -> None:
    ca = tls.new_ca("test CA")
    one, _ = tls.issue(ca, "a", ExtendedKeyUsageOID.CLIENT_AUTH)
    both, _ = tls.issue(ca, "b", tls.MEMBER_USAGES)
    assert list(one.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert list(both.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == list(
        tls.MEMBER_USAGES
    )
    with pytest.raises(ValueError):
        tls.issue(ca, "c", [])


def test_the_pem_keystore_is_owner_only_and_loads_as_a_key_and_certificate(
    tmp_path: Path,
) -> None:
    member = tls.member_cert(tmp_path / "tls", "kafka-1")
    stale = tmp_path / "tls" / "kafka-1.keystore.pem"
    stale.write_bytes(b"old")
    stale.chmod(0o644)
    keystore = tls.write_pem_keystore(member)
    assert keystore == stale
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    data = keystore.read_bytes()
    assert data == tls.pem_keystore(member)
    assert data.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert data.index(b"-----BEGIN CERTIFICATE-----") > data.index(b"-----END PRIVATE KEY-----")
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(keystore)  # key and cert match
    # a keystore is what a server presents: a client trusting the CA verifies it
    as_server = tls.ServerCert(member.ca, keystore, keystore)
    _handshake(as_server, member.ca, "localhost")
    other = tls.member_cert(tmp_path / "tls", "kafka-2")
    mismatched = tls.pem_keystore(tls.ServerCert(member.ca, other.cert, member.key))
    bad = tmp_path / "bad.pem"
    bad.write_bytes(mismatched)
    with pytest.raises(ssl.SSLError):
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(bad)


def test_the_tls_certs_command_makes_a_member_certificate_and_its_keystore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docker-compose.yml's Kafka nodes: server and client (controllers authenticate
    each other), the key in the PEM keystore Kafka reads, owner-only."""
    from commands.cli import main

    argv = ["tls-certs", "--dir", str(tmp_path), "--name", "kafka", "--hosts", "kafka-1"]
    assert main(argv) == 0
    assert _usages(tmp_path / "kafka.pem") == {ExtendedKeyUsageOID.SERVER_AUTH}
    assert not (tmp_path / "kafka.keystore.pem").exists()
    assert main([*argv, "--member", "--keystore"]) == 0  # remade: it lacked clientAuth
    assert "keystore" in capsys.readouterr().out
    assert _usages(tmp_path / "kafka.pem") == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    keystore = (tmp_path / "kafka.keystore.pem").read_bytes()
    assert keystore.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / "kafka.pem").read_bytes().strip() in keystore
    assert stat.S_IMODE((tmp_path / "kafka.keystore.pem").stat().st_mode) == 0o600


def test_rewriting_a_keystore_never_shows_a_reader_a_truncated_file(tmp_path: Path) -> None:
    """The local cluster's Kafka nodes share one member keystore, rewritten as each
    node's configuration is written: a node starting meanwhile read it truncated ("No
    matching PRIVATE KEY entries", a CI failure). The rewrite is a rename: a reader that
    opened the file keeps reading the complete old bytes, and no temporary file stays."""
    member = tls.member_cert(tmp_path / "tls", "kafka")
    keystore = tls.write_pem_keystore(member)
    expected = keystore.read_bytes()
    with keystore.open("rb") as reader:  # a node that opened the file before the rewrite
        before = os.stat(keystore).st_ino
        tls.write_pem_keystore(member)
        assert os.stat(keystore).st_ino != before  # replaced, not truncated in place
        assert reader.read() == expected
    assert keystore.read_bytes() == expected
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    assert sorted(p.name for p in keystore.parent.iterdir() if p.name.startswith(".")) == []
