"""C2SP tlog-cosignature/v1: cosigning a checkpoint, verifying cosignatures, vkeys and a
k-of-n witness policy (pure; re-exported by ``careledger_core.witness``).

A cosignature line is a signed-note signature line::

    — <witness name> base64(key ID (4) ‖ timestamp (8, big-endian) ‖ Ed25519 signature (64))

with key ID = SHA-256(<name> ‖ "\\n" ‖ 0x04 ‖ 32-byte public key)[:4] and the signature over
``"cosignature/v1\\ntime <timestamp>\\n" ‖ <checkpoint note text>`` (C2SP tlog-cosignature
v1.0.1). Verifier keys ("vkeys", C2SP signed-note) are ``<name>+<hex key ID>+<base64(type
‖ key)>`` with type 0x01 (a log's Ed25519 key) or 0x04 (a witness's cosignature key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from .checkpoint import Checkpoint, format_checkpoint, parse_checkpoint
from .errors import CheckpointError, KeyFormatError, SignatureError
from .signing import SIGNATURE_SIZE, PublicKey, SigningKey

__all__ = [
    "COSIGNATURE_ALGORITHM",
    "ED25519_ALGORITHM",
    "MAX_TIMESTAMP",
    "Cosignature",
    "QuorumResult",
    "WitnessKey",
    "WitnessPolicy",
    "attach_cosignatures",
    "check_quorum",
    "cosign",
    "cosignature_key_hash",
    "cosignature_message",
    "format_vkey",
    "log_key_from_vkey",
    "parse_vkey",
    "split_note",
    "verify_cosignature",
]

ED25519_ALGORITHM: Final = 0x01  # signed-note Ed25519 (the log's checkpoint signature)
COSIGNATURE_ALGORITHM: Final = 0x04  # tlog-cosignature/v1, timestamped Ed25519
COSIGNATURE_HEADER: Final = "cosignature/v1"
MAX_TIMESTAMP: Final = 2**63 - 1  # also the largest tree size
SIGNATURE_DASH: Final = "\u2014"

_KEY_NAME = re.compile(r"\A[^\s+]+\Z")
_HEX8 = re.compile(r"\A[0-9a-f]{8}\Z")
_COSIGNATURE_BLOB: Final = 4 + 8 + SIGNATURE_SIZE


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    """Standard padded base64 in its canonical spelling only."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise CheckpointError(f"{what} is not valid base64") from exc
    if _b64(raw) != text:
        raise CheckpointError(f"{what} is not canonical base64")
    return raw


def _check_key_name(name: str) -> None:
    if not isinstance(name, str) or not _KEY_NAME.match(name):
        raise KeyFormatError("a key name is non-empty, without spaces or '+'")


def _canonical_body(body: str) -> Checkpoint:
    """The checkpoint of a note text that is exactly its own formatting."""
    cp = parse_checkpoint(body)
    if format_checkpoint(cp) != body:
        raise CheckpointError("note text is not a checkpoint in canonical form")
    return cp


# ----------------------------------------------------------------------------- keys


def cosignature_key_hash(name: str, public_key: PublicKey) -> bytes:
    """tlog-cosignature/v1 key ID: SHA-256(name ‖ "\\n" ‖ 0x04 ‖ public key)[:4]."""
    _check_key_name(name)
    return hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([COSIGNATURE_ALGORITHM]) + public_key.raw
    ).digest()[:4]


def _note_key_hash(name: str, algorithm: int, raw: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([algorithm]) + raw).digest()[:4]


def format_vkey(name: str, algorithm: int, public_key: PublicKey) -> str:
    """signed-note verifier key ``<name>+<hex key ID>+<base64(type ‖ key)>``."""
    _check_key_name(name)
    key_hash = _note_key_hash(name, algorithm, public_key.raw)
    return f"{name}+{key_hash.hex()}+{_b64(bytes([algorithm]) + public_key.raw)}"


def parse_vkey(text: str) -> tuple[str, int, PublicKey]:
    """``(name, signature type, key)`` of an Ed25519 (0x01) or cosignature (0x04) vkey;
    the key ID in the text must be the one computed from name, type and key."""
    if not isinstance(text, str):
        raise KeyFormatError("a vkey is text")
    parts = text.split("+", 2)  # the base64 part may hold '+' too
    if len(parts) != 3:
        raise KeyFormatError("a vkey is <name>+<hex key id>+<base64 key>")
    name, hash_text, key_text = parts
    _check_key_name(name)
    if not _HEX8.match(hash_text):
        raise KeyFormatError("a vkey's key id is 8 lowercase hex digits")
    try:
        material = _b64decode(key_text, "vkey key")
    except CheckpointError as exc:
        raise KeyFormatError(exc.message) from exc
    if len(material) != 33 or material[0] not in (ED25519_ALGORITHM, COSIGNATURE_ALGORITHM):
        raise KeyFormatError("only Ed25519 (0x01) and cosignature/v1 (0x04) vkeys are supported")
    key = PublicKey(material[1:])
    if _note_key_hash(name, material[0], key.raw).hex() != hash_text:
        raise KeyFormatError("a vkey's key id does not match its name and key")
    return name, material[0], key


@dataclass(frozen=True, slots=True)
class WitnessKey:
    """A cosigner as a verifier knows it: its name and Ed25519 public key."""

    name: str
    public_key: PublicKey

    def __post_init__(self) -> None:
        _check_key_name(self.name)
        if not isinstance(self.public_key, PublicKey):
            raise KeyFormatError("a witness key is a PublicKey")

    @property
    def key_hash(self) -> bytes:
        return cosignature_key_hash(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        return format_vkey(self.name, COSIGNATURE_ALGORITHM, self.public_key)

    @classmethod
    def from_vkey(cls, text: str) -> WitnessKey:
        name, algorithm, key = parse_vkey(text)
        if algorithm != COSIGNATURE_ALGORITHM:
            raise KeyFormatError("a witness vkey has signature type 0x04 (cosignature/v1)")
        return cls(name, key)


def log_key_from_vkey(text: str) -> tuple[str, PublicKey]:
    """(key name, key) of a log's Ed25519 signed-note vkey (type 0x01), as
    ``witnessctl add-key`` takes it."""
    name, algorithm, key = parse_vkey(text)
    if algorithm != ED25519_ALGORITHM:
        raise KeyFormatError("a log vkey has signature type 0x01 (Ed25519)")
    return name, key


# ------------------------------------------------------------------- cosignatures


def cosignature_message(body: str, timestamp: int) -> bytes:
    """The bytes a v1 cosignature signs: header line, time line, then the note text."""
    if type(timestamp) is not int or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise CheckpointError("a cosignature timestamp is an integer in 0..2^63-1")
    _canonical_body(body)
    return f"{COSIGNATURE_HEADER}\ntime {timestamp}\n{body}".encode()


@dataclass(frozen=True, slots=True)
class Cosignature:
    """One cosignature: who (``name`` and ``key_hash``), when, and the signature."""

    name: str
    key_hash: bytes
    timestamp: int
    signature: bytes

    @property
    def line(self) -> str:
        """The signature line, without its final newline."""
        blob = self.key_hash + self.timestamp.to_bytes(8, "big") + self.signature
        return f"{SIGNATURE_DASH} {self.name} {_b64(blob)}"


def cosign(body: str, name: str, key: SigningKey, timestamp: int) -> Cosignature:
    """Cosign the checkpoint note text ``body`` as witness ``name`` at ``timestamp``
    (POSIX seconds; tlog-witness forbids 0)."""
    if type(timestamp) is not int or not 1 <= timestamp <= MAX_TIMESTAMP:
        raise CheckpointError("a witness cosignature timestamp is an integer in 1..2^63-1")
    message = cosignature_message(body, timestamp)
    return Cosignature(
        name=name,
        key_hash=cosignature_key_hash(name, key.public_key),
        timestamp=timestamp,
        signature=key.sign(message),
    )


def _parse_signature_line(line: str) -> tuple[str, bytes]:
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != SIGNATURE_DASH:
        raise CheckpointError("a signature line is '— <name> <base64>'")
    name = parts[1]
    if not _KEY_NAME.match(name):
        raise CheckpointError("a signature line's key name is empty or has spaces or '+'")
    blob = _b64decode(parts[2], "signature")
    if len(blob) < 5:
        raise CheckpointError("a signature is at least a key id and one byte")
    return name, blob


def verify_cosignature(
    body: str,
    line: str,
    witness: WitnessKey,
    *,
    now: int | None = None,
    max_future_s: int = 300,
) -> Cosignature:
    """Check one cosignature line of ``witness`` over the note text ``body``.

    Raises :class:`CheckpointError` if the line is malformed or not this witness's (name
    and key ID), :class:`SignatureError` if it is this witness's but does not verify or,
    with ``now`` given, is dated more than ``max_future_s`` in the future.
    """
    name, blob = _parse_signature_line(line)
    if name != witness.name or blob[:4] != witness.key_hash:
        raise CheckpointError("not a cosignature by this witness")
    details = {"witness": witness.name}
    if len(blob) != _COSIGNATURE_BLOB:
        raise SignatureError("a v1 cosignature is 76 bytes", details=details)
    timestamp = int.from_bytes(blob[4:12], "big")
    if timestamp > MAX_TIMESTAMP:
        raise SignatureError("cosignature timestamp beyond 2^63-1", details=details)
    if now is not None and timestamp > now + max_future_s:
        raise SignatureError("cosignature dated in the future", details=details)
    try:
        witness.public_key.verify(cosignature_message(body, timestamp), blob[12:])
    except SignatureError as exc:
        raise SignatureError(
            f"cosignature by {witness.name} does not verify", details=details
        ) from exc
    return Cosignature(name, blob[:4], timestamp, blob[12:])


def split_note(note: str) -> tuple[str, tuple[str, ...]]:
    """(note text, signature lines without newlines) of a signed note (no checks of the
    lines beyond their framing)."""
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise CheckpointError("a signed note is text, a blank line, signature lines")
    body, block = note[: split + 1], note[split + 2 : -1]
    if not block:
        raise CheckpointError("a signed note has at least one signature line")
    return body, tuple(block.split("\n"))


def attach_cosignatures(note: str, lines: Iterable[str]) -> str:
    """``note`` with the signature ``lines`` appended (each once), as a client keeps the
    cosignatures a witness returned."""
    body, existing = split_note(note)
    out = list(existing)
    for line in lines:
        _parse_signature_line(line)
        if line not in out:
            out.append(line)
    return body + "\n" + "".join(f"{line}\n" for line in out)


# ------------------------------------------------------------------ quorum policy


@dataclass(frozen=True, slots=True)
class WitnessPolicy:
    """``quorum`` of the ``witnesses`` must cosign a checkpoint (k of n). Names and keys
    are distinct, so one cosigner can never count twice."""

    witnesses: tuple[WitnessKey, ...]
    quorum: int

    def __post_init__(self) -> None:
        if not isinstance(self.witnesses, tuple) or not all(
            isinstance(w, WitnessKey) for w in self.witnesses
        ):
            raise KeyFormatError("witnesses is a tuple of WitnessKey")
        if len({w.name for w in self.witnesses}) != len(self.witnesses):
            raise KeyFormatError("two witnesses of a policy share a name")
        if len({w.public_key for w in self.witnesses}) != len(self.witnesses):
            raise KeyFormatError("two witnesses of a policy share a public key")
        if type(self.quorum) is not int or not 1 <= self.quorum <= len(self.witnesses):
            raise KeyFormatError(f"quorum must be between 1 and {len(self.witnesses)}")


@dataclass(frozen=True, slots=True)
class QuorumResult:
    """Which witnesses of a policy validly cosigned a checkpoint."""

    quorum: int
    cosigned: Mapping[str, Cosignature]
    invalid: tuple[str, ...]  # witnesses with a line that names them but does not verify
    missing: tuple[str, ...]

    @property
    def met(self) -> bool:
        return len(self.cosigned) >= self.quorum and not self.invalid


def check_quorum(
    note: str, policy: WitnessPolicy, *, now: int | None = None, max_future_s: int = 300
) -> QuorumResult:
    """Count the valid cosignatures of ``policy``'s witnesses on a signed checkpoint note.

    Does not check the log's own signature (``open_note`` does). Lines of unknown keys
    are ignored; a line with a witness's name and key ID that fails makes that witness
    ``invalid`` (and the result not ``met``). Raises :class:`CheckpointError` for a
    malformed note.
    """
    body, lines = split_note(note)
    _canonical_body(body)
    cosigned: dict[str, Cosignature] = {}
    invalid: list[str] = []
    parsed = [_parse_signature_line(line) for line in lines]
    for witness in policy.witnesses:
        key_hash = witness.key_hash
        for line, (name, blob) in zip(lines, parsed, strict=True):
            if name != witness.name or blob[:4] != key_hash:
                continue
            try:
                cos = verify_cosignature(body, line, witness, now=now, max_future_s=max_future_s)
            except SignatureError:
                if witness.name not in invalid:
                    invalid.append(witness.name)
                continue
            previous = cosigned.get(witness.name)
            if previous is None or cos.timestamp > previous.timestamp:
                cosigned[witness.name] = cos
    missing = tuple(w.name for w in policy.witnesses if w.name not in cosigned)
    return QuorumResult(policy.quorum, cosigned, tuple(invalid), missing)
