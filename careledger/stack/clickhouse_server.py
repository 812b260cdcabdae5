"""The ClickHouse server: finding the binary, writing its config from the templates in
``deploy/clickhouse/`` and starting it."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path
from string import Template

from careledger.config import Settings

from .model import StackError
from .paths import DEPLOY_DIR, _paths
from .processes import _our_pid, _port_open, _spawn
from .readiness import clickhouse_ready

# Every part of the stack logs as "careledger.stack", like the single module it was.
log = logging.getLogger("careledger.stack")

CLICKHOUSE_TEMPLATES = DEPLOY_DIR / "clickhouse"
CLICKHOUSE_MAX_MEMORY_USAGE = 2 * 1024**3  # per query, bytes

HINT_CLICKHOUSE = (
    "clickhouse-server not installed: run deploy/bootstrap.sh "
    "or apt-get install clickhouse-server clickhouse-client"
)


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


def _write_clickhouse_config(settings: Settings, replication: str = "") -> None:
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
        # never the password itself (ClickHouse compares the SHA-256 of what is sent)
        "password_sha256_hex": hashlib.sha256(
            settings.clickhouse_password.encode("utf-8")
        ).hexdigest(),
        # a replica of a cluster (ADR 0030): its interserver port, ZooKeeper and macros
        "replication": replication,
    }
    for name, target in (("config.xml", p.clickhouse_config), ("users.xml", p.clickhouse_users)):
        text = Template((CLICKHOUSE_TEMPLATES / name).read_text()).substitute(values)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)  # whatever the umask, or an older file's mode
            fh.write(text)


def _start_clickhouse(settings: Settings, *, quiet: bool, replication: str = "") -> int | None:
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
    _write_clickhouse_config(settings, replication)
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
