"""The Kafka broker: Java, the jars Maven copies into ``deploy/kafka/lib/<version>/``,
the KRaft ``server.properties``, storage formatting and starting the broker."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from careledger.config import Settings
from careledger.credentials import local_password, tls_dir
from careledger.kafka.security import (
    BROKER,
    PRINCIPALS,
    KafkaLogin,
    broker_properties,
    local_scram_password_file,
    properties_text,
    scram_format_args,
)
from careledger.tls import member_cert, write_pem_keystore

from .model import StackError
from .paths import DEPLOY_DIR, _paths
from .processes import _our_pid, _port_open, _spawn, _tail
from .readiness import kafka_ready

# Every part of the stack logs as "careledger.stack", like the single module it was.
log = logging.getLogger("careledger.stack")

KAFKA_POM = DEPLOY_DIR / "kafka" / "pom.xml"
KAFKA_LOG4J = DEPLOY_DIR / "kafka" / "log4j2.yaml"
KAFKA_LIB_ROOT = DEPLOY_DIR / "kafka" / "lib"
#: ``sha256sum`` lines of every jar of a Kafka version: what Maven fetched is refused
#: unless it is exactly these files (a repository or mirror serving other bytes for the
#: same coordinates is caught, not only a transfer error, which --strict-checksums is)
KAFKA_PINS = DEPLOY_DIR / "kafka" / "jars-{version}.sha256"
KAFKA_HEAP = ("-Xms256m", "-Xmx768m")

HINT_JAVA = "java not found: apt-get install openjdk-17-jre-headless (or run deploy/bootstrap.sh)"
HINT_MAVEN = "maven not found: apt-get install maven (or run deploy/bootstrap.sh)"


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise StackError(HINT_JAVA)
    return java


def _check_java_version(java: str) -> None:
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        ).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"cannot run {java}: {exc}; {HINT_JAVA}") from exc
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if m:
        major = int(m.group(1))
        if major == 1 and m.group(2):
            major = int(m.group(2))
        if major < 17:
            raise StackError(
                f"Kafka 4 needs Java 17 or newer, found Java {major} ({java}): "
                "apt-get install openjdk-17-jre-headless"
            )


def kafka_lib_dir(settings: Settings) -> Path:
    return KAFKA_LIB_ROOT / settings.kafka_version


def _kafka_stamp(settings: Settings) -> Path:
    return kafka_lib_dir(settings) / ".complete"


def kafka_installed(settings: Settings) -> bool:
    lib = kafka_lib_dir(settings)
    return (
        _kafka_stamp(settings).exists()
        and (lib / f"kafka_2.13-{settings.kafka_version}.jar").exists()
    )


def install_kafka(settings: Settings, *, quiet: bool = False) -> Path:
    """Copy the Kafka jars for ``settings.kafka_version`` with Maven (skipped if present)."""
    lib = kafka_lib_dir(settings)
    if kafka_installed(settings):
        return lib
    version = settings.kafka_version
    return maven_pinned_jars(
        "Kafka",
        version,
        KAFKA_POM,
        {"kafka.version": version, "kafka.lib": str(lib)},
        lib,
        lib / f"kafka_2.13-{version}.jar",
        pinned_jars(version),
        _paths(settings).logs / "maven.log",
        _kafka_stamp(settings),
        quiet=quiet,
    )


def maven_pinned_jars(
    product: str,
    version: str,
    pom: Path,
    properties: dict[str, str],
    lib: Path,
    main_jar: Path,
    pins: dict[str, str],
    mvn_log: Path,
    stamp: Path,
    *,
    quiet: bool,
) -> Path:
    """Copy ``pom``'s jars into ``lib`` with Maven (``--strict-checksums``), then keep
    them only if they are exactly ``pins`` (ADR 0028); ``stamp`` marks a complete copy.
    Kafka's and ZooKeeper's installs share it."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(HINT_MAVEN)
    say = log.debug if quiet else log.info
    say("fetching Apache %s %s jars with Maven into %s", product, version, lib)
    if lib.exists():
        shutil.rmtree(lib)  # partial copy of an earlier, interrupted run
    t0 = time.monotonic()
    mvn_log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        mvn,
        "-B",
        "--no-transfer-progress",
        "--strict-checksums",
        "-f",
        str(pom),
        *(f"-D{k}={v}" for k, v in properties.items()),
        "package",
    ]
    with open(mvn_log, "w") as fh:
        rc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, check=False
        ).returncode
    if rc != 0 or not main_jar.exists():
        raise StackError(
            f"maven could not fetch {product} {version} (exit {rc}); see {mvn_log}:\n"
            + _tail(mvn_log, 25)
        )
    problem = jar_problem(lib, pins)
    if problem is not None:
        shutil.rmtree(lib)  # never leave unpinned jars where a start would run them
        raise StackError(f"{product} {version} jars refused: {problem}")
    stamp.write_text(f"{version}\n")
    say("%s jars ready in %.1fs", product, time.monotonic() - t0)
    return lib


def pinned_jars(version: str, pins: Path = KAFKA_PINS, *, product: str = "Kafka") -> dict[str, str]:
    """The pinned ``{jar name: sha256 hex}`` of a version of ``product`` (StackError if none).

    ``pins`` is the path of the pins file with ``{version}`` in its name (Kafka's by
    default; ZooKeeper's is ``zookeeper_server.ZOOKEEPER_PINS``); the jars it pins live in
    ``lib/<version>/`` next to it.
    """
    path = Path(str(pins).format(version=version))
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise StackError(
            f"no pinned checksums for {product} {version} ({path.name}): fetch it once, review "
            f"the jars, then write `sha256sum *.jar` of {path.parent / 'lib' / version} there"
        ) from None
    result: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name.endswith(".jar") or "/" in name:
            raise StackError(f"{path.name} line {n} is not a `sha256sum` line of a jar")
        result[name] = digest
    return result


def jar_problem(lib: Path, pins: dict[str, str]) -> str | None:
    """Why the jars in ``lib`` are not exactly the pinned ones (None: they are)."""
    present = {p.name for p in lib.glob("*.jar")}
    if missing := sorted(set(pins) - present):
        return f"missing {', '.join(missing[:3])}"
    if extra := sorted(present - set(pins)):
        return f"not pinned: {', '.join(extra[:3])}"
    for name, digest in sorted(pins.items()):
        if hashlib.sha256((lib / name).read_bytes()).hexdigest() != digest:
            return f"{name} does not have its pinned SHA-256"
    return None


@dataclasses.dataclass(frozen=True)
class KafkaNode:
    """One node of a KRaft cluster (ADR 0030): its id, every controller of the quorum
    (``id@host:port``) and the replication the cluster's internal topics get."""

    node_id: int
    voters: str
    replication_factor: int
    min_insync_replicas: int
    #: the run_dir whose CA and secrets the node uses (a cluster's, shared by its nodes)
    home: Path | None = None


def _home(settings: Settings, node: KafkaNode | None) -> Settings:
    """The settings whose ``<run_dir>/tls`` and ``<run_dir>/secrets`` the broker uses."""
    if node is None or node.home is None:
        return settings
    return settings.replace(run_dir=node.home)


def _cert_dir(settings: Settings, node: KafkaNode | None) -> Path:
    """Where the broker's certificate is made: a cluster's shared directory; else next to
    the configured CA when that is a local CA (its key beside it), the one the clients
    trust, as ClickHouse's is; else the stack's own."""
    if node is not None and node.home is not None:
        return tls_dir(_home(settings, node))
    ca = settings.kafka_ca_file
    if ca is not None and (Path(ca).parent / "ca.key").exists():
        return Path(ca).parent
    return tls_dir(settings)


def scram_logins(home: Settings) -> list[KafkaLogin]:
    """Every principal's SCRAM login of the local stack (passwords made on first use)."""
    return [
        KafkaLogin(
            name,
            local_password(local_scram_password_file(home, name), f"Kafka {name} password file"),
            None,
            "SASL_SSL",
        )
        for name in PRINCIPALS
    ]


def _security_lines(settings: Settings, node: KafkaNode) -> str:
    """The listener lines: plaintext, or SASL_SSL with SCRAM logins, mutual TLS between
    controllers and ACLs enforced (issue 12, careledger.kafka.security)."""
    host = settings.kafka_host
    if settings.kafka_security_protocol != "SASL_SSL":
        return f"""\
listeners=PLAINTEXT://{host}:{settings.kafka_port},CONTROLLER://{host}:{settings.kafka_controller_port}
advertised.listeners=PLAINTEXT://{host}:{settings.kafka_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
"""
    home = _home(settings, node)
    # one member certificate for every local node: they share a host (loopback), and
    # controllers know brokers by its DN, which must be a super user
    member = member_cert(_cert_dir(settings, node), "kafka")
    password = local_password(local_scram_password_file(home, BROKER), "Kafka broker password file")
    props = broker_properties(
        host=host,
        port=settings.kafka_port,
        controller_port=settings.kafka_controller_port,
        keystore=write_pem_keystore(member),
        truststore=member.ca,
        broker_cert=member.cert,
        broker_password=password,
    )
    return properties_text(props)


def _kafka_properties(settings: Settings, node: KafkaNode | None = None) -> str:
    p = _paths(settings)
    host = settings.kafka_host
    node = node or KafkaNode(1, f"1@{host}:{settings.kafka_controller_port}", 1, 1)
    rf, isr = node.replication_factor, node.min_insync_replicas
    return f"""\
# Written by careledger.stack on every `careledger up`; edit Settings, not this file.
process.roles=broker,controller
node.id={node.node_id}
controller.quorum.voters={node.voters}
{_security_lines(settings, node)}log.dirs={p.kafka_data}
num.partitions=1
default.replication.factor={rf}
min.insync.replicas={isr}
offsets.topic.replication.factor={rf}
offsets.topic.num.partitions=8
transaction.state.log.replication.factor={rf}
transaction.state.log.min.isr={isr}
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor={rf}
share.coordinator.state.topic.min.isr={isr}
unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=168
"""


def _kafka_java_cmd(settings: Settings, java: str, main: str, *args: str) -> list[str]:
    p = _paths(settings)
    return [
        java,
        *KAFKA_HEAP,
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={KAFKA_LOG4J}",
        f"-Dkafka.logs.dir={p.kafka_logs}",
        "-cp",
        f"{kafka_lib_dir(settings)}/*",
        main,
        *args,
    ]


def new_cluster_id() -> str:
    """A random KRaft cluster id (22 chars of URL-safe base64, like Kafka's ``Uuid``).

    Like Kafka itself, never one starting with "-": the storage tool's argument
    parser would take it for an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


#: beside the data: the security protocol the storage was formatted for (its SCRAM
#: logins are made at format time only)
SECURITY_MARK = ".careledger-security"


def _kafka_format(settings: Settings, java: str, node: KafkaNode | None = None) -> None:
    p = _paths(settings)
    mark = p.kafka_data / SECURITY_MARK
    protocol = settings.kafka_security_protocol
    if (p.kafka_data / "meta.properties").exists():
        formatted = mark.read_text().strip() if mark.exists() else "PLAINTEXT"
        if formatted != protocol:
            raise StackError(
                f"the Kafka storage in {p.kafka_data} was formatted for {formatted} (SCRAM "
                f"logins are made only then); to start a {protocol} broker remove that "
                "directory (its topics are lost) or set "
                f"CARELEDGER_KAFKA_SECURITY_PROTOCOL={formatted}"
            )
        return
    cluster_id = ""
    if p.kafka_cluster_id.exists():
        cluster_id = p.kafka_cluster_id.read_text().strip()
    if not cluster_id or cluster_id.startswith("-"):
        cluster_id = new_cluster_id()
        p.kafka_cluster_id.write_text(cluster_id + "\n")
    cmd = _kafka_java_cmd(
        settings,
        java,
        "kafka.tools.StorageTool",
        "format",
        "--ignore-formatted",
        "-t",
        cluster_id,
        "-c",
        str(p.kafka_props),
    )
    if protocol == "SASL_SSL":
        # every principal's SCRAM credential (the broker's own included) is made here
        cmd += scram_format_args(scram_logins(_home(settings, node)))
    # The storage tool is short-lived: a smaller heap starts faster.
    cmd = [c for c in cmd if c not in KAFKA_HEAP]
    cmd.insert(1, "-Xmx256m")
    res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if res.returncode != 0:
        raise StackError(f"formatting Kafka storage failed:\n{res.stdout}{res.stderr}")
    mark.write_text(protocol + "\n")
    log.debug("formatted Kafka storage (cluster id %s)", cluster_id)


def _start_kafka(settings: Settings, *, quiet: bool, node: KafkaNode | None = None) -> int | None:
    """Start the broker unless it is already running; return the pid we started (or None).
    ``node``: one node of a cluster (its properties; the caller waits for the quorum)."""
    p = _paths(settings)
    pid = _our_pid(p.kafka_pid, str(p.kafka_props))
    if pid is not None:
        return None
    if _port_open(settings.kafka_host, settings.kafka_port):
        if node is None and kafka_ready(settings):
            log.info(
                "a Kafka broker not started by careledger answers on %s; using it",
                settings.kafka_bootstrap,
            )
            return None
        raise StackError(
            f"port {settings.kafka_port} is in use by another process that is not a Kafka broker; "
            "stop it or set CARELEDGER_KAFKA_PORT"
        )
    if _port_open(settings.kafka_host, settings.kafka_controller_port):
        raise StackError(
            f"Kafka controller port {settings.kafka_controller_port} is in use by another process; "
            "stop it or set CARELEDGER_KAFKA_CONTROLLER_PORT"
        )
    java = _java()
    _check_java_version(java)
    install_kafka(settings, quiet=quiet)
    for d in (p.kafka, p.kafka_data, p.kafka_logs):
        d.mkdir(parents=True, exist_ok=True)
    p.kafka_props.write_text(_kafka_properties(settings, node))
    _kafka_format(settings, java, node)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "JAVA_TOOL_OPTIONS"))}
    pid = _spawn(
        _kafka_java_cmd(settings, java, "kafka.Kafka", str(p.kafka_props)),
        cwd=p.kafka,
        out=p.kafka_out,
        env=env,
    )
    p.kafka_pid.write_text(f"{pid}\n")
    (log.debug if quiet else log.info)(
        "started Kafka %s (pid %d) on %s, logs in %s",
        settings.kafka_version,
        pid,
        settings.kafka_bootstrap,
        p.kafka_logs,
    )
    return pid
