"""The console is audited like the EHR (issue 13, ADR 0035): every page that shows a
patient's data or a case, every case action and every re-identification is sent as a
source-signed access event, and the page is answered only once Kafka acknowledged it
(no ledger, no page).

The events are DICOM 110101 "Audit Log Used" (the privacy office reads the audit
trail), actor = the console user with their role, source system ``careledger-console``,
purpose of use HL7 ``HCOMPL`` (health compliance). A view about one patient names the
patient, so it appears in that patient's own access report; a view of a pseudonym or
of an alert names no patient (``-``) and says what was seen in ``object``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import KafkaException

from careledger.config import Settings
from careledger.kafka.security import AUDITOR
from careledger_core.errors import CareledgerError
from careledger_core.event import AccessEvent, event_from_dict

__all__ = ["CONSOLE_SOURCE_SYSTEM", "ConsoleLedger", "LedgerUnavailable", "Viewed"]

log = logging.getLogger("careledger.console")

CONSOLE_SOURCE_SYSTEM: Final = "careledger-console"
DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
NO_PATIENT: Final = "-"
PURPOSE: Final = "HCOMPL"


class LedgerUnavailable(Exception):
    """The access could not be ledgered: the page is not shown."""


@dataclass(frozen=True, slots=True)
class Viewed:
    """What a console access touched."""

    what: str  # object type: alert, patient-history, pseudonym, actor, reidentification, ...
    id: str  # its id (alert id, pseudonym, actor id, ...)
    patient_id: str = NO_PATIENT
    action: str = "R"  # R read, U a case action
    note: str | None = None  # e.g. the stated reason of a re-identification
    #: the patient id's system: on a sealed ledger the view is sealed under the key of
    #: (system, id), so it is in the report asked with that system (ADR 0037)
    patient_system: str = ""


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def console_event(user: str, role: str, viewed: Viewed, client: str | None) -> AccessEvent:
    now = _now()
    doc: dict[str, Any] = {
        "schema": "careledger.access-event/1",
        "event_id": str(uuid.uuid4()),
        "occurred_at": now,
        "recorded_at": now,
        "event_type": {"system": DCM, "code": "110101", "display": "Audit Log Used"},
        "action": viewed.action,
        "outcome": 0,
        "purpose_of_use": [PURPOSE],
        "actor": {"id": user, "roles": [role], "is_requestor": True},
        "source": {"system": CONSOLE_SOURCE_SYSTEM, "type": 4},
        "patient": {
            "id": viewed.patient_id,
            **({"system": viewed.patient_system} if viewed.patient_system else {}),
        },
        "object": {"type": viewed.what, "id": viewed.id[:256]},
    }
    if viewed.note:
        doc["outcome_desc"] = viewed.note[:1000]
    if client:
        doc["client"] = {"address": client, "address_type": "ip"}
    return event_from_dict(doc)


class ConsoleLedger:
    """Sends the console's accesses and waits for each acknowledgement."""

    def __init__(self, settings: Settings, *, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._producer: Any = None
        self._lock = threading.Lock()
        self.sent = 0

    def _open(self) -> Any:
        if self._producer is None:
            from careledger.kafka.producer import AccessEventProducer

            self._producer = AccessEventProducer(self.settings, principal=AUDITOR)
        return self._producer

    def record(self, user: str, role: str, viewed: Viewed, client: str | None = None) -> str:
        """Ledger one access; returns its event id. Raises LedgerUnavailable."""
        event = console_event(user, role, viewed, client)
        with self._lock:
            try:
                producer = self._open()
                producer.send(event)
                ok = producer.flush(self.timeout_s).ok
            except (CareledgerError, KafkaException, BufferError) as exc:
                log.warning("cannot ledger a console access: %s", exc)
                self._reset()
                raise LedgerUnavailable(str(exc)) from None
            if not ok:
                self._reset()
                raise LedgerUnavailable("Kafka did not acknowledge the access event")
            self.sent += 1
        return event.event_id

    def _reset(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(CareledgerError, KafkaException, BufferError):
                producer.close()

    def close(self) -> None:
        with self._lock:
            self._reset()
