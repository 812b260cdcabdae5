"""Proving decisions later: each ledgered decision replayed against the ledger as of
the position it states, and the records checked against the events that ledger them.

Problems (``Problem.code``), each located where the ledger has the decision:

* ``DECISION_TAMPERED``: a stored decision record whose SHA-256 is not the one its
  signed event ledgered, or that cannot be read at all (edited in ``raw_records``);
* ``DECISION_RECORD_MISSING``: an event ledgers a decision whose record is gone;
* ``DECISION_NOT_LEDGERED``: a record that no signed event ledgers (forged), unless it
  is younger than the grace (``DECISION_PENDING``, the event may not be chained yet);
* ``DECISION_REPLAY_MISMATCH``: the question decided again over exactly the consent
  records of ``as_of.chains`` gives another answer or another ledger time (the record,
  or a consent record it relied on, was changed; or the evaluator changed meaning).

A replay reads the consent records from the ledger, not from the decision: a consent
rewritten in ``reference_records`` changes the replay (and ``verify`` reports the
rewritten record against its block's Merkle root).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from careledger.storage.backend import SqlBackend
from careledger_core.errors import CareledgerError
from careledger_core.jcs import canonicalize

from .._time import US_PER_MINUTE, ts_to_us
from .engine import LedgeredConsent, replay_answer
from .sealed import SealedReader
from .store import (
    DecisionRow,
    LedgeredDecision,
    read_all_consents,
    read_decision_events,
    read_decision_records,
)

__all__ = ["DecisionCheck", "Problem", "check_decisions", "compare", "replay_decision"]

#: a decision record this young may not have its event chained yet
PENDING_GRACE_US: Final = 15 * US_PER_MINUTE


@dataclass(frozen=True, slots=True)
class Problem:
    code: str
    decision_id: str
    message: str
    where: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "decision_id": self.decision_id,
            "message": self.message,
            "where": dict(self.where),
        }


@dataclass
class DecisionCheck:
    decisions: int = 0
    replayed: int = 0
    identical: int = 0
    problems: list[Problem] = field(default_factory=list)
    replays: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def intact(self) -> bool:
        return not any(p.code != "DECISION_PENDING" for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {
            "decisions": self.decisions,
            "replayed": self.replayed,
            "identical": self.identical,
            "intact": self.intact,
            "problems": [p.to_dict() for p in self.problems],
        }


def compare(
    record: Mapping[str, Any], consents: Iterable[LedgeredConsent]
) -> tuple[dict[str, Any], list[str]]:
    """Replay one record; returns the replayed answer and what differs (empty: same)."""
    replayed, as_of = replay_answer(record, consents)
    differs: list[str] = []
    stored = record.get("answer")
    if not isinstance(stored, Mapping):
        return replayed, ["answer"]
    for key in sorted(set(replayed) | set(stored)):
        if canonicalize(replayed.get(key)) != canonicalize(stored.get(key)):
            differs.append(f"answer.{key}")
    stored_as_of = record.get("as_of")
    for key in ("known_at", "policy_table_sha256"):
        if not isinstance(stored_as_of, Mapping) or stored_as_of.get(key) != as_of[key]:
            differs.append(f"as_of.{key}")
    return replayed, differs


def _check_row(
    out: DecisionCheck,
    row: DecisionRow,
    event: LedgeredDecision | None,
    consents: Sequence[LedgeredConsent],
    now_us: int,
) -> None:
    where = {"table": "raw_records", **row.position}
    if row.record is None or row.sha256 is None:
        out.problems.append(
            Problem(
                "DECISION_TAMPERED",
                row.decision_id,
                f"the stored decision record cannot be read: {row.problem}",
                where,
            )
        )
        return
    if event is None:
        decided = row.record.get("decided_at")
        young = isinstance(decided, str) and _young(decided, now_us)
        out.problems.append(
            Problem(
                "DECISION_PENDING" if young else "DECISION_NOT_LEDGERED",
                row.decision_id,
                "no signed event ledgers this decision record"
                + (" yet" if young else ": forged or replayed into the table"),
                where,
            )
        )
        if not young:
            return
    elif event.sha256 != row.sha256:
        out.problems.append(
            Problem(
                "DECISION_TAMPERED",
                row.decision_id,
                "the stored decision record is not the one ledgered (its SHA-256 differs "
                "from the signed event's): edited",
                {**where, "event": event.position},
            )
        )
    try:
        replayed, differs = compare(row.record, consents)
    except (CareledgerError, KeyError, TypeError, ValueError) as exc:
        out.problems.append(
            Problem(
                "DECISION_TAMPERED",
                row.decision_id,
                f"the decision record does not hold a question and a position: {exc}",
                where,
            )
        )
        return
    out.replayed += 1
    out.replays[row.decision_id] = replayed
    if differs:
        out.problems.append(
            Problem(
                "DECISION_REPLAY_MISMATCH",
                row.decision_id,
                "replayed against the ledger as of its position, the question gets another "
                f"answer ({', '.join(differs)} differ): the decision or a consent it relied "
                "on was changed",
                {**where, "differs": differs},
            )
        )
    else:
        out.identical += 1


def _young(ts: str, now_us: int) -> bool:
    try:
        return ts_to_us(ts) > now_us - PENDING_GRACE_US
    except (ValueError, IndexError):
        return False


def check_decisions(
    backend: SqlBackend,
    database: str,
    consent_chains: Sequence[str],
    *,
    now_us: int,
    decision_id: str | None = None,
    sealed: SealedReader | None = None,
) -> DecisionCheck:
    """Every ledgered decision (or one) checked and replayed (on a sealed ledger, each
    record, event and consent opened through the key store)."""
    rows = read_decision_records(backend, database, decision_id, sealed)
    events = read_decision_events(backend, database, decision_id, sealed)
    consents, _heads = read_all_consents(backend, database, consent_chains, sealed)
    return check_rows(rows, events, consents, now_us=now_us)


def check_rows(
    rows: Sequence[DecisionRow],
    events: Sequence[LedgeredDecision],
    consents: Sequence[LedgeredConsent],
    *,
    now_us: int,
) -> DecisionCheck:
    """The pure part of :func:`check_decisions`."""
    out = DecisionCheck()
    by_id: dict[str, LedgeredDecision] = {}
    for e in events:
        by_id.setdefault(e.decision_id, e)
    seen: set[str] = set()
    for row in rows:
        out.decisions += 1
        seen.add(row.decision_id)
        _check_row(out, row, by_id.get(row.decision_id), consents, now_us)
    for did, e in sorted(by_id.items()):
        if did not in seen:
            out.problems.append(
                Problem(
                    "DECISION_RECORD_MISSING",
                    did,
                    "a signed event ledgers this decision but its record is gone (deleted)",
                    {"table": "access_events", **e.position},
                )
            )
    return out


def replay_decision(
    backend: SqlBackend,
    database: str,
    consent_chains: Sequence[str],
    decision_id: str,
    now_us: int,
    sealed: SealedReader | None = None,
) -> tuple[DecisionRow | None, DecisionCheck]:
    """One decision: its stored record (None: not found) and its check."""
    check = check_decisions(
        backend, database, consent_chains, now_us=now_us, decision_id=decision_id, sealed=sealed
    )
    rows = read_decision_records(backend, database, decision_id, sealed)
    return (rows[0] if rows else None), check
