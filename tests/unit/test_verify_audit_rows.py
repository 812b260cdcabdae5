"""The auditor's rows tampered with the way an insider would, on chDB (ADR 0016).

A day of accesses audited by a range run, an alert resolved and one acknowledged, each
status change chained (``tests/audit_ledger.py``); then SQL against ``access_decisions``,
``alerts`` and ``alert_status``, and what ``verify_audit`` finds, where. The same attacks
on ClickHouse 18.16 and through ``careledger verify``: tests/integration/test_tamper_audit_rows.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from careledger_core.findings import Finding
from tests.audit_ledger import DAY, OFFICER, SALT, AuditedLedger, chdb_audited
from tests.unit.test_auditor_rules import at, event
from verifiers.auditor import alerts_cli
from verifiers.auditor.runner import STATUS_COLUMNS, status_entry_hash
from verifiers.auditor.runner.rows import utc_now_ts
from verifiers.auditor.verify import AuditVerification, verify_audit


@pytest.fixture
def ledger() -> Iterator[AuditedLedger]:
    with chdb_audited("av") as ledger:
        yield ledger


def codes(result: AuditVerification) -> list[str]:
    return sorted(str(f.code) for f in result.findings)


def only(result: AuditVerification, code: str) -> list[Finding]:
    found = [f for f in result.findings if str(f.code) == code]
    assert found, (code, [(str(f.code), f.message) for f in result.findings])
    return found


def listed(ledger: AuditedLedger) -> dict[str, dict[str, Any]]:
    args = Namespace(
        severity=None,
        rule=None,
        actor=None,
        patient_ref=None,
        status=None,
        from_ts=None,
        to_ts=None,
        limit=1000,
        sort="risk",
        json=True,
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert alerts_cli._list(args, ledger.book) == 0
    return {a["alert_id"]: a for a in json.loads(out.getvalue())}


def test_the_audited_ledger_verifies_intact(ledger: AuditedLedger) -> None:
    result = ledger.verify()
    assert result.findings == [] and result.result == "intact" and result.exit_code == 0
    assert result.summary["decisions"] == 6  # five accesses and one late break-the-glass
    assert result.summary["runs"] == {"range": 1, "follow": 0, "unknown": 0}
    assert result.summary["status_changes"] == {"rows": 2, "ledgered": 2, "pending": 0}
    assert result.summary["recent_rows_not_checked"] == 0
    shown = listed(ledger)[ledger.alert_of("snoop")]
    assert shown["status"] == "resolved" and shown["status_history_intact"] is True


# --------------------------------------------------------------------- status rows


def test_deleting_every_status_row_of_a_resolved_alert_is_found_and_it_stays_resolved(
    ledger: AuditedLedger,
) -> None:
    snoop = ledger.alert_of("snoop")
    ledger.mutate("ALTER TABLE {db}.alert_status DELETE WHERE alert_id = %(a)s", {"a": snoop})
    result = ledger.verify()
    [missing] = only(result, "ALERT_STATUS_MISSING")
    assert missing.details["alert_id"] == snoop
    # where the change is ledgered: the status event's place in the chain
    assert missing.chain_id == ledger.events_chain and missing.height == 3
    assert result.exit_code == 1
    # the list does not show it open with an intact history: the ledger says resolved
    shown = listed(ledger)[snoop]
    assert shown["status"] == "resolved"
    assert shown["status_history_intact"] is False


def test_an_insider_closing_the_alert_about_their_own_access_is_found(
    ledger: AuditedLedger,
) -> None:
    vip = ledger.alert_of("vip")  # about N2's access; acknowledged by the privacy office
    [ack] = ledger.book.history([vip])[vip]
    entry = {
        "alert_id": vip,
        "seq": 1,
        "status": "resolved",
        "changed_by": OFFICER,  # in someone else's name
        "changed_at": at(600),
        "note": "ok",
        "prev_hash": ack["entry_hash"],
    }
    entry["entry_hash"] = status_entry_hash(ack["entry_hash"], entry)
    ledger.backend.insert(
        f"{ledger.db}.alert_status", STATUS_COLUMNS, [tuple(entry[c] for c in STATUS_COLUMNS)]
    )
    result = ledger.verify()
    [forged] = only(result, "ALERT_STATUS_NOT_LEDGERED")
    assert forged.details == {
        "table": "alert_status",
        "alert_id": vip,
        "seq": 1,
        "entry_hash": entry["entry_hash"],
    }
    assert codes(result) == ["ALERT_STATUS_NOT_LEDGERED"]
    shown = listed(ledger)[vip]
    assert shown["status"] == "acknowledged" and shown["status_history_intact"] is False


def test_a_status_row_forged_a_moment_ago_is_pending_not_the_alerts_status(
    ledger: AuditedLedger,
) -> None:
    vip = ledger.alert_of("vip")
    [ack] = ledger.book.history([vip])[vip]
    entry = {
        "alert_id": vip,
        "seq": 1,
        "status": "resolved",
        "changed_by": "N2",
        "changed_at": utc_now_ts(),
        "note": "",
        "prev_hash": ack["entry_hash"],
    }
    entry["entry_hash"] = status_entry_hash(ack["entry_hash"], entry)
    ledger.backend.insert(
        f"{ledger.db}.alert_status", STATUS_COLUMNS, [tuple(entry[c] for c in STATUS_COLUMNS)]
    )
    result = ledger.verify()
    assert codes(result) == ["ALERT_STATUS_PENDING"] and result.exit_code == 0
    shown = listed(ledger)[vip]
    # shown as what it is: a change not chained yet
    assert shown["status"] == "resolved" and shown["status_pending"] is True


def test_a_status_row_updated_to_closed_is_found(ledger: AuditedLedger) -> None:
    vip = ledger.alert_of("vip")
    ledger.mutate(
        "ALTER TABLE {db}.alert_status UPDATE status = 'false-positive' WHERE alert_id = %(a)s",
        {"a": vip},
    )
    result = ledger.verify()
    [edited] = only(result, "ALERT_STATUS_MISMATCH")
    assert edited.details == {"table": "alert_status", "alert_id": vip, "seq": 0}
    assert listed(ledger)[vip]["status"] == "acknowledged"


# --------------------------------------------------------------------- alerts


def test_a_deleted_alert_is_found(ledger: AuditedLedger) -> None:
    btg = ledger.alert_of("btg", "BREAK_THE_GLASS")
    ledger.mutate("ALTER TABLE {db}.alerts DELETE WHERE alert_id = %(a)s", {"a": btg})
    result = ledger.verify()
    [missing] = only(result, "ALERT_MISSING")
    assert missing.details["alert_id"] == btg and missing.chain_id == "alerts"
    assert codes(result) == ["ALERT_MISSING"]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("severity", "'info'"),
        ("rule", "'AFTER_HOURS'"),
        ("evidence", "'{}'"),
        ("score", "0"),
        ("event_ids", "'[]'"),
        ("patient_ref", "'0000'"),
    ],
)
def test_a_rewritten_alert_is_found(ledger: AuditedLedger, column: str, value: str) -> None:
    vip = ledger.alert_of("vip", "VIP_OR_SENSITIVE_UNEXPLAINED")
    ledger.mutate(
        f"ALTER TABLE {{db}}.alerts UPDATE {column} = {value} WHERE alert_id = %(a)s", {"a": vip}
    )
    result = ledger.verify()
    [rewritten] = only(result, "ALERT_MISMATCH")
    assert rewritten.details["alert_id"] == vip
    assert list(rewritten.details["columns"]) == [column]  # type: ignore[call-overload]


def test_a_rewrite_deep_inside_a_long_alert_value_is_found(ledger: AuditedLedger) -> None:
    """verify holds the long values of alerts as digests (ADR 0045): one character
    added at the end, far past what a digest keeps to show, still differs."""
    column = "evidence"
    [(raw_id, length)] = ledger.sql(
        f"SELECT alert_id, length({column}) AS n FROM {{db}}.alerts FINAL "
        "ORDER BY n DESC, alert_id LIMIT 1"
    )
    assert length > 160  # longer than verify keeps verbatim
    vip = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
    ledger.mutate(
        f"ALTER TABLE {{db}}.alerts UPDATE {column} = concat({column}, ' ') WHERE alert_id = %(a)s",
        {"a": vip},
    )
    [rewritten] = only(ledger.verify(), "ALERT_MISMATCH")
    assert rewritten.details["alert_id"] == vip
    shown = rewritten.details["columns"][column]  # type: ignore[index]
    assert list(rewritten.details["columns"]) == [column]  # type: ignore[call-overload]
    assert f"({length + 1} characters" in shown["stored"]
    assert f"({length} characters" in shown["recomputed"]


def test_an_alert_forged_into_the_table_is_found(ledger: AuditedLedger) -> None:
    ledger.sql(
        "INSERT INTO {db}.alerts SELECT 'f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0', rule, severity, "
        "score, 'N1', patient_ref, patient_refs, event_ids, evidence, explanations_searched, "
        "first_at, last_at, created_at, audit_run, version FROM {db}.alerts "
        "WHERE alert_id = %(a)s",
        {"a": ledger.alert_of("vip")},
    )
    result = ledger.verify()
    assert [f.details["alert_id"] for f in only(result, "ALERT_UNEXPECTED")] == [
        "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0"
    ]


# --------------------------------------------------------------------- decisions


def test_a_denied_access_rewritten_as_explained_is_found_at_its_event(
    ledger: AuditedLedger,
) -> None:
    snoop = ledger.cases["snoop"]
    ledger.mutate(
        "ALTER TABLE {db}.access_decisions UPDATE flags = '[]', severity = '', score = 0, "
        "explanation_kind = 'relationship', "
        'explanation = \'{"kind":"relationship","record_id":"CT-P1-N1"}\' '
        "WHERE event_id = %(e)s",
        {"e": snoop.event_id},
    )
    result = ledger.verify()
    [rewritten] = only(result, "DECISION_MISMATCH")
    assert (rewritten.chain_id, rewritten.height, rewritten.event_index, rewritten.event_id) == (
        ledger.events_chain,
        0,
        1,
        snoop.event_id,
    )
    assert sorted(rewritten.details["columns"]) == [  # type: ignore[call-overload]
        "explanation",
        "explanation_kind",
        "flags",
        "score",
        "severity",
    ]
    assert result.exit_code == 1


def test_a_deleted_decision_is_found_at_its_event(ledger: AuditedLedger) -> None:
    vip = ledger.cases["vip"]
    ledger.mutate(
        "ALTER TABLE {db}.access_decisions DELETE WHERE event_id = %(e)s AND amends = 0",
        {"e": vip.event_id},
    )
    result = ledger.verify()
    [missing] = only(result, "DECISION_MISSING")
    assert (missing.chain_id, missing.height, missing.event_index, missing.event_id) == (
        ledger.events_chain,
        1,
        0,
        vip.event_id,
    )


def test_a_deleted_late_flag_is_found(ledger: AuditedLedger) -> None:
    btg = ledger.cases["btg"]
    ledger.mutate(
        "ALTER TABLE {db}.access_decisions DELETE WHERE event_id = %(e)s AND amends = 1",
        {"e": btg.event_id},
    )
    [missing] = only(ledger.verify(), "DECISION_MISSING")
    assert missing.event_id == btg.event_id and missing.details["amends"] == 1


@pytest.mark.parametrize(
    ("what", "exprs"),
    [
        ("an access that never happened", {"event_id": "'00000000-0000-4000-8000-000000000099'"}),
        ("a second decision for one access", {"flags": "'[]'", "severity": "''"}),
        ("a run that never ran", {"audit_run": "'manual-fix'"}),
    ],
)
def test_a_forged_decision_row_is_found(
    ledger: AuditedLedger, what: str, exprs: dict[str, str]
) -> None:
    explained = ledger.cases["explained"]
    columns = [
        str(c[0].decode() if isinstance(c[0], bytes) else c[0])
        for c in ledger.sql(
            "SELECT name FROM system.columns WHERE database = %(db)s "
            "AND table = 'access_decisions'",
            {"db": ledger.db},
        )
    ]
    select = ", ".join(exprs.get(c, c) for c in columns)
    ledger.sql(
        f"INSERT INTO {{db}}.access_decisions ({', '.join(columns)}) SELECT {select} "
        "FROM {db}.access_decisions WHERE event_id = %(e)s",
        {"e": explained.event_id},
    )
    result = ledger.verify()
    assert only(result, "DECISION_UNEXPECTED"), what
    assert result.exit_code == 1


def test_rows_written_in_the_last_minutes_wait_for_the_next_run_but_not_future_ones(
    ledger: AuditedLedger,
) -> None:
    """A run may still be writing its rows: the newest are checked by the next run of
    verify. A row dated after the verifier's clock was written by no run."""
    copy = (
        "INSERT INTO {db}.access_decisions SELECT event_id, chain_id, height, idx, "
        "occurred_at, occurred_date, actor_id, patient_ref, amends, explanation_kind, "
        "explanation, searched, '[]', '', 0, %(t)s, audit_run, reference_known_at, alert_ids "
        "FROM {db}.access_decisions WHERE event_id = %(e)s"
    )
    snoop = ledger.cases["snoop"].event_id
    ledger.sql(copy, {"t": utc_now_ts(), "e": snoop})
    result = ledger.verify()
    assert result.findings == [] and result.summary["recent_rows_not_checked"] == 1
    ledger.sql(copy, {"t": "2999-01-01T00:00:00.000000Z", "e": snoop})
    assert only(ledger.verify(), "DECISION_MISMATCH")[0].event_id == snoop


def test_hostile_values_in_the_auditors_rows_are_findings_not_crashes(
    ledger: AuditedLedger,
) -> None:
    ledger.sql(
        "INSERT INTO {db}.access_decisions (event_id, audit_run, decided_at, occurred_at, "
        "reference_known_at, flags) VALUES ('\\xff\\xfe', 'follow:;warm=x', '', '', 'z', '{')"
    )
    ledger.sql(
        "INSERT INTO {db}.access_decisions (event_id, audit_run, decided_at, occurred_at) "
        "VALUES ('e', 'follow:abc', 'not a time', '2026-11-02T09:00:00.000000Z')"
    )
    ledger.sql(
        "INSERT INTO {db}.alerts (alert_id, event_ids, evidence, audit_run, created_at) "
        "VALUES ('x', 'not json', '[1', '\\xff', '')"
    )
    ledger.sql(
        "INSERT INTO {db}.alert_status (alert_id, seq, status, changed_at, entry_hash) "
        "VALUES ('x', 7, 'resolved', 'yesterday', '\\xff')"
    )
    result = ledger.verify()
    assert result.exit_code == 1
    assert {"DECISION_UNEXPECTED", "ALERT_UNEXPECTED", "ALERT_STATUS_NOT_LEDGERED"} <= set(
        codes(result)
    )


def test_without_the_salt_the_checks_cannot_tell(ledger: AuditedLedger) -> None:
    result = ledger.verify(salt=None)
    assert result.exit_code == 2 and "audit_salt" in (result.cannot_tell or "")
    wrong = ledger.verify(salt="another salt")
    assert wrong.exit_code == 1 and only(wrong, "DECISION_MISMATCH")


# --------------------------------------------------------------------- runs


def test_replays_follow_runs_reviews_and_range_replays_verify_intact(
    ledger: AuditedLedger,
) -> None:
    """A follower over new blocks, reviews in between, a range replay over part of the
    day and a reconsidered one: every row is what its run decides, nothing is reported."""
    follower = ledger.follower()
    assert follower.cycle() == 2 and follower.warmed > 0  # the two status events
    more = [event("M1", "P3", at(400)), event("B1", "P2", at(401))]
    ledger.cases.update(more0=more[0], more1=more[1])
    ledger.commit(more[0])
    assert follower.cycle() == 1
    ledger.review(ledger.alert_of("more0", "VIP_OR_SENSITIVE_UNEXPLAINED"), "acknowledged")
    ledger.commit(more[1])
    assert follower.cycle() >= 1
    assert follower.run_id.startswith("follow:") and ";warm=" in follower.run_id
    result = ledger.verify()
    assert result.findings == [], [(str(f.code), f.message) for f in result.findings]
    assert result.summary["runs"]["follow"] == 1

    # a range replay of the morning replaces part of the range run's rows
    ledger.audit_range(at(-60), at(200))
    ledger.audit_range(*DAY, reconsider=True)
    result = ledger.verify()
    assert result.findings == [], [(str(f.code), f.message) for f in result.findings]
    # and the resumed follower
    resumed = ledger.follower()
    ledger.commit(event("M1", "P1", at(500)))
    assert resumed.cycle() == 1
    result = ledger.verify()
    assert result.findings == [], [(str(f.code), f.message) for f in result.findings]


def test_a_restarted_follower_growing_an_open_alert_replays_intact(
    ledger: AuditedLedger,
) -> None:
    """The second follower reads the first one's flags back at its start (the open
    alert grows instead of a second opening): ``verify`` replays that read too."""
    first = ledger.follower()
    first.cycle()
    ledger.cases["grow0"] = event("M1", "P3", at(400))
    ledger.commit(ledger.cases["grow0"])
    first.cycle()
    opened = ledger.alert_of("grow0", "VIP_OR_SENSITIVE_UNEXPLAINED")
    ledger.commit(event("M1", "P3", at(410)))
    second = ledger.follower()
    assert second.cycle() == 1
    grown = listed(ledger)[opened]
    assert len(grown["event_ids"]) == 2, "the restart opened a second alert"
    result = ledger.verify()
    assert result.findings == [], [(str(f.code), f.message) for f in result.findings]
    assert result.summary["runs"]["follow"] == 2


def test_a_follow_runs_rewritten_decision_and_alert_are_found(ledger: AuditedLedger) -> None:
    follower = ledger.follower()
    follower.cycle()
    snoop2 = event("M1", "P2", at(420))
    ledger.cases["snoop2"] = snoop2
    ledger.commit(snoop2)
    assert follower.cycle() == 1
    assert ledger.verify().findings == []
    ledger.mutate(
        "ALTER TABLE {db}.access_decisions UPDATE severity = 'low' WHERE event_id = %(e)s",
        {"e": snoop2.event_id},
    )
    alert = ledger.alert_of("snoop2")
    ledger.mutate(
        "ALTER TABLE {db}.alerts UPDATE actor_id = 'N1' WHERE alert_id = %(a)s", {"a": alert}
    )
    result = ledger.verify()
    [decision] = only(result, "DECISION_MISMATCH")
    assert decision.event_id == snoop2.event_id and decision.height == 5
    assert decision.details["audit_run"] == follower.run_id
    [rewritten] = only(result, "ALERT_MISMATCH")
    assert rewritten.details["alert_id"] == alert and list(rewritten.details["columns"]) == [  # type: ignore[call-overload]
        "actor_id"
    ]


def test_an_alert_whose_accesses_a_later_run_decided_otherwise_is_stale_not_tampered(
    ledger: AuditedLedger,
) -> None:
    """A follower's alert over two snoops; the second alone is re-decided later (a
    back-dated care relationship, ``--reconsider``) and its alert outlives the range."""
    from tests.unit.test_auditor_rules import relationship

    follower = ledger.follower()
    follower.cycle()
    first, second = event("M1", "P1", at(600)), event("M1", "P3", at(630))
    ledger.cases.update(first=first, second=second)
    ledger.commit(first)
    assert follower.cycle() == 1
    ledger.commit(second)
    assert follower.cycle() == 1
    alert = ledger.alert_of("first")
    assert alert == ledger.alert_of("second")
    ledger.reference(relationship("CT-P3-M1", "P3", practitioner_id="M1"))
    ledger.audit_range(at(620), at(640), reconsider=True)
    result = ledger.verify()
    # P3 is a VIP: the second access was in three of the follower's alerts
    assert set(codes(result)) == {"ALERT_STALE"} and result.exit_code == 0
    assert alert in {f.details["alert_id"] for f in result.findings}


def test_a_status_change_that_cannot_be_ledgered_is_not_made(
    ledger: AuditedLedger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from careledger.config import Settings

    # signatures required and no source key: the change could only be quarantined
    settings = Settings(run_dir=tmp_path, kafka_port=1, require_source_signatures=True)
    vip = ledger.alert_of("vip")
    args = Namespace(alert_id=vip, by=OFFICER, note="done")
    assert alerts_cli._change(args, settings, ledger.book, "resolve") == 2
    assert "was not made" in capsys.readouterr().err
    assert [e["status"] for e in ledger.book.history([vip])[vip]] == ["acknowledged"]
    assert ledger.verify().findings == []


class _RewritesWhileRead:
    """The database while a range audit replaces its rows: the first time verify reads
    a page of decisions, one settled decision is deleted."""

    def __init__(self, ledger: AuditedLedger, event_id: str) -> None:
        self.ledger, self.event_id, self.done = ledger, event_id, False
        self.name = ledger.backend.name

    def execute(self, sql: str, params: Any = None) -> Any:
        if not self.done and "access_decisions" in sql and "LIMIT" in sql:
            self.done = True
            self.ledger.mutate(
                "ALTER TABLE {db}.access_decisions DELETE WHERE event_id = %(e)s",
                {"e": self.event_id},
            )
        return self.ledger.backend.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ledger.backend, name)


def test_decisions_rewritten_while_verify_replays_them_cannot_tell_not_tampered(
    ledger: AuditedLedger,
) -> None:
    """verify reads a run's rows as it replays it (ADR 0045): rows that change meanwhile
    (a range audit replacing them) make it "cannot tell", never a false finding."""
    backend = _RewritesWhileRead(ledger, ledger.cases["vip"].event_id)
    result = verify_audit(backend, ledger.db, reference_topics=ledger.topics, salt=SALT)
    assert backend.done
    assert result.result == "cannot tell" and result.exit_code == 2
    assert result.cannot_tell is not None and "changed its older rows" in result.cannot_tell
    assert not [f for f in result.findings if str(f.code).startswith(("DECISION", "ALERT_"))]
    # read again, the deletion is what it is: a missing decision
    assert only(ledger.verify(), "DECISION_MISSING")


def test_alert_rows_held_as_digests_compare_as_their_texts() -> None:
    """``compact_alert``: long lists and evidence become digests that are equal exactly
    when the texts are; short values and everything else stay verbatim; a value of the
    wrong type stays unreadable (equal to nothing)."""
    from verifiers.auditor.runner.rows import ALERT_COLUMNS
    from verifiers.auditor.verify.stored import Digested, StoredAlert, Unreadable, compact_alert

    ids = json.dumps([str(uuid.UUID(int=i)) for i in range(10)])
    row = [
        "a1", "NO_EXPLANATION", "medium", 1.0, "N" * 200, "p", "[]", ids, "{}", "[]",
        "t1", "t2", "t3", "range:x", 0,
    ]  # fmt: skip
    assert len(row) == len(ALERT_COLUMNS)
    one, again = compact_alert(row), compact_alert(list(row))
    assert one == again
    assert StoredAlert.of(row).values == one  # the stored rows are held as the replayed
    ev = ALERT_COLUMNS.index("event_ids")
    assert isinstance(one[ev], Digested) and one[ev].length == len(ids)
    assert one[ALERT_COLUMNS.index("actor_id")] == "N" * 200  # not a list: kept as it is
    assert one[ALERT_COLUMNS.index("evidence")] == "{}"
    changed = compact_alert([*row[:ev], ids[:-2] + "x]", *row[ev + 1 :]])
    assert changed[ev] != one[ev] and changed[ev].head == one[ev].head  # type: ignore[union-attr]
    hostile = compact_alert([*row[:ev], 12, *row[ev + 1 :]])
    assert isinstance(hostile[ev], Unreadable) and hostile[ev] != hostile[ev]


def test_alerts_read_page_by_page_are_every_row_final_reads(ledger: AuditedLedger) -> None:
    """verify reads the alerts in pages of ``first_at`` (ADR 0045): rows sharing a time
    across a page's end, an empty time, a time that is not UTF-8 and a superseded
    version are each read as one ``FINAL`` query reads them, none twice, none lost."""
    from verifiers.auditor.runner.rows import ALERT_COLUMNS
    from verifiers.auditor.verify.ledger import stored_alerts
    from verifiers.auditor.verify.stored import parse_alerts

    copy = (
        "INSERT INTO {db}.alerts SELECT %(id)s, rule, severity, score, actor_id, patient_ref, "
        "patient_refs, event_ids, evidence, explanations_searched, {first}, last_at, "
        "created_at, audit_run, %(v)s FROM {db}.alerts FINAL WHERE alert_id = %(a)s"
    )
    vip = ledger.alert_of("vip", "VIP_OR_SENSITIVE_UNEXPLAINED")
    for i, first in enumerate(["first_at"] * 4 + ["''", "unhex('FFFE')"]):
        ledger.sql(copy.replace("{first}", first), {"id": f"copy{i}", "v": 0, "a": vip})
    ledger.sql(copy.replace("{first}", "first_at"), {"id": "copy0", "v": 7, "a": vip})
    whole = sorted(
        repr(a.values)
        for a in parse_alerts(
            ledger.sql(f"SELECT {', '.join(ALERT_COLUMNS)} FROM {{db}}.alerts FINAL")
        )
    )
    assert len(whole) >= 10 and sum("copy0" in r for r in whole) == 1
    for page in (1, 2, 3, 1000):
        paged = [repr(a.values) for a in stored_alerts(ledger.backend, ledger.db, page)]
        assert sorted(paged) == whole, page


def test_alerts_of_a_run_renamed_to_none_the_auditor_writes_are_findings_not_crashes(
    ledger: AuditedLedger,
) -> None:
    """verify keeps an alert's flagged events only where it may regroup or review the
    alert (ADR 0045). Renaming a range run's rows and alerts to a run id no auditor
    writes leaves its alerts to be regrouped without them: findings, never a crash."""
    for table in ("access_decisions", "alerts"):
        ledger.mutate(
            f"ALTER TABLE {{db}}.{table} UPDATE audit_run = 'range:bogus' "
            "WHERE audit_run LIKE 'range:%'"
        )
    result = ledger.verify()
    assert result.result == "tampered"
    [(alerts,)] = ledger.sql("SELECT count() FROM {db}.alerts FINAL")
    unexpected = only(result, "ALERT_UNEXPECTED")
    assert alerts > 0 and len(unexpected) == alerts
    assert all("no audit run decided" in f.message for f in unexpected)
    assert only(result, "DECISION_UNEXPECTED")
