"""Working an alert: the case actions the CLI (``careledger alerts``) and the console
share (issue 13, ADR 0035).

Every action is one status change: a row of ``alert_status`` hash-linked to the alert's
previous change, sent as an access event to be chained and signed (a change that cannot
be sent is taken back: no change without its ledger entry), then published on the
status topic. The change's ``status`` is the status the alert has after it:

    ack        open -> acknowledged
    assign     open, acknowledged, assigned -> assigned   (note: "assigned to WHO[: why]")
    comment    any status -> the same status              (a note is required)
    resolve    open, acknowledged, assigned -> resolved        (a note is required)
    dismiss    open, acknowledged, assigned -> false-positive  (a note is required)
    reopen     resolved, false-positive -> open            (the reason is required)

A reopened alert keeps the cut its first closing made (``alerts.ClosedAlert``: a later
access is a new alert), but it no longer counts as a confirmed violation: the reviewer's
verdict is withdrawn until it is closed again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

from confluent_kafka import KafkaException

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import AUDITOR
from careledger.stack.model import StackError
from careledger.storage.backend import SqlBackend, StorageError
from careledger.storage.migrations import check_identifier
from careledger_core.errors import CareledgerError
from careledger_core.event import AccessEvent
from verifiers.auditor.alerts import ALERT_STATUSES, CLOSED_STATUSES
from verifiers.auditor.runner.rows import (
    ALERT_COLUMNS,
    STATUS_COLUMNS,
    decode_alert_row,
    dumps,
    status_entry_hash,
    status_histories,
    utc_now_ts,
)
from verifiers.auditor.runner.store import AuditStore
from verifiers.auditor.status_records import SealedStatus, status_event

__all__ = [
    "ACTIONS",
    "AlertBook",
    "CaseError",
    "NotAllowed",
    "assignee",
    "case_event",
    "next_status",
    "work_alert",
]

log = logging.getLogger("careledger.alerts")

#: action -> (statuses it applies to, status after it; None = unchanged)
ACTIONS: Final[Mapping[str, tuple[frozenset[str], str | None]]] = {
    "ack": (frozenset({"open"}), "acknowledged"),
    "assign": (frozenset({"open", "acknowledged", "assigned"}), "assigned"),
    "comment": (frozenset(ALERT_STATUSES), None),
    "resolve": (frozenset({"open", "acknowledged", "assigned"}), "resolved"),
    "dismiss": (frozenset({"open", "acknowledged", "assigned"}), "false-positive"),
    "reopen": (frozenset({"resolved", "false-positive"}), "open"),
}
#: status -> the action that leads to it
_ACTION_TO: Final[Mapping[str, str]] = {
    "acknowledged": "ack",
    "assigned": "assign",
    "resolved": "resolve",
    "false-positive": "dismiss",
    "open": "reopen",
}
#: actions that need a note (why), not only who
NOTE_REQUIRED: Final = frozenset({"comment", "resolve", "dismiss", "reopen"})
_ASSIGNED: Final = "assigned to "
MAX_NAME: Final = 256
MAX_NOTE: Final = 4000


class CaseError(Exception):
    """An action that was not taken; ``code`` is the CLI's exit status (1 not allowed or
    no such alert, 2 infrastructure)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class NotAllowed(CaseError):
    pass


def next_status(action: str, current: str) -> str:
    """The status ``action`` leaves an alert that is ``current``; raises NotAllowed."""
    if action not in ACTIONS:
        raise NotAllowed(f"no action {action!r} (one of {', '.join(ACTIONS)})")
    applies, after = ACTIONS[action]
    if current not in applies:
        raise NotAllowed(f"the alert is {current}: cannot {action} it")
    return after or current


def assignee(changes: Sequence[Mapping[str, Any]]) -> str | None:
    """Who the alert is assigned to: the last assign's, until the alert is closed or
    reopened."""
    who, before = None, "open"
    for c in changes:
        status = str(c["status"])
        if status == "assigned" and str(c["note"]).startswith(_ASSIGNED):
            who = str(c["note"])[len(_ASSIGNED) :].split(": ", 1)[0]
        elif status in CLOSED_STATUSES or (status == "open" and before in CLOSED_STATUSES):
            who = None
        before = status
    return who


class AlertBook:
    """Alerts and their status history in one database."""

    def __init__(
        self, backend: SqlBackend, database: str, sealed: SealedStatus | None = None
    ) -> None:
        self.backend = backend
        self.db = check_identifier(database)
        #: a sealed ledger's (ADR 0037): its rows keep the reviewer's pseudonym and no
        #: note; its status records are sealed events, opened to show who and why
        self.sealed = sealed

    def alerts(self, where: str = "", params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        rows = self.backend.execute(
            f"SELECT {', '.join(ALERT_COLUMNS)} FROM {self.db}.alerts FINAL "
            f"{where} ORDER BY first_at, alert_id",
            params,
        )
        return [decode_alert_row(r) for r in rows]

    def matching(
        self,
        *,
        severities: tuple[str, ...] = (),
        rule: str = "",
        actor: str = "",
        start: str = "",
        end: str = "",
        patient_ref: str = "",
    ) -> list[dict[str, Any]]:
        """The alerts of these severities, rule and actor whose first event is in
        ``[start, end)`` (store timestamps) and that concern ``patient_ref``; '' or ()
        for any."""
        clauses: list[str] = []
        params: dict[str, Any] = {}
        for column, key, value in (
            ("severity IN", "sev", severities),
            ("rule =", "rule", rule),
            ("actor_id =", "actor", actor),
            ("first_at >=", "lo", start),
            ("first_at <", "hi", end),
        ):
            if value:
                clauses.append(f"{column} %({key})s")
                params[key] = value
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        found = self.alerts(where, params)
        if patient_ref:
            found = [a for a in found if patient_ref in a["patient_refs"]]
        return found

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
        """Move the alert to ``status`` by the action that leads there (for callers that
        name the status: the tests' reviews)."""
        return self.act(alert_id, _ACTION_TO[status], by, note)

    def act(self, alert_id: str, action: str, by: str, note: str) -> dict[str, Any]:
        history = self.history([alert_id]).get(alert_id, [])
        current = history[-1]["status"] if history else "open"
        try:
            status = next_status(action, current)
        except NotAllowed as exc:
            raise NotAllowed(f"alert {alert_id}: {exc.message}") from None
        return self._append(alert_id, history, status, by, note)

    def _append(
        self, alert_id: str, history: list[dict[str, Any]], status: str, by: str, note: str
    ) -> dict[str, Any]:
        prev_hash = history[-1]["entry_hash"] if history else ""
        entry = {
            "alert_id": alert_id,
            "seq": len(history),
            "status": status,
            # on a sealed ledger the name and the note travel sealed in the status event
            "changed_by": by if self.sealed is None else self.sealed.actor_ref(by),
            "changed_at": utc_now_ts(),
            "note": note if self.sealed is None else "",
            "prev_hash": prev_hash,
        }
        entry["entry_hash"] = status_entry_hash(prev_hash, entry)
        self.backend.insert(
            f"{self.db}.alert_status", STATUS_COLUMNS, [tuple(entry[c] for c in STATUS_COLUMNS)]
        )
        return entry

    def withdraw(self, entry: Mapping[str, Any]) -> bool:
        """Delete the row of a change that could not be ledgered."""
        try:
            self.backend.execute(
                f"ALTER TABLE {self.db}.alert_status DELETE "
                "WHERE alert_id = %(id)s AND entry_hash = %(h)s",
                {"id": entry["alert_id"], "h": entry["entry_hash"]},
            )
            # gone before anyone appends a change after it (18.16 mutations are asynchronous)
            AuditStore(self.backend, self.db).wait_mutations(60.0)
        except StorageError:
            return False
        return True


def work_alert(
    settings: Settings,
    book: AlertBook,
    alert_id: str,
    action: str,
    by: str,
    note: str = "",
    *,
    to: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Take ``action`` on an alert as ``by``: stored, ledgered (or taken back) and
    published. Returns the change as stored (on a sealed ledger the reviewer's
    pseudonym and no note: both travel sealed in the ledgered status event) and whether
    it was published on the status topic. Raises CaseError (NotAllowed for a refused
    action)."""
    if book.alert(alert_id) is None:
        raise CaseError(f"no alert {alert_id}")
    if not by.strip() or len(by) > MAX_NAME:
        raise CaseError(f"who changes the status must be named (at most {MAX_NAME} characters)", 2)
    if action in NOTE_REQUIRED and not note.strip():
        raise CaseError(f"{action} needs a note saying why", 2)
    if len(note) > MAX_NOTE:
        raise CaseError(f"a note has at most {MAX_NOTE} characters", 2)
    if action == "assign":
        if not to or not to.strip() or len(to) > MAX_NAME or ": " in to:
            raise CaseError("assign needs who to assign it to (a name without ': ')", 2)
        note = _ASSIGNED + to.strip() + (f": {note}" if note.strip() else "")
    entry = book.act(alert_id, action, by, note)
    if not ledger_status(settings, case_event(book, entry, by, note)):
        # a change that is not ledgered is no change (verify would report the row as
        # forged): take the row back and say so
        withdrawn = book.withdraw(entry)
        raise CaseError(
            f"alert {alert_id}: the status change could not be sent to the events topic "
            f"{settings.topic_events} to be ledgered, so it was not made"
            + ("" if withdrawn else " (and its row could not be removed: run it again)"),
            2,
        )
    return entry, publish_status(settings, entry)


def case_event(book: AlertBook, entry: Mapping[str, Any], by: str, note: str) -> AccessEvent:
    """The access event that ledgers a change ``by`` made with ``note``: it names who
    made it; on a sealed ledger it also carries the note (sealed with the event), which
    the row does not keep; in clear the note stays in the row, out of the ledger."""
    return status_event(entry, by=by, note=None if book.sealed is None else note)


def ledger_status(settings: Settings, event: AccessEvent) -> bool:
    """Send a change's access event (``case_event``): the processor chains and signs it."""
    from careledger.keys import load_source_key

    if settings.require_source_signatures and load_source_key(settings) is None:
        # unsigned, it would only be quarantined (ADR 0010): say so instead
        log.warning(
            "cannot ledger status change: no source key (set CARELEDGER_SOURCE_KEY to a key "
            "registered with `careledger source register`)"
        )
        return False
    try:
        from careledger.kafka.producer import AccessEventProducer

        with AccessEventProducer(settings, principal=AUDITOR) as producer:
            producer.send(event)
            return producer.flush(20.0).ok
    except (CareledgerError, KafkaException) as exc:
        # Kafka down: the change is stored, say it is not ledgered
        log.warning("cannot ledger status change: %s", exc)
        return False


def publish_status(settings: Settings, entry: Mapping[str, Any]) -> bool:
    try:
        from confluent_kafka import Producer

        from careledger import stack

        # as the auditor (acl_matrix lets it create this one topic): an analyst's
        # `alerts ack` never needs the admin's password
        stack.ensure_topics(
            settings,
            {settings.topic_alert_status: 1},
            timeout=10.0,
            acls=False,
            principal=AUDITOR,
        )
        failed: list[Any] = []
        producer = Producer(
            kafka_config(
                settings,
                AUDITOR,
                {
                    "enable.idempotence": True,
                    "acks": "all",
                    "message.timeout.ms": 15_000,
                },
            )
        )
        producer.produce(
            settings.topic_alert_status,
            key=str(entry["alert_id"]).encode(),
            value=dumps(dict(entry)).encode(),
            on_delivery=lambda err, _m: failed.append(err) if err is not None else None,
        )
        return producer.flush(20.0) == 0 and not failed
    except (CareledgerError, StackError, KafkaException, BufferError) as exc:
        # Kafka down: the change is stored, say it was not published
        log.warning("cannot publish status change: %s", exc)
        return False
