"""Checkpoints of a chain as C2SP signed notes (tlog-checkpoint), ADR 0012.

Body (C2SP tlog-checkpoint layout)::

    <origin>\\n                    the chain id, e.g. careledger.local/careledger.access-events/2
    <size>\\n                      number of blocks in the chain = head height + 1
    <base64 root>\\n               RFC 6962 Merkle Tree Hash over the chain's block hashes
    careledger-head <hex>\\n       block_hash of the head block (block size - 1)
    [<extension line>\\n]*

The root is the tree of ``careledger_core.chain_tree``: leaf ``i`` is the block hash of
block ``i`` (leaf hash SHA-256(0x00 ‖ block_hash)), so any two checkpoints of one chain
are linked by an RFC 9162 consistency proof and a standard C2SP witness can cosign
them. The ``careledger-head`` extension line names the head block itself: a verifier
compares it with the stored block at that height (where a rewrite or truncation is)
without rebuilding the tree, and it links a checkpoint to a block by hash alone.

A *legacy* checkpoint (published before ADR 0012) has no ``careledger-head`` line and
its root is the head block hash itself; ``Checkpoint.is_tree`` tells them apart and
``Checkpoint.head_hash`` gives the head block hash of either.

Signed note (C2SP signed-note)::

    <body>\\n
    — <name> <base64(key hash (4 bytes) ‖ Ed25519 signature (64 bytes))>\\n
    ...

with key hash = SHA-256(name ‖ "\\n" ‖ 0x01 ‖ 32-byte public key)[:4]; the signature
covers the body bytes. Several signature lines may follow (log key, witnesses);
``open_note`` accepts the note if at least one line verifies under a given verifier
and no line from a given verifier fails.

Consistency proofs travel next to a note (the processor puts one in a Kafka record
header, ``CONSISTENCY_HEADER``) in the text form of the C2SP tlog-witness
``add-checkpoint`` request: ``old <size>\\n`` then one base64 hash per line
(``format_consistency`` / ``parse_consistency``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .block import BlockHeader, block_hash
from .chain_tree import ChainTree
from .errors import CheckpointError, NoteUnverifiedError, SignatureError
from .hashing import HASH_SIZE
from .signing import SIGNATURE_SIZE, PublicKey, SigningKey

__all__ = [
    "CONSISTENCY_HEADER",
    "HEAD_EXTENSION",
    "Checkpoint",
    "checkpoint_for",
    "format_checkpoint",
    "format_consistency",
    "note_key_hash",
    "open_note",
    "parse_checkpoint",
    "parse_consistency",
    "sign_note",
    "verify_checkpoint",
]

SIGNATURE_DASH: Final = "\u2014"  # EM DASH, as C2SP signed-note requires
ED25519_ALGORITHM: Final = b"\x01"
MAX_NOTE_SIZE: Final = 1 << 20
MAX_SIGNATURES: Final = 100
#: Extension line naming the head block: ``careledger-head <64 lowercase hex>``.
HEAD_EXTENSION: Final = "careledger-head"
#: Kafka record header carrying a consistency proof next to a published checkpoint.
CONSISTENCY_HEADER: Final = "careledger-consistency"
#: Longest consistency proof accepted (two hashes per tree level, 64 levels).
MAX_PROOF_HASHES: Final = 128

_KEY_NAME = re.compile(r"\A[^\s+]+\Z")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_SIZE = re.compile(r"\A(?:0|[1-9][0-9]{0,18})\Z")
_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")


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
    """A chain at ``size`` blocks: ``origin`` (chain id), ``root_hash`` (the RFC 6962 root
    over the block hashes; for a legacy checkpoint the head block hash) and extension
    lines (``careledger-head <hex>`` first)."""

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

    @property
    def is_tree(self) -> bool:
        """True if the root is an RFC 6962 tree root (a ``careledger-head`` line is
        present); False for a legacy checkpoint whose root is the head block hash."""
        return any(_is_head_line(line) for line in self.extensions)

    @property
    def head_hash(self) -> bytes:
        """The head block's hash: from the ``careledger-head`` line, or the root of a
        legacy checkpoint. Raises :class:`CheckpointError` if that line is malformed or
        repeated."""
        lines = [line for line in self.extensions if _is_head_line(line)]
        if not lines:
            return self.root_hash
        if len(lines) > 1:
            raise CheckpointError(f"more than one {HEAD_EXTENSION} line")
        value = lines[0][len(HEAD_EXTENSION) + 1 :]
        if not _HEX64.match(value):
            raise CheckpointError(f"{HEAD_EXTENSION} must be 64 lowercase hex digits")
        return bytes.fromhex(value)


def _is_head_line(line: str) -> bool:
    return line == HEAD_EXTENSION or line.startswith(HEAD_EXTENSION + " ")


def checkpoint_for(
    head: BlockHeader, tree: ChainTree, extensions: tuple[str, ...] = ()
) -> Checkpoint:
    """The checkpoint of ``head``'s chain: ``tree`` must be the tree over the block
    hashes of blocks 0..head.height (the frontier after appending ``head``)."""
    if tree.size != head.height + 1:
        raise CheckpointError(
            f"tree of {tree.size} blocks for a head at height {head.height}",
            details={"tree_size": tree.size, "height": head.height},
        )
    return Checkpoint(
        origin=head.chain_id,
        size=tree.size,
        root_hash=tree.root,
        extensions=(f"{HEAD_EXTENSION} {block_hash(head).hex()}", *extensions),
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


def format_consistency(old_size: int, proof: Sequence[bytes]) -> str:
    """``old <size>\\n`` and one base64 hash per line (the proof part of a C2SP
    tlog-witness ``add-checkpoint`` request)."""
    if type(old_size) is not int or not 0 <= old_size < 2**63:
        raise CheckpointError("old size must be an integer in 0..2^63-1")
    if len(proof) > MAX_PROOF_HASHES:
        raise CheckpointError("consistency proof is too long")
    lines = [f"old {old_size}"]
    for i, h in enumerate(proof):
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise CheckpointError(f"proof[{i}] is not a {HASH_SIZE}-byte hash")
        lines.append(base64.b64encode(h).decode("ascii"))
    return "\n".join(lines) + "\n"


def parse_consistency(text: str) -> tuple[int, tuple[bytes, ...]]:
    """Strictly parse ``format_consistency`` text: (old size, proof hashes)."""
    if not isinstance(text, str) or not text.endswith("\n") or len(text) > 64 * 1024:
        raise CheckpointError("consistency proof text must end with a newline")
    first, *rest = text[:-1].split("\n")
    if not first.startswith("old ") or not _SIZE.match(first[4:]):
        raise CheckpointError("consistency proof must start with 'old <size>'")
    if len(rest) > MAX_PROOF_HASHES:
        raise CheckpointError("consistency proof is too long")
    proof = []
    for i, line in enumerate(rest):
        raw = _b64decode(line, f"proof[{i}]")
        if len(raw) != HASH_SIZE:
            raise CheckpointError(f"proof[{i}] is not a {HASH_SIZE}-byte hash")
        proof.append(raw)
    return int(first[4:]), tuple(proof)


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
