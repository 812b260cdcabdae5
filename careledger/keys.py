"""Key files: generating, loading with permission checks, trusted key lists.

The private key never appears in logs or on a command line. It is read from a
file that only its owner can read (mode 0600 or stricter; anything looser is
refused, like ssh does) or, for containers, from the environment variable
``CARELEDGER_SIGNING_KEY_TEXT`` holding the same text as the file. Source keys
(``CARELEDGER_SOURCE_KEY_TEXT``) and the registrar key (``CARELEDGER_REGISTRAR_KEY_TEXT``)
are loaded the same way.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from careledger_core.errors import InfrastructureError
from careledger_core.signing import (
    PublicKey,
    SigningKey,
    TrustedKeys,
    format_private_key,
    format_public_key,
    parse_private_key,
    parse_public_key,
)

KEY_TEXT_ENV = "CARELEDGER_SIGNING_KEY_TEXT"
SOURCE_KEY_TEXT_ENV = "CARELEDGER_SOURCE_KEY_TEXT"
REGISTRAR_KEY_TEXT_ENV = "CARELEDGER_REGISTRAR_KEY_TEXT"


class KeyFileError(InfrastructureError):
    """A key file is missing, unreadable, malformed or too widely readable."""

    code = "KEY_FILE"


def write_keypair(private_path: Path, *, overwrite: bool = False) -> SigningKey:
    """Create a new key pair: ``private_path`` (0600) and ``private_path + '.pub'``."""
    key = SigningKey.from_seed(os.urandom(32))
    private_path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(private_path, flags, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{private_path} exists; refusing to overwrite a signing key") from exc
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(format_private_key(key))
    os.chmod(private_path, 0o600)
    public_path = Path(str(private_path) + ".pub")
    public_path.write_text(format_public_key(key.public_key) + "\n", encoding="ascii")
    return key


def load_private_key(
    path: Path | None,
    *,
    text_env: str,
    what: str,
    setting: str,
    env: dict[str, str] | None = None,
) -> SigningKey:
    """A private key from the ``text_env`` variable (containers) or from ``path``, which
    must be readable by its owner only. ``what``/``setting`` name it in errors."""
    env = dict(os.environ) if env is None else env
    text = env.get(text_env)
    if text:
        return parse_private_key(text)
    if path is None:
        raise KeyFileError(
            f"no {what} configured: set {setting} to a key file or {text_env} to its text"
        )
    return parse_private_key(read_owner_only(path, what, encoding="ascii"))


def read_owner_only(path: Path, what: str, encoding: str = "utf-8") -> str:
    """The text of a secret file (a key, a password) that only its owner may read;
    :class:`KeyFileError` naming ``what`` otherwise."""
    try:
        st = path.stat()
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror}") from exc
    check_owner_only(path, st.st_mode, what)
    try:
        return path.read_text(encoding=encoding)
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc}") from exc


def check_owner_only(path: Path, st_mode: int, what: str) -> None:
    """Raise :class:`KeyFileError` when a secret file of mode ``st_mode`` is accessible by
    group or others (ssh's rule; key files and the auditor's pseudonym salt)."""
    if st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{what} {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(st_mode):o}); run: chmod 600 {path}"
        )


def load_signing_key(path: Path | None, env: dict[str, str] | None = None) -> SigningKey:
    env = dict(os.environ) if env is None else env
    if path is None and not env.get(KEY_TEXT_ENV):
        raise KeyFileError(
            "no signing key configured: set CARELEDGER_SIGNING_KEY to a key file "
            f"(create one with `careledger keygen`) or {KEY_TEXT_ENV}"
        )
    return load_private_key(
        path, text_env=KEY_TEXT_ENV, what="signing key", setting="CARELEDGER_SIGNING_KEY", env=env
    )


def load_source_key(settings: Any, env: dict[str, str] | None = None) -> SigningKey | None:
    """The producer's source key (ADR 0010), or None when none is configured (the SDK
    then sends plain events). From ``CARELEDGER_SOURCE_KEY_TEXT`` or ``settings.source_key``."""
    env = dict(os.environ) if env is None else env
    if settings.source_key is None and not env.get(SOURCE_KEY_TEXT_ENV):
        return None
    return load_private_key(
        settings.source_key,
        text_env=SOURCE_KEY_TEXT_ENV,
        what="source key",
        setting="CARELEDGER_SOURCE_KEY",
        env=env,
    )


def load_registrar_key(settings: Any, env: dict[str, str] | None = None) -> SigningKey:
    """The registrar's private key (signs source key events), from
    ``CARELEDGER_REGISTRAR_KEY_TEXT`` or ``settings.registrar_key``."""
    return load_private_key(
        settings.registrar_key,
        text_env=REGISTRAR_KEY_TEXT_ENV,
        what="registrar key",
        setting="CARELEDGER_REGISTRAR_KEY",
        env=env,
    )


def load_public_keys(entries: tuple[str, ...] | list[str]) -> list[PublicKey]:
    """Each entry is an ``ed25519:<base64>`` literal or a file with one literal per line."""
    keys: list[PublicKey] = []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        if entry.startswith("ed25519:"):
            keys.append(parse_public_key(entry))
            continue
        path = Path(entry).expanduser()
        try:
            lines = path.read_text(encoding="ascii").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"cannot read trusted key file {path}: {exc}") from exc
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(parse_public_key(line))
    return keys


def load_trusted_keys(settings: Any) -> TrustedKeys:
    keys = load_public_keys(settings.trusted_keys)
    if not keys:
        raise KeyFileError(
            "no trusted public keys configured: set CARELEDGER_TRUSTED_KEYS to the "
            "public key file(s) written by `careledger keygen` (never read keys from the store)"
        )
    return TrustedKeys(keys)


def default_key_path(settings: Any) -> Path:
    return Path(settings.signing_key) if settings.signing_key else settings.keys_dir / "signing.key"
