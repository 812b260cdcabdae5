"""docker-compose.yml's Kafka node, run for real (issue 12 point 3, ADR 0033).

No Docker engine runs here, so the module runs what a compose broker runs, outside a
container: the files ``careledger kafka-config`` writes (with the member certificate
``careledger tls-certs --member --keystore`` makes), and kafka-1's own script from
docker-compose.yml (``set -f``, ``kafka-storage.sh format ... $(cat scram.args)``,
``exec kafka-server-start.sh``) under ``sh``, with the image's two Kafka scripts
standing for the same Java classes on the project's pinned jars. One node on loopback
(the quorum of three is the same file with three voters, checked in
tests/unit/test_compose_cluster.py); then ``careledger kafka-setup`` as the admin, and
the attacks: plaintext, a wrong password, a client that does not trust the CA, a
principal writing what the ACLs do not grant. The healthcheck's client file is used by
Kafka's own Java admin client.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import KafkaException

from careledger.config import PROJECT_ROOT, Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN, PRINCIPALS, PRODUCER, VERIFIER
from careledger.stack.kafka_deploy import CLIENT_FILE, password_variable
from careledger.stack.kafka_server import _java, _kafka_java_cmd, install_kafka, kafka_lib_dir
from careledger.stack.readiness import kafka_ready
from tests.integration.test_kafka_auth import _send

pytestmark = pytest.mark.integration

#: this module's node (the local stack's is 19092, the cluster's 19192..19392, the SASL
#: module's 19592)
INTERNAL, CONTROLLER, EXTERNAL = 19792, 19793, 19794
PASSWORDS: dict[str, str] = {p: f"deploy-{p}-{os.urandom(8).hex()}" for p in PRINCIPALS}
FAST = {"message.timeout.ms": 5000, "socket.connection.setup.timeout.ms": 3000}


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "commands.cli", *argv],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _wrapper(path: Path, cmd: list[str]) -> None:
    path.write_text(f'#!/bin/sh\nexec {shlex.join(cmd)} "$@"\n')
    path.chmod(0o755)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("compose-kafka")
    settings = Settings().replace(run_dir=home / "run")
    install_kafka(settings, quiet=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARELEDGER_", "KAFKA_"))}
    env.update({password_variable(p): v for p, v in PASSWORDS.items()})
    # the certs service's command, for this host
    certs = _run(
        [
            *("tls-certs", "--dir", str(home / "ca"), "--name", "kafka"),
            *("--member", "--keystore", "--hosts", "localhost,127.0.0.1"),
        ],
        env,
    )
    assert certs.returncode == 0, certs.stdout + certs.stderr
    config = _run(
        [
            *("kafka-config", "--out", str(home / "config"), "--tls", str(home / "ca")),
            *("--nodes", "localhost", "--external", f"127.0.0.1:{EXTERNAL}"),
            *("--port", str(INTERNAL), "--controller-port", str(CONTROLLER)),
            *("--log-dir", str(home / "data")),
        ],
        env,
    )
    assert config.returncode == 0, config.stdout + config.stderr
    assert all(v not in config.stdout + config.stderr for v in PASSWORDS.values())
    # the image's scripts: the same classes, on the pinned jars
    java = _java()
    bin_dir = home / "bin"
    bin_dir.mkdir()
    _wrapper(
        bin_dir / "kafka-storage.sh", _kafka_java_cmd(settings, java, "kafka.tools.StorageTool")
    )
    _wrapper(bin_dir / "kafka-server-start.sh", _kafka_java_cmd(settings, java, "kafka.Kafka"))
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    broker = compose["services"]["kafka-1"]
    script = "\n".join(broker["command"]).replace("$$", "$")
    script = script.replace("/opt/kafka/bin/", f"{bin_dir}/")
    script = script.replace(
        "/kafka-config/kafka-1.properties", f"{home}/config/localhost.properties"
    )
    script = script.replace("/kafka-config/", f"{home}/config/")
    assert broker["entrypoint"][:2] == ["/bin/sh", "-ec"]
    env["CLUSTER_ID"] = str(broker["environment"]["CLUSTER_ID"])
    log = (home / "broker.out").open("wb")
    proc = subprocess.Popen(
        ["/bin/sh", "-ec", script],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = Settings().replace(
        run_dir=home / "client",
        kafka_host="127.0.0.1",
        kafka_port=EXTERNAL,
        kafka_security_protocol="SASL_SSL",
        kafka_ca_file=home / "ca" / "ca.pem",
        kafka_password=PASSWORDS[ADMIN],
    )
    try:
        deadline = time.monotonic() + 90
        while not kafka_ready(client):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    "the compose broker did not start:\n"
                    + (home / "broker.out").read_text()[-3000:]
                )
            time.sleep(0.5)
        yield {"home": home, "client": client, "env": env, "settings": settings}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        log.close()


def _as(node: dict[str, Any], principal: str, password: str | None = None) -> Settings:
    s: Settings = node["client"]
    return s.replace(kafka_password=PASSWORDS[principal] if password is None else password)


def test_kafka_setup_creates_the_topics_and_acls_as_the_admin_and_they_hold(
    node: dict[str, Any],
) -> None:
    env = {**node["env"], "CARELEDGER_KAFKA_HOST": "127.0.0.1"}
    env.update(
        {
            "CARELEDGER_RUN_DIR": str(node["home"] / "setup"),
            "CARELEDGER_KAFKA_PORT": str(EXTERNAL),
            "CARELEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "CARELEDGER_KAFKA_CA_FILE": str(node["home"] / "ca" / "ca.pem"),
            # the producer's password: not allowed to set up anything
            "CARELEDGER_KAFKA_PASSWORD": PASSWORDS[PRODUCER],
        }
    )
    refused = _run(["kafka-setup", "--timeout", "3"], env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    env["CARELEDGER_KAFKA_PASSWORD"] = PASSWORDS[ADMIN]
    done = _run(["kafka-setup"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "topics and their ACLs in place" in done.stdout
    assert PASSWORDS[ADMIN] not in done.stdout + done.stderr
    topic = node["client"].topic_events
    # ACLs reach the broker's authorizer through the metadata log, just after CreateAcls
    # returns (a CI run's first send came a few ms early): the grant holds within seconds
    deadline = time.monotonic() + 15
    while (sent := _send(_as(node, PRODUCER), PRODUCER, topic)) != "ok":
        assert time.monotonic() < deadline, sent
        time.sleep(0.5)
    assert _send(_as(node, VERIFIER), VERIFIER, topic) == "TOPIC_AUTHORIZATION_FAILED"
    assert _send(_as(node, PRODUCER), PRODUCER, node["client"].topic_checkpoints) == (
        "TOPIC_AUTHORIZATION_FAILED"
    )
    # every principal's login was made when the storage was formatted, with its password
    for principal in PRINCIPALS:
        assert _logs_in(_as(node, principal), principal), principal
    assert not _logs_in(_as(node, PRODUCER, PASSWORDS[ADMIN]), PRODUCER, timeout=3)


def _logs_in(s: Settings, principal: str, timeout: float = 10) -> bool:
    """Whether ``principal`` with ``s``'s password gets the cluster's metadata."""
    from confluent_kafka.admin import AdminClient

    try:
        md = AdminClient(kafka_config(s, principal, FAST)).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(md.brokers)


def test_plaintext_a_wrong_password_and_another_ca_get_nothing(
    node: dict[str, Any], tmp_path: Path
) -> None:
    s = node["client"]
    topic = s.topic_events
    assert _send(s, None, topic, refused=True) != "ok"
    wrong = _as(node, PRODUCER, "not-the-password-at-all")
    assert _send(wrong, PRODUCER, topic, refused=True) != "ok"
    other = _run(
        ["tls-certs", "--dir", str(tmp_path), "--name", "x", "--hosts", "127.0.0.1"], node["env"]
    )
    assert other.returncode == 0
    assert (
        _send(_as(node, PRODUCER).replace(kafka_ca_file=tmp_path / "ca.pem"), PRODUCER, topic)
        != "ok"
    )


def test_the_internal_listener_and_the_controller_need_credentials_too(
    node: dict[str, Any],
) -> None:
    s = node["client"].replace(kafka_port=INTERNAL, kafka_host="localhost")
    assert _send(s, None, s.topic_events, refused=True) != "ok"
    props = (node["home"] / "config" / "localhost.properties").read_text()
    assert "PLAINTEXT" not in props
    # the controller listener: TLS with a certificate of the CA's, else refused
    assert _controller_answer(node["home"], member=False) == "refused"
    assert _controller_answer(node["home"], member=True) == "accepted"


def _controller_answer(home: Path, *, member: bool) -> str:
    ctx = ssl.create_default_context(cafile=str(home / "ca" / "ca.pem"))
    if member:
        ctx.load_cert_chain(str(home / "ca" / "kafka.pem"), str(home / "ca" / "kafka.key"))
    with socket.create_connection(("127.0.0.1", CONTROLLER), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as conn:
                conn.settimeout(2)
                conn.recv(1)  # TLS 1.3: the server's refusal arrives after the handshake
        except ssl.SSLError:
            return "refused"
        except TimeoutError:
            return "accepted"  # the server waits for a Kafka request: it took us
    return "closed"


_ADMIN_PROBE = """
import java.io.FileInputStream;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
public class Probe {
  public static void main(String[] a) throws Exception {
    Properties p = new Properties();
    try (FileInputStream in = new FileInputStream(a[0])) { p.load(in); }
    p.put("bootstrap.servers", a[1]);
    p.put("request.timeout.ms", "10000");
    p.put("default.api.timeout.ms", "15000");
    try (Admin admin = Admin.create(p)) {
      System.out.println("nodes=" + admin.describeCluster().nodes().get().size());
    }
  }
}
"""


def test_the_healthcheck_client_file_logs_in_with_kafkas_own_java_client(
    node: dict[str, Any], tmp_path: Path
) -> None:
    probe = tmp_path / "Probe.java"
    probe.write_text(_ADMIN_PROBE)
    settings: Settings = node["settings"]
    res = subprocess.run(
        [
            *(_java(), "-cp", f"{kafka_lib_dir(settings)}/*", str(probe)),
            *(str(node["home"] / "config" / CLIENT_FILE), f"localhost:{INTERNAL}"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "nodes=1" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]
