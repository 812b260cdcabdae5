"""The local real-service stack: one Kafka 4.x node (KRaft) and one ClickHouse server.

No Docker. Kafka runs on the JVM from jars that Maven copies into
``deploy/kafka/lib/<version>/`` (see ``deploy/kafka/pom.xml``); ClickHouse is
Debian's ``clickhouse-server`` package started with the project's own config.
Both listen on loopback at the (non-default) ports from :class:`Settings`, keep
all state under ``<run_dir>`` and log to ``<run_dir>/logs/``::

    <run_dir>/kafka/server.properties   <run_dir>/clickhouse/config.xml, users.xml
    <run_dir>/kafka/data/               <run_dir>/clickhouse/data/
    <run_dir>/kafka/kafka.pid           <run_dir>/clickhouse/clickhouse.pid
    <run_dir>/logs/kafka/server.log     <run_dir>/logs/clickhouse/clickhouse-server.log
    <run_dir>/logs/kafka.out            <run_dir>/logs/clickhouse.out   (stdout/stderr)

:func:`up` is idempotent: a service whose pid file names a live process of ours,
or whose port already answers like the service, is left alone. It then creates
the Kafka topics and applies the ClickHouse schema. Everything that starts or
stops services holds ``<run_dir>/stack.lock`` so that concurrent callers (two
test sessions, a test session and the CLI) do not race.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from string import Template
from typing import Any

from careledger.config import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

DEPLOY_DIR = PROJECT_ROOT / "deploy"
KAFKA_POM = DEPLOY_DIR / "kafka" / "pom.xml"
KAFKA_LOG4J = DEPLOY_DIR / "kafka" / "log4j2.yaml"
KAFKA_LIB_ROOT = DEPLOY_DIR / "kafka" / "lib"
CLICKHOUSE_TEMPLATES = DEPLOY_DIR / "clickhouse"

KAFKA_HEAP = ("-Xms256m", "-Xmx768m")
CLICKHOUSE_MAX_MEMORY_USAGE = 2 * 1024**3  # per query, bytes
KAFKA_START_TIMEOUT_S = 90.0
CLICKHOUSE_START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0

HINT_JAVA = "java not found: apt-get install openjdk-17-jre-headless (or run deploy/bootstrap.sh)"
HINT_MAVEN = "maven not found: apt-get install maven (or run deploy/bootstrap.sh)"
HINT_CLICKHOUSE = (
    "clickhouse-server not installed: run deploy/bootstrap.sh "
    "or apt-get install clickhouse-server clickhouse-client"
)


class StackError(RuntimeError):
    """The local stack cannot be installed, started or reached."""


# --------------------------------------------------------------------------- status


@dataclasses.dataclass(frozen=True)
class ServiceStatus:
    name: str
    ready: bool
    pid: int | None  # our process, from the pid file; None if not ours / not running
    ports: dict[str, int]
    detail: str = ""

    @property
    def managed(self) -> bool:
        """True when the running service is the one careledger started."""
        return self.pid is not None

    def line(self) -> str:
        ports = ", ".join(f"{k} {v}" for k, v in self.ports.items())
        state = "up" if self.ready else "down"
        who = f"pid {self.pid}" if self.pid else ("external" if self.ready else "-")
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.name:<10} {state:<5} {who:<12} {ports}{extra}"


@dataclasses.dataclass(frozen=True)
class StackStatus:
    kafka: ServiceStatus
    clickhouse: ServiceStatus
    # Services that the call returning this status started ("kafka", "clickhouse").
    started: tuple[str, ...] = ()

    @property
    def up(self) -> bool:
        return self.kafka.ready and self.clickhouse.ready

    def __str__(self) -> str:
        return "\n".join((self.kafka.line(), self.clickhouse.line()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "kafka": dataclasses.asdict(self.kafka),
            "clickhouse": dataclasses.asdict(self.clickhouse),
            "started": list(self.started),
        }


# --------------------------------------------------------------------------- paths


@dataclasses.dataclass(frozen=True)
class _Paths:
    run: Path

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    @property
    def lock(self) -> Path:
        return self.run / "stack.lock"

    @property
    def leases(self) -> Path:
        return self.run / "leases"

    @property
    def transient(self) -> Path:
        """Present while the running stack was started by a test session (not by the CLI)."""
        return self.leases / "stack-started-by-tests"

    @property
    def kafka(self) -> Path:
        return self.run / "kafka"

    @property
    def kafka_data(self) -> Path:
        return self.kafka / "data"

    @property
    def kafka_props(self) -> Path:
        return self.kafka / "server.properties"

    @property
    def kafka_pid(self) -> Path:
        return self.kafka / "kafka.pid"

    @property
    def kafka_cluster_id(self) -> Path:
        return self.kafka / "cluster.id"

    @property
    def kafka_logs(self) -> Path:
        return self.logs / "kafka"

    @property
    def kafka_out(self) -> Path:
        return self.logs / "kafka.out"

    @property
    def clickhouse(self) -> Path:
        return self.run / "clickhouse"

    @property
    def clickhouse_data(self) -> Path:
        return self.clickhouse / "data"

    @property
    def clickhouse_config(self) -> Path:
        return self.clickhouse / "config.xml"

    @property
    def clickhouse_users(self) -> Path:
        return self.clickhouse / "users.xml"

    @property
    def clickhouse_pid(self) -> Path:
        return self.clickhouse / "clickhouse.pid"

    @property
    def clickhouse_logs(self) -> Path:
        return self.logs / "clickhouse"

    @property
    def clickhouse_out(self) -> Path:
        return self.logs / "clickhouse.out"


def _paths(settings: Settings) -> _Paths:
    return _Paths(Path(settings.run_dir).resolve())


@contextlib.contextmanager
def _stack_lock(settings: Settings) -> Iterator[None]:
    paths = _paths(settings)
    paths.run.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- processes


def _port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours (not yet reaped) is not alive for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    return True


def _our_pid(pid_file: Path, marker: str) -> int | None:
    """The pid in ``pid_file`` if it is alive and its command line mentions ``marker``."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid > 0 and _alive(pid) and any(marker in part for part in _cmdline(pid)):
        return pid
    return None


_CHILDREN: list[subprocess.Popen[bytes]] = []


def _spawn(cmd: Sequence[str], *, cwd: Path, out: Path, env: dict[str, str] | None = None) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "ab") as fh:
        fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # survives the caller; not killed by its Ctrl-C
            close_fds=True,
        )
    # Keep the Popen object: dropping it while the service runs makes CPython warn
    # ("subprocess ... is still running") in whoever called up(), e.g. a test session.
    _CHILDREN.append(proc)
    return proc.pid


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _terminate(pid: int, name: str, timeout: float = STOP_TIMEOUT_S) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not _alive(pid):
            return
        time.sleep(0.1)
    log.warning("%s (pid %d) did not stop within %.0fs; killing it", name, pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        _reap(pid)
        if not _alive(pid):
            return
        time.sleep(0.1)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


# --------------------------------------------------------------------------- readiness


def kafka_ready(settings: Settings, timeout: float = 2.0) -> bool:
    """True when the broker at ``settings.kafka_bootstrap`` answers a metadata request."""
    if not _port_open(settings.kafka_host, settings.kafka_port):
        return False
    try:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(_admin_config(settings))
        md = admin.list_topics(timeout=timeout)
        return bool(md.brokers)
    except Exception as exc:  # KafkaException and friends
        log.debug("kafka not ready: %s", exc)
        return False


def clickhouse_ready(settings: Settings, timeout: float = 2.0) -> bool:
    """True when ClickHouse answers ``SELECT 1`` on the native TCP port."""
    return _clickhouse_version(settings, timeout) is not None


def _clickhouse_version(settings: Settings, timeout: float = 2.0) -> str | None:
    # No bare TCP probe first: ClickHouse logs a warning for every connection that
    # sends nothing, and the driver fails just as fast on a closed port (its own
    # connection-failure log lines are silenced: "not up" is an answer here).
    driver_log = logging.getLogger("clickhouse_driver")
    saved_level = driver_log.level
    driver_log.setLevel(logging.CRITICAL)
    try:
        from clickhouse_driver import Client

        client = Client(
            settings.clickhouse_host,
            port=settings.clickhouse_port,
            user=settings.clickhouse_user,
            password=settings.clickhouse_password,
            connect_timeout=timeout,
            send_receive_timeout=timeout,
            sync_request_timeout=timeout,
        )
        try:
            rows = client.execute("SELECT 1, version()")
        finally:
            client.disconnect()
        return str(rows[0][1]) if rows and rows[0][0] == 1 else None
    except Exception as exc:
        log.debug("clickhouse not ready: %s", exc)
        return None
    finally:
        driver_log.setLevel(saved_level)


def _admin_config(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "socket.connection.setup.timeout.ms": 2000,
        "log.connection.close": False,
        # librdkafka logs refused connections to stderr; keep it to real errors.
        "log_level": 3,
    }


# --------------------------------------------------------------------------- Kafka


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
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(HINT_MAVEN)
    say = log.debug if quiet else log.info
    say("fetching Apache Kafka %s jars with Maven into %s", settings.kafka_version, lib)
    if lib.exists():
        shutil.rmtree(lib)  # partial copy of an earlier, interrupted run
    t0 = time.monotonic()
    paths = _paths(settings)
    paths.logs.mkdir(parents=True, exist_ok=True)
    mvn_log = paths.logs / "maven.log"
    cmd = [
        mvn,
        "-B",
        "--no-transfer-progress",
        "-f",
        str(KAFKA_POM),
        f"-Dkafka.version={settings.kafka_version}",
        f"-Dkafka.lib={lib}",
        "package",
    ]
    with open(mvn_log, "w") as fh:
        rc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, check=False
        ).returncode
    if rc != 0 or not (lib / f"kafka_2.13-{settings.kafka_version}.jar").exists():
        raise StackError(
            f"maven could not fetch Kafka {settings.kafka_version} (exit {rc}); see {mvn_log}:\n"
            + _tail(mvn_log, 25)
        )
    _kafka_stamp(settings).write_text(f"{settings.kafka_version}\n")
    say("Kafka jars ready in %.1fs", time.monotonic() - t0)
    return lib


def _kafka_properties(settings: Settings) -> str:
    p = _paths(settings)
    host = settings.kafka_host
    return f"""\
# Written by careledger.stack on every `careledger up`; edit Settings, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{settings.kafka_controller_port}
listeners=PLAINTEXT://{host}:{settings.kafka_port},CONTROLLER://{host}:{settings.kafka_controller_port}
advertised.listeners=PLAINTEXT://{host}:{settings.kafka_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={p.kafka_data}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
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


def _kafka_format(settings: Settings, java: str) -> None:
    p = _paths(settings)
    if (p.kafka_data / "meta.properties").exists():
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
    # The storage tool is short-lived: a smaller heap starts faster.
    cmd = [c for c in cmd if c not in KAFKA_HEAP]
    cmd.insert(1, "-Xmx256m")
    res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if res.returncode != 0:
        raise StackError(f"formatting Kafka storage failed:\n{res.stdout}{res.stderr}")
    log.debug("formatted Kafka storage (cluster id %s)", cluster_id)


def _start_kafka(settings: Settings, *, quiet: bool) -> int | None:
    """Start the broker unless it is already running; return the pid we started (or None)."""
    p = _paths(settings)
    pid = _our_pid(p.kafka_pid, str(p.kafka_props))
    if pid is not None:
        return None
    if _port_open(settings.kafka_host, settings.kafka_port):
        if kafka_ready(settings):
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
    p.kafka_props.write_text(_kafka_properties(settings))
    _kafka_format(settings, java)
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


# --------------------------------------------------------------------------- ClickHouse


# Where to look when PATH does not have it (Debian puts the server in /usr/sbin).
# Debian's package: a `clickhouse-server` binary; upstream packages: one multi-call
# `clickhouse` binary that takes `server` as its first argument.
CLICKHOUSE_SERVER_CANDIDATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("clickhouse-server", ()),
    ("/usr/sbin/clickhouse-server", ()),
    ("clickhouse", ("server",)),
    ("/usr/bin/clickhouse", ("server",)),
)


def _clickhouse_server_cmd() -> list[str]:
    for name, args in CLICKHOUSE_SERVER_CANDIDATES:
        found = shutil.which(name) if "/" not in name else (name if Path(name).exists() else None)
        if found:
            return [found, *args]
    raise StackError(HINT_CLICKHOUSE)


def _xml_text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _write_clickhouse_config(settings: Settings) -> None:
    p = _paths(settings)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", settings.clickhouse_user):
        raise StackError(
            f"clickhouse_user {settings.clickhouse_user!r} is not a valid XML element name"
        )
    values = {
        "host": settings.clickhouse_host,
        "tcp_port": settings.clickhouse_port,
        "http_port": settings.clickhouse_http_port,
        "data_dir": str(p.clickhouse_data),
        "log_dir": str(p.clickhouse_logs),
        "users_config": str(p.clickhouse_users),
        "max_memory_usage": CLICKHOUSE_MAX_MEMORY_USAGE,
        "user": settings.clickhouse_user,
        "password": _xml_text(settings.clickhouse_password),
    }
    for name, target in (("config.xml", p.clickhouse_config), ("users.xml", p.clickhouse_users)):
        text = Template((CLICKHOUSE_TEMPLATES / name).read_text()).substitute(values)
        target.write_text(text)


def _start_clickhouse(settings: Settings, *, quiet: bool) -> int | None:
    p = _paths(settings)
    pid = _our_pid(p.clickhouse_pid, str(p.clickhouse_config))
    if pid is not None:
        return None
    if _port_open(settings.clickhouse_host, settings.clickhouse_port):
        if clickhouse_ready(settings):
            log.info(
                "a ClickHouse server not started by careledger answers on %s:%d; using it",
                settings.clickhouse_host,
                settings.clickhouse_port,
            )
            return None
        raise StackError(
            f"port {settings.clickhouse_port} is in use by another process that does not answer as "
            "ClickHouse; stop it or set CARELEDGER_CLICKHOUSE_PORT"
        )
    if _port_open(settings.clickhouse_host, settings.clickhouse_http_port):
        raise StackError(
            f"ClickHouse HTTP port {settings.clickhouse_http_port} is in use by another process; "
            "stop it or set CARELEDGER_CLICKHOUSE_HTTP_PORT"
        )
    cmd = _clickhouse_server_cmd()
    for d in (p.clickhouse, p.clickhouse_data, p.clickhouse_logs):
        d.mkdir(parents=True, exist_ok=True)
    _write_clickhouse_config(settings)
    pid = _spawn(
        [*cmd, f"--config-file={p.clickhouse_config}"], cwd=p.clickhouse, out=p.clickhouse_out
    )
    p.clickhouse_pid.write_text(f"{pid}\n")
    (log.debug if quiet else log.info)(
        "started ClickHouse (pid %d) on %s tcp %d / http %d, logs in %s",
        pid,
        settings.clickhouse_host,
        settings.clickhouse_port,
        settings.clickhouse_http_port,
        p.clickhouse_logs,
    )
    return pid


# --------------------------------------------------------------------------- topics


def default_topics(settings: Settings) -> dict[str, int]:
    """The careledger topics and their partition counts."""
    return {
        settings.topic_events: settings.partitions,
        settings.topic_dead_letter: 1,
        settings.topic_alerts: 1,
        settings.topic_checkpoints: 1,
        settings.topic_consents: settings.reference_partitions,
        settings.topic_care_relationships: settings.reference_partitions,
        settings.topic_workforce: settings.reference_partitions,
        settings.topic_patients: settings.reference_partitions,
        settings.topic_sources: settings.reference_partitions,
        settings.topic_quarantine: 1,
        settings.topic_raw: settings.partitions,
    }


def topic_config(settings: Settings, name: str) -> dict[str, str]:
    """Per-topic settings. Dead letters and checkpoints are evidence: keep them forever.

    Dead-lettered offsets are counted in block headers, so their records must stay
    available for review and replay; checkpoints are what truncation is detected against.
    Raw records (what the ingest gateway received) are kept forever too; they and dead
    letters may be as large as a received record allows
    (``careledger.raw_record.MAX_ENVELOPE_BYTES``).
    """
    from careledger.raw_record import MAX_ENVELOPE_BYTES

    if name in (settings.topic_raw, settings.topic_dead_letter):
        return {
            "retention.ms": "-1",
            "retention.bytes": "-1",
            "max.message.bytes": str(MAX_ENVELOPE_BYTES + 65536),
        }
    if name in (
        settings.topic_dead_letter,
        settings.topic_checkpoints,
        settings.topic_consents,
        settings.topic_care_relationships,
        settings.topic_workforce,
        settings.topic_patients,
        settings.topic_sources,
        settings.topic_quarantine,
    ):
        # Reference data must stay replayable: the state any decision used is
        # rebuilt from it.
        return {"retention.ms": "-1", "retention.bytes": "-1"}
    return {}


def ensure_topics(settings: Settings, topics: dict[str, int], timeout: float = 30.0) -> None:
    """Create the missing topics (replication factor 1) and wait until they have leaders.

    Existing topics are left as they are; a partition count different from the one
    asked for is logged as a warning, not changed.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient(_admin_config(settings))
    deadline = time.monotonic() + timeout
    pending = dict(topics)
    last_error: Exception | None = None
    while pending and time.monotonic() < deadline:
        existing = admin.list_topics(timeout=max(1.0, deadline - time.monotonic())).topics
        for name in list(pending):
            if name in existing and not existing[name].error:
                have = len(existing[name].partitions)
                if have != pending[name]:
                    log.warning(
                        "topic %s has %d partitions, settings ask for %d", name, have, pending[name]
                    )
                del pending[name]
        if not pending:
            break
        futures = admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=n,
                    replication_factor=1,
                    config=topic_config(settings, name),
                )
                for name, n in pending.items()
            ],
            operation_timeout=10,
            request_timeout=15,
        )
        for name, fut in futures.items():
            try:
                fut.result()
                log.debug("created topic %s (%d partitions)", name, pending[name])
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                last_error = exc
                if not err.retriable():
                    raise StackError(f"cannot create topic {name}: {err.str()}") from exc
        time.sleep(0.1)
    if pending:
        raise StackError(f"timed out creating topics {sorted(pending)}: {last_error}")
    _wait_for_leaders(admin, list(topics), deadline)


def _wait_for_leaders(admin: Any, names: list[str], deadline: float) -> None:
    while True:
        md = admin.list_topics(timeout=5)
        missing = [
            n
            for n in names
            if n not in md.topics
            or md.topics[n].error is not None
            or any(p.leader < 0 for p in md.topics[n].partitions.values())
        ]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise StackError(f"topics {missing} have no partition leader yet")
        time.sleep(0.1)


def delete_topics(settings: Settings, names: Sequence[str], timeout: float = 30.0) -> None:
    """Delete topics (missing ones are ignored)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    if not names:
        return
    admin = AdminClient(_admin_config(settings))
    futures = admin.delete_topics(list(names), operation_timeout=timeout, request_timeout=timeout)
    for name, fut in futures.items():
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise StackError(f"cannot delete topic {name}: {exc.args[0].str()}") from exc


# --------------------------------------------------------------------------- schema


def apply_schema(settings: Settings) -> list[int] | None:
    """Run ``careledger.storage.migrations.migrate``; None if that module does not exist yet."""
    try:
        from careledger.storage import migrations
    except ModuleNotFoundError as exc:
        if exc.name and "careledger.storage" in exc.name:
            log.warning(
                "careledger.storage.migrations not available yet; skipping the ClickHouse schema"
            )
            return None
        raise
    applied: list[int] = migrations.migrate(settings)
    return applied


# --------------------------------------------------------------------------- public API


def status(settings: Settings) -> StackStatus:
    p = _paths(settings)
    kpid = _our_pid(p.kafka_pid, str(p.kafka_props))
    cpid = _our_pid(p.clickhouse_pid, str(p.clickhouse_config))
    kready = kafka_ready(settings)
    version = _clickhouse_version(settings)
    return StackStatus(
        kafka=ServiceStatus(
            name="kafka",
            ready=kready,
            pid=kpid,
            ports={"broker": settings.kafka_port, "controller": settings.kafka_controller_port},
            detail=(
                f"Kafka {settings.kafka_version}, KRaft"
                if kready
                else ("starting or unhealthy" if kpid else "")
            ),
        ),
        clickhouse=ServiceStatus(
            name="clickhouse",
            ready=version is not None,
            pid=cpid,
            ports={"tcp": settings.clickhouse_port, "http": settings.clickhouse_http_port},
            detail=(
                f"ClickHouse {version}" if version else ("starting or unhealthy" if cpid else "")
            ),
        ),
    )


def _wait_ready(
    settings: Settings,
    name: str,
    check: Any,
    started_pid: int | None,
    out_file: Path,
    log_file: Path,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check(settings):
            return
        if started_pid is not None and not _alive(started_pid):
            _reap(started_pid)
            raise StackError(
                f"{name} exited during startup; see {out_file} and {log_file}:\n"
                + (_tail(out_file) or _tail(log_file))
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"{name} did not become ready within {timeout:.0f}s; "
                f"see {out_file} and {log_file}:\n" + _tail(log_file)
            )
        time.sleep(0.2)


def up(
    settings: Settings,
    *,
    quiet: bool = False,
    timeout: float | None = None,
    topics: bool = True,
    schema: bool = True,
) -> StackStatus:
    """Start Kafka and ClickHouse if needed, wait until ready, create topics, migrate."""
    say = log.debug if quiet else log.info
    t0 = time.monotonic()
    p = _paths(settings)
    with _stack_lock(settings):
        p.logs.mkdir(parents=True, exist_ok=True)
        kpid = _start_kafka(settings, quiet=quiet)
        cpid = _start_clickhouse(settings, quiet=quiet)
        _wait_ready(
            settings,
            "ClickHouse",
            clickhouse_ready,
            cpid,
            p.clickhouse_out,
            p.clickhouse_logs / "clickhouse-server.err.log",
            timeout or CLICKHOUSE_START_TIMEOUT_S,
        )
        _wait_ready(
            settings,
            "Kafka",
            kafka_ready,
            kpid,
            p.kafka_out,
            p.kafka_logs / "server.log",
            timeout or KAFKA_START_TIMEOUT_S,
        )
        if kpid or cpid:
            say("stack ready in %.1fs", time.monotonic() - t0)
    started = tuple(n for n, pid in (("kafka", kpid), ("clickhouse", cpid)) if pid is not None)
    if topics:
        try:
            ensure_topics(settings, default_topics(settings))
        except StackError:
            raise
        except Exception as exc:  # KafkaException from the admin client
            raise StackError(f"cannot create the Kafka topics: {exc}") from exc
    if schema:
        try:
            applied = apply_schema(settings)
        except Exception as exc:  # StorageError, driver errors
            raise StackError(f"cannot apply the ClickHouse schema: {exc}") from exc
        if applied:
            say("applied ClickHouse migrations %s to %s", applied, settings.clickhouse_database)
    return dataclasses.replace(status(settings), started=started)


def _down_locked(settings: Settings) -> None:
    p = _paths(settings)
    for name, pid_file, marker in (
        ("Kafka", p.kafka_pid, str(p.kafka_props)),
        ("ClickHouse", p.clickhouse_pid, str(p.clickhouse_config)),
    ):
        pid = _our_pid(pid_file, marker)
        if pid is not None:
            log.info("stopping %s (pid %d)", name, pid)
            _terminate(pid, name)
        pid_file.unlink(missing_ok=True)
    p.transient.unlink(missing_ok=True)


def down(settings: Settings) -> StackStatus:
    """Stop the services careledger started (a service it did not start is left alone)."""
    with _stack_lock(settings):
        _down_locked(settings)
    return status(settings)


# --------------------------------------------------------------------------- leases
#
# Several test sessions (several engineers, or the CLI and a test run) share one
# local stack. A session takes a lease before calling up() and releases it at the
# end; the stack is stopped only by the last lease holder, and only if a test
# session (not `careledger up` from the CLI) started it.


def acquire_lease(settings: Settings) -> Path:
    p = _paths(settings)
    p.leases.mkdir(parents=True, exist_ok=True)
    lease = p.leases / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.lease"
    lease.write_text(f"{os.getpid()}\n")
    return lease


def mark_started_by_tests(settings: Settings) -> None:
    p = _paths(settings)
    p.leases.mkdir(parents=True, exist_ok=True)
    p.transient.write_text(f"{os.getpid()}\n")


def _live_leases(settings: Settings) -> list[Path]:
    live = []
    for lease in _paths(settings).leases.glob("*.lease"):
        try:
            pid = int(lease.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid > 0 and _alive(pid):
            live.append(lease)
        else:
            lease.unlink(missing_ok=True)  # left over by a crashed session
    return live


def release_lease(settings: Settings, lease: Path, *, stop_if_last: bool = True) -> bool:
    """Drop ``lease``; stop the stack if tests started it and no other lease is live.

    Returns True when the stack was stopped.
    """
    p = _paths(settings)
    with _stack_lock(settings):
        lease.unlink(missing_ok=True)
        if not stop_if_last or not p.transient.exists() or _live_leases(settings):
            return False
        _down_locked(settings)
        return True


# --------------------------------------------------------------------------- CLI


def configure_up(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds to wait for each service"
    )
    parser.add_argument("--no-topics", action="store_true", help="do not create the Kafka topics")
    parser.add_argument(
        "--no-migrate", action="store_true", help="do not apply the ClickHouse schema"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")


def command_up(args: argparse.Namespace, settings: Settings) -> int:
    try:
        st = up(
            settings,
            quiet=getattr(args, "quiet", False),
            timeout=getattr(args, "timeout", None),
            topics=not getattr(args, "no_topics", False),
            schema=not getattr(args, "no_migrate", False),
        )
    except StackError as exc:
        print(f"careledger up: {exc}", file=sys.stderr)
        return 2
    # Started or confirmed from the CLI: the stack is the developer's now, and test
    # sessions must not stop it when they finish.
    _paths(settings).transient.unlink(missing_ok=True)
    if not getattr(args, "quiet", False):
        print(st)
    return 0 if st.up else 2


def command_down(args: argparse.Namespace, settings: Settings) -> int:
    st = down(settings)
    print(st)
    return 0


def configure_status(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def command_status(args: argparse.Namespace, settings: Settings) -> int:
    st = status(settings)
    if getattr(args, "json", False):
        print(json.dumps(st.as_dict(), indent=2))
    else:
        print(st)
    return 0 if st.up else 1


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m careledger.stack install-kafka``: used by deploy/bootstrap.sh."""
    from careledger.config import load_settings

    parser = argparse.ArgumentParser(prog="python -m careledger.stack")
    parser.add_argument("action", choices=["install-kafka", "kafka-version"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = load_settings()
    if args.action == "kafka-version":
        print(settings.kafka_version)
        return 0
    try:
        lib = install_kafka(settings)
    except StackError as exc:
        print(f"careledger: {exc}", file=sys.stderr)
        return 2
    print(lib)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
