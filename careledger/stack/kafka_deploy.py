"""Kafka brokers run by someone else: docker-compose.yml's cluster, or any other.

``careledger kafka-config`` writes what the brokers of a KRaft cluster start from (ADR
0033): one ``server.properties`` per node, SASL_SSL client listeners with SCRAM-SHA-512
logins, the controllers on mutual TLS, Kafka's StandardAuthorizer with no access unless
an ACL grants it; the ``kafka-storage format --add-scram`` arguments that create every
principal's login when a node's storage is formatted; and a client file for the
brokers' healthcheck and the operator's Kafka tools. Passwords come from the
environment, ``CARELEDGER_KAFKA_<PRINCIPAL>_PASSWORD`` for each principal of
``careledger.kafka.security.PRINCIPALS``; none has a default.

``careledger kafka-setup`` then creates the topics with their settings and the ACL
matrix, as the ``admin`` principal (docker-compose.yml's ``kafka-init``), exactly as
``careledger up`` does for the local stack.

Logins are made when a node's storage is *first* formatted: changing a password in the
environment later changes only the file, so rotate a login with Kafka's own tool first
(``kafka-configs.sh --alter --entity-type users --entity-name <principal> --add-config
'SCRAM-SHA-512=[password=...]'``, as the admin), then the environment.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from careledger.config import Settings
from careledger.kafka.security import (
    ADMIN,
    BROKER,
    PRINCIPALS,
    ClientListener,
    KafkaLogin,
    broker_properties,
    properties_text,
    scram_format_args,
    scram_jaas,
)

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "ClusterLayout",
    "command_kafka_config",
    "command_kafka_setup",
    "configure_kafka_config",
    "configure_kafka_setup",
    "layout_from_args",
    "node_properties",
    "password_variable",
    "passwords_from_env",
    "write_kafka_config",
]

#: what ``openssl rand -hex 32`` gives is 64; anything shorter than this is refused
MIN_PASSWORD_LENGTH = 16
#: the ``kafka-storage format`` arguments, one per line (``$(cat ...)`` with ``set -f``)
SCRAM_ARGS_FILE = "scram.args"
#: the admin's client settings (``--command-config`` of Kafka's tools, the healthcheck)
CLIENT_FILE = "admin-client.properties"
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def password_variable(principal: str) -> str:
    """The environment variable holding ``principal``'s password."""
    return f"CARELEDGER_KAFKA_{principal.upper()}_PASSWORD"


def passwords_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """Every principal's password from ``env``; ValueError naming the first variable
    missing or too short (never its value)."""
    passwords: dict[str, str] = {}
    for principal in PRINCIPALS:
        name = password_variable(principal)
        value = env.get(name, "")
        if not value:
            raise ValueError(f"{name} is not set (e.g. openssl rand -hex 32); there is no default")
        if len(value) < MIN_PASSWORD_LENGTH:
            raise ValueError(f"{name} is shorter than {MIN_PASSWORD_LENGTH} characters")
        passwords[principal] = value
    return passwords


@dataclass(frozen=True)
class ClusterLayout:
    """Where a cluster's nodes are: node ``i + 1`` is ``nodes[i]``, reached by other
    nodes and the network's clients at ``nodes[i]:port``, by the controllers at
    ``nodes[i]:controller_port``, and (when ``external`` is given) by clients outside
    the network at ``external[i]`` (``host:port``, the same port bound inside)."""

    nodes: tuple[str, ...]
    port: int = 9092
    controller_port: int = 9093
    external: tuple[str, ...] = ()
    log_dir: str = "/var/lib/kafka/data"

    def __post_init__(self) -> None:
        if not self.nodes or len(set(self.nodes)) != len(self.nodes):
            raise ValueError("name each node once")
        bad = [n for n in self.nodes if not _HOST.fullmatch(n)]
        if bad:
            raise ValueError(f"not a host name: {bad[0]!r}")
        if self.external and len(self.external) != len(self.nodes):
            raise ValueError("give one external address per node, or none")
        for address in self.external:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"not host:port: {address!r}")
        if len({self.port, self.controller_port, *self._external_ports()}) != 2 + len(
            self.external
        ):
            raise ValueError("a node's listeners need distinct ports")

    def _external_ports(self) -> list[int]:
        return [int(a.rpartition(":")[2]) for a in self.external]

    @property
    def voters(self) -> str:
        return ",".join(f"{i}@{n}:{self.controller_port}" for i, n in enumerate(self.nodes, 1))


def node_properties(
    layout: ClusterLayout,
    node: str,
    settings: Settings,
    *,
    tls: Path,
    broker_password: str,
) -> dict[str, str]:
    """The whole ``server.properties`` of ``node``: KRaft roles and quorum, replication
    as ``settings`` asks (``kafka_replication_factor``, ``kafka_min_insync_replicas``),
    and :func:`careledger.kafka.security.broker_properties` with the member certificate
    in ``tls`` (``kafka.keystore.pem``, ``kafka.pem``, ``ca.pem``)."""
    index = layout.nodes.index(node)
    rf, isr = settings.kafka_replication_factor, settings.kafka_min_insync_replicas
    if rf > len(layout.nodes):
        raise ValueError(f"replication factor {rf} on {len(layout.nodes)} nodes")
    clients = [ClientListener("INTERNAL", layout.port, node, layout.port)]
    if layout.external:
        host, _, port = layout.external[index].rpartition(":")
        clients.append(ClientListener("EXTERNAL", int(port), host.strip("[]"), int(port)))
    props = {
        "process.roles": "broker,controller",
        "node.id": str(index + 1),
        "controller.quorum.voters": layout.voters,
        "log.dirs": layout.log_dir,
    }
    props.update(
        broker_properties(
            host="",
            port=layout.port,
            controller_port=layout.controller_port,
            keystore=tls / "kafka.keystore.pem",
            truststore=tls / "ca.pem",
            broker_cert=tls / "kafka.pem",
            broker_password=broker_password,
            listeners=clients,
        )
    )
    props.update(
        {
            "num.partitions": "1",
            "default.replication.factor": str(rf),
            "min.insync.replicas": str(isr),
            "offsets.topic.replication.factor": str(rf),
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": str(isr),
            "share.coordinator.state.topic.replication.factor": str(rf),
            "share.coordinator.state.topic.min.isr": str(isr),
            # never elect a replica that missed acknowledged writes (the default, stated)
            "unclean.leader.election.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            # topics are made by kafka-setup: a typo in a topic name must fail
            "auto.create.topics.enable": "false",
        }
    )
    return props


def _client_properties(tls: Path, password: str) -> dict[str, str]:
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.jaas.config": scram_jaas(ADMIN, password),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(tls / "ca.pem"),
    }


def _write(path: Path, text: str, owner: tuple[int, int] | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)  # whatever the umask or an older file's mode
        if owner is not None:
            os.fchown(fh.fileno(), *owner)
        fh.write(text)


def write_kafka_config(
    out: Path,
    layout: ClusterLayout,
    settings: Settings,
    passwords: Mapping[str, str],
    *,
    tls: Path,
    owner: tuple[int, int] | None = None,
) -> list[Path]:
    """Write every node's ``<node>.properties``, the SCRAM arguments and the admin's
    client file into ``out`` (mode 0600, owned by ``owner``); returns the paths."""
    logins = [KafkaLogin(p, passwords[p], None, "SASL_SSL") for p in PRINCIPALS]
    args = scram_format_args(logins)  # refuses what the storage tool would misread
    # a password the client file cannot quote is refused like one --add-scram cannot carry
    out.mkdir(parents=True, exist_ok=True)
    files = {
        f"{node}.properties": properties_text(
            node_properties(layout, node, settings, tls=tls, broker_password=passwords[BROKER])
        )
        for node in layout.nodes
    }
    files[SCRAM_ARGS_FILE] = "".join(f"{a}\n" for a in args)
    files[CLIENT_FILE] = properties_text(_client_properties(tls, passwords[ADMIN]))
    written = []
    for name, text in files.items():
        _write(out / name, text, owner)
        written.append(out / name)
    if owner is not None:
        os.chown(out, *owner)
    os.chmod(out, 0o700)
    return written


# -- commands ---------------------------------------------------------------------------


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def layout_from_args(args: argparse.Namespace) -> ClusterLayout:
    """The cluster ``careledger kafka-config``'s arguments describe."""
    return ClusterLayout(
        _csv(args.nodes), args.port, args.controller_port, _csv(args.external), args.log_dir
    )


def configure_kafka_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="where the files are written")
    parser.add_argument(
        "--tls",
        type=Path,
        required=True,
        help="the brokers' TLS directory as they see it (kafka.keystore.pem, kafka.pem, ca.pem)",
    )
    parser.add_argument("--nodes", required=True, help="comma-separated host names, node 1 first")
    parser.add_argument(
        "--external",
        default="",
        help="comma-separated host:port per node for clients outside the nodes' network",
    )
    parser.add_argument("--port", type=int, default=9092, help="the nodes' client port")
    parser.add_argument(
        "--controller-port", type=int, default=9093, help="the controllers' port (mutual TLS)"
    )
    parser.add_argument("--log-dir", default="/var/lib/kafka/data", help="the nodes' data")
    parser.add_argument("--owner", default="", help="UID:GID the files are given to")


def command_kafka_config(args: argparse.Namespace, settings: Settings) -> int:
    """``careledger kafka-config``: see the module doc."""
    try:
        owner = None
        if args.owner:
            uid, _, gid = str(args.owner).partition(":")
            owner = (int(uid), int(gid or uid))
        layout = layout_from_args(args)
        passwords = passwords_from_env(os.environ)
        written = write_kafka_config(
            Path(args.out), layout, settings, passwords, tls=Path(args.tls), owner=owner
        )
    except ValueError as exc:
        print(f"careledger kafka-config: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"careledger kafka-config: cannot write {exc.filename}: {exc.strerror}")
        return 2
    for path in written:
        print(f"wrote {path} (mode 600)")
    return 0


def configure_kafka_setup(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the brokers"
    )


def command_kafka_setup(args: argparse.Namespace, settings: Settings) -> int:
    """``careledger kafka-setup``: the topics (with their settings) and the ACLs, as the
    admin; an events topic with another partition count than ``partitions`` is an
    error (one chain per partition)."""
    from . import default_topics, ensure_topics
    from .model import StackError
    from .readiness import kafka_ready

    deadline = time.monotonic() + float(args.timeout)
    while not kafka_ready(settings, timeout=5.0):
        if time.monotonic() > deadline:
            print(f"careledger kafka-setup: Kafka is not reachable at {settings.kafka_bootstrap}")
            return 2
        time.sleep(1.0)
    topics = default_topics(settings)
    try:
        ensure_topics(settings, topics, timeout=float(args.timeout))
        have = _partitions(settings, settings.topic_events)
    except StackError as exc:
        print(f"careledger kafka-setup: {exc}")
        return 2
    if have != settings.partitions:
        print(
            f"careledger kafka-setup: topic {settings.topic_events} has {have} partitions, "
            f"partitions={settings.partitions}: one chain per partition, so it cannot change"
        )
        return 2
    print(f"{len(topics)} topics and their ACLs in place on {settings.kafka_bootstrap}")
    return 0


def _partitions(settings: Settings, topic: str) -> int:
    from confluent_kafka.admin import AdminClient

    from careledger.kafka.clients import kafka_config

    from .readiness import ADMIN_SETTINGS

    metadata: Any = AdminClient(kafka_config(settings, ADMIN, ADMIN_SETTINGS)).list_topics(
        topic, timeout=15
    )
    return len(metadata.topics[topic].partitions)
