"""The access event that ledgers a re-identification for a case (ADR 0037,
``verifiers.auditor.reidentify``): a valid access event about the patient, by the
officer, for the alert, with the reason sealed with the rest of its sensitive part."""

from __future__ import annotations

from careledger_core.event import Patient, canonical_event_bytes, decode_event, event_to_dict
from careledger_core.sealing import split
from verifiers.auditor.reidentify import REIDENTIFY_PURPOSE, reidentification_event
from verifiers.reports.proofs import is_disclosure


def test_a_reidentification_is_an_access_to_the_patients_record_by_the_officer() -> None:
    patient = Patient(id="MRN-000123", system="urn:oid:1.2.3")
    event = reidentification_event(
        "alert-1", "privacy-officer-7", "case 42", patient, "2026-12-06T01:00:00.000000Z"
    )
    assert decode_event(canonical_event_bytes(event)) == event  # valid, canonical
    assert (event.patient.id, event.patient.system) == ("MRN-000123", "urn:oid:1.2.3")
    assert event.actor.id == "privacy-officer-7" and event.action == "R"
    assert event.purpose_of_use == (REIDENTIFY_PURPOSE,)
    assert not is_disclosure(event)  # an access, not a disclosure to a third party
    # on a sealed ledger the officer, the patient and the reason are sealed
    public, sensitive = split(event_to_dict(event))
    assert "MRN-000123" not in repr(public) and "case 42" not in repr(public)
    assert "privacy-officer-7" not in repr(public)
    assert "case 42" in repr(sensitive)


def test_each_reidentification_is_its_own_event() -> None:
    patient = Patient(id="MRN-1")
    at = "2026-12-06T01:00:00.000000Z"
    first = reidentification_event("a", "o", "r", patient, at)
    second = reidentification_event("a", "o", "r", patient, at)
    assert first.event_id != second.event_id
