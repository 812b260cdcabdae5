"""``careledger alerts``: review the auditor's alerts.

* ``list`` [--severity --rule --actor --patient-ref --status --from --to] [--json]
* ``show ID`` the alert, its evidence and its status history
* ``ack ID --by WHO [--note N]`` / ``resolve ID --by WHO --note N [--false-positive]``
* ``tail`` follow the alerts topic

Patients only ever appear as pseudonymous references. A status change is appended to
``alert_status`` (one row per change, hash-linked to the alert's previous change, so an
edited or deleted change breaks the links), sent as an access event ("Audit Log Used",
DICOM 110101, carrying the change's hash) to the events topic so that the processor
chains and signs it like any access (``show`` says where each change is ledgered), and
published as JSON to ``topic_alert_status`` (key = alert id).

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
from typing import Any, Final

from careledger.config import Settings
from careledger.storage.backend import ClickHouseBackend, SqlBackend, StorageError
from careledger.storage.migrations import check_identifier
from careledger_core.errors import CareledgerError
from careledger_core.event import AccessEvent, decode_event, event_from_dict
from verifiers.auditor.alerts import ALERT_STATUSES
from verifiers.auditor.history import NO_PATIENT_ID
from verifiers.auditor.runner.rows import (
    ALERT_COLUMNS,
    STATUS_COLUMNS,
    decode_alert_row,
    dumps,
    parse_instant,
    status_entry_hash,
    status_histories,
    utc_now_ts,
)
from verifiers.auditor.runner.rows import status_history_intact as verify_history

__all__ = [
    "AlertBook",
    "command_alerts",
    "configure_alerts",
    "ledgered_positions",
    "status_event",
    "status_event_id",
    "verify_history",
]

SEVERITIES = ("info", "low", "medium", "high", "critical")
#: status -> statuses it may move to
TRANSITIONS = {
    "open": ("acknowledged", "resolved", "false-positive"),
    "acknowledged": ("resolved", "false-positive"),
    "resolved": (),
    "false-positive": (),
}


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
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="one JSON array")
    p = sub.add_parser("show", help="one alert with its status history")
    p.add_argument("alert_id")
    p = sub.add_parser("ack", help="acknowledge an alert")
    p.add_argument("alert_id")
    p.add_argument("--by", required=True, help="who")
    p.add_argument("--note", default="")
    p = sub.add_parser("resolve", help="resolve an alert (confirmed or false positive)")
    p.add_argument("alert_id")
    p.add_argument("--by", required=True, help="who")
    p.add_argument("--note", required=True)
    p.add_argument("--false-positive", action="store_true")
    p = sub.add_parser("tail", help="follow new alerts on the alerts topic")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--max-messages", type=int, help="stop after N alerts")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="print each alert as JSON")


def _error(message: str, code: int = 2) -> int:
    print(f"careledger alerts: {message}", file=sys.stderr)
    return code


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class AlertBook:
    """Alerts and their status history in one database."""

    def __init__(self, backend: SqlBackend, database: str) -> None:
        self.backend = backend
        self.db = check_identifier(database)

    def alerts(self, where: str = "", params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        rows = self.backend.execute(
            f"SELECT {', '.join(ALERT_COLUMNS)} FROM {self.db}.alerts FINAL "
            f"{where} ORDER BY first_at, alert_id",
            params,
        )
        return [decode_alert_row(r) for r in rows]

    def alert(self, alert_id: str) -> dict[str, Any] | None:
        found = self.alerts("WHERE alert_id = %(id)s", {"id": alert_id})
        return found[0] if found else None

    def history(self, alert_ids: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
        where, params = "", None
        if alert_ids is not None:
            if not alert_ids:
                return {}
            where, params = "WHERE alert_id IN %(ids)s", {"ids": tuple(alert_ids)}
        rows = self.backend.execute(
            f"SELECT {', '.join(STATUS_COLUMNS)} FROM {self.db}.alert_status {where} "
            "ORDER BY alert_id, seq",
            params,
        )
        return status_histories(rows)

    def change(self, alert_id: str, status: str, by: str, note: str) -> dict[str, Any]:
        history = self.history([alert_id]).get(alert_id, [])
        current = history[-1]["status"] if history else "open"
        if status not in TRANSITIONS[current]:
            raise _NotAllowed(f"alert {alert_id} is {current}: cannot become {status}")
        prev_hash = history[-1]["entry_hash"] if history else ""
        entry = {
            "alert_id": alert_id,
            "seq": len(history),
            "status": status,
            "changed_by": by,
            "changed_at": utc_now_ts(),
            "note": note,
            "prev_hash": prev_hash,
        }
        entry["entry_hash"] = status_entry_hash(prev_hash, entry)
        self.backend.insert(
            f"{self.db}.alert_status", STATUS_COLUMNS, [tuple(entry[c] for c in STATUS_COLUMNS)]
        )
        return entry


class _NotAllowed(Exception):
    pass


DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
STATUS_RECORD_FORMAT: Final = "careledger.alert-status/1"


def status_event_id(entry_hash: str) -> str:
    """The id of the access event that ledgers a status change (from its hash)."""
    return str(uuid.UUID(hex=entry_hash[:32], version=4))


def status_event(entry: dict[str, Any]) -> AccessEvent:
    """A status change as an access event (DICOM 110101 "Audit Log Used", action U,
    about no patient): chained and signed by the processor like any access. It carries
    the change's ``entry_hash`` (``raw_ref``), not its note."""
    return event_from_dict(
        {
            "schema": "careledger.access-event/1",
            "event_id": status_event_id(entry["entry_hash"]),
            "occurred_at": entry["changed_at"],
            "recorded_at": entry["changed_at"],
            "event_type": {"system": DCM, "code": "110101", "display": "Audit Log Used"},
            "action": "U",
            "outcome": 0,
            "outcome_desc": f"alert {entry['status']}",
            "actor": {"id": entry["changed_by"], "roles": [], "is_requestor": True},
            "source": {"system": "careledger-alerts", "type": 4},
            "patient": {"id": NO_PATIENT_ID},
            "object": {"type": "alert", "id": entry["alert_id"]},
            "correlation_id": entry["alert_id"],
            "raw_ref": {"format": STATUS_RECORD_FORMAT, "sha256": entry["entry_hash"]},
        }
    )


def ledgered_positions(
    backend: SqlBackend, db: str, entries: Sequence[dict[str, Any]]
) -> list[dict[str, Any] | None]:
    """Per status change: where its access event is in a committed block (and carries
    the change's hash), or None (not chained yet, or missing)."""
    if not entries:
        return []
    ids = {status_event_id(e["entry_hash"]): e for e in entries}
    rows = backend.execute(
        f"SELECT event_id, chain_id, height, idx, canonical FROM {db}.access_events "
        "WHERE event_id IN %(ids)s AND (chain_id, height, block_hash) IN "
        f"(SELECT chain_id, height, block_hash FROM {db}.blocks)",
        {"ids": tuple(sorted(ids))},
    )
    found: dict[str, dict[str, Any]] = {}
    for event_id, chain, height, idx, canonical in rows:
        entry = ids.get(_text(event_id))
        try:
            ev = decode_event(bytes(canonical))
        except CareledgerError:
            continue
        if (
            entry is not None
            and ev.raw_ref is not None
            and ev.raw_ref.sha256 == entry["entry_hash"]
            and ev.object is not None
            and ev.object.id == entry["alert_id"]
        ):
            found[entry["entry_hash"]] = {
                "chain_id": _text(chain),
                "height": int(height),
                "idx": int(idx),
            }
    return [found.get(e["entry_hash"]) for e in entries]


def _with_status(alert: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    last = history[-1] if history else None
    alert["status"] = last["status"] if last else "open"
    alert["status_by"] = last["changed_by"] if last else None
    alert["status_at"] = last["changed_at"] if last else None
    alert["status_note"] = last["note"] if last else None
    # a status whose history is broken was edited, deleted or forged: the auditor does
    # not count it as a confirmed violation
    alert["status_history_intact"] = verify_history(history)
    return alert


def command_alerts(args: argparse.Namespace, settings: Settings) -> int:
    if not getattr(args, "verbose", False):
        logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
    if args.database:
        settings = settings.replace(clickhouse_database=args.database)
    action = getattr(args, "alerts_command", None)
    if action is None:
        return _error("give an action: list, show, ack, resolve or tail")
    if action == "tail":
        return _tail(args, settings)
    backend = ClickHouseBackend.from_settings(settings)
    book = AlertBook(backend, settings.clickhouse_database)
    try:
        if action == "list":
            return _list(args, book)
        if action == "show":
            return _show(args, book)
        status = "acknowledged"
        if action == "resolve":
            status = "false-positive" if args.false_positive else "resolved"
        return _change(args, settings, book, status)
    except StorageError as exc:
        return _error(exc.message)
    finally:
        backend.close()


def _list(args: argparse.Namespace, book: AlertBook) -> int:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if args.severity:
        clauses.append("severity IN %(sev)s")
        params["sev"] = tuple(SEVERITIES[SEVERITIES.index(args.severity) :])
    if args.rule:
        clauses.append("rule = %(rule)s")
        params["rule"] = args.rule
    if args.actor:
        clauses.append("actor_id = %(actor)s")
        params["actor"] = args.actor
    try:
        if args.from_ts:
            clauses.append("first_at >= %(lo)s")
            params["lo"] = parse_instant(args.from_ts)
        if args.to_ts:
            clauses.append("first_at < %(hi)s")
            params["hi"] = parse_instant(args.to_ts)
    except ValueError as exc:
        return _error(str(exc))
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    alerts = book.alerts(where, params)
    if args.patient_ref:
        alerts = [a for a in alerts if args.patient_ref in a["patient_refs"]]
    history = book.history()
    alerts = [_with_status(a, history.get(a["alert_id"], [])) for a in alerts]
    if args.status:
        alerts = [a for a in alerts if a["status"] == args.status]
    alerts = alerts[: max(0, args.limit)]
    if args.json:
        print(json.dumps(alerts, sort_keys=True))
        return 0
    print(
        f"{'alert id':32}  {'first event':27}  {'rule':28}  {'severity':8}  "
        f"{'score':>7}  {'events':>6}  {'actor':12}  {'patient ref':16}  status"
    )
    for a in alerts:
        ref = a["patient_ref"] or f"({len(a['patient_refs'])} patients)"
        print(
            f"{a['alert_id']:32}  {a['first_at']:27}  {a['rule']:28}  {a['severity']:8}  "
            f"{a['score']:7.1f}  {len(a['event_ids']):6d}  {a['actor_id']:12}  {ref[:16]:16}  "
            f"{a['status']}{'' if a['status_history_intact'] else ' (HISTORY BROKEN)'}"
        )
    print(f"{len(alerts)} alert(s)")
    broken = sum(1 for a in alerts if not a["status_history_intact"])
    if broken:
        print(
            f"warning: {broken} alert(s) with a broken status history (edited, deleted or "
            "forged changes): not counted as confirmed violations; see alerts show ID"
        )
    return 0


def _show(args: argparse.Namespace, book: AlertBook) -> int:
    alert = book.alert(args.alert_id)
    if alert is None:
        return _error(f"no alert {args.alert_id}", 1)
    history = book.history([args.alert_id]).get(args.alert_id, [])
    alert = _with_status(alert, history)
    positions = ledgered_positions(book.backend, book.db, history)
    for entry, pos in zip(history, positions, strict=True):
        entry["ledgered"] = pos
    alert["status_history"] = history
    alert["status_history_ledgered"] = all(p is not None for p in positions)
    print(json.dumps(alert, sort_keys=True, indent=2))
    return 0


def _change(args: argparse.Namespace, settings: Settings, book: AlertBook, status: str) -> int:
    if book.alert(args.alert_id) is None:
        return _error(f"no alert {args.alert_id}", 1)
    if not args.by.strip() or len(args.by) > 256:
        return _error("--by must name who changes the status (at most 256 characters)")
    try:
        entry = book.change(args.alert_id, status, args.by, args.note or "")
    except _NotAllowed as exc:
        return _error(str(exc), 1)
    if not _ledger_status(settings, entry):
        print(
            "careledger alerts: warning: status change stored but not sent to the "
            f"events topic {settings.topic_events} (it is not ledgered)",
            file=sys.stderr,
        )
    if not _publish_status(settings, entry):
        print(
            f"careledger alerts: warning: status change stored but not published to "
            f"{settings.topic_alert_status}",
            file=sys.stderr,
        )
    print(f"alert {args.alert_id}: {status} by {args.by} at {entry['changed_at']}")
    return 0


def _ledger_status(settings: Settings, entry: dict[str, Any]) -> bool:
    """Send the change as an access event: the processor chains and signs it."""
    from careledger.keys import load_source_key

    if settings.require_source_signatures and load_source_key(settings) is None:
        # unsigned, it would only be quarantined (ADR 0010): say so instead
        logging.getLogger("careledger.alerts").warning(
            "cannot ledger status change: no source key (set CARELEDGER_SOURCE_KEY to a key "
            "registered with `careledger source register`)"
        )
        return False
    try:
        from careledger.kafka.producer import AccessEventProducer

        with AccessEventProducer(settings) as producer:
            producer.send(status_event(entry))
            return producer.flush(20.0).ok
    except Exception as exc:  # Kafka down: the change is stored, say it is not ledgered
        logging.getLogger("careledger.alerts").warning("cannot ledger status change: %s", exc)
        return False


def _publish_status(settings: Settings, entry: dict[str, Any]) -> bool:
    try:
        from confluent_kafka import Producer

        from careledger import stack

        stack.ensure_topics(settings, {settings.topic_alert_status: 1}, timeout=10.0)
        failed: list[Any] = []
        producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "message.timeout.ms": 15_000,
            }
        )
        producer.produce(
            settings.topic_alert_status,
            key=entry["alert_id"].encode(),
            value=dumps(entry).encode(),
            on_delivery=lambda err, _m: failed.append(err) if err is not None else None,
        )
        return producer.flush(20.0) == 0 and not failed
    except Exception as exc:  # Kafka down: the change is stored, say it was not published
        logging.getLogger("careledger.alerts").warning("cannot publish status change: %s", exc)
        return False


def _tail(args: argparse.Namespace, settings: Settings) -> int:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"careledger-alerts-tail-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest" if args.from_beginning else "latest",
            "enable.auto.commit": False,
        }
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
            elif "rule" in doc:
                ref = doc.get("patient_ref") or f"({len(doc.get('patient_refs', []))} patients)"
                print(
                    f"{doc.get('first_at')}  {doc.get('alert_id')}  {doc.get('rule')}  "
                    f"{doc.get('severity')}  actor={doc.get('actor_id')}  patient={ref}  "
                    f"events={len(doc.get('event_ids', []))}",
                    flush=True,
                )
            else:  # a verifier finding on the same topic
                print(f"{doc.get('code')}  {doc.get('alert_id')}  {doc.get('message')}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0
