"""What both adapters fill in (:class:`Draft`) and how a draft becomes access events."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Final, Literal

from careledger_core.errors import EventValidationError
from careledger_core.event import (
    EVENT_SCHEMA,
    IDENTIFIER_REASONS,
    MAX_LIST_LENGTH,
    AccessEvent,
    Actor,
    Client,
    Coding,
    ObjectRef,
    Party,
    Patient,
    RawRef,
    Sensitivity,
    Source,
    canonical_event_bytes,
    decode_event,
    validate_event,
)

from ._model import IngestError
from ._values import (
    AUDIT_EVENT_TYPE,
    DCM,
    IHE_TRANSACTIONS,
    NO_PATIENT_ID,
    NO_PATIENT_SYSTEM,
    RESTFUL_INTERACTION,
    UNSPECIFIED_SYSTEM,
    Issues,
    derived_event_id,
)

#: The placeholder patient of a record that names none (same as the simulator's).
NO_PATIENT: Final = Patient(id=NO_PATIENT_ID, system=NO_PATIENT_SYSTEM)
#: Event type of a record that gives none (MISSING_EVENT_TYPE).
UNKNOWN_EVENT_TYPE: Final = Coding(system=UNSPECIFIED_SYSTEM, code="unknown")

#: DICOM EventID codes (PS3.16 CID 400: 110100..110114); 110120 and above are
#: EventTypeCodes (subtypes).
_DCM_EVENT_IDS: Final = frozenset(str(n) for n in range(110100, 110115))
_LIFECYCLE: Final = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
#: DICOM EventIDs of a transfer of data between two parties: 110104 DICOM Instances
#: Transferred, 110106 Export, 110107 Import.
_DCM_TRANSFERS: Final = frozenset({"110104", "110106", "110107"})
#: ISO 21089 lifecycle events that move a record to another party.
_LIFECYCLE_TRANSFERS: Final = frozenset({"disclose", "transmit", "receive"})


def is_transfer(event_type: Coding, subtypes: Sequence[Coding]) -> bool:
    """Whether the event moves data from one party to another (export, import, transfer,
    disclosure): then the record's Destination and Source roles are the recipient and
    the discloser, not the client."""
    for c in (event_type, *subtypes):
        if c.system == DCM and c.code in _DCM_TRANSFERS:
            return True
        if c.system == _LIFECYCLE and c.code in _LIFECYCLE_TRANSFERS:
            return True
        if c.system == UNSPECIFIED_SYSTEM and c.code.lower() == "disclosure":
            return True  # HL7 example-disclosure: subtype "Disclosure" without a system
    return False


def is_type_level(coding: Coding) -> bool:
    """A coding that names a class of event (audit-event-type, DICOM EventID)."""
    return coding.system == AUDIT_EVENT_TYPE or (
        coding.system == DCM and coding.code in _DCM_EVENT_IDS
    )


def is_subtype_level(coding: Coding) -> bool:
    """A coding that names a specific kind (REST interaction, IHE transaction, DICOM
    EventTypeCode, ISO 21089 lifecycle)."""
    if coding.system in (RESTFUL_INTERACTION, IHE_TRANSACTIONS, _LIFECYCLE):
        return True
    return coding.system == DCM and coding.code not in _DCM_EVENT_IDS


def choose_event_type(
    type_codings: Sequence[Coding],
    subtype_codings: Sequence[Coding],
    issues: Issues,
    type_path: str,
) -> tuple[Coding, tuple[Coding, ...]]:
    """(event_type, event_subtype). The first type coding is the event type and the rest
    are subtypes, unless the type slot holds only subtype-level codes while the subtype
    slot holds a type-level one (CODES_SWAPPED: taken the right way round)."""
    types = list(type_codings)
    subs = list(subtype_codings)
    if (
        types
        and not any(is_type_level(c) for c in types)
        and any(is_subtype_level(c) for c in types)
    ):
        swapped = next((c for c in subs if is_type_level(c)), None)
        if swapped is not None:
            issues.add(
                "CODES_SWAPPED",
                f"{swapped.code} ({swapped.system}) is an event type but was given as the "
                f"subtype, and {types[0].code} as the type",
                type_path,
            )
            rest = [c for c in subs if c is not swapped]
            types, subs = [swapped], types + rest
    if not types:
        promoted = next((c for c in subs if is_type_level(c)), None)
        if promoted is not None:
            types, subs = [promoted], [c for c in subs if c is not promoted]
        else:
            issues.add("MISSING_EVENT_TYPE", "no event type: placeholder 'unknown'", type_path)
            types = [UNKNOWN_EVENT_TYPE]
    event_type = types[0]
    subtypes: list[Coding] = []
    for c in [*types[1:], *subs]:
        if c not in subtypes and c != event_type:
            subtypes.append(c)
    if len(subtypes) > MAX_LIST_LENGTH:
        issues.add(
            "LIST_TRUNCATED",
            f"{len(subtypes)} subtypes shortened to {MAX_LIST_LENGTH}",
            type_path,
        )
        subtypes = subtypes[:MAX_LIST_LENGTH]
    return event_type, tuple(subtypes)


@dataclasses.dataclass(slots=True)
class Draft:
    """Everything of one source record except the patient fan-out and the event ids."""

    source_id: str | None  # the source's own event id, when it is a UUID
    occurred_at: str
    recorded_at: str
    event_type: Coding
    event_subtype: tuple[Coding, ...]
    action: Literal["C", "R", "U", "D", "E"]
    outcome: Literal[0, 4, 8, 12]
    outcome_desc: str | None
    purpose_of_use: tuple[str, ...]
    actor: Actor
    client: Client | None
    session_ref: str | None
    source: Source
    patients: list[Patient]
    object: ObjectRef | None
    sensitivity: Sensitivity | None
    query: str | None
    correlation_id: str | None
    recipient: Party | None = None
    discloser: Party | None = None


def add_patient(patients: list[Patient], patient: Patient) -> None:
    """Append; repeats of the same (id, system) are dropped by :func:`build_events`."""
    patients.append(patient)


def build_events(
    draft: Draft,
    *,
    raw_format: str,
    raw_sha256: str,
    entry_index: int | None = None,
    issues: Issues | None = None,
    path: str = "",
) -> tuple[AccessEvent, ...]:
    """One event per patient (one with patient ``"-"`` when there is none).

    The event id is the source's UUID when the record names one patient; otherwise it is
    derived from the raw bytes' SHA-256, the entry index (Bundles) and the patient's
    position, so the same bytes always give the same ids.

    Each patient's event keeps the other patients out: a record naming several patients
    gives events without its query (QUERY_WITHHELD: the query text may name the others;
    the raw record keeps it whole), and an object that is another patient's Patient
    resource is left out of this patient's event.
    """
    patients = list(dict.fromkeys(draft.patients)) or [NO_PATIENT]
    raw_ref = RawRef(format=raw_format, sha256=raw_sha256)
    query = draft.query
    if query is not None and len(patients) > 1:
        query = None
        if issues is not None:
            issues.add(
                "QUERY_WITHHELD",
                f"the record names {len(patients)} patients: each patient's event is "
                "without the query (kept whole in the raw record)",
                path,
            )
    events: list[AccessEvent] = []
    for index, patient in enumerate(patients):
        if draft.source_id is not None and len(patients) == 1:
            event_id = draft.source_id
        else:
            event_id = derived_event_id(raw_sha256, index, entry_index)
        try:
            candidate = AccessEvent(
                schema=EVENT_SCHEMA,
                event_id=event_id,
                occurred_at=draft.occurred_at,
                recorded_at=draft.recorded_at,
                event_type=draft.event_type,
                event_subtype=draft.event_subtype,
                action=draft.action,
                outcome=draft.outcome,
                outcome_desc=draft.outcome_desc,
                purpose_of_use=draft.purpose_of_use,
                actor=draft.actor,
                client=draft.client,
                session_ref=draft.session_ref,
                source=draft.source,
                patient=patient,
                object=_own_object(draft.object, patient, patients),
                sensitivity=draft.sensitivity,
                query=query,
                correlation_id=draft.correlation_id,
                raw_ref=raw_ref,
                recipient=draft.recipient,
                discloser=draft.discloser,
            )
            event = _validated(candidate)
        except EventValidationError as exc:
            if exc.reason in IDENTIFIER_REASONS:  # invisible or control characters
                raise IngestError(
                    "INVALID_IDENTIFIER",
                    f"the record names an identifier with invisible or control characters "
                    f"at {exc.field}: refused (ADR 0026)",
                    sha256=raw_sha256,
                    field=exc.field,
                ) from exc
            # otherwise a mapping bug: never let it escape raw
            raise IngestError(
                "UNMAPPABLE",
                f"the record parsed but gives no valid access event ({exc.message})",
                sha256=raw_sha256,
                field=exc.field,
            ) from exc
        events.append(event)
    return tuple(events)


def _own_object(
    obj: ObjectRef | None, patient: Patient, patients: list[Patient]
) -> ObjectRef | None:
    """``obj``, unless it is the Patient resource of another patient of the record."""
    if obj is None or obj.id is None or len(patients) < 2 or obj.type != "Patient":
        return obj
    ident = obj.id.split("/_history/")[0].rsplit("/", 1)[-1]
    if ident == patient.id:
        return obj
    if any(ident == other.id for other in patients if other is not patient):
        return None
    return obj


def _validated(event: AccessEvent) -> AccessEvent:
    """:func:`validate_event` of ``event``: the typed decoder over its canonical bytes
    (what the processor will check), a fraction of the cost of the generic tree walk;
    when that refuses the event, ``validate_event`` names the problem exactly as always."""
    try:
        return decode_event(canonical_event_bytes(event))
    except EventValidationError:
        return validate_event(event)
