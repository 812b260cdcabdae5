"""Checkpoints of a chain head as C2SP signed notes (tlog-checkpoint style).

Body (C2SP tlog-checkpoint layout)::

    <origin>\\n            the chain id, e.g. careledger.local/careledger.access-events/2
    <size>\\n              number of blocks in the chain = head height + 1
    <base64 root>\\n       block_hash of the head block (32 bytes)
    [<extension line>\\n]*

**The root is not an RFC 6962 tree root**: careledger chains blocks by ``prev_hash``, so
the head block hash commits to the whole history; "consistency" between two
checkpoints of one chain is shown by walking the hash links from the newer head down to
the older one, not by an RFC 9162 consistency proof. (Each block's events *are* an
RFC 6962 tree, rooted at the header's ``merkle_root``.)

Signed note (C2SP signed-note)::

    <body>\\n
    — <name> <base64(key hash (4 bytes) ‖ Ed25519 signature (64 bytes))>\\n
    ...

with key hash = SHA-256(name ‖ "\\n" ‖ 0x01 ‖ 32-byte public key)[:4]; the signature
covers the body bytes. Several signature lines may follow (log key, witnesses);
``open_note`` accepts the note if at least one line verifies under a given verifier
and no line from a given verifier fails.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .block import BlockHeader, block_hash
from .errors import CheckpointError, NoteUnverifiedError, SignatureError
from .hashing import HASH_SIZE
from .signing import SIGNATURE_SIZE, PublicKey, SigningKey

__all__ = [
    "Checkpoint",
    "checkpoint_for",
    "format_checkpoint",
    "note_key_hash",
    "open_note",
    "parse_checkpoint",
    "sign_note",
    "verify_checkpoint",
]

SIGNATURE_DASH: Final = "\u2014"  # EM DASH, as C2SP signed-note requires
ED25519_ALGORITHM: Final = b"\x01"
MAX_NOTE_SIZE: Final = 1 << 20
MAX_SIGNATURES: Final = 100

_KEY_NAME = re.compile(r"\A[^\s+]+\Z")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_SIZE = re.compile(r"\A(?:0|[1-9][0-9]{0,18})\Z")


def _b64decode(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise CheckpointError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise CheckpointError(f"{what} is not canonical base64")
    return raw


def _check_line(line: str, what: str) -> None:
    if not line or "\n" in line or _CONTROL.search(line):
        raise CheckpointError(f"{what} must be a non-empty line without control characters")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A chain head: ``origin`` (chain id), ``size`` (blocks), ``root_hash`` (head block
    hash, 32 bytes) and optional extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        if type(self.size) is not int or not 0 <= self.size < 2**63:
            raise CheckpointError("size must be an integer in 0..2^63-1")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_SIZE:
            raise CheckpointError(f"root hash must be {HASH_SIZE} bytes")
        if not isinstance(self.extensions, tuple):
            raise CheckpointError("extensions must be a tuple of lines")
        for line in self.extensions:
            _check_line(line, "extension line")

    @property
    def height(self) -> int:
        """Height of the head block (``size - 1``); -1 for an empty chain."""
        return self.size - 1


def checkpoint_for(head: BlockHeader, extensions: tuple[str, ...] = ()) -> Checkpoint:
    """The checkpoint naming ``head`` as the head of its chain."""
    return Checkpoint(
        origin=head.chain_id,
        size=head.height + 1,
        root_hash=block_hash(head),
        extensions=extensions,
    )


def format_checkpoint(cp: Checkpoint) -> str:
    """The note body: origin, size, base64 root, extension lines; each ending in ``\\n``."""
    lines = [cp.origin, str(cp.size), base64.b64encode(cp.root_hash).decode("ascii")]
    lines.extend(cp.extensions)
    return "\n".join(lines) + "\n"


def parse_checkpoint(text: str) -> Checkpoint:
    """Strictly parse a checkpoint body (the text of an opened note)."""
    if not text.endswith("\n"):
        raise CheckpointError("checkpoint must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("checkpoint needs origin, size and root lines")
    origin, size_text, root_text, *extensions = lines
    if not _SIZE.match(size_text):
        raise CheckpointError(f"invalid tree size {size_text!r}")
    root = _b64decode(root_text, "root hash")
    return Checkpoint(
        origin=origin, size=int(size_text), root_hash=root, extensions=tuple(extensions)
    )


def note_key_hash(name: str, public_key: PublicKey) -> bytes:
    """C2SP key hash: SHA-256(name ‖ "\\n" ‖ 0x01 ‖ public key)[:4]."""
    return hashlib.sha256(
        name.encode("utf-8") + b"\n" + ED25519_ALGORITHM + public_key.raw
    ).digest()[:4]


def _check_body(body: str) -> None:
    if not body.endswith("\n") or body.startswith("\n"):
        raise CheckpointError("note text must be non-empty and end with a newline")
    if "\n\n" in body:
        raise CheckpointError("note text must not contain blank lines")
    if _CONTROL.search(body):
        raise CheckpointError("note text must not contain control characters")


def _check_name(name: str) -> None:
    if not _KEY_NAME.match(name):
        raise CheckpointError("key name must be non-empty, without spaces or '+'")


def sign_note(body: str, name: str, key: SigningKey) -> str:
    """Sign ``body`` as a C2SP signed note by key ``name``; returns the whole note."""
    _check_body(body)
    _check_name(name)
    signature = key.sign(body.encode("utf-8"))
    blob = base64.b64encode(note_key_hash(name, key.public_key) + signature).decode("ascii")
    return f"{body}\n{SIGNATURE_DASH} {name} {blob}\n"


def open_note(note: str, verifiers: Mapping[str, PublicKey]) -> str:
    """Verify a signed note against ``verifiers`` (key name -> public key); return its body.

    Raises :class:`CheckpointError` if malformed, :class:`SignatureError` if a signature
    line of a given verifier fails, :class:`NoteUnverifiedError` (a CheckpointError) if no
    line is signed by any given verifier. Lines by other keys are ignored.
    """
    if len(note) > MAX_NOTE_SIZE:
        raise CheckpointError("note is too large")
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointError("note has no signature block")
    body, sig_block = note[: split + 1], note[split + 2 :]
    _check_body(body)
    if not sig_block.endswith("\n"):
        raise CheckpointError("signature block must end with a newline")
    lines = sig_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError("too many signatures")
    message = body.encode("utf-8")
    verified: list[str] = []
    for line in lines:
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != SIGNATURE_DASH:
            raise CheckpointError(f"malformed signature line {line!r}")
        _, name, blob_text = parts
        _check_name(name)
        blob = _b64decode(blob_text, "signature")
        if len(blob) < 5:
            raise CheckpointError("signature is too short")
        key = verifiers.get(name)
        if key is None or blob[:4] != note_key_hash(name, key):
            continue  # someone else's signature (e.g. a witness we do not follow)
        if len(blob) != 4 + SIGNATURE_SIZE:
            raise SignatureError(f"signature by {name} has the wrong length")
        try:
            key.verify(message, blob[4:])
        except SignatureError as exc:
            raise SignatureError(
                f"note signature by {name} does not verify",
                details={"name": name, "key_id": key.key_id},
            ) from exc
        verified.append(name)
    if not verified:
        raise NoteUnverifiedError(
            "note has no signature by a trusted key", details={"trusted": sorted(verifiers)}
        )
    return body


def verify_checkpoint(note: str, verifiers: Mapping[str, PublicKey]) -> Checkpoint:
    """``parse_checkpoint(open_note(note, verifiers))``."""
    return parse_checkpoint(open_note(note, verifiers))
