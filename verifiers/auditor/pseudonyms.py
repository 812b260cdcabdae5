"""The auditor on a sealed ledger (ADR 0037): rules run on pseudonyms.

On a sealed ledger the auditor opens what its rules need (each event's sensitive part,
each reference record) through the key store, then replaces every identifier with the
ledger's pseudonym *before* any rule sees it:

* a patient's id becomes their ``patient_ref`` (the events' ``patient_id`` column, the
  ``subject_id`` of their reference records), a user's id their actor pseudonym (the
  events' ``actor_id`` column, a staff record's ``subject_id``), wherever it appears: the
  event, the directory (manager, the employee's own patient record), a patient's
  employee link and emergency contacts, a care relationship's practitioner, a Consent's
  patient and actors;
* a record's id becomes its ``record_ref`` (a patient's or staff record keeps its
  subject's pseudonym, as its id is its subject's);
* a client address, a workstation and an object id become keyed tokens (equal values,
  equal tokens: the shared-credentials rule compares them, and nothing else);
* what no rule reads is dropped: the actor's name, the query, recipients and disclosers,
  a Consent's narrative and the display names of its references.

Every join a rule makes (this actor, this patient, this colleague, this relationship)
is an equality, so it holds on pseudonyms exactly as on identifiers; the family rule
compares names, addresses and phones, which stay in memory only, and says which matched,
never what. What the auditor writes (decisions, alerts, their evidence and
explanations) therefore names no one: the pseudonyms, tokens and the kinds of a match.
``tests/unit/test_audit_pseudonyms.py`` shows every event decided the same on the
simulated hospital in clear and on pseudonyms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import msgspec

from careledger_core.event import AccessEvent
from careledger_core.reference import ReferenceRecord, reference_from_dict, reference_to_dict

from .history import NO_PATIENT_ID

__all__ = ["Pseudonyms", "pseudonymous_event", "pseudonymous_inputs", "pseudonymous_reference"]

#: FHIR resource types of references that name a person acting (a consent's actors)
_PERSON_TYPES: Final = frozenset({"Practitioner", "PractitionerRole", "RelatedPerson", "Person"})


class Pseudonyms(Protocol):
    """The key store's pseudonyms, as the auditor needs them."""

    def actor(self, actor_id: str) -> str:
        """The actor pseudonym of a user id (the events' ``actor_id``)."""
        ...

    def patient(self, patient_id: str) -> str:
        """The ``patient_ref`` of a patient id met inside reference data."""
        ...

    def token(self, kind: str, value: str) -> str:
        """A keyed token of a value of ``kind`` (equal values, equal tokens)."""
        ...


def pseudonymous_event(
    event: AccessEvent, patient_ref: str, actor_ref: str, refs: Pseudonyms
) -> AccessEvent:
    """``event`` (opened) with its identifiers replaced: the patient by ``patient_ref``
    (an access to no patient stays so), the actor by ``actor_ref``, the client and
    object by tokens; the actor's name, query, recipient and discloser dropped."""
    replace = msgspec.structs.replace
    patient = event.patient
    if patient.id != NO_PATIENT_ID:
        patient = replace(patient, id=patient_ref)
    client = event.client
    if client is not None:
        client = replace(
            client,
            address=refs.token("client-address", client.address),
            workstation=None
            if client.workstation is None
            else refs.token("workstation", client.workstation),
        )
    obj = event.object
    if obj is not None and obj.id is not None:
        obj = replace(obj, id=refs.token("object", obj.id))
    return replace(
        event,
        patient=patient,
        actor=replace(event.actor, id=actor_ref, name=None),
        client=client,
        object=obj,
        query=None,
        recipient=None,
        discloser=None,
    )


def pseudonymous_reference(
    record: ReferenceRecord, record_ref: str, subject_ref: str, refs: Pseudonyms
) -> ReferenceRecord:
    """``record`` (opened) with its identifiers replaced by pseudonyms (module doc)."""
    doc = reference_to_dict(record)
    body: dict[str, Any] = doc["body"]
    kind = record.kind
    if kind == "patient":
        doc["record_id"] = body["patient_id"] = subject_ref
        _swap(body, "employee_user_id", refs.actor)
        for contact in body.get("emergency_contacts", ()):
            _swap(contact, "user_id", refs.actor)
    elif kind == "staff":
        doc["record_id"] = body["user_id"] = subject_ref
        _swap(body, "manager_id", refs.actor)
        _swap(body, "patient_id", refs.patient)
    elif kind == "care-relationship":
        doc["record_id"] = record_ref
        body["patient_id"] = subject_ref
        _swap(body, "practitioner_id", refs.actor)
    elif kind == "consent":
        doc["record_id"] = record_ref
        body.pop("text", None)  # the narrative: no rule reads it
        if "id" in body:
            body["id"] = record_ref
        _references(
            body, lambda rid: subject_ref if rid == record.subject_id else refs.patient(rid), refs
        )
    return reference_from_dict(doc)


def _swap(obj: dict[str, Any], name: str, to: Callable[[str], str]) -> None:
    value = obj.get(name)
    if isinstance(value, str):
        obj[name] = to(value)


def _references(value: Any, patient: Callable[[str], str], refs: Pseudonyms) -> None:
    """Rewrite, in place, every FHIR Reference in a Consent: ``Patient/<id>`` to the
    patient's pseudonym, a person's to their actor pseudonym (also when given by
    identifier), and drop references' display names."""
    if isinstance(value, list):
        for item in value:
            _references(item, patient, refs)
        return
    if not isinstance(value, dict):
        return
    ref = value.get("reference")
    if isinstance(ref, str):
        value.pop("display", None)
        parts = [p for p in ref.split("/") if p]
        if len(parts) >= 4 and parts[-2] == "_history":
            parts = parts[:-2]
        if len(parts) >= 2:
            rtype, rid = parts[-2], parts[-1]
            if rtype == "Patient":
                value["reference"] = f"Patient/{patient(rid)}"
            elif rtype in _PERSON_TYPES:
                value["reference"] = f"{rtype}/{refs.actor(rid)}"
    elif isinstance(ref, dict):  # an actor entry: {role, reference: Reference}
        ident = ref.get("identifier")
        rtype = str(ref.get("type", "Practitioner")).rsplit("/", 1)[-1]
        if isinstance(ident, dict) and isinstance(ident.get("value"), str):
            if rtype in _PERSON_TYPES:
                ident["value"] = refs.actor(ident["value"])
            elif rtype == "Patient":
                ident["value"] = patient(ident["value"])
        ref.pop("display", None)
    for member in value.values():
        _references(member, patient, refs)


def pseudonymous_inputs(
    records: Sequence[ReferenceRecord],
    events: Sequence[AccessEvent],
    confirmed: Sequence[tuple[str, str]],
    refs: Pseudonyms,
) -> tuple[list[ReferenceRecord], list[AccessEvent], list[tuple[str, str]]]:
    """An auditor's inputs in clear (reference records, events, confirmed violations by
    actor) as it sees them on a sealed ledger: for ``benchmark-audit --sealed`` and the
    tests that compare both. A record's ``record_ref`` is a token of its kind and id here
    (on the ledger it is keyed by its subject's data key: equally one-to-one)."""

    def subject(r: ReferenceRecord) -> str:
        return refs.actor(r.subject_id) if r.kind == "staff" else refs.patient(r.subject_id)

    return (
        [
            pseudonymous_reference(
                r, refs.token("record", f"{r.kind}/{r.record_id}"), subject(r), refs
            )
            for r in records
        ],
        [
            pseudonymous_event(
                e,
                NO_PATIENT_ID if e.patient.id == NO_PATIENT_ID else refs.patient(e.patient.id),
                refs.actor(e.actor.id),
                refs,
            )
            for e in events
        ],
        [(refs.actor(a), at) for a, at in confirmed],
    )
