"""Who careledger logs in to ClickHouse as, and how (ADR 0032).

Two users: the **writer** (``clickhouse_user``: the processor, the auditor, migrations,
``alerts ack``) and the **reader** (``clickhouse_reader_user``: ``verify``, the access
reports and proofs), which ClickHouse holds to ``readonly = 1``. A password comes from
its setting, else from its ``*_password_file`` (owner-only, like a key), else from the
file the local stack generated on its first start (``<run_dir>/secrets/``); there is no
default password. The native port speaks TLS (``clickhouse_secure``), verified against
``clickhouse_ca_file``, else the local stack's CA (``<run_dir>/tls/ca.pem``), else the
system's trust store.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from careledger.keys import KeyFileError, read_owner_only

__all__ = [
    "ClickHouseLogin",
    "CredentialError",
    "Role",
    "clickhouse_login",
    "local_password",
    "local_password_file",
    "pin_login",
    "read_secret_file",
    "secret_from_env_or_file",
    "tls_dir",
]

Role = Literal["writer", "reader", "replica"]


class CredentialError(KeyFileError):
    """A password file that cannot be used (missing, empty, or readable by others)."""


@dataclass(frozen=True)
class ClickHouseLogin:
    user: str
    password: str = ""
    secure: bool = False
    ca_file: Path | None = None

    def tls_options(self) -> dict[str, Any]:
        """clickhouse-driver's TLS arguments: none, or TLS with the server's certificate
        and name verified (against ``ca_file`` when set, else the system's store)."""
        if not self.secure:
            return {}
        options: dict[str, Any] = {"secure": True, "verify": True}
        if self.ca_file is not None:
            options["ca_certs"] = str(self.ca_file)
        return options

    def __repr__(self) -> str:  # never the password
        return (
            f"ClickHouseLogin(user={self.user!r}, password={'***' if self.password else ''!r}, "
            f"secure={self.secure}, ca_file={self.ca_file})"
        )


def tls_dir(settings: Any) -> Path:
    """The local stack's TLS material (``careledger.tls``)."""
    return Path(settings.run_dir) / "tls"


def local_password_file(settings: Any, role: Literal["writer", "reader"]) -> Path:
    """The password the local stack generates for ``role`` on its first start."""
    return Path(settings.run_dir) / "secrets" / f"clickhouse-{role}.password"


def read_secret_file(path: Path, what: str) -> str:
    """A password from ``path`` (one line), which only its owner may read."""
    text = read_owner_only(path, what).strip()
    if not text:
        raise CredentialError(f"{what} {path} is empty")
    return text


def secret_from_env_or_file(
    env_name: str, path: Path | None, what: str, env: Mapping[str, str] | None = None
) -> str:
    """A secret from the environment variable ``env_name`` (of ``env``, default the
    process's), else from ``path`` (owner only, :func:`read_secret_file`); "" when
    neither is given."""
    value = (os.environ if env is None else env).get(env_name, "")
    if value:
        return value
    return read_secret_file(Path(path), what) if path is not None else ""


def local_password(path: Path, what: str) -> str:
    """The password in ``path``, made (32 random bytes, mode 0600) when missing."""
    if path.exists():
        return read_secret_file(path, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made by another process meanwhile
        return read_secret_file(path, what)
    os.fchmod(fd, 0o600)  # whatever the umask
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_urlsafe(32) + "\n")
    return read_secret_file(path, what)


def _password(value: str, file: Path | None, local: Path, what: str) -> str:
    if value:
        return value
    if file is not None:
        return read_secret_file(Path(file), what)
    if local.exists():
        return read_secret_file(local, what)
    return ""


def clickhouse_login(settings: Any, role: Role = "writer") -> ClickHouseLogin:
    """The user, password and TLS to reach ClickHouse as ``role`` (``replica``: the
    replica database's login, ``replica_clickhouse_*``, else the writer's)."""
    ca = settings.clickhouse_ca_file
    if ca is None and (tls_dir(settings) / "ca.pem").exists():
        ca = tls_dir(settings) / "ca.pem"
    secure = bool(settings.clickhouse_secure)
    if role == "replica":
        if settings.replica_clickhouse_user:
            return ClickHouseLogin(
                settings.replica_clickhouse_user,
                settings.replica_clickhouse_password,
                secure,
                ca,
            )
        role = "writer"
    if role == "reader":
        return ClickHouseLogin(
            settings.clickhouse_reader_user,
            _password(
                settings.clickhouse_reader_password,
                settings.clickhouse_reader_password_file,
                local_password_file(settings, "reader"),
                "ClickHouse reader password file",
            ),
            secure,
            ca,
        )
    return ClickHouseLogin(
        settings.clickhouse_user,
        _password(
            settings.clickhouse_password,
            settings.clickhouse_password_file,
            local_password_file(settings, "writer"),
            "ClickHouse password file",
        ),
        secure,
        ca,
    )


def pin_login(settings: Any) -> Any:
    """``settings`` with the local stack's password files (ClickHouse's and Kafka's) and
    CA named explicitly, so a
    copy of them with another ``run_dir`` (a benchmark's or a test's scratch directory)
    still logs in to the same server. Settings that already name them are kept."""
    changes: dict[str, Path] = {}
    for value, field, local in (
        (
            settings.clickhouse_password,
            "clickhouse_password_file",
            local_password_file(settings, "writer"),
        ),
        (
            settings.clickhouse_reader_password,
            "clickhouse_reader_password_file",
            local_password_file(settings, "reader"),
        ),
    ):
        if not value and getattr(settings, field) is None and local.exists():
            changes[field] = local
    ca = tls_dir(settings) / "ca.pem"
    if settings.clickhouse_ca_file is None and ca.exists():
        changes["clickhouse_ca_file"] = ca
    # Kafka's: every principal's password file (ADR 0033) and the same CA
    secrets = Path(settings.run_dir) / "secrets"
    if settings.kafka_secrets_dir is None and secrets.is_dir():
        changes["kafka_secrets_dir"] = secrets
    if settings.kafka_ca_file is None and ca.exists():
        changes["kafka_ca_file"] = ca
    return settings.replace(**changes) if changes else settings
