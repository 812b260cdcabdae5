"""Checks of the event rows of one block (rows with its chain and height).

Rows of another block or beyond ``event_count``, missing and surplus rows; per
row the leaf hash, strict canonical decoding, the denormalised columns, offsets
in order and inside the block's range, one id per block; then the Merkle root of
the recomputed leaves against the signed header. When several rows claim one
index, the one that reproduces the signed root is taken as the block's.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

from careledger.storage.kinds import RecordKind
from careledger_core.errors import ValidationError
from careledger_core.findings import FindingCode
from careledger_core.merkle import merkle_root
from verifiers.integrity.fsck.headers import _HeaderCheck
from verifiers.integrity.fsck.model import Emit, StoredRow, _sha256, _text

#: Most rows claiming the same indexes in one block we try to disambiguate by the root.
_MAX_DUPLICATE_SEARCH = 8

C = FindingCode


def _show(value: Any) -> Any:
    return _text(value) if isinstance(value, bytes | str) else value


def check_events(
    height: int, chk: _HeaderCheck, rows: Sequence[StoredRow], kind: RecordKind, emit: Emit
) -> int:
    """Check the event rows of one block against its header; returns how many rows
    were checked (one per index the block has a row for)."""
    count = chk.event_count
    ours = {chk.hash_hex.encode(), chk.row.block_hash}
    by_idx: dict[int, StoredRow] = {}
    dups: dict[int, list[StoredRow]] = {}
    stored = 0
    for r in rows:
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
        if r.idx >= count:
            emit(
                C.EVENT_UNEXPECTED,
                height,
                f"event index {r.idx} is beyond the block's event_count {count}",
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
        for i in range(count):
            if i not in by_idx:
                emit(C.EVENT_MISSING, height, f"event {i} of the block is missing", index=i)

    # Per event: the hot loop.
    sha = _sha256
    decode = kind.decode
    record_id = kind.record_id
    expected_of = kind.read_values
    stored_of = operator.attrgetter(*kind.read_columns)
    unique_key = kind.unique_key
    first_off, last_off = chk.first_offset, chk.last_offset
    leaves: list[bytes] = []
    append_leaf = leaves.append
    prev_off = -1
    out_of_order = False
    seen_ids: set[Any] = set()
    checked = 0
    for idx in range(count) if complete else sorted(by_idx):
        r = by_idx[idx]
        checked += 1
        data = r.canonical
        leaf = sha(b"\x00" + data).digest()
        append_leaf(leaf)
        if r.leaf_hash != leaf.hex().encode():
            emit(
                C.EVENT_HASH_MISMATCH,
                height,
                "stored leaf hash is not the hash of the stored event bytes",
                index=idx,
                event_id=_text(r.event_id),
                details={"stored": _text(r.leaf_hash), "computed": leaf.hex()},
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
        except Exception as exc:  # stored bytes are hostile: never let them stop us
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
            if columns != expected:
                diff = {
                    name: {"column": _show(col), "event": _show(exp)}
                    for name, col, exp in zip(kind.read_columns, columns, expected, strict=True)
                    if col != exp
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
        off = r.kafka_offset
        if off < first_off or off > last_off:
            emit(
                C.EVENT_OFFSET_OUT_OF_RANGE,
                height,
                f"Kafka offset {off} is outside the block's range {first_off}..{last_off}",
                index=idx,
                event_id=_text(r.event_id),
                details={
                    "kafka_offset": off,
                    "first_offset": first_off,
                    "last_offset": last_off,
                },
            )
        if off <= prev_off:
            out_of_order = True
        prev_off = off

    if out_of_order:
        _report_order(emit, height, chk, by_idx, leaves if complete else None)
    if complete and merkle_root(leaves).hex() != chk.merkle_root:
        emit(
            C.MERKLE_ROOT_MISMATCH,
            height,
            "Merkle root of the stored events differs from the signed header",
            details={"header": chk.merkle_root, "computed": merkle_root(leaves).hex()},
        )
    return checked


def _report_order(
    emit: Emit,
    height: int,
    chk: _HeaderCheck,
    by_idx: dict[int, StoredRow],
    leaves: list[bytes] | None,
) -> None:
    """Name the rows that are out of place: those whose offset is not where a
    sorted order would have it (for a swap: exactly the two swapped rows)."""
    idxs = sorted(by_idx)
    offsets = [by_idx[i].kafka_offset for i in idxs]
    in_order = sorted(offsets)
    reordered_root_matches = False
    if leaves is not None:
        order = sorted(range(len(idxs)), key=lambda k: offsets[k])
        reordered_root_matches = merkle_root([leaves[k] for k in order]).hex() == chk.merkle_root
    prev = None
    for pos, idx in enumerate(idxs):
        off = offsets[pos]
        if off != in_order[pos] or off == prev:
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
                    "kafka_offset": off,
                    "expected_offset": in_order[pos],
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
                        "kafka_offset": cand.kafka_offset,
                        "kept_event_id": _text(keep.event_id),
                    },
                )
