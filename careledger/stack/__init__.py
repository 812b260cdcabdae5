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

This module holds the public API (:func:`up`, :func:`down`, :func:`status`, the test
sessions' leases) and the ``careledger up|down|status`` commands; the parts live in
``model`` (error, status types), ``paths`` (the ``<run_dir>`` layout, the lock),
``processes`` (spawn, find, stop), ``readiness`` (probes), ``kafka_server`` (Java,
Maven, KRaft), ``clickhouse_server`` and ``topics``. ``python -m careledger.stack``
(``__main__``) installs the Kafka jars for deploy/bootstrap.sh.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from careledger.config import Settings
from careledger_core.errors import CareledgerError

from .clickhouse_server import _start_clickhouse, clickhouse_ports
from .kafka_server import (
    _start_kafka,
    install_kafka,
    kafka_installed,
    kafka_lib_dir,
    new_cluster_id,
)
from .model import ServiceStatus, StackError, StackStatus
from .paths import _paths, _stack_lock
from .processes import _alive, _our_pid, _reap, _tail, _terminate
from .readiness import _clickhouse_version, clickhouse_ready, kafka_ready
from .topics import default_topics, delete_topics, ensure_topics, topic_config

__all__ = [
    "ServiceStatus",
    "StackError",
    "StackStatus",
    "acquire_lease",
    "apply_schema",
    "clickhouse_ready",
    "command_down",
    "command_status",
    "command_up",
    "configure_down",
    "configure_status",
    "configure_up",
    "default_topics",
    "delete_topics",
    "down",
    "ensure_topics",
    "install_kafka",
    "kafka_installed",
    "kafka_lib_dir",
    "kafka_ready",
    "mark_started_by_tests",
    "new_cluster_id",
    "release_lease",
    "status",
    "topic_config",
    "up",
]

log = logging.getLogger(__name__)

KAFKA_START_TIMEOUT_S = 90.0
CLICKHOUSE_START_TIMEOUT_S = 60.0


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
            ports=clickhouse_ports(settings),
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
        except KafkaException as exc:  # from the admin client (list_topics)
            raise StackError(f"cannot create the Kafka topics: {exc}") from exc
    if schema:
        try:
            applied = apply_schema(settings)
        except CareledgerError as exc:  # StorageError, MigrationError
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
    _cluster_flag(
        parser,
        "start the local cluster instead: 3 Kafka nodes, ZooKeeper, 2 "
        "ClickHouse replicas (ADR 0030)",
    )


def _cluster_flag(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--cluster", action="store_true", help=text)


def _command_up_cluster(args: argparse.Namespace, settings: Settings) -> int:
    from careledger.storage.backend import StorageError

    from . import cluster

    try:
        st = cluster.up(
            settings,
            quiet=getattr(args, "quiet", False),
            timeout=getattr(args, "timeout", None),
            topics=not getattr(args, "no_topics", False),
            schema=not getattr(args, "no_migrate", False),
        )
    except (StackError, StorageError) as exc:
        print(f"careledger up --cluster: {exc}", file=sys.stderr)
        return 2
    if not getattr(args, "quiet", False):
        print(st)
        print(f"export CARELEDGER_CONFIG={st.config}")
    return 0 if st.up else 2


def command_up(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "cluster", False):
        return _command_up_cluster(args, settings)
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


def configure_down(parser: argparse.ArgumentParser) -> None:
    _cluster_flag(parser, "stop the local cluster (ADR 0030)")


def command_down(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "cluster", False):
        from . import cluster

        print(cluster.down(settings))
        return 0
    st = down(settings)
    print(st)
    return 0


def configure_status(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    _cluster_flag(parser, "report on the local cluster (ADR 0030)")


def command_status(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "cluster", False):
        from . import cluster

        cst = cluster.status(settings)
        print(json.dumps(cst.as_dict(), indent=2) if getattr(args, "json", False) else cst)
        return 0 if cst.up else 1
    st = status(settings)
    if getattr(args, "json", False):
        print(json.dumps(st.as_dict(), indent=2))
    else:
        print(st)
    return 0 if st.up else 1
