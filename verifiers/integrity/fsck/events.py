"""Checks of the event rows of one block (rows with its chain and height).

Rows of another block or beyond ``event_count``, missing and surplus rows; per
row the leaf hash, strict canonical decoding, the denormalised columns (every one,
the derived dates included, by value and by type), offsets in order and inside the
block's range, one id per block; then the Merkle root of the recomputed leaves
against the signed header, and the events' offsets against the header's signed
``event_offsets`` (ADR 0014). When several rows claim one index, the one that
reproduces the signed root is taken as the block's.

Batch records (ADR 0020): when the header signs ``event_records``, the events of one
record share its offset, so offsets only have to be non-decreasing in index order
(``EVENT_OUT_OF_ORDER`` otherwise, at the row), inside the range
(``EVENT_OFFSET_OUT_OF_RANGE``, at the row), the number of distinct offsets must be
``event_records`` and the offsets (one per event, repeated) the signed digest
(``EVENT_OFFSETS_MISMATCH``, one per block, both named in its details). Which events
of a shared offset belong to which signed batch is the source checks' question
(``verifiers.integrity.sources``).

Rows are untrusted: a column of the wrong type (an attacker who changed the schema,
a NULL in a column made Nullable) is a finding at its row, never an exception.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from typing import Any

from careledger.storage.kinds import RecordKind
from careledger_core.block import offsets_digest
from careledger_core.errors import ValidationError
from careledger_core.findings import FindingCode
from careledger_core.merkle import merkle_root
from verifiers.integrity.fsck.bulk import columns_equal, decode_block
from verifiers.integrity.fsck.headers import _HeaderCheck
from verifiers.integrity.fsck.model import (
    BlockRows,
    Emit,
    StoredRow,
    _sha256,
    _show,
    _text,
    _type_name,
    as_rows,
)

#: Most rows claiming the same indexes in one block we try to disambiguate by the root.
_MAX_DUPLICATE_SEARCH = 8
#: Missing indexes of one block reported one by one; the rest in one finding.
_MAX_MISSING_LISTED = 1000
#: Offsets listed in the details of an EVENT_OFFSETS_MISMATCH.
_MAX_OFFSETS_LISTED = 50

C = FindingCode


def _well_formed(height: int, rows: Sequence[StoredRow], emit: Emit) -> list[StoredRow]:
    """The rows whose structural columns can be used, the others reported.

    ``block_hash`` and ``idx`` must be a byte string and an integer (else the row
    cannot be placed: ``EVENT_UNEXPECTED``); a ``canonical`` that is not bytes is
    ``EVENT_NOT_CANONICAL`` and checked as empty bytes; a ``kafka_offset`` that is not
    an integer is ``EVENT_FIELD_MISMATCH`` and left out of the offset checks (None).
    """
    out: list[StoredRow] = []
    for r in rows:
        if (
            type(r.block_hash) is bytes
            and type(r.idx) is int
            and type(r.canonical) is bytes
            and type(r.kafka_offset) is int
        ):
            out.append(r)
            continue
        idx = r.idx if type(r.idx) is int else None
        if type(r.block_hash) is not bytes or idx is None:
            bad = "block_hash" if type(r.block_hash) is not bytes else "idx"
            emit(
                C.EVENT_UNEXPECTED,
                height,
                f"event row whose {bad} column holds {_type_name(getattr(r, bad))}: "
                "it cannot belong to the block",
                index=idx,
                event_id=_text(r.event_id),
                details={bad: _show(getattr(r, bad)), "kafka_offset": _show(r.kafka_offset)},
            )
            continue
        changes: dict[str, Any] = {}
        if type(r.canonical) is not bytes:
            emit(
                C.EVENT_NOT_CANONICAL,
                height,
                f"canonical column holds {_type_name(r.canonical)}, not the record's bytes",
                index=idx,
                event_id=_text(r.event_id),
                details={"column": _show(r.canonical)},
            )
            changes["canonical"] = b""
        if type(r.kafka_offset) is not int:
            emit(
                C.EVENT_FIELD_MISMATCH,
                height,
                f"kafka_offset column holds {_type_name(r.kafka_offset)}, not a Kafka offset",
                index=idx,
                event_id=_text(r.event_id),
                details={"columns": {"kafka_offset": {"column": _show(r.kafka_offset)}}},
            )
            changes["kafka_offset"] = None
        out.append(dataclasses.replace(r, **changes))
    return out


def check_events(
    height: int,
    chk: _HeaderCheck,
    block_rows: Sequence[StoredRow] | BlockRows,
    kind: RecordKind,
    emit: Emit,
) -> int:
    """Check the event rows of one block against its header; returns how many rows
    were checked (one per index the block has a row for)."""
    count = chk.event_count
    ours = {chk.hash_hex.encode()}
    if chk.column_hash is not None:
        ours.add(chk.column_hash)
    if _block_sound(chk, block_rows, kind, ours):
        return count
    rows = as_rows(block_rows)
    by_idx: dict[int, StoredRow] = {}
    dups: dict[int, list[StoredRow]] = {}
    stored = 0
    for r in _well_formed(height, rows, emit):
        if r.block_hash not in ours:
            emit(
                C.EVENT_UNEXPECTED,
                height,
                "event row names another block hash than the block at this height",
                index=r.idx,
                event_id=_text(r.event_id),
                details={"row_block_hash": _text(r.block_hash), "kafka_offset": r.kafka_offset},
            )
            continue
        stored += 1
        if not 0 <= r.idx < count:
            emit(
                C.EVENT_UNEXPECTED,
                height,
                f"event index {_text(r.idx)} is beyond the block's event_count {count}",
                index=r.idx,
                event_id=_text(r.event_id),
                details={"event_count": count, "kafka_offset": r.kafka_offset},
            )
            continue
        first = by_idx.setdefault(r.idx, r)
        if first is not r:
            dups.setdefault(r.idx, [first]).append(r)
    if stored != count:
        emit(
            C.EVENT_COUNT_MISMATCH,
            height,
            f"{stored} event rows stored for a block of {count} events",
            details={"stored_rows": stored, "event_count": count},
        )
    complete = len(by_idx) == count
    if dups:
        _resolve_duplicates(emit, height, chk, by_idx, dups, complete)
    if not complete:
        _report_missing(emit, height, count, by_idx)

    # Per event: the hot loop.
    sha = _sha256
    decode = kind.decode
    record_id = kind.record_id
    expected_of = kind.read_values
    stored_of = operator.attrgetter(*kind.read_columns)
    read_types = kind.read_types
    unique_key = kind.unique_key
    first_off, last_off = chk.first_offset, chk.last_offset
    leaves: list[bytes] = []
    append_leaf = leaves.append
    prev_off = -1
    # batch records (ADR 0020): the events of one record share its offset
    repeats_ok = chk.event_records is not None
    step = 0 if repeats_ok else 1
    distinct = 0
    out_of_order = False
    offsets_ok = True  # every offset readable and in range
    seen_ids: set[Any] = set()
    checked = 0
    for idx in range(count) if complete else sorted(by_idx):
        r = by_idx[idx]
        checked += 1
        data = r.canonical
        leaf = sha(b"\x00" + data).digest()
        append_leaf(leaf)
        if r.leaf_hash != leaf.hex().encode() or type(r.leaf_hash) is not bytes:
            emit(
                C.EVENT_HASH_MISMATCH,
                height,
                "stored leaf hash is not the hash of the stored event bytes",
                index=idx,
                event_id=_text(r.event_id),
                details={"stored": _show(r.leaf_hash), "computed": leaf.hex()},
            )
        try:
            event, canonical = decode(data)
        except ValidationError as exc:
            emit(
                C.EVENT_NOT_CANONICAL,
                height,
                f"stored bytes are not a valid {kind.name}: {exc.message}",
                index=idx,
                event_id=_text(r.event_id),
                details={
                    "field": getattr(exc, "field", "$"),
                    "reason": getattr(exc, "reason", exc.message),
                },
            )
        except (ValueError, TypeError, RecursionError, MemoryError) as exc:
            # stored bytes are hostile: never let them stop us
            emit(
                C.EVENT_NOT_CANONICAL,
                height,
                f"stored event bytes cannot be decoded: {type(exc).__name__}",
                index=idx,
                event_id=_text(r.event_id),
                details={"reason": _text(str(exc))},
            )
        else:
            rid = record_id(event)
            if canonical != data:
                emit(
                    C.EVENT_NOT_CANONICAL,
                    height,
                    "stored event bytes are not in canonical form (RFC 8785)",
                    index=idx,
                    event_id=rid,
                )
            expected = expected_of(event)
            columns = stored_of(r)
            if columns != expected or tuple(map(type, columns)) != read_types:
                diff = {
                    name: _difference(name, col, exp)
                    for name, col, exp in zip(kind.read_columns, columns, expected, strict=True)
                    if col != exp or type(col) is not type(exp)
                }
                emit(
                    C.EVENT_FIELD_MISMATCH,
                    height,
                    "columns differ from the stored event: " + ", ".join(diff),
                    index=idx,
                    event_id=rid,
                    details={"columns": diff},
                )
            eid = unique_key(event)
            if eid in seen_ids:
                emit(
                    C.EVENT_DUPLICATE_ID,
                    height,
                    f"{kind.name} {rid} occurs twice in the block",
                    index=idx,
                    event_id=rid,
                )
            seen_ids.add(eid)
        off: int | None = r.kafka_offset
        if off is None:  # unreadable, reported by _well_formed
            offsets_ok = False
            continue
        if off < first_off or off > last_off:
            offsets_ok = False
            emit(
                C.EVENT_OFFSET_OUT_OF_RANGE,
                height,
                f"Kafka offset {_text(off)} is outside the block's range {first_off}..{last_off}",
                index=idx,
                event_id=_text(r.event_id),
                details={
                    "kafka_offset": _show(off),
                    "first_offset": first_off,
                    "last_offset": last_off,
                },
            )
        if off < prev_off + step:
            out_of_order = True
        elif off != prev_off:
            distinct += 1
        prev_off = off

    if out_of_order:
        _report_order(emit, height, chk, by_idx, leaves if complete else None, repeats_ok)
    if complete and merkle_root(leaves).hex() != chk.merkle_root:
        emit(
            C.MERKLE_ROOT_MISMATCH,
            height,
            "Merkle root of the stored events differs from the signed header",
            details={"header": chk.merkle_root, "computed": merkle_root(leaves).hex()},
        )
    if complete and offsets_ok and not out_of_order and chk.event_offsets is not None:
        _check_offsets(emit, height, chk, [by_idx[i].kafka_offset for i in range(count)], distinct)
    return checked


def _block_sound(
    chk: _HeaderCheck, rows: Sequence[StoredRow] | BlockRows, kind: RecordKind, ours: set[bytes]
) -> bool:
    """True when the block's rows pass every check of ``check_events`` (which would then
    report nothing): the same checks, whole columns at a time. Any doubt (a finding to
    make, a row of an odd shape) is False, and ``check_events`` checks row by row, so the
    findings are always those of the row-by-row checks.

    Each conjunct below is the negation of one finding of the row-by-row path: one well
    formed row per index ``0..count-1`` of this block (``_well_formed``, unexpected,
    missing, duplicate rows, ``EVENT_COUNT_MISMATCH``), the leaf hashes
    (``EVENT_HASH_MISMATCH``), ``kind.decode`` of every row's bytes giving them back
    (``EVENT_NOT_CANONICAL``), every column equal to the decoded value with the read type
    (``EVENT_FIELD_MISMATCH``), one id per block (``EVENT_DUPLICATE_ID``), offsets in the
    range and in order (``EVENT_OFFSET_OUT_OF_RANGE``, ``EVENT_OUT_OF_ORDER``), the Merkle
    root and the offsets digest (``MERKLE_ROOT_MISMATCH``, ``EVENT_OFFSETS_MISMATCH``)."""
    count = chk.event_count
    if len(rows) != count or count == 0:
        return False
    if isinstance(rows, BlockRows):
        column = rows.column
    else:
        listed = list(rows)

        def column(name: str) -> list[Any]:
            return list(map(operator.attrgetter(name), listed))

    idxs = column("idx")
    hashes = column("block_hash")
    datas = column("canonical")
    offsets = column("kafka_offset")
    stored_leaves = column("leaf_hash")
    # the types first: only then are the values known to be hashable and comparable
    if (
        set(map(type, idxs)) != {int}
        or set(map(type, hashes)) != {bytes}
        or set(map(type, datas)) != {bytes}
        or set(map(type, stored_leaves)) != {bytes}
        or set(map(type, offsets)) != {int}
        or idxs != list(range(count))
        or not set(hashes) <= ours
    ):
        return False
    sha = _sha256
    leaves = [sha(b"\x00" + d).digest() for d in datas]
    # every stored leaf 64 characters, so the joined texts align row by row
    if set(map(len, stored_leaves)) != {64} or b"".join(leaves).hex().encode() != b"".join(
        stored_leaves
    ):
        return False
    if merkle_root(leaves).hex() != chk.merkle_root:
        return False
    first_off, last_off = chk.first_offset, chk.last_offset
    if offsets[0] < max(0, first_off) or offsets[-1] > last_off or offsets != sorted(offsets):
        return False
    distinct = len(set(offsets))
    if chk.event_records is None and distinct != count:
        return False  # a repeated offset is out of order unless the block holds batches
    if chk.event_offsets is not None and (
        offsets_digest(offsets) != chk.event_offsets
        or (chk.event_records is not None and distinct != chk.event_records)
    ):
        return False
    events = decode_block(kind, datas)  # valid and canonical, every one (else None)
    if events is None:
        return False  # reported row by row
    if len(set(map(kind.unique_key, events))) != count:
        return False
    by_column = [column(name) for name in kind.read_columns]
    for values, read_type in zip(by_column, kind.read_types, strict=True):
        if set(map(type, values)) != {read_type}:
            return False
    same = columns_equal(kind, by_column, events)  # whole columns at a time
    if same is not None:
        return same
    return list(zip(*by_column, strict=True)) == list(map(kind.read_values, events))


def _check_offsets(
    emit: Emit, height: int, chk: _HeaderCheck, offsets: list[Any], records: int
) -> None:
    """The events' offsets against the signed ``event_offsets`` and, for a block of
    batch records, their ``records`` distinct offsets against the signed
    ``event_records``: an event moved to an offset that was dead-lettered (or absent),
    or to another record's, keeps the order and the range, not this."""
    digest = offsets_digest(offsets)
    records_ok = chk.event_records is None or records == chk.event_records
    if digest == chk.event_offsets and records_ok:
        return
    free: list[int] = []  # offsets of the range the stored rows leave to dead letters
    expected = chk.first_offset
    for off in [*offsets, chk.last_offset + 1]:
        while expected < off and len(free) < _MAX_OFFSETS_LISTED:
            free.append(expected)
            expected += 1
        expected = off + 1
        if len(free) >= _MAX_OFFSETS_LISTED:
            break
    details: dict[str, Any] = {
        "header": chk.event_offsets,
        "computed": digest,
        "first_offset": chk.first_offset,
        "last_offset": chk.last_offset,
        "stored_free_offsets": free,
    }
    if chk.event_records is not None:
        details["event_records"] = chk.event_records
        details["stored_records"] = records
    emit(
        C.EVENT_OFFSETS_MISMATCH,
        height,
        "the Kafka offsets of the stored events are not the ones the signed header commits "
        "to: an event was moved to an offset that was dead-lettered or absent"
        + ("" if chk.event_records is None else ", or to another record's"),
        details=details,
    )


def _report_missing(emit: Emit, height: int, count: int, by_idx: dict[int, StoredRow]) -> None:
    """EVENT_MISSING per missing index, the first ``_MAX_MISSING_LISTED`` one by one and
    the rest in one finding (an unsigned header may claim billions of events)."""
    listed = 0
    missing = count - len(by_idx)
    first_unlisted: int | None = None
    expected = 0
    for present in [*sorted(by_idx), count]:
        for i in range(expected, present):
            if listed >= _MAX_MISSING_LISTED:
                first_unlisted = i
                break
            emit(C.EVENT_MISSING, height, f"event {i} of the block is missing", index=i)
            listed += 1
        if first_unlisted is not None:
            break
        expected = present + 1
    if first_unlisted is not None:
        emit(
            C.EVENT_MISSING,
            height,
            f"{missing - listed} more events of the block are missing, "
            f"from index {first_unlisted} on",
            details={
                "count": missing - listed,
                "from_index": first_unlisted,
                "to_index": count - 1,
            },
        )


def _report_order(
    emit: Emit,
    height: int,
    chk: _HeaderCheck,
    by_idx: dict[int, StoredRow],
    leaves: list[bytes] | None,
    repeats_ok: bool = False,
) -> None:
    """Name the rows that are out of place: those whose offset is not where a
    sorted order would have it (for a swap: exactly the two swapped rows); a repeated
    offset is out of place unless the block holds batch records (``repeats_ok``)."""
    idxs = sorted(i for i, r in by_idx.items() if r.kafka_offset is not None)
    offsets: list[int] = [by_idx[i].kafka_offset for i in idxs]
    in_order = sorted(offsets)
    reordered_root_matches = False
    if leaves is not None and len(idxs) == len(leaves):
        order = sorted(range(len(idxs)), key=lambda k: offsets[k])
        reordered_root_matches = merkle_root([leaves[k] for k in order]).hex() == chk.merkle_root
    prev = None
    for pos, idx in enumerate(idxs):
        off = offsets[pos]
        if off != in_order[pos] or (off == prev and not repeats_ok):
            r = by_idx[idx]
            emit(
                C.EVENT_OUT_OF_ORDER,
                height,
                f"event {idx} has Kafka offset {off}, out of order in the block"
                + (
                    "; in offset order the events reproduce the signed root"
                    if reordered_root_matches
                    else ""
                ),
                index=idx,
                event_id=_text(r.event_id),
                details={
                    "kafka_offset": _show(off),
                    "expected_offset": _show(in_order[pos]),
                    "reordered_root_matches": reordered_root_matches,
                },
            )
        prev = off


def _resolve_duplicates(
    emit: Emit,
    height: int,
    chk: _HeaderCheck,
    by_idx: dict[int, StoredRow],
    dups: dict[int, list[StoredRow]],
    complete: bool,
) -> None:
    """Several rows claim one index: keep the one that reproduces the signed root."""
    if complete and len(dups) <= _MAX_DUPLICATE_SEARCH:
        leaves = [_sha256(b"\x00" + by_idx[i].canonical).digest() for i in range(chk.event_count)]
        for idx, candidates in dups.items():
            for cand in candidates:
                leaves[idx] = _sha256(b"\x00" + cand.canonical).digest()
                if merkle_root(leaves).hex() == chk.merkle_root:
                    by_idx[idx] = cand
                    break
            else:
                leaves[idx] = _sha256(b"\x00" + by_idx[idx].canonical).digest()
    for idx, candidates in dups.items():
        keep = by_idx[idx]
        for cand in candidates:
            if cand is not keep:
                emit(
                    C.EVENT_UNEXPECTED,
                    height,
                    f"a second event row claims index {idx} of the block",
                    index=idx,
                    event_id=_text(cand.event_id),
                    details={
                        "kafka_offset": _show(cand.kafka_offset),
                        "kept_event_id": _text(keep.event_id),
                    },
                )


#: columns that identify a patient or a member of staff: a finding (which the follow
#: mode publishes as an alert) names where they differ, never their values.
IDENTIFYING_COLUMNS = frozenset({"patient_id", "actor_id", "subject_id"})


def _difference(name: str, column: object, event: object) -> dict[str, object]:
    if name in IDENTIFYING_COLUMNS:
        withheld = "(identifier withheld: read the row at this location)"
        return {"column": withheld, "event": withheld}
    return {"column": _show(column), "event": _show(event)}
