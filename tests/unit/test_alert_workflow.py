"""The alert status workflow as the auditor uses it: closed alerts do not grow, late
events are alerted, only intact status histories count, one access is one violation.

The follower, the range audit and the status book run on the current ClickHouse
engine in-process (chDB), on chains written with the real chainer; the grouping rules
also run on their own (pure)."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from careledger.storage.backend import ChdbBackend
from careledger.storage.kinds import ACCESS, REFERENCE
from careledger.storage.migrations import migrate_backend
from careledger.storage.store import ChainStore
from careledger_core.event import AccessEvent, canonical_event_bytes
from careledger_core.reference import canonical_reference_bytes
from careledger_core.signing import SigningKey
from processors.chainer import PartitionChain
from tests.unit.test_auditor_rules import at, btg_start, event, hospital, run
from verifiers.auditor import RuleCode, alerts_cli, casework, group_alerts
from verifiers.auditor._time import ts_to_us, us_to_ts
from verifiers.auditor.alerts_cli import AlertBook
from verifiers.auditor.runner import STATUS_COLUMNS, AuditStore, Follower, audit_range

KEY = SigningKey.from_seed(hashlib.sha256(b"careledger alert workflow test").digest())
EVENTS = "o/careledger.access-events/0"
DIRECTORY = "o/careledger.workforce/0"
SALT = "alert-workflow-salt"
OFFICER = "privacy-officer"
DAY = (at(-60), at(24 * 60))


class Ledger:
    """Access events chained and committed block by block, as the processor does."""

    def __init__(self, chains: ChainStore) -> None:
        self.chains = chains
        self.chain = PartitionChain.resume(EVENTS, None, 65536, earliest_offset=0, kind=ACCESS)
        self.offset = 0

    def commit(self, *events: AccessEvent) -> None:
        for e in events:
            self.chain.add(self.offset, canonical_event_bytes(e), None, 0.0, 0.0)
            self.offset += 1
        block = self.chain.seal(KEY, now=1_800_000_000.0 + self.offset)
        assert block is not None
        self.chains.write_blocks([block])


@pytest.fixture
def stores() -> Iterator[tuple[Ledger, AuditStore, AlertBook]]:
    backend = ChdbBackend()
    db = f"careledger_wf_{uuid.uuid4().hex[:10]}"
    migrate_backend(backend, db)
    topics = frozenset({"careledger.workforce"})
    chains = ChainStore(backend, db, topics)
    directory = PartitionChain.resume(DIRECTORY, None, 65536, earliest_offset=0, kind=REFERENCE)
    for offset, rec in enumerate(hospital()):
        directory.add(offset, canonical_reference_bytes(rec), None, 0.0, 0.0)
    block = directory.seal(KEY, now=1_800_000_000.0)
    assert block is not None
    chains.write_blocks([block])
    yield Ledger(chains), AuditStore(backend, db, topics), AlertBook(backend, db)
    backend.execute(f"DROP DATABASE IF EXISTS {db}")
    backend.close()


def review(
    monkeypatch: pytest.MonkeyPatch, book: AlertBook, alert_id: str, status: str, when: str
) -> None:
    """A reviewer changes the status at ``when`` (``careledger alerts``' own code)."""
    monkeypatch.setattr(casework, "utc_now_ts", lambda: when)
    book.change(alert_id, status, OFFICER, f"{status} in the test")


def alerts_of(book: AlertBook, rule: str = "NO_EXPLANATION") -> dict[str, dict[str, Any]]:
    return {a["alert_id"]: a for a in book.alerts() if a["rule"] == rule}


def alert_with(alerts: dict[str, dict[str, Any]], e: AccessEvent) -> str:
    hits = [aid for aid, a in alerts.items() if e.event_id in a["event_ids"]]
    assert len(hits) == 1, (e.event_id, alerts)
    return hits[0]


def just_after(ts: str) -> str:
    return us_to_ts(ts_to_us(ts) + 1)


def repeat_evidence(audit: AuditStore, e: AccessEvent) -> list[dict[str, Any]]:
    rows = audit.backend.execute(
        f"SELECT flags FROM {audit.db}.access_decisions "
        "WHERE event_id = %(id)s AND amends = 0 ORDER BY decided_at DESC LIMIT 1",
        {"id": e.event_id},
    )
    flags = json.loads(bytes(rows[0][0]))
    return [f["evidence"] for f in flags if f["code"] == "REPEAT_OFFENDER"]


# ------------------------------------------------------------------ 1. closed alerts


def test_a_snoop_after_its_alert_was_resolved_is_a_new_alert_not_swallowed_by_it(
    stores: tuple[Ledger, AuditStore, AlertBook], monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, audit, book = stores
    follower = Follower(audit, salt=SALT)
    first = event("M1", "P2", at(0))
    ledger.commit(first)
    follower.cycle()
    (resolved,) = alerts_of(book)
    review(monkeypatch, book, resolved, "resolved", at(10))

    # 20 minutes later (inside the grouping hour), after the review: the actor snoops again
    snoop = event("M1", "P4", at(20))
    ledger.commit(snoop)
    follower.cycle()
    alerts = alerts_of(book)
    assert alerts[resolved]["event_ids"] == [first.event_id], "a closed alert does not grow"
    assert alerts[resolved]["last_at"] == at(0)
    new = alert_with(alerts, snoop)
    assert new != resolved and book.history([new]) == {}, "the new snoop is an open alert"
    # the violation stays where it was confirmed
    assert audit.confirmed_violations() == [("M1", just_after(at(0)))]

    # a range replay gives the same alerts, ids included
    audit_range(audit, *DAY, salt=SALT)
    replayed = alerts_of(book)
    assert {a: x["event_ids"] for a, x in replayed.items()} == {
        resolved: [first.event_id],
        new: [snoop.event_id],
    }

    # following on, after another review: the resolved alert still counts once
    review(monkeypatch, book, new, "acknowledged", at(30))
    later = event("M1", "P2", at(180))
    ledger.commit(later)
    follower.cycle()
    assert repeat_evidence(audit, later) == [{"confirmed_violations": 1, "multiplier": 1.5}]


def _decisions(events: list[AccessEvent]) -> list[Any]:
    return run(hospital(), events)


def test_a_closed_alert_keeps_its_id_when_an_earlier_flag_arrives_late() -> None:
    from verifiers.auditor.alerts import ClosedAlert

    first, second = event("M1", "P2", at(30)), event("M1", "P4", at(40))
    (alert,) = group_alerts(_decisions([first, second]), salt=SALT)
    closed = {alert.alert_id: ClosedAlert(at(50), alert.last_at)}
    # a back-filled snoop 20 minutes before the alert's first event
    earlier = event("M1", "P2", at(10))
    regrouped = group_alerts(_decisions([earlier, first, second]), salt=SALT, closed=closed)
    by_id = {a.alert_id: a for a in regrouped}
    assert by_id[alert.alert_id].event_ids == alert.event_ids
    assert [a.event_ids for a in regrouped if a.alert_id != alert.alert_id] == [(earlier.event_id,)]


def test_a_flag_committed_after_the_close_does_not_join_even_if_it_occurred_before_it() -> None:
    from verifiers.auditor.alerts import ClosedAlert

    first = event("M1", "P2", at(0))
    (alert,) = group_alerts(_decisions([first]), salt=SALT)
    # closed at 09:30; then a batch arrives with a snoop of 09:20 nobody reviewed
    closed = {alert.alert_id: ClosedAlert(at(30), alert.last_at)}
    backfilled = event("M1", "P4", at(20))
    regrouped = group_alerts(_decisions([first, backfilled]), salt=SALT, closed=closed)
    assert sorted(a.event_ids for a in regrouped) == sorted(
        [(first.event_id,), (backfilled.event_id,)]
    )
    # without the stored last event only the close time cuts
    loose = {alert.alert_id: ClosedAlert(at(30))}
    (joined,) = group_alerts(_decisions([first, backfilled]), salt=SALT, closed=loose)
    assert joined.alert_id == alert.alert_id and len(joined.event_ids) == 2


def test_a_missing_stop_raised_after_its_routine_review_was_closed_is_an_alert_of_its_own() -> None:
    from verifiers.auditor.alerts import ClosedAlert

    start = btg_start("N2", "P2", at(0), outcome_desc="cardiac arrest")
    decisions = _decisions([start, event("N1", "P1", at(6 * 60))])
    assert [d.amends for d in decisions if d.flags] == [False, True]
    # what the reviewer saw before the stop window was over: the start only
    routine = [
        a
        for a in group_alerts([d for d in decisions if not d.amends], salt=SALT)
        if a.rule == RuleCode.BREAK_THE_GLASS
    ]
    assert len(routine) == 1 and routine[0].evidence["routine"] is True
    rid = routine[0].alert_id
    # resolved as routine 20 minutes in; the override then never stops
    closed = {rid: ClosedAlert(at(20), routine[0].last_at)}
    btg = [
        a
        for a in group_alerts(decisions, salt=SALT, closed=closed)
        if a.rule == RuleCode.BREAK_THE_GLASS
    ]
    by_id = {a.alert_id: a for a in btg}
    assert by_id[rid].evidence["late_flags"] == 0 and by_id[rid].severity == "low"
    (late,) = (a for a in btg if a.alert_id != rid)
    assert late.severity == "high" and late.evidence["late_flags"] == 1
    assert late.evidence["routine"] is False
    # closed after the late flag was raised: it was part of what was reviewed
    reviewed = {rid: ClosedAlert(at(5 * 60), routine[0].last_at)}
    (whole,) = (
        a
        for a in group_alerts(decisions, salt=SALT, closed=reviewed)
        if a.rule == RuleCode.BREAK_THE_GLASS
    )
    assert whole.alert_id == rid and whole.evidence["late_flags"] == 1


# ------------------------------------------------------------------ 2. late events


def test_an_event_committed_after_much_later_events_still_gets_its_alert(
    stores: tuple[Ledger, AuditStore, AlertBook],
) -> None:
    ledger, audit, book = stores
    follower = Follower(audit, salt=SALT)
    ledger.commit(event("M1", "P2", at(3 * 24 * 60)), event("N2", "P4", at(3 * 24 * 60 + 1)))
    follower.cycle()
    # a source back-fills the accesses of three days ago
    backfill = [event("M1", "P4", at(0)), event("M1", "P2", at(10)), event("N2", "P2", at(5))]
    ledger.commit(*backfill)
    assert follower.cycle() == 3
    rows = audit.backend.execute(
        f"SELECT event_id FROM {audit.db}.access_decisions WHERE severity != ''"
    )
    flagged = {bytes(r[0]).decode() for r in rows}
    assert {e.event_id for e in backfill} <= flagged
    alerted = {eid for a in book.alerts() for eid in a["event_ids"]}
    assert flagged <= alerted, "every flagged decision is in an alert"
    alerts = alerts_of(book)
    assert alert_with(alerts, backfill[0]) == alert_with(alerts, backfill[1])


# ------------------------------------------------------------------ 3. status integrity


def test_a_forged_resolved_status_is_not_a_confirmed_violation_and_is_reported(
    stores: tuple[Ledger, AuditStore, AlertBook],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ledger, audit, book = stores
    first, second = event("M1", "P2", at(0)), event("N2", "P4", at(0))
    ledger.commit(first, second)
    audit_range(audit, *DAY, salt=SALT)
    alerts = alerts_of(book)
    forged, edited = alert_with(alerts, first), alert_with(alerts, second)
    # an insider writes a "resolved" row straight into the table
    audit.backend.insert(
        f"{audit.db}.alert_status",
        STATUS_COLUMNS,
        [(forged, 0, "resolved", OFFICER, at(10), "", "", "0" * 64)],
    )
    # and a genuine resolution whose note is edited afterwards
    review(monkeypatch, book, edited, "resolved", at(10))
    audit.backend.execute(
        f"ALTER TABLE {audit.db}.alert_status UPDATE note = 'nothing to see' "
        "WHERE alert_id = %(id)s",
        {"id": edited},
    )
    audit.wait_mutations()
    assert audit.confirmed_violations() == []

    ledger.commit(event("M1", "P4", at(120)), event("N2", "P4", at(121)))
    caplog.set_level(logging.ERROR, logger="careledger.auditor")
    result = audit_range(audit, *DAY, salt=SALT)
    summary = result.to_json()
    assert summary["status_histories_broken"] == sorted([forged, edited])
    assert summary["confirmed_violations"] == 0
    assert forged in caplog.text and edited in caplog.text and "broken" in caplog.text
    flagged = audit.backend.execute(
        f"SELECT flags FROM {audit.db}.access_decisions WHERE occurred_at >= %(t)s",
        {"t": at(120)},
    )
    assert all(b"REPEAT_OFFENDER" not in bytes(r[0]) for r in flagged)

    # a follower reports them too, and does not count them
    caplog.clear()
    follower = Follower(audit, salt=SALT)
    follower.cycle()
    assert follower.broken == {forged, edited} and forged in caplog.text
    assert follower.auditor.history.confirmed_violations("M1", ts_to_us(at(600))) == 0

    # the reviewer's list says so
    args = Namespace(
        severity=None,
        rule=None,
        actor=None,
        patient_ref=None,
        status=None,
        from_ts=None,
        to_ts=None,
        limit=1000,
        json=True,
    )
    capsys.readouterr()
    assert alerts_cli._list(args, book) == 0
    listed = {a["alert_id"]: a for a in json.loads(capsys.readouterr().out)}
    # the forged row is not the alert's status: nothing ledgered closed it (ADR 0016)
    assert listed[forged]["status"] == "open"
    assert listed[forged]["status_history_intact"] is False
    assert listed[edited]["status_history_intact"] is False
    args.json = False
    assert alerts_cli._list(args, book) == 0
    assert "2 alert(s) with a broken status history" in capsys.readouterr().out


# ------------------------------------------------------------------ 4. one access, once


def test_one_access_confirmed_under_two_rules_counts_as_one_violation(
    stores: tuple[Ledger, AuditStore, AlertBook], monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, audit, book = stores
    first, second = event("M1", "P2", at(0)), event("M1", "P4", at(120))
    ledger.commit(first, second)
    audit_range(audit, *DAY, salt=SALT)
    review(monkeypatch, book, alert_with(alerts_of(book), first), "resolved", at(60))
    # replayed after the review: the second access is a repeat offence, two alerts about it
    audit_range(audit, *DAY, salt=SALT)
    no_explanation = alert_with(alerts_of(book), second)
    repeat = alert_with(alerts_of(book, "REPEAT_OFFENDER"), second)
    review(monkeypatch, book, no_explanation, "resolved", at(150))
    review(monkeypatch, book, repeat, "resolved", at(151))
    assert audit.confirmed_violations() == [
        ("M1", just_after(at(0))),
        ("M1", just_after(at(120))),
    ]

    third = event("M1", "P2", at(240))
    ledger.commit(third)
    result = audit_range(audit, *DAY, salt=SALT)
    assert result.to_json()["confirmed_violations"] == 2
    assert repeat_evidence(audit, third) == [{"confirmed_violations": 2, "multiplier": 2.0}]


def test_a_status_change_is_not_sent_unsigned_where_it_would_be_quarantined(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from careledger.config import Settings
    from verifiers.auditor.casework import ledger_status
    from verifiers.auditor.status_records import status_event

    change = {"alert_id": "a" * 32, "status": "acknowledged", "changed_by": OFFICER}
    change.update(changed_at=at(0), entry_hash="ab" * 32)
    # no source key and signatures required: reported as not ledgered, no Kafka needed
    settings = Settings(run_dir=tmp_path, kafka_port=1, require_source_signatures=True)
    with caplog.at_level("WARNING"):
        assert ledger_status(settings, status_event(change)) is False
    assert "no source key" in caplog.text
