"""docker-compose.yml's ZooKeeper speaks mutual TLS only (issue 12 point 3, ADR 0032).

Before: ZooKeeper listened in plaintext on 2181 to anyone on the compose network, and
the ClickHouse replicas spoke to it in plaintext; ZooKeeper holds the replication
metadata (part names, checksums, the replication queue, replicated ALTERs), so any
container could read it and make a replica drop or fetch parts.

Now its whole configuration is deploy/compose/zookeeper/zoo.cfg: no plaintext client
port, a TLS port with ``ssl.clientAuth=need``, the key and the CA on a volume only the
certs service writes; every replica's ZooKeeper node is that port with ``<secure>``,
presenting its member certificate (server and client authentication). One checker
returns what is wrong; each attack below is a mutated copy it must report. The file
runs on the real ZooKeeper in tests/integration/test_zookeeper_tls.py.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from careledger.config import PROJECT_ROOT
from tests.unit.test_compose import env_of, mounts, script_of, shell_commands
from tests.unit.test_compose_cluster import (
    clickhouse_replicas,
    image_repo,
    load_compose,
    load_xml,
    server_config,
)

Compose = dict[str, Any]
TextLoader = Callable[[Path], str]
ZOO_CFG_TARGET = PurePosixPath("/conf/zoo.cfg")
NETTY = "org.apache.zookeeper.server.NettyServerCnxnFactory"
#: the user of the zookeeper image, who must be able to read its key
ZOOKEEPER_UID = "1000:1000"


def parse_zoo_cfg(text: str) -> dict[str, str]:
    """``key=value`` lines (comments and blank lines skipped), as ZooKeeper reads them."""
    cfg: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            cfg[key.strip()] = value.strip()
    return cfg


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def zoo_cfg_of(
    service: dict[str, Any], problems: list[str], name: str, read: TextLoader = _read
) -> dict[str, str]:
    for source, target, read_only in mounts(service):
        if target == ZOO_CFG_TARGET:
            path = PROJECT_ROOT / source
            if not source.startswith("./") or not path.is_file():
                problems.append(f"{name}: {source} is not a file in the repository")
                return {}
            if not read_only:
                problems.append(f"{name}: zoo.cfg mounted writable")
            return parse_zoo_cfg(read(path))
    problems.append(f"{name}: no zoo.cfg of ours at {ZOO_CFG_TARGET} (the image would write one)")
    return {}


def _volume_at(service: dict[str, Any], path: str) -> str | None:
    """The named volume mounted at the directory holding ``path``, if any."""
    parent = PurePosixPath(path).parent
    for source, target, _ro in mounts(service):
        if target == parent and "/" not in source:
            return source
    return None


def _certs_commands(data: Compose) -> list[list[str]]:
    certs = data["services"].get("certs") or {}
    return shell_commands(script_of(certs), env_of(certs)) if certs else []


def _tls_certs(commands: list[list[str]], name: str) -> list[str] | None:
    for argv in commands:
        if argv[:2] == ["careledger", "tls-certs"] and argv[argv.index("--name") + 1] == name:
            return argv
    return None


def zookeeper_problems(
    data: Compose, load: Callable[[Path], Any] = load_xml, read: TextLoader = _read
) -> list[str]:
    problems: list[str] = []
    nodes = {n: s for n, s in data["services"].items() if image_repo(s) == "zookeeper"}
    if not nodes:
        return ["no ZooKeeper service"]
    commands = _certs_commands(data)
    ports: dict[str, int] = {}
    for name, svc in nodes.items():
        if svc["image"] != "zookeeper:3.9":
            problems.append(f"{name}: image {svc['image']}")
        cfg = zoo_cfg_of(svc, problems, name, read)
        plain = [k for k in ("clientPort", "clientPortAddress") if k in cfg] + [
            k for k, v in cfg.items() if k.startswith("server.") and ";" in v
        ]
        if plain:
            problems.append(f"{name}: a plaintext client port ({', '.join(plain)})")
        if not cfg.get("secureClientPort", "").isdigit():
            problems.append(f"{name}: no TLS client port")
        else:
            ports[name] = int(cfg["secureClientPort"])
        if cfg.get("serverCnxnFactory") != NETTY:
            problems.append(f"{name}: not the Netty connection factory (no TLS without it)")
        if cfg.get("ssl.clientAuth") != "need":
            problems.append(f"{name}: clients need no certificate (ssl.clientAuth)")
        if any(k.startswith("server.") for k in cfg) and cfg.get("sslQuorum") != "true":
            problems.append(f"{name}: an ensemble whose members talk in plaintext (sslQuorum)")
        for store in ("keyStore", "trustStore"):
            location = cfg.get(f"ssl.{store}.location", "")
            if cfg.get(f"ssl.{store}.type") != "PEM" or not location:
                problems.append(f"{name}: ssl.{store} is not a PEM file")
                continue
            volume = _volume_at(svc, location)
            writers = [
                n
                for n, other in data["services"].items()
                for src, _t, ro in mounts(other)
                if src == volume and not ro
            ]
            if volume is None or writers != ["certs"]:
                problems.append(f"{name}: {location} is not on a volume only certs writes")
        if not any(str(t) == "/data" for src, t, _ in mounts(svc) if "/" not in src):
            problems.append(f"{name}: /data not on a named volume")
        test = " ".join(svc.get("healthcheck", {}).get("test", []))
        port = ports.get(name)
        if (
            "FourLetterWordMain" not in test
            or f" {port} srvr true" not in test
            or cfg.get("ssl.keyStore.location", "?") not in test
        ):
            problems.append(f"{name}: the healthcheck does not ask over mutual TLS")
        if "srvr" not in cfg.get("4lw.commands.whitelist", "").split(","):
            problems.append(f"{name}: srvr (the healthcheck's word) is not allowed")
        if (svc.get("depends_on") or {}).get("certs") != {
            "condition": "service_completed_successfully"
        }:
            problems.append(f"{name}: does not wait for its certificate")
        keystore = cfg.get("ssl.keyStore.location", "")
        if ["chown", ZOOKEEPER_UID, keystore] not in commands or [
            "chmod",
            "600",
            keystore,
        ] not in commands:
            problems.append(f"{name}: its key is not private to the zookeeper user")
    member = _tls_certs(commands, "zookeeper")
    if member is None or "--member" not in member or "--keystore" not in member:
        problems.append("certs makes no member certificate with a keystore for ZooKeeper")
    else:
        hosts = set(member[member.index("--hosts") + 1].split(","))
        for name, svc in nodes.items():
            if svc.get("hostname", name) not in hosts:
                problems.append(f"{name} is not named in the ZooKeeper certificate")
    clickhouse_cert = _tls_certs(commands, "clickhouse")
    if clickhouse_cert is None or "--member" not in clickhouse_cert:
        problems.append("the ClickHouse certificate cannot authenticate a client (--member)")
    for name, svc in clickhouse_replicas(data).items():
        config = server_config(svc, load, problems, name)
        zk = config.get("zookeeper")
        for node in [] if zk is None else zk.findall("node"):
            host, port = node.findtext("host", ""), int(node.findtext("port", "0"))
            if ports.get(host) != port or (node.findtext("secure") or "").strip() != "1":
                problems.append(f"{name}: ZooKeeper node {host}:{port} is not its TLS port")
        client = config.get("openSSL")
        client = None if client is None else client.find("client")
        if client is None or not (
            client.findtext("certificateFile") and client.findtext("privateKeyFile")
        ):
            problems.append(f"{name}: presents no client certificate to ZooKeeper")
        elif (client.findtext("verificationMode") or "").strip() != "strict":
            problems.append(f"{name}: does not check ZooKeeper's certificate strictly")
    return problems


# --- the file as it is -----------------------------------------------------------


@pytest.fixture
def compose() -> Compose:
    """A fresh parse per test: the attack tests mutate it."""
    return load_compose()


def test_zookeeper_speaks_mutual_tls_only(compose: Compose) -> None:
    assert zookeeper_problems(compose) == []
    assert "ensemble of 3" in (PROJECT_ROOT / "docker-compose.yml").read_text(encoding="utf-8")


# --- attacks: each mutated copy must be reported ------------------------------------


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (lambda t: t + "clientPort=2181\n", "a plaintext client port (clientPort)"),
        (
            lambda t: t + "server.1=zookeeper:2888:3888;2181\n",
            "a plaintext client port (server.1)",
        ),
        (lambda t: t.replace("ssl.clientAuth=need", "ssl.clientAuth=want"), "need no certificate"),
        (lambda t: t.replace("ssl.clientAuth=need\n", ""), "need no certificate"),
        (lambda t: re.sub(r"serverCnxnFactory=.*\n", "", t), "not the Netty connection factory"),
        (lambda t: t.replace("secureClientPort=2281", "secureClientPort="), "no TLS client port"),
        (
            lambda t: t + "server.1=zookeeper-1:2888:3888\nserver.2=zookeeper-2:2888:3888\n",
            "members talk in plaintext",
        ),
        (
            lambda t: t.replace("/zookeeper-tls/ca.pem", "/data/ca.pem"),
            "is not on a volume only certs writes",
        ),
    ],
)
def test_a_weakened_zoo_cfg_is_caught(
    compose: Compose, edit: Callable[[str], str], said: str
) -> None:
    problems = zookeeper_problems(compose, read=lambda path: edit(_read(path)))
    assert any(said in p for p in problems), problems


def test_a_plaintext_healthcheck_is_caught(compose: Compose) -> None:
    data = copy.deepcopy(compose)
    data["services"]["zookeeper"]["healthcheck"]["test"] = [
        "CMD",
        "bash",
        "-c",
        "exec 3<>/dev/tcp/127.0.0.1/2181 && printf ruok >&3 && grep -q imok <&3",
    ]
    assert any("does not ask over mutual TLS" in p for p in zookeeper_problems(data))


def test_the_image_writing_its_own_zoo_cfg_is_caught(compose: Compose) -> None:
    data = copy.deepcopy(compose)
    volumes = data["services"]["zookeeper"]["volumes"]
    data["services"]["zookeeper"]["volumes"] = [v for v in volumes if "zoo.cfg" not in v]
    assert any("no zoo.cfg of ours" in p for p in zookeeper_problems(data))


def _certs_script(data: Compose, edit: Callable[[str], str]) -> None:
    certs = data["services"]["certs"]
    certs["command"] = [edit(certs["command"][0])]


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (
            lambda t: t.replace("--name zookeeper --member", "--name zookeeper"),
            "no member certificate with a keystore for ZooKeeper",
        ),
        (
            lambda t: t.replace("--hosts zookeeper,", "--hosts zk,"),
            "zookeeper is not named in the ZooKeeper certificate",
        ),
        (
            lambda t: t.replace("chmod 600 /zookeeper-tls/zookeeper.keystore.pem", "true"),
            "its key is not private",
        ),
        (
            lambda t: t.replace("--name clickhouse --member", "--name clickhouse"),
            "cannot authenticate a client",
        ),
    ],
)
def test_weaker_certificates_are_caught(
    compose: Compose, edit: Callable[[str], str], said: str
) -> None:
    data = copy.deepcopy(compose)
    _certs_script(data, edit)
    problems = zookeeper_problems(data)
    assert any(said in p for p in problems), problems


def test_a_volume_others_write_is_caught(compose: Compose) -> None:
    data = copy.deepcopy(compose)
    data["services"]["verifier"]["volumes"].append("zookeeper-tls:/zk")
    assert any("not on a volume only certs writes" in p for p in zookeeper_problems(data))


def _replica_xml(edit: Callable[[str], str]) -> Callable[[Path], Any]:
    def load(path: Path) -> Any:
        import xml.etree.ElementTree as ET

        return ET.fromstring(edit(path.read_text(encoding="utf-8")))

    return load


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (lambda t: t.replace("<secure>1</secure>", ""), "is not its TLS port"),
        (lambda t: t.replace("<port>2281</port>", "<port>2181</port>"), "is not its TLS port"),
        (
            lambda t: re.sub(r"<certificateFile>.*?</certificateFile>", "", t),
            "presents no client certificate",
        ),
        (
            lambda t: t.replace(
                "<verificationMode>strict</verificationMode>",
                "<verificationMode>none</verificationMode>",
            ),
            "does not check ZooKeeper's certificate strictly",
        ),
    ],
)
def test_a_replica_talking_to_zookeeper_weakly_is_caught(
    compose: Compose, edit: Callable[[str], str], said: str
) -> None:
    problems = zookeeper_problems(compose, _replica_xml(edit))
    assert any(said in p for p in problems), problems
