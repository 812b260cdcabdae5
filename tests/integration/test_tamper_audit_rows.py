"""The auditor's rows tampered with on ClickHouse 18.16, the way an insider would, and
what ``careledger verify`` says (ADR 0016).

Each test writes a small audited ledger into its own database (``tests/audit_ledger.py``:
the directory and a day of accesses chained by the real chainer, a range audit by
``careledger audit``'s own code, an alert resolved and one acknowledged with each change
chained as its status event), runs SQL against ``access_decisions``, ``alerts`` and
``alert_status``, and checks the finding and where it points: in-process
(``verify_audit``) and through ``careledger verify`` (subprocess, settings from the
environment). More attacks, on chDB: tests/unit/test_verify_audit_rows.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from careledger.config import PROJECT_ROOT, Settings
from careledger.storage.backend import ClickHouseBackend
from careledger_core.signing import format_public_key
from tests.audit_ledger import KEY, OFFICER, SALT, AuditedLedger, build
from tests.unit import test_knowledge_cutoffs_read as cutoffs
from tests.unit.test_auditor_rules import at
from verifiers.auditor.runner import STATUS_COLUMNS, status_entry_hash
from verifiers.auditor.verify import AuditVerification

pytestmark = pytest.mark.integration


@pytest.fixture
def ledger(isolated: Settings) -> Iterator[AuditedLedger]:
    backend = ClickHouseBackend.from_settings(isolated)
    try:
        yield build(
            backend,
            isolated.clickhouse_database,
            events_chain=isolated.chain_id(isolated.topic_events, 0),
            directory_topic=isolated.topic_workforce,
        )
    finally:
        backend.close()


def verify_cli(
    settings: Settings, *args: str, salt: str = SALT
) -> subprocess.CompletedProcess[str]:
    """``careledger verify ARGS`` with the settings in the environment (the ledger is
    written by the test, not by sources: ``--no-sources``; Kafka's checkpoints are read)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELEDGER_")}
    env.update(settings.as_env())
    env["CARELEDGER_TRUSTED_KEYS"] = format_public_key(KEY.public_key)
    env["CARELEDGER_AUDIT_SALT"] = salt
    return subprocess.run(
        [sys.executable, "-m", "commands.cli", "verify", "--no-sources", "--no-record", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def found(result: AuditVerification) -> list[tuple[str, Any, Any, Any, Any]]:
    return sorted(
        (
            str(f.code),
            f.chain_id,
            f.height,
            f.event_index,
            f.details.get("alert_id", f.event_id),
        )
        for f in result.findings
    )


def test_the_untouched_audited_ledger_is_intact(ledger: AuditedLedger, isolated: Settings) -> None:
    result = ledger.verify()
    assert result.findings == [] and result.exit_code == 0
    cli = verify_cli(isolated, "--json")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    doc = json.loads(cli.stdout)
    assert doc["result"] == "intact"
    assert doc["audit"]["result"] == "intact" and doc["audit"]["decisions"] == 6
    human = verify_cli(isolated)
    assert human.returncode == 0, human.stdout + human.stderr
    assert "auditor's rows: 6 decisions replayed from 1 range and 0 follow run(s)" in human.stdout
    assert human.stdout.rstrip().splitlines()[-1].startswith("result: INTACT")


def test_deleting_every_status_row_of_a_resolved_alert(
    ledger: AuditedLedger, isolated: Settings
) -> None:
    snoop = ledger.alert_of("snoop")
    ledger.mutate("ALTER TABLE {db}.alert_status DELETE WHERE alert_id = %(a)s", {"a": snoop})
    assert found(ledger.verify()) == [("ALERT_STATUS_MISSING", ledger.events_chain, 3, 0, snoop)]
    # the reviewer's list shows what the ledger says, and that the rows are broken
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELEDGER_")}
    env.update(isolated.as_env())
    shown = subprocess.run(
        [sys.executable, "-m", "commands.cli", "alerts", "show", snoop, "--json"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["status"] == "resolved"
    assert doc["status_history_intact"] is False and doc["status_history_ledgered"] is False
    assert doc["status_history"][0]["ledgered"]["height"] == 3
    # and verify says TAMPERED, naming the alert and where its change is ledgered
    cli = verify_cli(isolated)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert f"ALERT_STATUS_MISSING chain={ledger.events_chain} height=3 index=0 " in cli.stdout
    assert snoop in cli.stdout
    assert cli.stdout.rstrip().splitlines()[-1].startswith("result: TAMPERED")


def test_closing_the_alert_about_ones_own_access_in_the_table(
    ledger: AuditedLedger, isolated: Settings
) -> None:
    vip = ledger.alert_of("vip")  # N2's access to a VIP's chart
    [ack] = ledger.book.history([vip])[vip]
    entry = {
        "alert_id": vip,
        "seq": 1,
        "status": "false-positive",
        "changed_by": OFFICER,
        "changed_at": at(600),
        "note": "",
        "prev_hash": ack["entry_hash"],
    }
    entry["entry_hash"] = status_entry_hash(ack["entry_hash"], entry)
    ledger.backend.insert(
        f"{ledger.db}.alert_status", STATUS_COLUMNS, [tuple(entry[c] for c in STATUS_COLUMNS)]
    )
    assert found(ledger.verify()) == [
        ("ALERT_STATUS_NOT_LEDGERED", "alert_status", None, None, vip)
    ]
    cli = verify_cli(isolated, "--json")
    assert cli.returncode == 1, cli.stdout + cli.stderr
    doc = json.loads(cli.stdout)
    assert doc["result"] == "tampered"
    assert doc["totals"]["findings_by_code"] == {"ALERT_STATUS_NOT_LEDGERED": 1}
    [f] = doc["findings"]
    assert f["details"]["alert_id"] == vip and f["details"]["seq"] == 1


def test_a_deleted_alert(ledger: AuditedLedger) -> None:
    btg = ledger.alert_of("btg", "BREAK_THE_GLASS")
    ledger.mutate("ALTER TABLE {db}.alerts DELETE WHERE alert_id = %(a)s", {"a": btg})
    assert found(ledger.verify()) == [("ALERT_MISSING", "alerts", None, None, btg)]


@pytest.mark.parametrize(
    ("column", "value"),
    [("severity", "'low'"), ("rule", "'AFTER_HOURS'"), ("evidence", "'{\"routine\":true}'")],
)
def test_a_rewritten_alert(ledger: AuditedLedger, column: str, value: str) -> None:
    vip = ledger.alert_of("vip", "VIP_OR_SENSITIVE_UNEXPLAINED")
    ledger.mutate(
        f"ALTER TABLE {{db}}.alerts UPDATE {column} = {value} WHERE alert_id = %(a)s", {"a": vip}
    )
    result = ledger.verify()
    assert found(result) == [("ALERT_MISMATCH", "alerts", None, None, vip)]
    assert list(result.findings[0].details["columns"]) == [column]  # type: ignore[call-overload]


def test_a_decision_altered_from_deny_to_permit(ledger: AuditedLedger, isolated: Settings) -> None:
    snoop = ledger.cases["snoop"]
    ledger.mutate(
        "ALTER TABLE {db}.access_decisions UPDATE flags = '[]', severity = '', score = 0, "
        "explanation_kind = 'consent', explanation = '{\"kind\":\"consent\"}' "
        "WHERE event_id = %(e)s",
        {"e": snoop.event_id},
    )
    assert found(ledger.verify()) == [
        ("DECISION_MISMATCH", ledger.events_chain, 0, 1, snoop.event_id)
    ]
    cli = verify_cli(isolated)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert (
        f"DECISION_MISMATCH chain={ledger.events_chain} height=0 index=1 "
        f"event_id={snoop.event_id} " in cli.stdout
    )


def test_a_deleted_decision(ledger: AuditedLedger) -> None:
    vip = ledger.cases["vip"]
    ledger.mutate(
        "ALTER TABLE {db}.access_decisions DELETE WHERE event_id = %(e)s AND amends = 0",
        {"e": vip.event_id},
    )
    assert found(ledger.verify()) == [("DECISION_MISSING", ledger.events_chain, 1, 0, vip.event_id)]


def test_a_forged_decision_row(ledger: AuditedLedger) -> None:
    ghost = "00000000-0000-4000-8000-0000000000aa"
    ledger.sql(
        "INSERT INTO {db}.access_decisions SELECT %(g)s, chain_id, height, idx, occurred_at, "
        "occurred_date, actor_id, patient_ref, amends, explanation_kind, explanation, "
        "searched, flags, severity, score, decided_at, audit_run, reference_known_at, "
        "alert_ids FROM {db}.access_decisions WHERE event_id = %(e)s",
        {"g": ghost, "e": ledger.cases["explained"].event_id},
    )
    assert found(ledger.verify()) == [("DECISION_UNEXPECTED", ledger.events_chain, 0, 0, ghost)]


def test_without_the_auditors_salt_verify_names_the_setting(
    ledger: AuditedLedger, isolated: Settings, tmp_path: Path
) -> None:
    isolated = isolated.replace(run_dir=tmp_path)  # no keys/audit-salt file either
    cli = verify_cli(isolated, salt="")
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert "CARELEDGER_AUDIT_SALT" in cli.stderr and "Traceback" not in cli.stderr
    skipped = verify_cli(isolated, "--no-audit", salt="")
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr


def test_columns_of_another_type_are_findings_at_their_rows_not_crashes(
    ledger: AuditedLedger, isolated: Settings
) -> None:
    vip = ledger.cases["vip"]
    alert = ledger.alert_of("vip", "VIP_OR_SENSITIVE_UNEXPLAINED")
    ledger.mutate("ALTER TABLE {db}.access_decisions MODIFY COLUMN height String")
    ledger.mutate(
        "ALTER TABLE {db}.access_decisions UPDATE height = 'zz' WHERE event_id = %(e)s",
        {"e": vip.event_id},
    )
    ledger.mutate("ALTER TABLE {db}.alerts MODIFY COLUMN score String")
    result = ledger.verify()
    decision = next(f for f in result.findings if f.event_id == vip.event_id)
    assert str(decision.code) == "DECISION_MISMATCH"
    assert (decision.chain_id, decision.height, decision.event_index) == (ledger.events_chain, 1, 0)
    assert "height" in decision.details["columns"]  # type: ignore[operator]
    alerts = {f.details.get("alert_id") for f in result.findings if str(f.code) == "ALERT_MISMATCH"}
    assert alert in alerts  # every alert's score is now text
    cli = verify_cli(isolated)
    assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stdout + cli.stderr


# The knowledge cutoffs read in pages of whole times (ADR 0046), on 18.16 itself: the
# same checks as on chDB, against this fixture's ledger.


def test_cutoffs_read_page_by_page_are_one_read_of_the_latest_per_access_on_18_16(
    ledger: AuditedLedger,
) -> None:
    cutoffs.test_cutoffs_read_page_by_page_are_one_read_of_the_latest_per_access(ledger)


def test_verify_reads_the_latest_cutoff_of_each_access_made_before_the_run_on_18_16(
    ledger: AuditedLedger,
) -> None:
    cutoffs.test_verify_reads_the_latest_cutoff_of_each_access_made_before_the_run(ledger)


def test_an_event_id_ledgered_again_hours_later_is_a_new_access_on_18_16(
    ledger: AuditedLedger,
) -> None:
    cutoffs.test_an_event_id_ledgered_again_hours_later_is_a_new_access_to_auditor_and_verify(
        ledger
    )
