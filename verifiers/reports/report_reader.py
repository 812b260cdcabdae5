"""The queries behind an access report (``access_report``): read-only, and everything
read is untrusted (rows are checked against their signed blocks by the report)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from careledger.storage.store import ChainStore
from careledger_core.errors import CareledgerError
from careledger_core.event import AccessEvent
from careledger_core.reference import ReferenceRecord, decode_reference

#: Columns repeated from the event itself (or internal): not shown with a decision.
_DECISION_SKIP: Final = frozenset(
    {
        "event_id",
        "canonical",
        "patient_id",
        "patient_ref",
        "chain_id",
        "height",
        "idx",
        "occurred_at",
        "occurred_date",
        "actor_id",
    }
)
_CHUNK: Final = 2000


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass(frozen=True)
class _Block:
    chain_id: str
    height: int
    block_hash: str
    header: bytes
    signature: str


@dataclass(frozen=True)
class _Row:
    chain_id: str
    height: int
    idx: int
    block_hash: str
    canonical: bytes
    event: AccessEvent
    #: a sealed ledger's event (ADR 0037): ``salt || JCS(sensitive part)``, which opens
    #: the commitment in ``canonical`` (the sealed document); None in a ledger in clear
    opening: bytes | None = None


class _Reader:
    """The queries behind a report (read-only; everything read is untrusted)."""

    def __init__(self, store: ChainStore) -> None:
        self.backend = store.backend
        self.db = store.db

    def patient_rows(self, patient: str, start: str, end: str) -> list[tuple[Any, ...]]:
        return self.backend.execute(
            "SELECT chain_id, height, idx, block_hash, canonical "
            f"FROM {self.db}.access_events "
            "WHERE patient_id = %(p)s AND occurred_date >= toDate(%(d1)s) "
            "AND occurred_date <= toDate(%(d2)s) "
            "AND occurred_at >= %(t1)s AND occurred_at < %(t2)s "
            "ORDER BY occurred_at, chain_id, height, idx",
            {"p": patient, "d1": start[:10], "d2": end[:10], "t1": start, "t2": end},
        )

    def sealed_rows(
        self, refs: Sequence[str], key_ids: Sequence[str], start: str, end: str
    ) -> list[tuple[Any, ...]]:
        """A sealed ledger's rows of a patient (ADR 0037): by their pseudonyms, and by
        the data keys an erasure destroyed (their pseudonyms cannot be computed any
        more)."""
        if not refs and not key_ids:
            return []
        return self.backend.execute(
            "SELECT chain_id, height, idx, block_hash, canonical, data_key_id, sealed "
            f"FROM {self.db}.access_events "
            "WHERE (patient_id IN %(p)s OR data_key_id IN %(k)s) "
            "AND occurred_date >= toDate(%(d1)s) AND occurred_date <= toDate(%(d2)s) "
            "AND occurred_at >= %(t1)s AND occurred_at < %(t2)s "
            "ORDER BY occurred_at, chain_id, height, idx",
            {
                "p": tuple(refs) or ("",),
                "k": tuple(key_ids) or ("",),
                "d1": start[:10],
                "d2": end[:10],
                "t1": start,
                "t2": end,
            },
        )

    def blocks(self, keys: set[tuple[str, int]]) -> dict[tuple[str, int, str], _Block]:
        """Headers of the blocks ``(chain_id, height)`` (one query per chunk of chains)."""
        found: dict[tuple[str, int, str], _Block] = {}
        if not keys:
            return found
        chains = sorted({c for c, _ in keys})
        heights = sorted({h for _, h in keys})
        for part in _chunks(chains):
            rows = self.backend.execute(
                f"SELECT chain_id, height, block_hash, header, signature FROM {self.db}.blocks "
                "WHERE chain_id IN %(c)s AND height IN %(h)s",
                {"c": tuple(part), "h": tuple(heights)},
            )
            for chain, height, digest, header, signature in rows:
                key = (_text(chain), int(height))
                if key in keys:
                    found[(*key, _text(digest))] = _Block(
                        key[0], key[1], _text(digest), bytes(header), _text(signature)
                    )
        return found

    def leaf_hashes(self, block: _Block) -> list[tuple[int, str]]:
        rows = self.backend.execute(
            f"SELECT idx, leaf_hash FROM {self.db}.access_events "
            "WHERE chain_id = %(c)s AND height = %(h)s AND block_hash = %(b)s ORDER BY idx",
            {"c": block.chain_id, "h": block.height, "b": block.block_hash},
        )
        return [(int(i), _text(h)) for i, h in rows]

    def staff_records(self, actor_ids: Sequence[str]) -> list[ReferenceRecord]:
        """Committed directory records of these users, in ledger order."""
        raw: list[tuple[Any, ...]] = []
        for part in _chunks(actor_ids):
            raw += self.backend.execute(
                "SELECT chain_id, height, idx, block_hash, canonical "
                f"FROM {self.db}.reference_records "
                "WHERE kind = 'staff' AND record_id IN %(ids)s ORDER BY chain_id, height, idx",
                {"ids": tuple(part)},
            )
        if not raw:
            return []
        committed = self.blocks({(_text(r[0]), int(r[1])) for r in raw})
        records: list[ReferenceRecord] = []
        for chain, height, _idx, digest, canonical in raw:
            if (_text(chain), int(height), _text(digest)) not in committed:
                continue
            try:
                records.append(decode_reference(bytes(canonical)))
            except CareledgerError:
                continue  # `careledger verify` reports it; the report falls back to the event
        return records

    def decisions(self, event_ids: Sequence[str]) -> dict[str, dict[str, Any]] | None:
        """The auditor's decision per event, if the ``access_decisions`` table exists."""
        columns = [
            _text(r[0])
            for r in self.backend.execute(
                "SELECT name FROM system.columns WHERE database = %(db)s "
                "AND table = 'access_decisions'",
                {"db": self.db},
            )
        ]
        if "event_id" not in columns:
            return None
        wanted = [c for c in columns if c not in _DECISION_SKIP]
        found: dict[str, dict[str, Any]] = {}
        if not wanted:
            return found
        for part in _chunks(event_ids):
            rows = self.backend.execute(
                f"SELECT event_id, {', '.join(wanted)} FROM {self.db}.access_decisions "
                "WHERE event_id IN %(ids)s",
                {"ids": tuple(part)},
            )
            for event_id, *values in rows:
                row = {name: _json_value(v) for name, v in zip(wanted, values, strict=True)}
                eid = _text(event_id)
                # a re-audit adds rows: the latest decision stands
                if eid not in found or str(row.get("decided_at", "")) >= str(
                    found[eid].get("decided_at", "")
                ):
                    found[eid] = row
        return found


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        text = value.decode("utf-8", errors="replace")
        if text[:1] in ("{", "["):  # the auditor stores JSON in String columns
            try:
                return json.loads(text)
            except ValueError:
                return text
        return text
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)
