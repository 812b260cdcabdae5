"""Reading the ledger for the decision point: committed consent records up to a
chain height, ledgered decision records and the events that ledger them.

Everything is read from committed blocks only (rows whose block header is stored)
and decoded from the stored canonical bytes, never from a denormalised column.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from careledger.raw_record import decode_and_canonicalize_raw
from careledger.storage.backend import SqlBackend
from careledger.storage.migrations import check_identifier
from careledger_core.errors import CareledgerError
from careledger_core.event import decode_event
from careledger_core.reference import reference_from_dict

from .engine import LedgeredConsent
from .model import DECISION_FORMAT, decision_sha256, ledgered_decision_hash
from .sealed import SealedReader

__all__ = [
    "DecisionRow",
    "LedgeredDecision",
    "consent_chains",
    "read_consent_heads",
    "read_consents",
    "read_decision_events",
    "read_decision_records",
]

log = logging.getLogger("careledger.decision_point")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def consent_chains(settings: Any) -> list[str]:
    """The chain ids of the consents topic (one per partition)."""
    return [
        settings.chain_id(settings.topic_consents, p)
        for p in range(int(settings.reference_partitions))
    ]


def read_consent_heads(backend: SqlBackend, database: str, chains: Sequence[str]) -> dict[str, int]:
    """The highest committed block of each chain (chains without a block are left out)."""
    db = check_identifier(database)
    if not chains:
        return {}
    rows = backend.execute(
        f"SELECT chain_id, max(height) FROM {db}.blocks WHERE chain_id IN %(c)s GROUP BY chain_id",
        {"c": tuple(chains)},
    )
    return {_text(c): int(h) for c, h in rows if type(h) is int}


def read_consents(
    backend: SqlBackend,
    database: str,
    chain_id: str,
    above: int,
    upto: int,
    sealed: SealedReader | None = None,
) -> list[LedgeredConsent]:
    """Committed consent records of ``chain_id`` with ``above < height <= upto``, in
    ledger order, each with its block's signed time. Undecodable rows are skipped
    (``verify`` reports them). On a sealed ledger (``sealed``) each is opened through
    the key store."""
    db = check_identifier(database)
    p = {"c": chain_id, "a": above, "u": upto}
    blocks = backend.execute(
        f"SELECT height, block_hash, created_at FROM {db}.blocks "
        "WHERE chain_id = %(c)s AND height > %(a)s AND height <= %(u)s",
        p,
    )
    times = {(h, _text(b)): _text(t) for h, b, t in blocks if type(h) is int}
    rows = backend.execute(
        f"SELECT height, idx, block_hash, canonical, sealed, data_key_id "
        f"FROM {db}.reference_records "
        "WHERE chain_id = %(c)s AND height > %(a)s AND height <= %(u)s AND kind = 'consent' "
        "ORDER BY height, idx",
        p,
    )
    out: list[LedgeredConsent] = []
    bad = 0
    for height, idx, block, canonical, sealed_part, key_id in rows:
        if type(height) is not int or type(idx) is not int:
            bad += 1
            continue
        when = times.get((height, _text(block)))
        if when is None:  # no header: not committed
            continue
        if sealed is not None:
            opened = sealed.consent(bytes(canonical), sealed_part, key_id)
            if opened is None:
                bad += 1
            else:
                out.append(LedgeredConsent(opened, chain_id, height, idx, when))
            continue
        try:
            doc = json.loads(bytes(canonical))
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            rec = reference_from_dict(doc)
        except (CareledgerError, ValueError, TypeError):
            bad += 1
            continue
        out.append(LedgeredConsent(rec, chain_id, height, idx, when))
    if bad:
        log.warning("%d stored consent records could not be read (run verify)", bad)
    return out


def read_all_consents(
    backend: SqlBackend,
    database: str,
    chains: Sequence[str],
    sealed: SealedReader | None = None,
) -> tuple[list[LedgeredConsent], dict[str, int]]:
    """Every committed consent record of ``chains`` and the heads read up to."""
    heads = read_consent_heads(backend, database, chains)
    records: list[LedgeredConsent] = []
    for chain, head in sorted(heads.items()):
        records.extend(read_consents(backend, database, chain, -1, head, sealed))
    return records, heads


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """A decision record as stored in the raw-record chains (None fields: unreadable)."""

    decision_id: str
    chain_id: str
    height: int
    idx: int
    sha256: str | None
    record: dict[str, Any] | None
    problem: str | None = None

    @property
    def position(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "height": self.height, "idx": self.idx}


@dataclass(frozen=True, slots=True)
class LedgeredDecision:
    """A signed, chained event that ledgers a decision record's hash."""

    decision_id: str
    sha256: str
    chain_id: str
    height: int
    idx: int
    occurred_at: str

    @property
    def position(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "height": self.height, "idx": self.idx}


def _committed(db: str) -> str:
    return (
        f"(chain_id, height, block_hash) IN (SELECT chain_id, height, block_hash FROM {db}.blocks)"
    )


def read_decision_records(
    backend: SqlBackend,
    database: str,
    decision_id: str | None = None,
    sealed: SealedReader | None = None,
) -> list[DecisionRow]:
    """The decision records chained as raw records (one, if ``decision_id``); on a
    sealed ledger opened through the key store."""
    db = check_identifier(database)
    where, params = "", {"f": DECISION_FORMAT}
    if decision_id is not None:
        where, params = " AND record_id = %(id)s", {**params, "id": decision_id}
    rows = backend.execute(
        f"SELECT record_id, chain_id, height, idx, canonical, sealed, data_key_id "
        f"FROM {db}.raw_records "
        f"WHERE format = %(f)s{where} AND {_committed(db)} ORDER BY chain_id, height, idx",
        params,
    )
    out: list[DecisionRow] = []
    for rid, chain, height, idx, canonical, sealed_part, key_ids in rows:
        h = height if type(height) is int else -1
        i = idx if type(idx) is int else -1
        try:
            if sealed is not None:
                opened = sealed.decision_envelope(bytes(canonical), sealed_part, key_ids)
                if isinstance(opened, str):
                    raise ValueError(opened)
                envelope = opened
            else:
                envelope, _ = decode_and_canonicalize_raw(bytes(canonical))
            data = envelope.raw_bytes()
            if decision_sha256(data) != envelope.sha256:
                raise ValueError("its bytes do not hash to its sha256")
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("decision_id") != envelope.record_id:
                raise ValueError("not a decision record of this id")
        except (CareledgerError, ValueError, TypeError) as exc:
            out.append(DecisionRow(_text(rid), _text(chain), h, i, None, None, str(exc)))
            continue
        out.append(DecisionRow(envelope.record_id, _text(chain), h, i, envelope.sha256, doc))
    return out


def read_decision_events(
    backend: SqlBackend,
    database: str,
    decision_id: str | None = None,
    sealed: SealedReader | None = None,
) -> list[LedgeredDecision]:
    """The committed events that ledger decisions, decoded from their signed bytes (on a
    sealed ledger, opened: the decision id is in the sealed part)."""
    db = check_identifier(database)
    where, params = "", {"f": DECISION_FORMAT}
    if decision_id is not None and sealed is None:
        where, params = " AND position(canonical, %(id)s) > 0", {**params, "id": decision_id}
    rows = backend.execute(
        f"SELECT chain_id, height, idx, canonical, sealed, data_key_id FROM {db}.access_events "
        f"WHERE position(canonical, %(f)s) > 0{where} AND {_committed(db)} "
        "ORDER BY chain_id, height, idx",
        params,
    )
    out: list[LedgeredDecision] = []
    for chain, height, idx, canonical, sealed_part, key_id in rows:
        try:
            if sealed is not None:
                opened = sealed.event(bytes(canonical), sealed_part, key_id)
                if opened is None:
                    continue  # erased, or a finding of verify
                event = opened
            else:
                event = decode_event(bytes(canonical))
        except (CareledgerError, ValueError, TypeError):
            continue  # a tampered event row: the integrity checks report it
        got = ledgered_decision_hash(event)
        if got is None or type(height) is not int or type(idx) is not int:
            continue
        did, sha = got
        if decision_id is not None and did != decision_id:
            continue
        out.append(LedgeredDecision(did, sha, _text(chain), height, idx, event.occurred_at))
    return out
