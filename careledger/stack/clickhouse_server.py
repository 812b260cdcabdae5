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
from typing import Literal

from careledger.config import Settings
from careledger.credentials import clickhouse_login, local_password, local_password_file, tls_dir
from careledger.tls import server_cert

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


def _stack_password(settings: Settings, role: Literal["writer", "reader"]) -> str:
    """The password the local stack gives ``role``: as configured, else the one made on
    its first start (``<run_dir>/secrets``). Never empty (ADR 0032)."""
    login = clickhouse_login(settings, role)
    if login.password:
        return login.password
    return local_password(local_password_file(settings, role), f"ClickHouse {role} password file")


def _cert_dir(settings: Settings) -> Path:
    """Where the server's certificate is made: next to the configured CA when that is a
    local CA (its key beside it: a cluster's replicas share it), else the stack's own."""
    ca = settings.clickhouse_ca_file
    if ca is not None and (Path(ca).parent / "ca.key").exists():
        return Path(ca).parent
    return tls_dir(settings)


def clickhouse_ports(settings: Settings) -> dict[str, int]:
    """The server's ports by what they speak, for ``status``."""
    if settings.clickhouse_secure:
        return {"tls": settings.clickhouse_port, "https": settings.clickhouse_http_port}
    return {"tcp": settings.clickhouse_port, "http": settings.clickhouse_http_port}


def _listeners(settings: Settings) -> str:
    if not settings.clickhouse_secure:
        return (
            f"    <tcp_port>{settings.clickhouse_port}</tcp_port>\n"
            f"    <http_port>{settings.clickhouse_http_port}</http_port>"
        )
    cert = server_cert(_cert_dir(settings), f"clickhouse-{settings.clickhouse_port}")
    return f"""    <tcp_port_secure>{settings.clickhouse_port}</tcp_port_secure>
    <https_port>{settings.clickhouse_http_port}</https_port>
    <openSSL>
        <server>
            <certificateFile>{cert.cert}</certificateFile>
            <privateKeyFile>{cert.key}</privateKeyFile>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>true</cacheSessions>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
        <client>
            <!-- a cluster's other replica, when fetching parts (interserver HTTPS) -->
            <caConfig>{cert.ca}</caConfig>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <verificationMode>strict</verificationMode>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
            <invalidCertificateHandler>
                <name>RejectCertificateHandler</name>
            </invalidCertificateHandler>
        </client>
    </openSSL>"""


def _write_clickhouse_config(settings: Settings, replication: str = "") -> None:
    p = _paths(settings)
    for setting in ("clickhouse_user", "clickhouse_reader_user"):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", getattr(settings, setting)):
            raise StackError(
                f"{setting} {getattr(settings, setting)!r} is not a valid XML element name"
            )
    if settings.clickhouse_user == settings.clickhouse_reader_user:
        raise StackError("clickhouse_user and clickhouse_reader_user must differ")
    values = {
        "host": settings.clickhouse_host,
        "listeners": _listeners(settings),
        "data_dir": str(p.clickhouse_data),
        "log_dir": str(p.clickhouse_logs),
        "users_config": str(p.clickhouse_users),
        "max_memory_usage": CLICKHOUSE_MAX_MEMORY_USAGE,
        "user": settings.clickhouse_user,
        "reader_user": settings.clickhouse_reader_user,
        # never the passwords themselves (ClickHouse compares the SHA-256 of what is sent)
        "password_sha256_hex": hashlib.sha256(
            _stack_password(settings, "writer").encode("utf-8")
        ).hexdigest(),
        "reader_password_sha256_hex": hashlib.sha256(
            _stack_password(settings, "reader").encode("utf-8")
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
