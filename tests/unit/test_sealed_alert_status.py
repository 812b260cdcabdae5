"""An alert's case on a sealed ledger (ADR 0037): the privacy office's reviews keep no
name and no note in clear at rest, and their history still verifies, opened with the
key store, read by its public part without it, and after its day's key is destroyed.

Real parts only: a SoftHSM2 token, the processor's own gate, opener and chainer, the
current ClickHouse engine in process (chDB), and ``careledger alerts``' own status book
and case code (``casework``), its view (``alerts_cli.status_view``) and ``verify``'s
reconciliation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from nacl.public import PrivateKey

from careledger.ingest_keys import IngestKey, IngestSealer
from careledger.keystore import KeyStore, local_token
from careledger.storage.backend import ChdbBackend
from careledger.storage.kinds import SEALED
from careledger.storage.migrations import migrate_backend
from careledger.storage.store import ChainStore
from careledger_core.batch_record import encode_batch_record
from careledger_core.event import AccessEvent
from careledger_core.findings import FindingCode
from careledger_core.sealed_event import NO_PATIENT_KEY_SYSTEM
from processors.chainer import PartitionChain
from processors.sealing import EventOpener
from tests.softhsm import softhsm_dir
from tests.unit.test_batch_chaining import CHAIN, NOW, chain_for, gate_for, sealed, sign, take
from verifiers.auditor import casework
from verifiers.auditor._time import ts_to_us, us_to_ts
from verifiers.auditor.alerts_cli import _with_status, status_view
from verifiers.auditor.alerts_view import render_alert
from verifiers.auditor.casework import AlertBook, assignee, case_event
from verifiers.auditor.runner.rows import dumps, status_entry_hash, utc_now_ts
from verifiers.auditor.runner.sealed_store import sealed_status
from verifiers.auditor.status_records import (
    read_ledgered_status,
    read_status_rows,
    reconcile,
    status_event,
)
from verifiers.auditor.verify import verify_audit

INGEST = PrivateKey(bytes(range(7, 39)))
KEY = IngestKey(bytes(INGEST.public_key), bytes(INGEST))
ALERT = "c" * 32
#: who works the case and what they write: names a reviewer, a colleague and a patient
REVIEWER = "jane.reviewer"
COLLEAGUE = "john.colleague"
NOTE = "complaint from patient MRN-000123 (Alice Example) about her neighbour"
IDENTIFIERS = (REVIEWER, COLLEAGUE, "MRN-000123", "Alice Example", "neighbour")
#: the reviews happen an hour before the broker's time of the tests' blocks
START_US = int(NOW * 1e6) - 3600 * 1_000_000
DAY = us_to_ts(START_US)[:10]


@dataclass
class Case:
    backend: ChdbBackend
    db: str
    keystore: KeyStore
    book: AlertBook
    chain: PartitionChain
    chains: ChainStore
    clock: list[int]
    offset: int = 0
    published: list[bytes] = field(default_factory=list)

    def work(self, action: str, note: str = "", to: str | None = None) -> dict[str, Any]:
        """``work_alert``'s steps (Kafka aside): the row, then the change's access event
        sealed by the SDK, chained by the processor's gate and committed; and the value
        ``publish_status`` would put on the status topic."""
        if action == "assign":
            assert to is not None
            note = "assigned to " + to + (f": {note}" if note else "")
        self.clock[0] += 60_000_000
        entry = self.book.act(ALERT, action, REVIEWER, note)
        self.ledger(case_event(self.book, entry, REVIEWER, note))
        self.published.append(dumps(dict(entry)).encode())
        return entry

    def ledger(self, event: AccessEvent) -> None:
        sealer = IngestSealer(KEY.public)
        document, box = sealer.seal(event)
        statement, signature = sign([document], first_seq=self.offset + 1)
        record = encode_batch_record(statement, signature, [document], [box], sealer.public)
        assert take(self.chain, record, offset=self.offset) == []
        self.offset += 1
        self.chains.write_blocks([sealed(self.chain)])

    def view(self) -> Any:
        return status_view(self.book, [ALERT]).of(ALERT)

    def at_rest(self) -> bytes:
        out = []
        for (table,) in self.backend.execute(
            "SELECT name FROM system.tables WHERE database = %(d)s", {"d": self.db}
        ):
            name = table.decode() if isinstance(table, bytes) else table
            out += [
                repr(r).encode() for r in self.backend.execute(f"SELECT * FROM {self.db}.{name}")
            ]
        return b"\n".join(out + self.published)


@pytest.fixture
def case(monkeypatch: pytest.MonkeyPatch) -> Iterator[Case]:
    keystore = KeyStore(local_token(softhsm_dir(), f"a{uuid.uuid4().hex[:12]}"), create=True)
    backend = ChdbBackend()
    db = f"careledger_sa_{uuid.uuid4().hex[:10]}"
    migrate_backend(backend, db)
    clock = [START_US]
    monkeypatch.setattr(casework, "utc_now_ts", lambda: us_to_ts(clock[0]))
    gate = gate_for()
    gate.opener = EventOpener(KEY, keystore)
    chain = chain_for(gate, kind=SEALED)
    book = AlertBook(backend, db, sealed_status(keystore, "alerts"))
    yield Case(backend, db, keystore, book, chain, _chains(backend, db), clock)
    backend.execute(f"DROP DATABASE IF EXISTS {db}")
    backend.close()
    keystore.close()


# --------------------------------------------------------------------------- at rest


def test_a_sealed_case_keeps_no_reviewer_name_and_no_note_in_clear_at_rest(case: Case) -> None:
    case.work("ack")
    case.work("assign", "she knows the ward", to=COLLEAGUE)
    case.work("comment", NOTE)
    case.work("resolve", f"confirmed: {NOTE}")
    # every table (the rows, the ledger's documents and sealed parts, the keys) and every
    # value published on the status topic
    at_rest = case.at_rest()
    for identifier in IDENTIFIERS:
        assert identifier.encode() not in at_rest, identifier
    rows = read_status_rows(case.backend, case.db)
    assert [r.status for r in rows] == ["acknowledged", "assigned", "assigned", "resolved"]
    assert {r.changed_by for r in rows} == {case.keystore.actor_ref(REVIEWER)}
    assert {r.note for r in rows} == {""}
    # and the privacy office still reads who did what and why, from the opened records
    view = case.view()
    assert view.verified and view.ledgered and view.status == "resolved"
    assert [(c["changed_by"], c["note"]) for c in view.changes] == [
        (REVIEWER, ""),
        (REVIEWER, f"assigned to {COLLEAGUE}: she knows the ward"),
        (REVIEWER, NOTE),
        (REVIEWER, f"confirmed: {NOTE}"),
    ]
    assert assignee(view.changes[:3]) == COLLEAGUE
    # each change is sealed under the key of its day's status events, not a patient's
    lookup = case.keystore.lookup(NO_PATIENT_KEY_SYSTEM, f"careledger-alerts/{DAY}")
    (day_key,) = case.keystore.data_keys(lookup, "test")
    stored = case.backend.execute(f"SELECT DISTINCT data_key_id FROM {case.db}.access_events")
    assert [bytes(k).decode() for (k,) in stored] == [day_key.key_id.hex()]


def test_in_clear_the_note_stays_in_the_row_and_out_of_the_immutable_ledger() -> None:
    entry = {"alert_id": ALERT, "seq": 0, "status": "resolved", "changed_by": REVIEWER}
    entry.update(changed_at=us_to_ts(START_US), note=NOTE, prev_hash="")
    entry["entry_hash"] = status_entry_hash("", entry)
    backend = ChdbBackend()
    try:
        book = AlertBook(backend, "unused")
        event = case_event(book, entry, REVIEWER, NOTE)
    finally:
        backend.close()
    assert event == status_event(entry) and NOTE not in str(event)
    assert event.actor.id == REVIEWER and event.outcome_desc == "alert resolved"


# --------------------------------------------------------------------------- attacks


def _records(case: Case, *, opened: bool = True) -> list[Any]:
    sealed_by = sealed_status(case.keystore, "verify") if opened else None
    return read_ledgered_status(case.backend, case.db, sealed=sealed_by)


def _codes(case: Case, *, opened: bool = True, now_us: int | None = None) -> list[str]:
    out = reconcile(
        read_status_rows(case.backend, case.db),
        _records(case, opened=opened),
        now_us=now_us or int(NOW * 1e6),
    )
    return sorted(str(f.code) for f in out.findings)


def test_a_status_event_naming_another_reviewer_than_its_rows_pseudonym_is_a_mismatch(
    case: Case,
) -> None:
    # an operator holding a source key ledgers the row's hash under another name: the
    # opened record's reviewer is not the one whose pseudonym the row keeps
    case.clock[0] += 60_000_000
    entry = case.book.act(ALERT, "ack", REVIEWER, "")
    case.ledger(case_event(case.book, entry, "mallory", ""))
    assert _codes(case) == [str(FindingCode.ALERT_STATUS_MISMATCH)]
    assert not case.view().verified


def test_a_status_event_saying_another_status_or_note_than_its_row_is_a_mismatch(
    case: Case,
) -> None:
    case.clock[0] += 60_000_000
    entry = case.book.act(ALERT, "ack", REVIEWER, "")
    forged = {**entry, "status": "resolved"}
    case.ledger(status_event(forged, by=REVIEWER, note="closed, nothing to see"))
    assert _codes(case) == [str(FindingCode.ALERT_STATUS_MISMATCH)]
    view = case.view()
    assert not view.verified and "status" in view.problems[0]


def test_a_row_rewritten_to_name_the_reviewer_in_clear_no_longer_matches_its_record(
    case: Case,
) -> None:
    case.work("comment", NOTE)
    case.backend.execute(
        f"ALTER TABLE {case.db}.alert_status UPDATE changed_by = %(by)s, note = %(n)s "
        "WHERE alert_id = %(a)s",
        {"by": REVIEWER, "n": "nothing to see", "a": ALERT},
    )
    assert _codes(case) == [str(FindingCode.ALERT_STATUS_MISMATCH)]
    assert not case.view().verified


def test_without_the_key_store_verify_still_vouches_for_each_row_by_its_public_hash(
    case: Case,
) -> None:
    case.work("ack")
    case.work("resolve", NOTE)
    records = _records(case, opened=False)
    assert len(records) == 2 and not any(r.opened for r in records)
    assert not any(r.changed_by or r.note or r.alert_id for r in records)
    assert _codes(case, opened=False) == []
    # a row deleted is found at its record's place; a forged row is not ledgered
    case.backend.execute(
        f"ALTER TABLE {case.db}.alert_status DELETE WHERE seq = 1 AND alert_id = %(a)s",
        {"a": ALERT},
    )
    assert _codes(case, opened=False) == [str(FindingCode.ALERT_STATUS_MISSING)]
    forged = {"alert_id": ALERT, "seq": 1, "status": "resolved"}
    forged.update(changed_by=case.keystore.actor_ref(REVIEWER), changed_at=us_to_ts(START_US))
    forged.update(note="", prev_hash=read_status_rows(case.backend, case.db)[0].entry_hash)
    forged["entry_hash"] = status_entry_hash(forged["prev_hash"], forged)
    case.book.backend.insert(
        f"{case.db}.alert_status",
        tuple(forged),
        [tuple(forged.values())],
    )
    codes = _codes(case, opened=False)
    assert str(FindingCode.ALERT_STATUS_NOT_LEDGERED) in codes


def test_after_the_days_key_is_destroyed_the_history_verifies_without_who_or_why(
    case: Case,
) -> None:
    case.work("ack")
    case.work("resolve", NOTE)
    lookup = case.keystore.lookup(NO_PATIENT_KEY_SYSTEM, f"careledger-alerts/{DAY}")
    assert case.keystore.destroy(lookup).complete
    view = case.view()
    assert view.verified and view.status == "resolved"
    assert [(c["status"], c["note"], c.get("sealed")) for c in view.changes] == [
        ("acknowledged", None, True),
        ("resolved", None, True),
    ]
    assert {c["changed_by"] for c in view.changes} == {case.keystore.actor_ref(REVIEWER)}
    result = verify_audit(
        case.backend,
        case.db,
        reference_topics=frozenset(),
        salt=None,
        now=us_to_ts(int(NOW * 1e6) + 3600 * 1_000_000),
        status_sealed=sealed_status(case.keystore, "verify"),
    )
    assert result.findings_total == 0, result.findings
    assert result.summary["status_changes"] == {"rows": 2, "ledgered": 2, "pending": 0}
    assert ts_to_us(view.changes[0]["changed_at"]) > START_US


def _chains(backend: ChdbBackend, db: str) -> ChainStore:
    """The store as a sealed ledger's processor writes it (its events topic sealed)."""
    return ChainStore(backend, db, sealed_topics=frozenset({CHAIN.split("/")[1]}))


def test_a_change_not_chained_yet_shows_the_reviewers_pseudonym_and_says_why(case: Case) -> None:
    case.work("ack")
    case.clock[0] = ts_to_us(utc_now_ts())  # a change made now: not chained yet
    case.book.act(ALERT, "comment", REVIEWER, NOTE)
    view = case.view()
    assert view.verified and view.pending == 1
    ledgered, pending = view.changes
    assert ledgered["changed_by"] == REVIEWER and "sealed" not in ledgered
    assert pending["sealed"] and pending["changed_by"] == case.keystore.actor_ref(REVIEWER)
    assert pending["note"] == ""
    alert = {"alert_id": ALERT, "rule": "NO_EXPLANATION", "severity": "high", "score": 7.0}
    alert.update(actor_id="a" * 64, first_at=us_to_ts(START_US), last_at=us_to_ts(START_US))
    alert = _with_status(alert, view)
    alert["status_history"] = view.changes
    shown = "\n".join(render_alert(alert))
    assert f"acknowledged by {REVIEWER}" in shown and "name and note sealed" in shown
    assert f"by pseudonym {case.keystore.actor_ref(REVIEWER)[:16]}" in shown
    assert NOTE not in shown


def test_the_consoles_case_page_shows_a_sealed_change_by_pseudonym_without_a_note() -> None:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from careledger.safe_text import display
    from console.app import HERE

    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape())
    env.filters["shown"] = display
    env.filters["decision"] = str
    ref = "ab" * 32
    history = [
        {"changed_at": us_to_ts(START_US), "status": "acknowledged", "changed_by": REVIEWER},
        {"changed_at": us_to_ts(START_US), "status": "acknowledged", "changed_by": ref},
    ]
    history[0].update(note=NOTE, ledgered={"chain_id": CHAIN, "height": 3})
    history[1].update(note="", ledgered=None, pending=True, sealed=True)
    alert = {"alert_id": ALERT, "rule": "NO_EXPLANATION", "severity": "high", "score": 7.0}
    alert.update(actor_id="a" * 64, first_at=us_to_ts(START_US), last_at=us_to_ts(START_US))
    alert.update(status="acknowledged", status_history=history, patient_refs=[])
    page = env.get_template("case.html").render(alert=alert, evidence={}, meanings={})
    items = page.split('<ol id="history">')[1].split("</ol>")[0].split("<li>")[1:]
    assert REVIEWER in items[0] and NOTE in items[0]
    assert f"pseudonym <code>{ref[:16]}…</code>" in items[1] and ref not in items[1]
    assert "name and note sealed" in items[1]
