"""Re-identifying an alert's accesses for a case (ADR 0037): ``careledger alerts
reidentify ID --by WHO --reason WHY``.

On a sealed ledger the auditor's alerts name actors and patients by pseudonyms. A
privacy officer working a case may need to know who looked at whom: the command opens
the alert's events through the key store (unwraps counted under ``reidentify``) and,
**before it shows anything**, ledgers the re-identification as an access event per
patient re-identified (DICOM 110101 "Audit Log Used", action R, purpose ``HCOMPL``
(health compliance), the officer as actor, the patient as patient, the alert as object,
the reason in ``outcome_desc``), sealed like every event. The patient's own access
report then shows that the privacy office looked at their record, when, by whom and
why. If the events cannot be ledgered (Kafka down, no source key), nothing is shown.

An event whose key an erasure destroyed cannot be re-identified: it is listed as erased.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any, Final

from careledger.config import Settings
from careledger.keystore import KeyStore
from careledger.storage.backend import SqlBackend
from careledger.storage.migrations import check_identifier
from careledger_core.errors import CareledgerError
from careledger_core.event import AccessEvent, Patient, event_from_dict

from .history import NO_PATIENT_ID
from .runner.sealed_store import SealedEventOpener
from .status_records import DCM, STATUS_SOURCE_SYSTEM

__all__ = ["REIDENTIFY_PURPOSE", "ReidentifyError", "reidentification_event", "reidentify"]

#: HL7 v3 PurposeOfUse: health compliance (an investigation of inappropriate access)
REIDENTIFY_PURPOSE: Final = "HCOMPL"


class ReidentifyError(CareledgerError):
    code = "REIDENTIFY"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def reidentification_event(
    alert_id: str, by: str, reason: str, patient: Patient, at: str
) -> AccessEvent:
    """The access event that ledgers a re-identification of ``patient`` for an alert."""
    document: dict[str, Any] = {
        "schema": "careledger.access-event/1",
        "event_id": str(uuid.uuid4()),
        "occurred_at": at,
        "recorded_at": at,
        "event_type": {"system": DCM, "code": "110101", "display": "Audit Log Used"},
        "action": "R",
        "outcome": 0,
        "outcome_desc": f"re-identified for alert {alert_id}: {reason}",
        "purpose_of_use": [REIDENTIFY_PURPOSE],
        "actor": {"id": by, "roles": [], "is_requestor": True},
        "source": {"system": STATUS_SOURCE_SYSTEM, "type": 4},
        "patient": {"id": patient.id, **({"system": patient.system} if patient.system else {})},
        "object": {"type": "alert", "id": alert_id},
        "correlation_id": alert_id,
    }
    return event_from_dict(document)


def reidentify(
    settings: Settings,
    backend: SqlBackend,
    database: str,
    keystore: KeyStore,
    alert: dict[str, Any],
    by: str,
    reason: str,
) -> dict[str, Any]:
    """Open ``alert``'s events, ledger the re-identification (Kafka's acknowledgement
    awaited), and return what it shows. Raises :class:`ReidentifyError` when it cannot
    be ledgered (then nothing is shown)."""
    from careledger.kafka.producer import AccessEventProducer
    from careledger.kafka.security import AUDITOR
    from careledger.keys import load_source_key

    if not by.strip() or not reason.strip():
        raise ReidentifyError("a re-identification needs --by and --reason")
    db = check_identifier(database)
    ids: Sequence[str] = alert["event_ids"]
    rows = backend.execute(
        f"SELECT event_id, canonical, sealed, data_key_id FROM {db}.access_events "
        "WHERE event_id IN %(ids)s AND (chain_id, height, block_hash) IN "
        f"(SELECT chain_id, height, block_hash FROM {db}.blocks)",
        {"ids": tuple(ids) or ("",)},
    )
    opener = SealedEventOpener(keystore, "reidentify")
    opened: dict[str, AccessEvent] = {}
    for event_id, canonical, sealed, key_id in rows:
        text = event_id.decode() if isinstance(event_id, bytes) else str(event_id)
        event = opener(
            bytes(canonical),
            sealed.decode() if isinstance(sealed, bytes) else str(sealed),
            key_id.decode() if isinstance(key_id, bytes) else str(key_id),
        )
        if event is not None:
            opened[text] = event
    patients = {
        (e.patient.id, e.patient.system or ""): e.patient
        for e in opened.values()
        if e.patient.id != NO_PATIENT_ID
    }
    if settings.require_source_signatures and load_source_key(settings) is None:
        raise ReidentifyError(
            "no source key to sign the re-identification with: nothing is shown (set "
            "CARELEDGER_SOURCE_KEY to a key registered with `careledger source register`)"
        )
    at = _now()
    ledgered = [
        reidentification_event(alert["alert_id"], by, reason, p, at)
        for _, p in sorted(patients.items())
    ]
    if ledgered:
        with AccessEventProducer(settings, principal=AUDITOR) as producer:
            for event in ledgered:
                producer.send(event)
            if not producer.flush(20.0).ok:
                raise ReidentifyError(
                    "Kafka did not acknowledge the re-identification: nothing is shown"
                )
    lines = []
    for event_id in ids:
        e = opened.get(event_id)
        if e is None:
            lines.append({"event_id": event_id, "erased_or_unopened": True})
            continue
        lines.append(
            {
                "event_id": event_id,
                "occurred_at": e.occurred_at,
                "action": e.action,
                "actor_id": e.actor.id,
                "actor_name": e.actor.name,
                "patient_id": e.patient.id,
                "patient_system": e.patient.system,
            }
        )
    return {
        "alert_id": alert["alert_id"],
        "reidentified_by": by,
        "reason": reason,
        "ledgered_as": [e.event_id for e in ledgered],
        "events": lines,
    }
