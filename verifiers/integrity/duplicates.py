"""Duplicate records: the same access chained twice (ADR 0023).

A hospital system that resends a record (a retry after a lost acknowledgement, a
replay of its outbox, the same audit message over syslog TCP *and* UDP) gets it
chained twice: nothing is lost, but an accounting would count the access twice. The
ingest gateway cannot refuse the second copy (the first may never have been
acknowledged, and refusing would risk losing the only one), so the duplicate is chained
and **reported** here: a ``DUPLICATE_EVENT`` finding (severity info: not tampering)
at the later position, naming both positions, both event ids and both raw-record
hashes.

Identity: the same source and the same event — the event's canonical bytes with its
``event_id`` and ``raw_ref`` left out (an event id derived from the received bytes and
the raw-record hash differ when only the transport framing or a syslog header differ).
Two accesses whose every field agrees to the microsecond are indistinguishable, and
reporting them is the point.

Candidates come from the side columns (source system, patient, time, actor, action,
outcome) of committed rows; each candidate is then decided from its canonical bytes, so
a column edit cannot make two different events look alike, and one that hides a
duplicate is itself an ``EVENT_FIELD_MISMATCH`` of the event checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec

from careledger.storage.store import ChainStore
from careledger_core.errors import ValidationError
from careledger_core.event import canonical_event_bytes, decode_and_canonicalize
from careledger_core.findings import Finding, FindingCode

__all__ = ["MAX_GROUPS", "check_duplicate_events", "duplicate_findings", "identity_key"]

#: Candidate groups read per run (a ledger flooded with copies is reported, bounded).
MAX_GROUPS: Final = 10_000
_NO_ID: Final = "00000000-0000-4000-8000-000000000000"

Position = tuple[str, int, int]


def identity_key(canonical: bytes) -> bytes | None:
    """SHA-256 of the event without ``event_id`` and ``raw_ref``; None if the bytes are
    not a valid event (the event checks report those)."""
    try:
        event, _ = decode_and_canonicalize(canonical)
    except (ValidationError, ValueError, TypeError, RecursionError):
        return None
    same = msgspec.structs.replace(event, event_id=_NO_ID, raw_ref=None)
    return hashlib.sha256(canonical_event_bytes(same)).digest()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def duplicate_findings(rows: Iterable[tuple[str, int, int, int, bytes]]) -> list[Finding]:
    """Findings for rows ``(chain_id, height, idx, kafka_offset, canonical)`` of one
    candidate group (or several): every position after the first of an identity."""
    first: dict[bytes, tuple[Position, int, dict[str, Any]]] = {}
    out: list[Finding] = []
    seen: set[Position] = set()
    for chain_id, height, idx, offset, canonical in sorted(rows, key=lambda r: r[:3]):
        position = (chain_id, height, idx)
        if position in seen:  # the same row stored twice: the event checks' business
            continue
        seen.add(position)
        key = identity_key(canonical)
        if key is None:
            continue
        event = msgspec.json.decode(canonical)
        info = {
            "chain_id": chain_id,
            "height": height,
            "index": idx,
            "kafka_offset": offset,
            "event_id": event.get("event_id"),
            "raw_sha256": (event.get("raw_ref") or {}).get("sha256"),
        }
        earlier = first.get(key)
        if earlier is None:
            first[key] = (position, offset, info)
            continue
        where = f"{earlier[2]['chain_id']}@{earlier[2]['height']}#{earlier[2]['index']}"
        same_bytes = info["raw_sha256"] is not None and info["raw_sha256"] == earlier[2].get(
            "raw_sha256"
        )
        out.append(
            Finding.of(
                FindingCode.DUPLICATE_EVENT,
                chain_id,
                f"the same access as {where} (event {earlier[2]['event_id']}) chained again: "
                "same source and event content"
                + (", same raw record bytes" if same_bytes else ", another raw record"),
                height=height,
                event_index=idx,
                event_id=_text(info["event_id"]),
                details={"first": earlier[2], "duplicate": info, "same_raw_record": same_bytes},
            )
        )
    return out


#: the side columns that make a candidate group, hashed (8 bytes a group, not the text)
_GROUP_KEY: Final = "cityHash64(source_system, patient_id, occurred_at, actor_id, action, outcome)"
_COMMITTED: Final = (
    "(chain_id, height, block_hash) IN (SELECT chain_id, height, block_hash FROM {db}.blocks)"
)
#: rows per pass of the candidate search: memory stays flat in the ledger's size (one
#: pass over the whole table held every event's bytes, ~2 GiB at a million events)
ROWS_PER_PASS: Final = 4_000_000


def _candidates(
    store: ChainStore,
    max_groups: int,
    rows_per_pass: int = ROWS_PER_PASS,
    sealed: bool = False,
) -> list[list[tuple[Any, ...]]]:
    """Rows ``(chain_id, height, idx, kafka_offset, canonical)`` of each group of
    committed access events sharing their side columns, at most ``max_groups`` groups.

    Two phases, both bounded: the keys of groups of more than one row (a hash of the
    side columns: a collision only adds a candidate, decided from the bytes later), in
    passes over slices of the key space; then those groups' rows."""
    db = store.db
    committed = _COMMITTED.format(db=db)
    total = int(store.backend.execute(f"SELECT count() FROM {db}.access_events")[0][0])
    passes = max(1, -(-total // max(1, rows_per_pass)))
    keys: list[int] = []
    for part in range(passes):
        if len(keys) >= max_groups:
            break
        keys += [
            int(k)
            for (k,) in store.backend.execute(
                f"SELECT {_GROUP_KEY} AS k FROM {db}.access_events "
                f"WHERE {committed} AND k % {passes} = {part} "
                f"GROUP BY k HAVING count() > 1 LIMIT {int(max_groups - len(keys))}"
            )
        ]
    groups: dict[int, list[tuple[Any, ...]]] = {}
    for i in range(0, len(keys), 1000):
        chunk = ", ".join(str(k) for k in keys[i : i + 1000])
        extra = ", sealed, data_key_id" if sealed else ""
        for c, h, x, o, d, k, *rest in store.backend.execute(
            "SELECT chain_id, height, idx, kafka_offset, canonical, "
            f"{_GROUP_KEY} AS k{extra} FROM {db}.access_events "
            f"WHERE {committed} AND k IN ({chunk})"
        ):
            groups.setdefault(int(k), []).append((c, h, x, o, d, *rest))
    return list(groups.values())


#: a sealed ledger's row opened (ADR 0037): (sealed document, sealed part, data key id)
#: -> the event's canonical bytes, or None when it cannot be opened (erased; the sealed
#: checks report the others)
Opener = Callable[[bytes, str, str], bytes | None]


def check_duplicate_events(
    store: ChainStore,
    max_groups: int = MAX_GROUPS,
    rows_per_pass: int = ROWS_PER_PASS,
    *,
    open_sealed: Opener | None = None,
) -> list[Finding]:
    """``DUPLICATE_EVENT`` findings over the committed access events of the store. On a
    sealed ledger (``open_sealed``) the candidates (grouped by the same side columns,
    pseudonyms included) are compared opened: two copies of one access carry different
    salts, so their documents differ. Raises ``StorageError`` when the store cannot be
    read."""
    out: list[Finding] = []
    for group in _candidates(store, max_groups, rows_per_pass, sealed=open_sealed is not None):
        rows = []
        for c, h, i, o, d, *rest in group:
            data = d if isinstance(d, bytes) else str(d).encode()
            if open_sealed is not None:
                opened = open_sealed(data, _text(rest[0]), _text(rest[1]))
                if opened is None:
                    continue
                data = opened
            rows.append((_text(c), int(h), int(i), int(o), data))
        out += duplicate_findings(rows)
    return out
