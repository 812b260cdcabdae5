"""``careledger alerts``: review the auditor's alerts.

* ``list`` [--severity --rule --actor --patient-ref --status --from --to] [--json]
* ``show ID`` the alert, its evidence and its status history
* ``ack ID --by WHO [--note N]`` / ``resolve ID --by WHO --note N [--false-positive]``
* ``assign ID --to WHO --by WHO`` / ``comment ID --by WHO --note N`` /
  ``reopen ID --by WHO --note WHY`` (``verifiers.auditor.casework``)
* ``reidentify ID --by WHO --reason WHY`` (a sealed ledger, ADR 0037): the accesses
  actors and patients, ledgered first (``verifiers.auditor.reidentify``)
* ``tail`` follow the alerts topic

Patients only ever appear as pseudonymous references. A status change is appended to
``alert_status`` (one row per change, hash-linked to the alert's previous change, so an
edited or deleted change breaks the links), sent as an access event ("Audit Log Used",
DICOM 110101, carrying the change's hash) to the events topic so that the processor
chains and signs it like any access, and published as JSON to ``topic_alert_status``
(key = alert id). A change that cannot be sent to be ledgered is not made (its row is
taken back, exit 2).

The status ``list`` and ``show`` give is the ledger's (ADR 0016,
``status_records.reconcile``): the ledgered changes, then changes too recent to be
chained yet (``status_pending``); a row the ledger contradicts (forged, edited, or whose
ledgered change lost its row) is never the status: ``status_history_intact`` is false and
``status_problems`` says why. ``show`` lists each change with where it is ledgered.

Exit status: 0 done, 1 no such alert / not allowed, 2 usage or infrastructure error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import AUDITOR
from careledger.safe_text import display
from careledger.storage.backend import ClickHouseBackend, StorageError
from careledger_core.errors import CareledgerError
from verifiers.auditor._time import ts_to_us
from verifiers.auditor.alerts import ALERT_STATUSES
from verifiers.auditor.alerts_view import SORTS, render_alert, sort_alerts, truncation_note
from verifiers.auditor.casework import AlertBook, CaseError, work_alert
from verifiers.auditor.forward_cli import command_forward, configure_forward
from verifiers.auditor.runner.rows import (
    parse_instant,
    utc_now_ts,
)
from verifiers.auditor.runner.rows import status_history_intact as verify_history
from verifiers.auditor.runner.sealed_store import sealed_status
from verifiers.auditor.status_records import (
    STATUS_RECORD_FORMAT,
    AlertStatus,
    StatusReconciliation,
    read_ledgered_status,
    read_status_rows,
    reconcile,
    status_event,
    status_event_id,
)

__all__ = [
    "STATUS_RECORD_FORMAT",
    "AlertBook",
    "command_alerts",
    "configure_alerts",
    "status_event",
    "status_event_id",
    "status_view",
    "verify_history",
]

SEVERITIES = ("info", "low", "medium", "high", "critical")


def configure_alerts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database", help="ClickHouse database (default: settings)")
    sub = parser.add_subparsers(dest="alerts_command", metavar="ACTION")
    p = sub.add_parser("list", help="list alerts (filtered)")
    p.add_argument("--severity", choices=SEVERITIES, help="this severity or worse")
    p.add_argument("--rule", help="rule code, e.g. NO_EXPLANATION")
    p.add_argument("--actor", help="actor (user) id")
    p.add_argument("--patient-ref", help="patient pseudonym")
    p.add_argument("--status", choices=ALERT_STATUSES)
    p.add_argument("--from", dest="from_ts", metavar="TIME", help="first event at or after")
    p.add_argument("--to", dest="to_ts", metavar="TIME", help="first event before")
    p.add_argument(
        "--sort",
        choices=SORTS,
        default="risk",
        help="risk (default: highest score, then severity, then newest first), newest, oldest",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=100,
        help="show at most N (default 100); a cut list says how many matched",
    )
    p.add_argument("--json", action="store_true", help="one JSON array")
    p = sub.add_parser("show", help="one alert as a case: why, who, when, its history")
    p.add_argument("alert_id")
    p.add_argument("--json", action="store_true", help="the whole record as JSON")
    p = sub.add_parser("ack", help="acknowledge an alert")
    p.add_argument("alert_id")
    p.add_argument("--by", required=True, help="who")
    p.add_argument("--note", default="")
    p = sub.add_parser("resolve", help="resolve an alert (confirmed or false positive)")
    p.add_argument("alert_id")
    p.add_argument("--by", required=True, help="who")
    p.add_argument("--note", required=True)
    p.add_argument("--false-positive", action="store_true")
    p = sub.add_parser("assign", help="assign an alert to someone to work it")
    p.add_argument("alert_id")
    p.add_argument("--to", required=True, help="who works it")
    p.add_argument("--by", required=True, help="who assigns it")
    p.add_argument("--note", default="")
    p = sub.add_parser("comment", help="add a note to an alert's case (its status stays)")
    p.add_argument("alert_id")
    p.add_argument("--by", required=True, help="who")
    p.add_argument("--note", required=True)
    p = sub.add_parser("reopen", help="reopen a resolved or dismissed alert")
    p.add_argument("alert_id")
    p.add_argument("--by", required=True, help="who")
    p.add_argument("--note", required=True, help="why it is reopened")
    p = sub.add_parser(
        "reidentify",
        help="a sealed ledger: who the alert's accesses were by and about, for a case "
        "(ledgered first, in each patient's access report)",
    )
    p.add_argument("alert_id")
    p.add_argument("--by", required=True, help="who re-identifies")
    p.add_argument("--reason", required=True, help="why (the case)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("tail", help="follow new alerts on the alerts topic")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--max-messages", type=int, help="stop after N alerts")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="print each alert as JSON")
    configure_forward(sub)


def _error(message: str, code: int = 2) -> int:
    print(f"careledger alerts: {message}", file=sys.stderr)
    return code


def status_view(book: AlertBook, alert_ids: Sequence[str] | None = None) -> StatusReconciliation:
    """The status rows (of ``alert_ids``, else all) reconciled with the ledgered status
    changes: what may be shown as each alert's status (``status_records.reconcile``)."""
    rows = read_status_rows(book.backend, book.db, alert_ids)
    records = read_ledgered_status(book.backend, book.db, alert_ids, book.sealed)
    now_us = ts_to_us(utc_now_ts())
    return reconcile(rows, records, now_us=now_us, rows_sealed=book.sealed is not None)


def _with_status(alert: dict[str, Any], view: AlertStatus) -> dict[str, Any]:
    """The alert with the status the ledger supports: the last ledgered change, or a
    change too recent to be chained yet (``status_pending``); never a row the ledger
    contradicts (a forged, edited or deleted change is a problem, listed)."""
    last = view.current
    alert["status"] = view.status
    alert["status_by"] = last["changed_by"] if last else None
    alert["status_at"] = last["changed_at"] if last else None
    alert["status_note"] = last["note"] if last else None
    alert["status_pending"] = bool(last and last.get("pending"))
    # every row ledgered (or pending), every ledgered change has its row, links hold
    alert["status_history_intact"] = view.verified
    alert["status_problems"] = list(view.problems)
    return alert


def _status_label(a: dict[str, Any]) -> str:
    label = str(a["status"])
    if a["status_pending"]:
        label += " (pending: not chained yet)"
    if not a["status_history_intact"]:
        label += " (HISTORY BROKEN)"
    return label


def command_alerts(args: argparse.Namespace, settings: Settings) -> int:
    if not getattr(args, "verbose", False):
        logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
    if args.database:
        settings = settings.replace(clickhouse_database=args.database)
    action = getattr(args, "alerts_command", None)
    if action is None:
        return _error(
            "give an action: list, show, ack, assign, comment, resolve, reopen, reidentify, "
            "tail or forward"
        )
    if action == "tail":
        return _tail(args, settings)
    if action == "forward":
        return command_forward(args, settings)
    keystore = None
    sealed = None
    if settings.seal_events:  # ADR 0037: status records are sealed events
        from careledger.keystore import open_keystore

        try:
            keystore = open_keystore(settings)
        except CareledgerError as exc:
            return _error(f"a sealed ledger needs its key store: {exc}")
        sealed = sealed_status(keystore, "alerts")
    backend = ClickHouseBackend.from_settings(settings)
    book = AlertBook(backend, settings.clickhouse_database, sealed)
    try:
        if action == "list":
            return _list(args, book)
        if action == "show":
            return _show(args, book)
        if action == "reidentify":
            return _reidentify(args, settings, book, keystore)
        if action == "resolve" and args.false_positive:
            action = "dismiss"
        return _change(args, settings, book, action)
    except StorageError as exc:
        return _error(exc.message)
    except CareledgerError as exc:  # the key store, mid-command
        return _error(f"cannot open the sealed ledger: {exc}")
    finally:
        backend.close()
        if keystore is not None:
            keystore.close()


def _list(args: argparse.Namespace, book: AlertBook) -> int:
    try:
        alerts = book.matching(
            severities=tuple(SEVERITIES[SEVERITIES.index(args.severity) :])
            if args.severity
            else (),
            rule=args.rule or "",
            actor=args.actor or "",
            start=parse_instant(args.from_ts) if args.from_ts else "",
            end=parse_instant(args.to_ts) if args.to_ts else "",
            patient_ref=args.patient_ref or "",
        )
    except ValueError as exc:
        return _error(str(exc))
    view = status_view(book)
    alerts = [_with_status(a, view.of(a["alert_id"])) for a in alerts]
    if args.status:
        alerts = [a for a in alerts if a["status"] == args.status]
    matching = len(alerts)
    order = getattr(args, "sort", "risk")
    alerts = sort_alerts(alerts, order)[: max(0, args.limit)]
    cut = truncation_note(len(alerts), matching, order)
    if args.json:
        print(json.dumps(alerts, sort_keys=True))
        if cut:  # the array is machine-read: the note goes to stderr
            print(f"careledger alerts: {cut}", file=sys.stderr)
        return 0
    print(
        f"{'alert id':32}  {'first event':27}  {'rule':28}  {'severity':8}  "
        f"{'score':>7}  {'events':>6}  {'actor':12}  {'patient ref':16}  status"
    )
    for a in alerts:
        print(alert_row(a))
    print(cut or f"{len(alerts)} alert(s)")
    broken = sum(1 for a in alerts if not a["status_history_intact"])
    if broken:
        print(
            f"warning: {broken} alert(s) with a broken status history (edited, deleted or "
            "forged changes): the status shown is the ledgered one; see alerts show ID"
        )
    print(
        "statuses are those of the ledgered status changes; the alerts' contents are "
        "checked against the ledger by careledger verify"
    )
    return 0


def alert_row(a: dict[str, Any]) -> str:
    """One line of the alerts table; what the sources wrote (the actor id) and what was
    read back from the store is shown with control characters escaped (ADR 0026)."""
    d = display
    ref = d(a["patient_ref"] or f"({len(a['patient_refs'])} patients)")
    return (
        f"{d(a['alert_id']):32}  {d(a['first_at']):27}  {d(a['rule']):28}  "
        f"{d(a['severity']):8}  {a['score']:7.1f}  {len(a['event_ids']):6d}  "
        f"{d(a['actor_id']):12}  {ref[:16]:16}  {d(_status_label(a))}"
    )


def tail_line(doc: dict[str, Any]) -> str:
    """One line of ``alerts tail`` for an alert or a verifier finding (ADR 0026: control
    characters shown escaped)."""
    d = display
    if "rule" in doc:
        ref = doc.get("patient_ref") or f"({len(doc.get('patient_refs', []))} patients)"
        return (
            f"{d(doc.get('first_at'))}  {d(doc.get('alert_id'))}  {d(doc.get('rule'))}  "
            f"{d(doc.get('severity'))}  actor={d(doc.get('actor_id'))}  patient={d(ref)}  "
            f"events={len(doc.get('event_ids', []))}"
        )
    # a verifier finding on the same topic
    return f"{d(doc.get('code'))}  {d(doc.get('alert_id'))}  {d(doc.get('message'))}"


def _show(args: argparse.Namespace, book: AlertBook) -> int:
    alert = book.alert(args.alert_id)
    if alert is None:
        return _error(f"no alert {args.alert_id}", 1)
    view = status_view(book, [args.alert_id]).of(args.alert_id)
    alert = _with_status(alert, view)
    # the ledgered changes (with the note of their row when it holds), then the pending
    alert["status_history"] = view.changes
    alert["status_history_ledgered"] = view.ledgered
    if args.json:
        print(json.dumps(alert, sort_keys=True, indent=2))
    else:
        print("\n".join(render_alert(alert)))
    return 0


def _reidentify(
    args: argparse.Namespace, settings: Settings, book: AlertBook, keystore: Any
) -> int:
    from verifiers.auditor.reidentify import ReidentifyError, reidentify

    if keystore is None:
        return _error("this ledger is not sealed (seal_events is off): `show` shows the alert")
    alert = book.alert(args.alert_id)
    if alert is None:
        return _error(f"no alert {args.alert_id}", 1)
    try:
        shown = reidentify(settings, book.backend, book.db, keystore, alert, args.by, args.reason)
    except ReidentifyError as exc:
        return _error(exc.message)
    if args.json:
        print(json.dumps(shown, sort_keys=True))
        return 0
    d = display
    print(
        f"alert {d(shown['alert_id'])}: re-identified by {d(args.by)} ({d(args.reason)}), "
        f"ledgered as {len(shown['ledgered_as'])} access event(s)"
    )
    for e in shown["events"]:
        if e.get("erased_or_unopened"):
            print(f"  {d(e['event_id'])}  (erased, or does not open: not re-identified)")
            continue
        print(
            f"  {d(e['occurred_at'])}  {d(e['action'])}  actor {d(e['actor_id'])} "
            f"{d(e['actor_name'] or '')}  patient {d(e['patient_id'])} "
            f"({d(e['patient_system'] or '')})"
        )
    return 0


def _change(args: argparse.Namespace, settings: Settings, book: AlertBook, action: str) -> int:
    try:
        entry, published = work_alert(
            settings,
            book,
            args.alert_id,
            action,
            args.by,
            args.note or "",
            to=getattr(args, "to", None),
        )
    except CaseError as exc:
        return _error(exc.message, exc.code)
    if not published:
        print(
            f"careledger alerts: warning: status change stored but not published to "
            f"{settings.topic_alert_status}",
            file=sys.stderr,
        )
    print(f"alert {args.alert_id}: {entry['status']} by {args.by} at {entry['changed_at']}")
    return 0


def _tail(args: argparse.Namespace, settings: Settings) -> int:
    from confluent_kafka import Consumer

    consumer = Consumer(
        kafka_config(
            settings,
            AUDITOR,
            {
                "group.id": f"careledger-alerts-tail-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest" if args.from_beginning else "latest",
                "enable.auto.commit": False,
            },
        )
    )
    consumer.subscribe([settings.topic_alerts])
    seen = 0
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    try:
        while args.max_messages is None or seen < args.max_messages:
            if deadline is not None and time.monotonic() >= deadline:
                break
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            try:
                doc = json.loads(msg.value() or b"")
            except ValueError:
                continue
            seen += 1
            if args.json:
                print(json.dumps(doc, sort_keys=True), flush=True)
            else:
                print(tail_line(doc), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0
