"""Checks of one stored block header on its own (no chain context).

Strict decoding as a canonical ``careledger.block/1`` header, the header columns
against the decoded header (value and type: a column whose type an attacker changed
is a mismatch, never a crash), the ``block_hash`` column against SHA-256 of the
header bytes, and the Ed25519 signature under a key the verifier trusts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from careledger.storage.store import StoredHeader
from careledger_core.block import BlockHeader, decode_header
from careledger_core.errors import HeaderValidationError, SignatureError, UnknownKeyError
from careledger_core.findings import FindingCode
from verifiers.integrity.fsck.model import (
    HeaderVerifier,
    _int,
    _sha256,
    _show,
    _text,
    _type_name,
)

_SIG_HEX = re.compile(rb"\A[0-9a-f]{128}\Z")

C = FindingCode


@dataclass(slots=True)
class _HeaderCheck:
    """One stored header with what its own checks found, and the values to go on with."""

    row: StoredHeader
    header: BlockHeader | None
    hash_hex: str  # SHA-256 of the stored header bytes
    signature_ok: bool
    problems: list[tuple[FindingCode, str, dict[str, Any]]]
    # What the block claims: from the decoded header, or (header invalid) from the columns.
    prev_hash: str
    merkle_root: str
    event_count: int
    first_offset: int
    last_offset: int
    #: the ``block_hash`` column when it is a byte string (event rows may name it)
    column_hash: bytes | None = None

    @property
    def sound(self) -> bool:
        return self.header is not None and self.signature_ok and not self.problems

    @property
    def event_offsets(self) -> str | None:
        """The signed commitment to the events' offsets (None: an older header)."""
        return None if self.header is None else self.header.event_offsets

    @property
    def event_records(self) -> int | None:
        """The offsets of the range whose (batch) record carries the block's events
        (ADR 0020); None when every event is a record of its own (or no header)."""
        return None if self.header is None else self.header.event_records


_HEADER_FIELD_COLUMNS = (
    "prev_hash",
    "merkle_root",
    "first_event_time",
    "last_event_time",
    "created_at",
    "key_id",
)
_HEADER_INT_COLUMNS = (
    "event_count",
    "first_offset",
    "last_offset",
    "dead_lettered",
    "absent_offsets",
)


def _column(row: StoredHeader, name: str) -> dict[str, Any]:
    value = getattr(row, name)
    return {"column": _show(value), "type": _type_name(value)}


def check_header(row: StoredHeader, keys: HeaderVerifier) -> _HeaderCheck:
    """Checks of one header row on its own (no chain context). Never raises, whatever
    the row holds: a column of the wrong type is a mismatch like a wrong value."""
    problems: list[tuple[FindingCode, str, dict[str, Any]]] = []
    header: BlockHeader | None = None
    if type(row.header) is bytes:
        raw = row.header
        try:
            header = decode_header(raw)
        except HeaderValidationError as exc:
            problems.append(
                (
                    C.BLOCK_HEADER_INVALID,
                    f"stored header bytes are not a valid canonical block header: {exc.message}",
                    {"field": exc.field, "reason": exc.reason},
                )
            )
        except (ValueError, TypeError, RecursionError, MemoryError) as exc:
            # stored bytes are hostile: never let them stop us
            problems.append(
                (
                    C.BLOCK_HEADER_INVALID,
                    f"stored header bytes cannot be decoded: {type(exc).__name__}",
                    {"reason": _text(str(exc))},
                )
            )
    else:
        raw = b""
        problems.append(
            (
                C.BLOCK_HEADER_INVALID,
                f"header column holds {_type_name(row.header)}, not the header bytes",
                _column(row, "header"),
            )
        )
    hash_hex = _sha256(raw).hexdigest()
    column_hash = row.block_hash if type(row.block_hash) is bytes else None
    if column_hash != hash_hex.encode():
        problems.append(
            (
                C.BLOCK_HASH_MISMATCH,
                "block_hash column is not SHA-256 of the stored header bytes",
                {"stored": _show(row.block_hash), "computed": hash_hex},
            )
        )
    signature_ok = False
    if header is not None:
        mismatched: dict[str, Any] = {}
        if type(row.chain_id) is not str or row.chain_id != header.chain_id:
            mismatched["chain_id"] = {"column": _show(row.chain_id), "header": header.chain_id}
        if type(row.height) is not int or row.height != header.height:
            mismatched["height"] = {"column": _show(row.height), "header": header.height}
        for name in _HEADER_INT_COLUMNS:
            col = getattr(row, name)
            if type(col) is not int or col != getattr(header, name):
                mismatched[name] = {"column": _show(col), "header": getattr(header, name)}
        for name in _HEADER_FIELD_COLUMNS:
            col = getattr(row, name)
            if type(col) is not bytes or col != getattr(header, name).encode():
                mismatched[name] = {"column": _show(col), "header": getattr(header, name)}
        if mismatched:
            problems.append(
                (
                    C.BLOCK_HEADER_MISMATCH,
                    "header columns differ from the signed header: " + ", ".join(mismatched),
                    {"columns": mismatched},
                )
            )
        if type(row.signature) is not bytes or not _SIG_HEX.match(row.signature):
            problems.append(
                (
                    C.SIGNATURE_INVALID,
                    "signature column is not 128 lowercase hex digits",
                    {"key_id": header.key_id, "stored": _text(row.signature, 140)},
                )
            )
        else:
            try:
                keys.verify_header(header, bytes.fromhex(row.signature.decode("ascii")))
                signature_ok = True
            except UnknownKeyError:
                problems.append(
                    (
                        C.KEY_UNKNOWN,
                        f"block is signed by key {header.key_id}, "
                        "which this verifier does not trust",
                        {"key_id": header.key_id},
                    )
                )
            except SignatureError as exc:
                problems.append(
                    (
                        C.SIGNATURE_INVALID,
                        f"block signature does not verify under trusted key {header.key_id}",
                        {"key_id": header.key_id, "reason": exc.message},
                    )
                )
        return _HeaderCheck(
            row,
            header,
            hash_hex,
            signature_ok,
            problems,
            header.prev_hash,
            header.merkle_root,
            header.event_count,
            header.first_offset,
            header.last_offset,
            column_hash,
        )
    # No header to go by: what the columns claim, where they are readable.
    first = _int(row.first_offset)
    last = _int(row.last_offset)
    return _HeaderCheck(
        row,
        None,
        hash_hex,
        False,
        problems,
        _text(row.prev_hash) or "",
        _text(row.merkle_root) or "",
        _int(row.event_count) or 0,
        -1 if first is None else first,
        -1 if last is None else last,
        column_hash,
    )
