"""The witnesses a deployment relies on: who they are, where they listen, how many must
cosign (ADR 0018).

One TOML file (``witnesses_file``, ``CARELEDGER_WITNESSES_FILE``) serves both sides:
the log's cosigner asks every witness with a ``url`` for cosignatures, and verifiers
(``verify``, ``access-report``, ``verify-proof``, the follow mode) require ``quorum``
valid cosignatures on a checkpoint before they vouch for what it covers::

    quorum = 2              # k of the n witnesses below
    max_age_s = 300         # a block older than this without a quorum checkpoint
                            # is "not yet witnessed" (exit 3), younger is pending
    [[witness]]
    name = "hospital-b.example/witness"
    # the witness's public key: a C2SP vkey "<name>+<hex id>+<base64(0x01 || key)>"
    # (what `careledger witness --vkey` and litewitness print), or "ed25519:<base64>"
    key = "hospital-b.example/witness+1a2b3c4d+AR..."
    url = "http://witness.hospital-b.example:17380"   # optional for verifiers

A verifier's copy may list witnesses without ``url``: it then trusts cosignatures
found on checkpoints in the checkpoints topic only. With a ``url`` it also asks the
witness for the latest checkpoint it cosigned (``GET /<sha256(origin)>/checkpoint``,
served by ``careledger witness``), so a rollback that also removed the checkpoints
topic is still seen.

Errors name the setting or the file and entry to fix (:class:`WitnessesConfigError`,
exit 2 for every command).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from careledger_core.cosignature import WitnessKey, WitnessPolicy
from careledger_core.errors import InfrastructureError, KeyFormatError
from careledger_core.signing import parse_public_key

__all__ = ["WITNESSES_FILE_ENV", "Witness", "WitnessSet", "WitnessesConfigError", "load_witnesses"]

WITNESSES_FILE_ENV: Final = "CARELEDGER_WITNESSES_FILE"
DEFAULT_MAX_AGE_S: Final = 300
_TOP_KEYS: Final = frozenset({"quorum", "max_age_s", "witness"})
_WITNESS_KEYS: Final = frozenset({"name", "key", "url"})


class WitnessesConfigError(InfrastructureError):
    """The witnesses file is missing or wrong: the message names what to fix."""

    code = "WITNESSES_CONFIG"


@dataclass(frozen=True, slots=True)
class Witness:
    """One witness: its name and key (as in its cosignature lines) and, if known, where
    it listens (``http(s)://host:port``, no path)."""

    key: WitnessKey
    url: str | None = None

    @property
    def name(self) -> str:
        return self.key.name


@dataclass(frozen=True, slots=True)
class WitnessSet:
    """The witnesses of a deployment and the quorum a checkpoint needs."""

    witnesses: tuple[Witness, ...]
    quorum: int
    max_age_s: int = DEFAULT_MAX_AGE_S
    source: str = ""  # the file it was read from, for messages

    @property
    def policy(self) -> WitnessPolicy:
        return WitnessPolicy(tuple(w.key for w in self.witnesses), self.quorum)

    @property
    def reachable(self) -> tuple[Witness, ...]:
        """The witnesses with a ``url``."""
        return tuple(w for w in self.witnesses if w.url)

    def describe(self) -> dict[str, Any]:
        return {
            "quorum": self.quorum,
            "of": len(self.witnesses),
            "max_age_s": self.max_age_s,
            "witnesses": [w.name for w in self.witnesses],
        }


def _witness_key(name: str, text: str, where: str) -> WitnessKey:
    text = text.strip()
    try:
        if text.startswith("ed25519:"):
            return WitnessKey(name, parse_public_key(text))
        key = WitnessKey.from_vkey(text)
    except KeyFormatError as exc:
        raise WitnessesConfigError(f"{where}: key {text[:60]!r}: {exc.message}") from exc
    if key.name != name:
        raise WitnessesConfigError(
            f"{where}: the vkey names {key.name!r}, the entry names {name!r}"
        )
    return key


def _url(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise WitnessesConfigError(f"{where}: 'url' must be a string")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise WitnessesConfigError(
            f"{where}: 'url' must be http(s)://host[:port] without a path, not {value[:80]!r}"
        )
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise WitnessesConfigError(f"{where}: 'url' has an invalid port") from exc
    return value.rstrip("/")


def _positive_int(data: Mapping[str, Any], name: str, default: int | None, where: str) -> int:
    value = data.get(name, default)
    if type(value) is not int or value < 1:
        raise WitnessesConfigError(f"{where}: '{name}' must be a positive integer")
    return value


def parse_witnesses(text: str, source: str = "witnesses file") -> WitnessSet:
    """A :class:`WitnessSet` from the TOML text of a witnesses file."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise WitnessesConfigError(f"{source}: not valid TOML: {exc}") from exc
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise WitnessesConfigError(f"{source}: unknown key(s) {sorted(unknown)}")
    entries = data.get("witness")
    if not isinstance(entries, list) or not entries:
        raise WitnessesConfigError(f"{source}: no [[witness]] entries")
    witnesses = []
    for i, entry in enumerate(entries):
        where = f"{source}: [[witness]] #{i + 1}"
        if not isinstance(entry, dict):
            raise WitnessesConfigError(f"{where}: not a table")
        extra = set(entry) - _WITNESS_KEYS
        if extra:
            raise WitnessesConfigError(f"{where}: unknown key(s) {sorted(extra)}")
        name, key = entry.get("name"), entry.get("key")
        if not isinstance(name, str) or not name:
            raise WitnessesConfigError(f"{where}: 'name' is missing")
        if not isinstance(key, str):
            raise WitnessesConfigError(f"{where}: 'key' is missing")
        witnesses.append(Witness(_witness_key(name, key, where), _url(entry.get("url"), where)))
    quorum = _positive_int(data, "quorum", None, source)
    max_age = _positive_int(data, "max_age_s", DEFAULT_MAX_AGE_S, source)
    result = WitnessSet(tuple(witnesses), quorum, max_age, source)
    try:
        result.policy  # noqa: B018 - distinct names and keys, 1 <= quorum <= n
    except KeyFormatError as exc:
        raise WitnessesConfigError(f"{source}: {exc.message}") from exc
    return result


def load_witnesses(settings: Any) -> WitnessSet | None:
    """The deployment's witnesses (``settings.witnesses_file``), or None if it names none.

    Raises :class:`WitnessesConfigError` (naming ``CARELEDGER_WITNESSES_FILE``) if the
    file is set but unreadable or wrong.
    """
    path: Path | None = settings.witnesses_file
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WitnessesConfigError(
            f"cannot read witnesses_file {path} ({WITNESSES_FILE_ENV}): {exc}"
        ) from exc
    return parse_witnesses(text, str(path))
