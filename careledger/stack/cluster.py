"""The local cluster (ADR 0030): three Kafka nodes in KRaft mode, two ClickHouse replicas
with ``ReplicatedMergeTree`` and the ZooKeeper they coordinate through, on loopback.

Everything lives under ``<run_dir>/cluster/``, a run directory of its own, so the
single-node stack and the cluster can run side by side (different ports)::

    <run_dir>/cluster/careledger.toml     the settings every command uses for the cluster
    <run_dir>/cluster/nodes/kafka-N/      one node's data, properties, pid and logs
    <run_dir>/cluster/nodes/clickhouse-N/ one replica's data, config, pid and logs
    <run_dir>/cluster/zookeeper/          ZooKeeper's data, zoo.cfg and pid

Each node is started by the same code as the single stack's server (``kafka_server``,
``clickhouse_server``) with a node's own settings; only what makes it part of a
cluster differs: a node id and the voters of the controller quorum for Kafka, an
interserver port, ZooKeeper and ``{replica}`` macro for ClickHouse. Then the topics
are created with replication factor 3 and ``min.insync.replicas=2``, and the schema is
migrated on each replica with replicated engines.

``careledger up --cluster`` prints the line that points every other command at it:
``export CARELEDGER_CONFIG=<run_dir>/cluster/careledger.toml``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from careledger.config import Settings
from careledger.credentials import local_password, local_password_file, tls_dir
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN, local_scram_password_file
from careledger.keys import KeyFileError
from careledger.tls import CA_FILE, local_ca_file

from .clickhouse_server import _start_clickhouse, clickhouse_ports
from .kafka_server import KafkaNode, _start_kafka, new_cluster_id
from .model import ServiceStatus, StackError
from .paths import _paths, _stack_lock
from .processes import _alive, _our_pid, _reap, _tail, _terminate
from .readiness import ADMIN_SETTINGS, _clickhouse_version, kafka_ready
from .topics import default_topics, ensure_topics
from .zookeeper_server import (
    start_zookeeper,
    stop_zookeeper,
    wait_zookeeper,
    zookeeper_pid,
    zookeeper_ready,
)

log = logging.getLogger("careledger.stack")

KAFKA_NODES = 3
CLICKHOUSE_REPLICAS = 2
REPLICATION_FACTOR = 3
MIN_INSYNC_REPLICAS = 2
#: node N listens on base + 100 * N, so the single stack (base + 0) never collides
PORT_STEP = 100
ZOOKEEPER_PORT = 12181
START_TIMEOUT_S = 180.0


@dataclasses.dataclass(frozen=True)
class ClusterStatus:
    nodes: tuple[ServiceStatus, ...]
    config: Path

    @property
    def up(self) -> bool:
        return all(n.ready for n in self.nodes)

    def __str__(self) -> str:
        return "\n".join(n.line() for n in self.nodes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "config": str(self.config),
            "nodes": [dataclasses.asdict(n) for n in self.nodes],
        }


def cluster_dir(settings: Settings) -> Path:
    return Path(settings.run_dir).resolve() / "cluster"


def config_path(settings: Settings) -> Path:
    return cluster_dir(settings) / "careledger.toml"


def _kafka_port(settings: Settings, n: int) -> int:
    return settings.kafka_port + PORT_STEP * n


def _controller_port(settings: Settings, n: int) -> int:
    return settings.kafka_controller_port + PORT_STEP * n


def _ch_port(settings: Settings, n: int) -> int:
    return settings.clickhouse_port + PORT_STEP * n


def _ch_http_port(settings: Settings, n: int) -> int:
    return settings.clickhouse_http_port + PORT_STEP * n


def _interserver_port(settings: Settings, n: int) -> int:
    return settings.clickhouse_port + 9 + PORT_STEP * n


def cluster_settings(settings: Settings) -> Settings:
    """The settings of the local cluster derived from the single stack's ``settings``:
    what ``<run_dir>/cluster/careledger.toml`` holds."""
    host = settings.kafka_host
    ch = settings.clickhouse_host
    return settings.replace(
        run_dir=cluster_dir(settings),
        kafka_port=_kafka_port(settings, 1),
        kafka_controller_port=_controller_port(settings, 1),
        kafka_brokers=tuple(
            f"{host}:{_kafka_port(settings, n)}" for n in range(1, KAFKA_NODES + 1)
        ),
        kafka_replication_factor=REPLICATION_FACTOR,
        kafka_min_insync_replicas=MIN_INSYNC_REPLICAS,
        clickhouse_port=_ch_port(settings, 1),
        clickhouse_http_port=_ch_http_port(settings, 1),
        clickhouse_replicas=tuple(
            f"{ch}:{_ch_port(settings, n)}" for n in range(2, CLICKHOUSE_REPLICAS + 1)
        ),
        clickhouse_replicated=True,
    )


#: the settings ``careledger.toml`` of the cluster sets (the rest keep their defaults
#: or come from the environment, as for any command)
_CONFIG_KEYS = (
    "run_dir",
    "kafka_host",
    "kafka_port",
    "kafka_controller_port",
    "kafka_brokers",
    "kafka_replication_factor",
    "kafka_min_insync_replicas",
    "clickhouse_host",
    "clickhouse_port",
    "clickhouse_http_port",
    "clickhouse_replicas",
    "clickhouse_replicated",
)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value)
    if any(c in text for c in '"\\\n'):
        raise StackError(f"cannot write {text!r} into the cluster's settings file")
    return f'"{text}"'


def write_config(cs: Settings) -> Path:
    """``<run_dir>/cluster/careledger.toml``: no secret in it (passwords stay in the
    environment), mode 0600 all the same."""
    path = config_path(cs.replace(run_dir=Path(cs.run_dir).parent))
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Written by `careledger up --cluster` (ADR 0030). Point commands at the cluster:",
        f"#   export CARELEDGER_CONFIG={path}",
        *(f"{key} = {_toml_value(getattr(cs, key))}" for key in _CONFIG_KEYS),
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def _kafka_node(cs: Settings, n: int) -> tuple[Settings, KafkaNode]:
    voters = ",".join(
        f"{i}@{cs.kafka_host}:{cs.kafka_controller_port + PORT_STEP * (i - 1)}"
        for i in range(1, KAFKA_NODES + 1)
    )
    node_settings = cs.replace(
        run_dir=Path(cs.run_dir) / "nodes" / f"kafka-{n}",
        kafka_port=cs.kafka_port + PORT_STEP * (n - 1),
        kafka_controller_port=cs.kafka_controller_port + PORT_STEP * (n - 1),
        kafka_brokers=(),
    )
    if cs.kafka_security_protocol == "SASL_SSL":
        # the node's own probes log in as the cluster's admin, trusting the cluster's CA
        node_settings = node_settings.replace(
            kafka_ca_file=cs.kafka_ca_file or tls_dir(cs) / CA_FILE,
            kafka_password_file=(cs.kafka_password_file or local_scram_password_file(cs, ADMIN)),
        )
    return node_settings, KafkaNode(
        n,
        voters,
        cs.kafka_replication_factor,
        cs.kafka_min_insync_replicas,
        home=Path(cs.run_dir),
    )


def _clickhouse_node(cs: Settings, n: int, *, make: bool = True) -> tuple[Settings, str]:
    """Replica ``n``'s settings and replication config; ``make``: create the cluster's
    passwords and CA when missing (``up``), not when only looking (``status``, ``down``)."""
    port = cs.clickhouse_port + PORT_STEP * (n - 1)
    # every replica has the cluster's users and a certificate of the cluster's CA
    # (ADR 0032): the passwords and the CA are made once, under the cluster's run_dir
    passwords = {role: local_password_file(cs, role) for role in ("writer", "reader")}
    for role, path in passwords.items():
        if make and not getattr(
            cs, "clickhouse_password" if role == "writer" else "clickhouse_reader_password"
        ):
            local_password(path, f"ClickHouse {role} password file")
    ca_file = cs.clickhouse_ca_file or (
        local_ca_file(tls_dir(cs)) if make else tls_dir(cs) / CA_FILE
    )
    node_settings = cs.replace(
        run_dir=Path(cs.run_dir) / "nodes" / f"clickhouse-{n}",
        clickhouse_port=port,
        clickhouse_http_port=cs.clickhouse_http_port + PORT_STEP * (n - 1),
        clickhouse_replicas=(),
        clickhouse_password_file=cs.clickhouse_password_file or passwords["writer"],
        clickhouse_reader_password_file=(cs.clickhouse_reader_password_file or passwords["reader"]),
        clickhouse_ca_file=ca_file,
    )
    if cs.clickhouse_secure:
        # parts fetched over HTTPS, the other replica's certificate checked against the
        # cluster's CA, and only by a replica that knows the interserver password
        # (ClickHouse 18.16 has both; ADR 0032, addendum). The password is
        # token_urlsafe (nothing XML reads otherwise); only ``up`` writes configs.
        password = (
            local_password(interserver_password_file(cs), "ClickHouse interserver password file")
            if make
            else ""
        )
        interserver = (
            f"<interserver_https_port>{port + 9}</interserver_https_port>\n"
            "    <interserver_http_credentials>"
            f"<user>{INTERSERVER_USER}</user><password>{password}</password>"
            "</interserver_http_credentials>"
        )
    else:
        interserver = f"<interserver_http_port>{port + 9}</interserver_http_port>"
    replication = f"""\
    <interserver_http_host>{cs.clickhouse_host}</interserver_http_host>
    {interserver}
    <zookeeper>
        <node><host>{cs.clickhouse_host}</host><port>{ZOOKEEPER_PORT}</port></node>
        <session_timeout_ms>10000</session_timeout_ms>
    </zookeeper>
    <macros>
        <shard>1</shard>
        <replica>clickhouse-{n}</replica>
    </macros>"""
    if cs.clickhouse_secure:
        # ClickHouse 18.16's replication reads tcp_port (a replica announces it in
        # ZooKeeper and forwards some statements to the leader over it) and leaves a
        # replicated table read-only without it: a plain native port, loopback only
        # and password-protected like the TLS one, kept for the replicas (ADR 0032).
        replication += f"\n    <tcp_port>{port + 8}</tcp_port>"
    return node_settings, replication


#: the user name replicas present to each other when fetching parts
INTERSERVER_USER = "careledger_interserver"


def interserver_password_file(cs: Settings) -> Path:
    """The password the cluster's replicas present to each other (made on ``up``)."""
    return Path(cs.run_dir) / "secrets" / "clickhouse-interserver.password"


def _zookeeper_dir(cs: Settings) -> Path:
    return Path(cs.run_dir) / "zookeeper"


def _kafka_whole(cs: Settings, timeout: float = 2.0) -> bool:
    """Every node answers for itself, the metadata names every broker, and every
    partition's in-sync replicas are all its replicas: a node that was down has caught
    up, so losing another one next keeps ``min.insync.replicas``. (The metadata alone
    is not enough: a broker killed a moment ago is still listed until its session
    times out.)"""
    if not all(kafka_ready(_kafka_node(cs, n)[0]) for n in range(1, KAFKA_NODES + 1)):
        return False
    try:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(kafka_config(cs, ADMIN, ADMIN_SETTINGS))
        md = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        log.debug("kafka cluster not ready: %s", exc)
        return False
    if len(md.brokers) < KAFKA_NODES:
        return False
    return all(
        sorted(part.isrs) == sorted(part.replicas)
        for topic in md.topics.values()
        for part in topic.partitions.values()
    )


def _wait(what: str, check: Any, pids: dict[int, Path], deadline: float) -> None:
    while not check():
        for pid, out in pids.items():
            if not _alive(pid):
                _reap(pid)
                raise StackError(f"{what}: a node exited during startup; see {out}:\n{_tail(out)}")
        if time.monotonic() > deadline:
            raise StackError(f"{what} not ready within the timeout; logs in {list(pids.values())}")
        time.sleep(0.3)


def up(
    settings: Settings,
    *,
    quiet: bool = False,
    timeout: float | None = None,
    topics: bool = True,
    schema: bool = True,
) -> ClusterStatus:
    """Start (or find running) every node of the local cluster, wait for the Kafka quorum
    with all brokers and for both replicas, create the topics and migrate each replica."""
    from careledger.storage import migrations

    cs = cluster_settings(settings)
    say = log.debug if quiet else log.info
    deadline = time.monotonic() + (timeout or START_TIMEOUT_S)
    t0 = time.monotonic()
    with _stack_lock(cs):
        root = Path(cs.run_dir)
        (root / "logs").mkdir(parents=True, exist_ok=True)
        shared_id = root / "kafka-cluster.id"
        if not shared_id.exists():
            shared_id.write_text(new_cluster_id() + "\n")
        zk = _zookeeper_dir(cs)
        zpid = start_zookeeper(zk, root / "logs", ZOOKEEPER_PORT, quiet=quiet)
        started: dict[int, Path] = {}
        for n in range(1, KAFKA_NODES + 1):
            ns, node = _kafka_node(cs, n)
            p = _paths(ns)
            p.kafka.mkdir(parents=True, exist_ok=True)
            if not p.kafka_cluster_id.exists():  # every node formats with the same id
                p.kafka_cluster_id.write_text(shared_id.read_text())
            pid = _start_kafka(ns, quiet=True, node=node)
            if pid is not None:
                started[pid] = p.kafka_out
        wait_zookeeper(ZOOKEEPER_PORT, zpid, root / "logs", max(1.0, deadline - time.monotonic()))
        for n in range(1, CLICKHOUSE_REPLICAS + 1):
            ns, replication = _clickhouse_node(cs, n)
            pid = _start_clickhouse(ns, quiet=True, replication=replication)
            if pid is not None:
                started[pid] = _paths(ns).clickhouse_out
        for n in range(1, CLICKHOUSE_REPLICAS + 1):
            ns, _ = _clickhouse_node(cs, n)
            _wait(
                f"ClickHouse replica {n}",
                lambda ns=ns: _clickhouse_version(ns) is not None,
                started,
                deadline,
            )
        _wait(
            f"the Kafka cluster ({KAFKA_NODES} brokers)",
            lambda: _kafka_whole(cs),
            started,
            deadline,
        )
        if started or zpid is not None:
            say("cluster ready in %.1fs", time.monotonic() - t0)
        config = write_config(cs)
    if topics:
        try:
            ensure_topics(cs, default_topics(cs), timeout=max(30.0, deadline - time.monotonic()))
        except KafkaException as exc:
            raise StackError(f"cannot create the Kafka topics: {exc}") from exc
    if schema:
        applied = migrations.migrate(cs)
        if applied:
            say("applied ClickHouse migrations %s on every replica", applied)
    return dataclasses.replace(status(settings), config=config)


def status(settings: Settings) -> ClusterStatus:
    cs = cluster_settings(settings)
    nodes: list[ServiceStatus] = []
    for n in range(1, KAFKA_NODES + 1):
        ns, _ = _kafka_node(cs, n)
        p = _paths(ns)
        pid = _our_pid(p.kafka_pid, str(p.kafka_props))
        ready = kafka_ready(ns)
        nodes.append(
            ServiceStatus(
                f"kafka-{n}",
                ready,
                pid,
                {"broker": ns.kafka_port, "controller": ns.kafka_controller_port},
                f"node {n} of {KAFKA_NODES}, KRaft" if ready else "",
            )
        )
    zready = zookeeper_ready(ZOOKEEPER_PORT)
    zpid = zookeeper_pid(_zookeeper_dir(cs))
    nodes.append(ServiceStatus("zookeeper", zready, zpid, {"client": ZOOKEEPER_PORT}))
    for n in range(1, CLICKHOUSE_REPLICAS + 1):
        ns, _ = _clickhouse_node(cs, n, make=False)
        p = _paths(ns)
        try:
            version = _clickhouse_version(ns)
            detail = f"ClickHouse {version}, replica clickhouse-{n}" if version else ""
        except KeyFileError as exc:  # no password yet: never started, or files lost
            version, detail = None, f"cannot log in: {exc}"
        nodes.append(
            ServiceStatus(
                f"clickhouse-{n}",
                version is not None,
                _our_pid(p.clickhouse_pid, str(p.clickhouse_config)),
                clickhouse_ports(ns),
                detail,
            )
        )
    return ClusterStatus(tuple(nodes), config_path(settings))


def down(settings: Settings) -> ClusterStatus:
    """Stop every node careledger started (data stays for the next ``up --cluster``)."""
    cs = cluster_settings(settings)
    with _stack_lock(cs):
        for n in range(1, CLICKHOUSE_REPLICAS + 1):
            p = _paths(_clickhouse_node(cs, n, make=False)[0])
            _stop(f"ClickHouse replica {n}", p.clickhouse_pid, str(p.clickhouse_config))
        # all Kafka nodes at once: stopped one by one, the last would wait for a
        # controller quorum that is already gone
        threads = []
        for n in range(1, KAFKA_NODES + 1):
            p = _paths(_kafka_node(cs, n)[0])
            t = threading.Thread(
                target=_stop, args=(f"Kafka node {n}", p.kafka_pid, str(p.kafka_props))
            )
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        stop_zookeeper(_zookeeper_dir(cs))
    return status(settings)


def _stop(name: str, pid_file: Path, marker: str) -> None:
    pid = _our_pid(pid_file, marker)
    if pid is not None:
        log.info("stopping %s (pid %d)", name, pid)
        _terminate(pid, name)
    pid_file.unlink(missing_ok=True)


def kill_node(settings: Settings, name: str) -> int:
    """SIGKILL one node of the running cluster (``kafka-2``, ``clickhouse-1``): the
    fault tests' tool. Returns the pid killed; StackError if it is not running."""
    import signal

    cs = cluster_settings(settings)
    kind, _, number = name.partition("-")
    if not number.isdigit():
        raise StackError(f"no cluster node {name!r}")
    n = int(number)
    if kind == "kafka" and 1 <= n <= KAFKA_NODES:
        p = _paths(_kafka_node(cs, n)[0])
        pid_file, marker = p.kafka_pid, str(p.kafka_props)
    elif kind == "clickhouse" and 1 <= n <= CLICKHOUSE_REPLICAS:
        p = _paths(_clickhouse_node(cs, n, make=False)[0])
        pid_file, marker = p.clickhouse_pid, str(p.clickhouse_config)
    else:
        raise StackError(f"no cluster node {name!r}")
    pid = _our_pid(pid_file, marker)
    if pid is None:
        raise StackError(f"cluster node {name} is not running")
    os.kill(pid, signal.SIGKILL)
    _reap(pid)
    return pid
