"""A standalone Apache ZooKeeper server for the local cluster (ADR 0030).

ClickHouse 18.16 has no built-in Keeper: its ReplicatedMergeTree replicas coordinate
through ZooKeeper. Like the Kafka broker, the server runs on the JVM from jars that Maven
copies into ``deploy/zookeeper/lib/<version>/`` (see ``deploy/zookeeper/pom.xml``),
refused unless they are exactly the files pinned in ``deploy/zookeeper/jars-<version>.sha256``.
It listens on loopback only and keeps its state under the directory it is given::

    <directory>/zoo.cfg    <directory>/data/    <directory>/zookeeper.pid
    <logs>/zookeeper/zookeeper.log              <logs>/zookeeper.out (stdout/stderr: errors)

:func:`start_zookeeper` is idempotent like the Kafka broker's start: a live process of
ours (pid file) is left alone, a ZooKeeper not started by careledger on the port is used,
anything else on the port is an error. It does not wait: :func:`wait_zookeeper` does.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from .kafka_server import _java, maven_pinned_jars, pinned_jars
from .model import StackError
from .paths import DEPLOY_DIR
from .processes import _alive, _our_pid, _port_open, _reap, _spawn, _tail, _terminate

# Every part of the stack logs as "careledger.stack", like the single module it was.
log = logging.getLogger("careledger.stack")

ZOOKEEPER_VERSION = "3.9.5"
ZOOKEEPER_HOST = "127.0.0.1"
ZOOKEEPER_POM = DEPLOY_DIR / "zookeeper" / "pom.xml"
ZOOKEEPER_LOGBACK = DEPLOY_DIR / "zookeeper" / "logback.xml"
ZOOKEEPER_LIB_ROOT = DEPLOY_DIR / "zookeeper" / "lib"
#: ``sha256sum`` lines of every jar of a ZooKeeper version (like ``KAFKA_PINS``)
ZOOKEEPER_PINS = DEPLOY_DIR / "zookeeper" / "jars-{version}.sha256"
ZOOKEEPER_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
ZOOKEEPER_START_TIMEOUT_S = 60.0


def zookeeper_lib_dir(version: str = ZOOKEEPER_VERSION) -> Path:
    return ZOOKEEPER_LIB_ROOT / version


def _stamp(version: str) -> Path:
    return zookeeper_lib_dir(version) / ".complete"


def _main_jar(version: str) -> Path:
    return zookeeper_lib_dir(version) / f"zookeeper-{version}.jar"


def zookeeper_installed(version: str = ZOOKEEPER_VERSION) -> bool:
    """A complete copy of exactly the jars pinned now (a copy made before the pins
    changed, e.g. without the epoll transport the TLS port needs, is fetched again)."""
    if not (_stamp(version).exists() and _main_jar(version).exists()):
        return False
    lib = zookeeper_lib_dir(version)
    have = {p.name for p in lib.glob("*.jar")}
    return have == set(pinned_jars(version, ZOOKEEPER_PINS, product="ZooKeeper"))


def install_zookeeper(run_dir_logs: Path, *, quiet: bool) -> Path:
    """Copy the ZooKeeper jars with Maven (skipped if present); refuse unpinned ones.

    Maven's output goes to ``<run_dir_logs>/zookeeper-maven.log``.
    """
    version = ZOOKEEPER_VERSION
    lib = zookeeper_lib_dir(version)
    if zookeeper_installed(version):
        return lib
    return maven_pinned_jars(
        "ZooKeeper",
        version,
        ZOOKEEPER_POM,
        {"zookeeper.version": version, "zookeeper.lib": str(lib)},
        lib,
        _main_jar(version),
        pinned_jars(version, ZOOKEEPER_PINS, product="ZooKeeper"),
        run_dir_logs / "zookeeper-maven.log",
        _stamp(version),
        quiet=quiet,
    )


# --------------------------------------------------------------------------- the server


def _cfg_path(directory: Path) -> Path:
    return directory / "zoo.cfg"


def _pid_path(directory: Path) -> Path:
    return directory / "zookeeper.pid"


def _zoo_cfg(directory: Path, port: int) -> str:
    return f"""\
# Written by careledger.stack.zookeeper_server on every start; not edited by hand.
tickTime=2000
dataDir={directory / "data"}
clientPort={port}
clientPortAddress={ZOOKEEPER_HOST}
standaloneEnabled=true
maxClientCnxns=60
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,mntr
autopurge.snapRetainCount=3
autopurge.purgeInterval=24
"""


def four_letter_word(port: int, word: str, timeout: float = 2.0) -> str | None:
    """The server's answer to a four-letter word (``ruok``, ``srvr``, ``mntr``); None if
    nothing on ``port`` answers."""
    try:
        with socket.create_connection((ZOOKEEPER_HOST, port), timeout=timeout) as sock:
            sock.sendall(word.encode("ascii"))
            sock.shutdown(socket.SHUT_WR)
            chunks: list[bytes] = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
    except OSError:
        return None
    return b"".join(chunks).decode("utf-8", errors="replace")


def zookeeper_ready(port: int) -> bool:
    """True when a ZooKeeper on ``port`` serves requests.

    ``srvr``, not ``ruok``: a server whose start failed half-way (its main thread died
    before loading its database) still answers ``ruok`` with ``imok``, but ``srvr`` with
    "This ZooKeeper instance is not currently serving requests".
    """
    answer = four_letter_word(port, "srvr")
    if answer is None or not answer.startswith("Zookeeper version:"):
        return False
    return any(
        line.startswith("Mode:") and line.split(":", 1)[1].strip() in _SERVING
        for line in answer.splitlines()
    )


_SERVING = frozenset({"standalone", "leader", "follower", "observer"})


def start_zookeeper(directory: Path, logs: Path, port: int, *, quiet: bool) -> int | None:
    """Start a standalone ZooKeeper on ``127.0.0.1:<port>`` unless one is already there;
    return the pid we started (None: ours was running, or another ZooKeeper answers)."""
    directory, logs = directory.resolve(), logs.resolve()  # the JVM runs in ``directory``
    cfg = _cfg_path(directory)
    if _our_pid(_pid_path(directory), str(cfg)) is not None:
        return None
    if _port_open(ZOOKEEPER_HOST, port):
        if zookeeper_ready(port):
            log.info("a ZooKeeper not started by careledger answers on port %d; using it", port)
            return None
        raise StackError(
            f"port {port} is in use by another process that is not a serving ZooKeeper; "
            "stop it or choose another ZooKeeper port"
        )
    java = _java()
    install_zookeeper(logs, quiet=quiet)
    (directory / "data").mkdir(parents=True, exist_ok=True)
    (logs / "zookeeper").mkdir(parents=True, exist_ok=True)
    cfg.write_text(_zoo_cfg(directory, port))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAVA_TOOL_OPTIONS")}
    cmd = [
        java,
        "-Xmx256m",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlogback.configurationFile={ZOOKEEPER_LOGBACK}",
        f"-Dzookeeper.log.dir={logs / 'zookeeper'}",
        "-cp",
        f"{zookeeper_lib_dir()}/*",
        ZOOKEEPER_MAIN,
        str(cfg),
    ]
    pid = _spawn(cmd, cwd=directory, out=logs / "zookeeper.out", env=env)
    _pid_path(directory).write_text(f"{pid}\n")
    (log.debug if quiet else log.info)(
        "started ZooKeeper %s (pid %d) on %s:%d, logs in %s",
        ZOOKEEPER_VERSION,
        pid,
        ZOOKEEPER_HOST,
        port,
        logs / "zookeeper",
    )
    return pid


def wait_zookeeper(
    port: int, started_pid: int | None, logs: Path, timeout: float = ZOOKEEPER_START_TIMEOUT_S
) -> None:
    """Wait until the ZooKeeper on ``port`` serves; StackError if the process we started
    (``started_pid``) exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    out, log_file = logs / "zookeeper.out", logs / "zookeeper" / "zookeeper.log"
    while not zookeeper_ready(port):
        if started_pid is not None and (error := _startup_error(out)):
            # e.g. a thread died loading the database: the JVM lives on (ruok answers
            # imok) but never serves; waiting longer would not help
            raise StackError(
                f"ZooKeeper (pid {started_pid}) failed during startup and does not serve; "
                f"stop it (stop_zookeeper); see {out} and {log_file}:\n{error}"
            )
        if started_pid is not None and not _alive(started_pid):
            _reap(started_pid)
            raise StackError(
                f"ZooKeeper exited during startup; see {out} and {log_file}:\n"
                + (_tail(out) or _tail(log_file))
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"ZooKeeper did not serve on port {port} within {timeout:.0f}s; see {out} and "
                f"{log_file}:\n" + (_tail(out) or _tail(log_file))
            )
        time.sleep(0.2)


def _startup_error(out: Path) -> str | None:
    """The ERROR lines (the only ones logback.xml sends to stdout) that the latest start
    wrote to ``out``, after ``_spawn``'s ``=== ... starting`` header; None if none."""
    try:
        text = out.read_text(errors="replace")
    except OSError:
        return None
    latest = text.rsplit("\n=== ", 1)[-1].splitlines()[1:]
    if not any(" ERROR " in line for line in latest):
        return None
    return "\n".join(latest[-15:])


def zookeeper_pid(directory: Path) -> int | None:
    """The pid of the ZooKeeper careledger started in ``directory``, if it runs."""
    directory = directory.resolve()
    return _our_pid(_pid_path(directory), str(_cfg_path(directory)))


def stop_zookeeper(directory: Path) -> bool:
    """Stop the ZooKeeper careledger started in ``directory`` (one it did not start is left
    alone); True when one was running and is stopped."""
    directory = directory.resolve()
    pid_file = _pid_path(directory)
    pid = _our_pid(pid_file, str(_cfg_path(directory)))
    if pid is not None:
        log.info("stopping ZooKeeper (pid %d)", pid)
        _terminate(pid, "ZooKeeper")
    pid_file.unlink(missing_ok=True)
    return pid is not None
