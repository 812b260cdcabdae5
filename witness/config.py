"""What a witness needs to run: its name, its key, the logs it cosigns, its state.

Logs file (``witness_logs_file``, TOML)::

    [[log]]
    origin = "careledger.local/careledger.access-events/0"   # or: origins = [..]
    # the log's public key(s), each one of:
    #   a signed-note vkey "<name>+<hex id>+<base64(0x01 || key)>" (what litewitness'
    #     `witnessctl add-key` takes),
    #   an "ed25519:<base64>" literal, or a file of such literals (relative paths are
    #     relative to this file); their key name is `key_name`, default the origin.
    keys = ["ed25519:..."]

Errors name the setting (``CARELEDGER_WITNESS_*``) or the file and entry to fix.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from careledger.config import Settings
from careledger.keys import KeyFileError, load_private_key, load_public_keys
from careledger_core.errors import KeyFormatError
from careledger_core.signing import PublicKey, SigningKey
from careledger_core.witness import (
    MAX_REQUEST_BYTES,
    WitnessKey,
    log_key_from_vkey,
)

__all__ = ["KEY_TEXT_ENV", "WitnessConfig", "WitnessConfigError", "load_logs", "load_witness"]

KEY_TEXT_ENV: Final = "CARELEDGER_WITNESS_SIGNING_KEY_TEXT"
#: smallest bound on a request: a checkpoint with a few signatures and a full proof
MIN_REQUEST_BYTES: Final = 4096


class WitnessConfigError(ValueError):
    """The witness cannot start: the message names the setting or file to fix."""


@dataclass(frozen=True)
class WitnessConfig:
    name: str
    key: SigningKey
    logs: Mapping[str, Mapping[str, PublicKey]]  # origin -> {key name -> key}
    state_dir: Path
    host: str
    port: int
    max_request_bytes: int

    @property
    def witness_key(self) -> WitnessKey:
        return WitnessKey(self.name, self.key.public_key)


def _key_entries(entry: Mapping[str, Any], where: str) -> list[str]:
    keys = entry.get("keys", entry.get("key"))
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise WitnessConfigError(f"{where}: 'keys' must be a non-empty list of strings")
    return keys


def _origins(entry: Mapping[str, Any], where: str) -> list[str]:
    if "origin" in entry and "origins" in entry:
        raise WitnessConfigError(f"{where}: give 'origin' or 'origins', not both")
    origins = entry.get("origins", [entry["origin"]] if "origin" in entry else None)
    if not isinstance(origins, list) or not origins:
        raise WitnessConfigError(f"{where}: 'origin' (or 'origins') is missing")
    for origin in origins:
        if not isinstance(origin, str) or not origin or any(c in origin for c in "\n\r"):
            raise WitnessConfigError(f"{where}: an origin is a non-empty line of text")
    return origins


def _log_keys(
    text: str, origin: str, key_name: str | None, base: Path, where: str
) -> list[tuple[str, PublicKey]]:
    text = text.strip()
    try:
        if "+" in text and not text.startswith("ed25519:"):
            return [log_key_from_vkey(text)]
        if not text.startswith("ed25519:") and not Path(text).is_absolute():
            text = str(base / text)
        name = key_name or origin
        return [(name, key) for key in load_public_keys([text])]
    except (KeyFormatError, KeyFileError) as exc:
        raise WitnessConfigError(f"{where}: key {text[:60]!r}: {exc}") from exc


def load_logs(path: Path | None) -> dict[str, dict[str, PublicKey]]:
    """origin -> {key name -> log public key}, from the logs file."""
    if path is None:
        raise WitnessConfigError(
            "no logs to witness: set witness_logs_file (CARELEDGER_WITNESS_LOGS_FILE) "
            "to a TOML file of [[log]] origins and keys"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise WitnessConfigError(f"cannot read witness_logs_file {path}: {exc}") from exc
    entries = data.get("log")
    unknown = set(data) - {"log"}
    if unknown:
        raise WitnessConfigError(f"{path}: unknown key(s) {sorted(unknown)}; expected [[log]]")
    if not isinstance(entries, list) or not entries:
        raise WitnessConfigError(f"{path}: no [[log]] entries")
    logs: dict[str, dict[str, PublicKey]] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: [[log]] #{i + 1}"
        if not isinstance(entry, dict):
            raise WitnessConfigError(f"{where}: not a table")
        extra = set(entry) - {"origin", "origins", "keys", "key", "key_name"}
        if extra:
            raise WitnessConfigError(f"{where}: unknown key(s) {sorted(extra)}")
        key_name = entry.get("key_name")
        if key_name is not None and not isinstance(key_name, str):
            raise WitnessConfigError(f"{where}: 'key_name' must be a string")
        for origin in _origins(entry, where):
            if origin in logs:
                raise WitnessConfigError(f"{where}: origin {origin!r} is listed twice")
            verifiers: dict[str, PublicKey] = {}
            for text in _key_entries(entry, where):
                for name, key in _log_keys(text, origin, key_name, path.parent, where):
                    if verifiers.get(name, key) != key:
                        raise WitnessConfigError(f"{where}: two keys named {name!r}")
                    verifiers[name] = key
            logs[origin] = verifiers
    return logs


def load_witness(settings: Settings) -> WitnessConfig:
    """The witness configuration from ``settings``; :class:`WitnessConfigError` names
    what to fix."""
    name = settings.witness_name.strip()
    if not name:
        raise WitnessConfigError(
            "witness_name is not set: set CARELEDGER_WITNESS_NAME to this witness's name "
            "(a schema-less URL such as hospital-b.example/witness)"
        )
    if any(c.isspace() for c in name) or "+" in name:
        raise WitnessConfigError("witness_name (CARELEDGER_WITNESS_NAME) has a space or '+'")
    if not 0 <= settings.witness_port <= 65535:
        raise WitnessConfigError("witness_port (CARELEDGER_WITNESS_PORT) is not a TCP port")
    if not MIN_REQUEST_BYTES <= settings.witness_max_request_bytes <= MAX_REQUEST_BYTES * 16:
        raise WitnessConfigError(
            "witness_max_request_bytes (CARELEDGER_WITNESS_MAX_REQUEST_BYTES) must be "
            f"between {MIN_REQUEST_BYTES} and {MAX_REQUEST_BYTES * 16}"
        )
    path = settings.witness_signing_key or settings.keys_dir / "witness.key"
    try:
        key = load_private_key(
            path,
            text_env=KEY_TEXT_ENV,
            what="witness key",
            setting="CARELEDGER_WITNESS_SIGNING_KEY",
        )
    except (KeyFileError, KeyFormatError) as exc:
        raise WitnessConfigError(
            f"{exc} (CARELEDGER_WITNESS_SIGNING_KEY; create one with "
            f"`careledger keygen --out {path}` or `careledger witness --create-key`)"
        ) from exc
    logs = load_logs(settings.witness_logs_file)
    for origin, verifiers in logs.items():
        if key.public_key in verifiers.values():
            raise WitnessConfigError(
                f"the witness key is also a key of the log {origin!r}: a witness needs a key "
                "of its own (CARELEDGER_WITNESS_SIGNING_KEY)"
            )
    return WitnessConfig(
        name=name,
        key=key,
        logs=logs,
        state_dir=settings.witness_state_dir or settings.run_dir / "witness",
        host=settings.witness_host,
        port=settings.witness_port,
        max_request_bytes=settings.witness_max_request_bytes,
    )
