"""docker-compose.yml's ZooKeeper, run: mutual TLS only (issue 12 point 3, ADR 0032).

No Docker engine runs here, so the test runs what the compose file would: the certs
service's own ``careledger tls-certs`` lines (its volumes mapped to a temporary
directory), deploy/compose/zookeeper/zoo.cfg (paths and port mapped) on the project's
pinned ZooKeeper jars, and the zookeeper service's healthcheck command. The attacks:
a plaintext client, a TLS client without a certificate and one with a certificate of
another CA get nothing; the ClickHouse replicas' certificate (what they present under
``<secure>``) is served, and the server's certificate holds for the name they dial.

ClickHouse's side (``<secure>1</secure>``) needs a current ClickHouse: 18.16, the one
installed here, has no TLS to ZooKeeper (the local cluster's stays plaintext on
loopback); tests/unit/test_compose_zookeeper.py checks that side of the file.
"""

from __future__ import annotations

import shlex
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from careledger.stack.kafka_server import _java
from careledger.stack.zookeeper_server import zookeeper_lib_dir
from careledger.tls import member_cert
from tests.integration.zookeeper_support import compose_zookeeper

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with compose_zookeeper(tmp_path_factory.mktemp("compose-zookeeper")) as running:
        yield running


def _ask(port: int, word: bytes, context: ssl.SSLContext | None, name: str = "zookeeper") -> bytes:
    """Send a four-letter word; what came back (b"" if the server refused us)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        sock: socket.socket = raw
        if context is not None:
            sock = context.wrap_socket(raw, server_hostname=name)
        sock.sendall(word)
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except (ssl.SSLError, ConnectionResetError, TimeoutError):
            pass
        return answer


def _client(home: Path, cert: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(home / "ca" / "ca.pem"))
    if cert is not None:
        context.load_cert_chain(home / "ca" / f"{cert}.pem", home / "ca" / f"{cert}.key")
    return context


def test_the_replicas_certificate_is_served_over_tls(zookeeper: dict[str, Any]) -> None:
    home, port = zookeeper["home"], zookeeper["port"]
    # what a ClickHouse replica presents (tls.xml's client side), checking the server's
    # certificate for the name it dials (replication.xml's <host>)
    answer = _ask(port, b"srvr", _client(home, "clickhouse"))
    assert b"Mode: standalone" in answer, answer


def test_a_plaintext_client_gets_nothing(zookeeper: dict[str, Any]) -> None:
    answer = _ask(zookeeper["port"], b"srvr", None)
    assert b"Mode" not in answer and b"Zookeeper version" not in answer, answer


def test_a_tls_client_without_a_certificate_is_refused(zookeeper: dict[str, Any]) -> None:
    home, port = zookeeper["home"], zookeeper["port"]
    try:
        answer = _ask(port, b"srvr", _client(home, None))
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return  # refused during the handshake
    assert b"Mode" not in answer, answer


def test_a_certificate_of_another_ca_is_refused(zookeeper: dict[str, Any], tmp_path: Path) -> None:
    home, port = zookeeper["home"], zookeeper["port"]
    other = member_cert(tmp_path / "other-ca", "intruder", ("clickhouse-1",))
    context = ssl.create_default_context(cafile=str(home / "ca" / "ca.pem"))
    context.load_cert_chain(other.cert, other.key)
    try:
        answer = _ask(port, b"srvr", context)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return
    assert b"Mode" not in answer, answer


def test_the_server_certificate_does_not_hold_for_another_name(
    zookeeper: dict[str, Any],
) -> None:
    home, port = zookeeper["home"], zookeeper["port"]
    with pytest.raises(ssl.SSLCertVerificationError):
        _ask(port, b"srvr", _client(home, "clickhouse"), name="kafka-1")


def test_the_compose_healthcheck_passes_over_mutual_tls(zookeeper: dict[str, Any]) -> None:
    home, port = zookeeper["home"], zookeeper["port"]
    test = zookeeper["compose"]["services"]["zookeeper"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"]
    script = test[3].replace("$$", "$")
    lib_expression = '$(dirname "$(command -v zkServer.sh)")/../lib/*'
    assert lib_expression in script
    script = script.replace(lib_expression, f"{zookeeper_lib_dir()}/*")
    script = script.replace("/zookeeper-tls/", f"{home / 'zookeeper-tls'}/")
    script = script.replace("localhost 2281 ", f"localhost {port} ")
    script = script.replace("java -cp", f"{shlex.quote(_java())} -cp", 1)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # and the same check without the client certificate fails (it is what it tests)
    bare = script.replace("-Dzookeeper.ssl.keyStore.location=", "-Dignored=")
    refused = subprocess.run(["bash", "-c", bare], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
