"""The auditor on pseudonyms (ADR 0037, ``verifiers.auditor.pseudonyms``): on the
simulated hospital with injected inappropriate accesses of every rule, every event is
decided the same in clear and with every identifier replaced by the key store's
pseudonyms (a real SoftHSM2 token), and nothing the auditor decides names anyone."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from careledger.keystore import KeyStore, local_token
from careledger_core.event import AccessEvent
from careledger_core.reference import ReferenceRecord, thaw
from producers.simulator import DEFAULT_START, HospitalModel
from producers.simulator.scenarios import Scenario, simulate_audit_scenario
from producers.simulator.vocabulary import MRN_SYSTEM
from tests.softhsm import softhsm_dir
from verifiers.auditor import Auditor, ReferenceState
from verifiers.auditor.decisions import AccessDecision
from verifiers.auditor.pseudonyms import pseudonymous_inputs
from verifiers.auditor.rules import core_consent_evaluator
from verifiers.auditor.runner.sealed_store import KeystorePseudonyms


@pytest.fixture(scope="module")
def keystore() -> Iterator[KeyStore]:
    store = KeyStore(local_token(softhsm_dir(), f"a{uuid.uuid4().hex[:12]}"), create=True)
    yield store
    store.close()


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    model = HospitalModel(staff=80, patients=400, seed=23)
    return simulate_audit_scenario(model, 4000, 23, DEFAULT_START, 0.05, warmup_events=1000)


def _decide(records: list[ReferenceRecord], events: list[AccessEvent], confirmed: Any) -> Any:
    auditor = Auditor(ReferenceState(records), consent_evaluator=core_consent_evaluator)
    for actor_id, at in confirmed:
        auditor.history.record_confirmed_violation(actor_id, at)
    return auditor.run(events)


def _outcome(d: AccessDecision) -> tuple[Any, ...]:
    """What a decision decides: the flags (rule, severity, routine) and the kind of the
    explanation; not the identifiers, which differ by construction."""
    flags = tuple(sorted((str(f.code), str(f.severity), f.routine) for f in d.flags))
    kind = None if d.explanation is None else str(d.explanation.kind)
    return (d.amends, flags, kind, d.searched, d.multiplier)


def test_every_event_is_decided_the_same_in_clear_and_on_pseudonyms(
    keystore: KeyStore, scenario: Scenario
) -> None:
    refs = KeystorePseudonyms(keystore, MRN_SYSTEM)
    events = scenario.events
    patients = sorted({e.patient.id for e in events if e.patient.id != "-"})
    patients += sorted({r.subject_id for r in scenario.reference_records if r.kind != "staff"})
    # every patient has a data key, as on a sealed ledger (made when first sealed)
    keystore.data_keys_for([keystore.lookup(MRN_SYSTEM, p) for p in set(patients)], "test")

    sealed_records, sealed_events, sealed_confirmed = pseudonymous_inputs(
        scenario.reference_records, events, scenario.confirmed_violations, refs
    )
    confirmed = list(scenario.confirmed_violations)
    clear = _decide(scenario.reference_records, events, confirmed)
    pseudo = _decide(sealed_records, sealed_events, sealed_confirmed)

    assert len(clear) == len(pseudo) >= len(events)
    by_event: dict[tuple[str, bool], Any] = {}
    for d in clear:
        by_event.setdefault((d.event_id, d.amends), []).append(_outcome(d))
    for d in pseudo:
        assert _outcome(d) in by_event[(d.event_id, d.amends)], d
    flagged = {str(f.code) for d in pseudo for f in d.flags}
    # the scenario injects every kind of inappropriate access: each rule fired
    assert len(flagged) >= 12, flagged

    # nothing decided names anyone: the identifiers of the scenario appear nowhere in
    # the decisions' identifiers, explanations and evidence
    identifiers: set[str] = set()
    for e in events:
        identifiers |= {e.patient.id, e.actor.id}
        if e.client is not None:
            identifiers.add(e.client.address)
    for r in scenario.reference_records:
        identifiers |= {r.record_id, r.subject_id}
        body = thaw(r.body)
        for name in ("family_name", "given_name", "phone", "practitioner_id", "manager_id"):
            if isinstance(body.get(name), str):
                identifiers.add(body[name])
    identifiers = {i for i in identifiers if len(i) >= 6}
    assert len(identifiers) > 500
    written = json.dumps(
        [
            {
                "actor": d.actor_id,
                "patient": d.patient_id,
                "explanation": None if d.explanation is None else d.explanation.to_dict(),
                "flags": [dict(f.evidence) for f in d.flags],
            }
            for d in pseudo
        ],
        default=str,
    )
    leaked = sorted(i for i in identifiers if i in written)
    assert not leaked, leaked[:10]
