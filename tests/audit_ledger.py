"""A small audited ledger for the attacks on the auditor's rows (ADR 0016).

Everything goes through the real code: the hospital's directory chained as reference
records and access events chained block by block by ``processors.chainer.PartitionChain``
(blocks sealed at the real time, as the processor does), ``careledger audit``'s range run
and follower (``audit_range``, ``Follower``), and ``careledger alerts``' status book with
each change chained as its ledgered status event. Works on any ``SqlBackend`` (chDB in
the unit tests, ClickHouse 18.16 in the integration tests).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from careledger.storage.backend import ChdbBackend, SqlBackend
from careledger.storage.kinds import ACCESS, REFERENCE
from careledger.storage.migrations import migrate_backend
from careledger.storage.store import ChainStore
from careledger_core.event import AccessEvent, canonical_event_bytes
from careledger_core.reference import ReferenceRecord, canonical_reference_bytes
from careledger_core.signing import SigningKey
from processors.chainer import PartitionChain
from tests.unit.test_auditor_rules import at, btg_start, event, hospital
from verifiers.auditor import casework
from verifiers.auditor.alerts_cli import AlertBook
from verifiers.auditor.runner import AuditStore, Follower, audit_range
from verifiers.auditor.status_records import status_event
from verifiers.auditor.verify import AuditVerification, verify_audit

KEY = SigningKey.from_seed(hashlib.sha256(b"careledger audited ledger").digest())
ORIGIN = "careledger.local"
EVENTS_TOPIC = "careledger.access-events"
DIRECTORY_TOPIC = "careledger.workforce"
EVENTS = f"{ORIGIN}/{EVENTS_TOPIC}/0"
SALT = "audited-ledger-salt"
OFFICER = "privacy-officer"
DAY = (at(-60), at(24 * 60))


class Clock:
    """The ledger's time: it starts an hour ago and moves a second per step, so that
    everything is older than what ``verify`` leaves for its next run (rows written in
    the last minutes) and in the order it happened."""

    def __init__(self) -> None:
        self.t = time.time() - 3600

    def tick(self) -> float:
        self.t += 1.0
        return self.t

    def ts(self) -> str:
        return dt.datetime.fromtimestamp(self.tick(), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Chain:
    """One chain, committed block by block (sealed at the clock's time)."""

    def __init__(self, chains: ChainStore, chain_id: str, kind: Any, clock: Clock) -> None:
        self.chains = chains
        self.clock = clock
        self.chain = PartitionChain.resume(chain_id, None, 65536, earliest_offset=0, kind=kind)
        self.offset = 0

    def commit(self, payloads: list[bytes]) -> None:
        for p in payloads:
            assert self.chain.add(self.offset, p, None, 0.0, 0.0) is None
            self.offset += 1
        block = self.chain.seal(KEY, now=self.clock.tick())
        assert block is not None
        self.chains.write_blocks([block])


@dataclass
class AuditedLedger:
    backend: SqlBackend
    db: str
    events_chain: str = EVENTS
    directory_topic: str = DIRECTORY_TOPIC
    clock: Clock = field(default_factory=Clock)
    topics: frozenset[str] = field(init=False)
    chains: ChainStore = field(init=False)
    audit: AuditStore = field(init=False)
    book: AlertBook = field(init=False)
    events: Chain = field(init=False)
    directory: Chain = field(init=False)
    cases: dict[str, AccessEvent] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.topics = frozenset({self.directory_topic})
        self.chains = ChainStore(self.backend, self.db, self.topics)
        self.audit = AuditStore(self.backend, self.db, self.topics)
        self.book = AlertBook(self.backend, self.db)
        self.events = Chain(self.chains, self.events_chain, ACCESS, self.clock)
        origin = self.events_chain.split("/")[0]
        self.directory = Chain(
            self.chains, f"{origin}/{self.directory_topic}/0", REFERENCE, self.clock
        )

    # -- building ------------------------------------------------------------------------
    def reference(self, *records: ReferenceRecord) -> None:
        self.directory.commit([canonical_reference_bytes(r) for r in records])

    def commit(self, *events: AccessEvent) -> None:
        self.events.commit([canonical_event_bytes(e) for e in events])

    def review(self, alert_id: str, status: str, note: str = "") -> dict[str, Any]:
        """``careledger alerts ack/resolve``: the row, then its status event chained."""
        saved = casework.utc_now_ts
        casework.utc_now_ts = self.clock.ts
        try:
            entry = self.book.change(alert_id, status, OFFICER, note or f"{status} in the test")
        finally:
            casework.utc_now_ts = saved
        self.commit(status_event(entry))
        return entry

    def audit_range(self, from_ts: str, to_ts: str, **options: Any) -> Any:
        """``careledger audit --from --to`` at the clock's time."""
        return audit_range(self.audit, from_ts, to_ts, salt=SALT, now=self.clock.ts, **options)

    def follower(self) -> Follower:
        """``careledger audit --follow`` on the clock."""
        return Follower(self.audit, salt=SALT, now=self.clock.ts)

    def alert_of(self, case: str, rule: str = "NO_EXPLANATION") -> str:
        event_id = self.cases[case].event_id
        hits = [
            a["alert_id"]
            for a in self.book.alerts()
            if a["rule"] == rule and event_id in a["event_ids"]
        ]
        assert len(hits) == 1, (case, rule, hits)
        return str(hits[0])

    # -- attacking -----------------------------------------------------------------------
    def sql(self, statement: str, params: dict[str, Any] | None = None) -> list[Any]:
        return self.backend.execute(statement.replace("{db}", self.db), params)

    def mutate(self, statement: str, params: dict[str, Any] | None = None) -> None:
        """An ALTER ... UPDATE/DELETE, done when this returns (18.16 has no sync)."""
        self.sql(statement, params)
        self.audit.wait_mutations()

    # -- checking ------------------------------------------------------------------------
    def verify(self, salt: str | None = SALT) -> AuditVerification:
        return verify_audit(self.backend, self.db, reference_topics=self.topics, salt=salt)


def build(
    backend: SqlBackend,
    db: str,
    *,
    events_chain: str = EVENTS,
    directory_topic: str = DIRECTORY_TOPIC,
) -> AuditedLedger:
    """The hospital's directory; a day of accesses (explained, a snoop, a VIP chart, a
    break-the-glass that never stops, and a later access that makes it due); one range
    audit of the day; the snoop's alert resolved and the VIP alert acknowledged, each
    change chained as its status event."""
    ledger = AuditedLedger(backend, db, events_chain, directory_topic)
    ledger.reference(*hospital())
    ledger.cases = {
        "explained": event("N1", "P1", at(0)),
        "snoop": event("M1", "P2", at(1)),
        "vip": event("N2", "P3", at(2)),
        "btg": btg_start("D1", "P2", at(3)),
        "later": event("N1", "P1", at(300)),
    }
    c = ledger.cases
    ledger.commit(c["explained"], c["snoop"])
    ledger.commit(c["vip"], c["btg"])
    ledger.commit(c["later"])
    ledger.audit_range(*DAY)
    ledger.review(ledger.alert_of("snoop"), "resolved", "confirmed: no care role")
    ledger.review(ledger.alert_of("vip"), "acknowledged")
    return ledger


@contextlib.contextmanager
def chdb_audited(prefix: str) -> Iterator[AuditedLedger]:
    """``build`` in a database of its own on chDB (current ClickHouse), dropped after."""
    backend = ChdbBackend()
    db = f"careledger_{prefix}_{uuid.uuid4().hex[:10]}"
    migrate_backend(backend, db)
    try:
        yield build(backend, db)
    finally:
        backend.execute(f"DROP DATABASE IF EXISTS {db}")
        backend.close()
