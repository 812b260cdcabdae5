"""Properties of consent evaluation over generated consents (R4 and R5) and the
published examples: order does not matter, an inactive consent never decides, a deny
nested in a permit never widens access, a provision that matches nothing changes
nothing, and the R4 and R5 forms of the same policy decide alike."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from verifiers.auditor.consent import ConsentRequest, evaluate_consent
from verifiers.auditor.consent.policy_table import EMPTY_POLICY_TABLE

PUBLISHED = Path(__file__).resolve().parents[1] / "fixtures" / "consent" / "r4"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
_PUBLISHED = [
    json.loads(p.read_bytes())
    for p in sorted(PUBLISHED.glob("*.json"))
    if json.loads(p.read_bytes())["patient"]["reference"] == "Patient/f001"
]

_actor = st.sampled_from(
    [
        {
            "role": {"coding": [{"system": PARTICIPATION, "code": "PRCP"}]},
            "reference": {"reference": "Practitioner/f204"},
        },
        {
            "role": {"coding": [{"system": PARTICIPATION, "code": "PRCP"}]},
            "reference": {"reference": "Organization/f001"},
        },
        {"role": {"coding": [{"code": "nurse"}]}},
    ]
)
_criteria = st.fixed_dictionaries(
    {},
    optional={
        "actor": st.lists(_actor, min_size=1, max_size=2, unique_by=json.dumps),
        "purpose": st.lists(
            st.sampled_from(["TREAT", "ETREAT", "HPAYMT"]).map(
                lambda c: {"system": ACT_REASON, "code": c}
            ),
            min_size=1,
            max_size=2,
            unique_by=json.dumps,
        ),
        "action": st.lists(
            st.sampled_from(["access", "correct", "disclose"]).map(
                lambda c: {"coding": [{"system": ACTION, "code": c}]}
            ),
            min_size=1,
            max_size=2,
            unique_by=json.dumps,
        ),
        "securityLabel": st.lists(
            st.sampled_from(["N", "R", "HIV"]).map(lambda c: {"code": c}), min_size=1, max_size=1
        ),
        "period": st.sampled_from(
            [{"start": "2015-01-01", "end": "2015-02-01"}, {"start": "2020-01-01"}]
        ),
    },
).filter(bool)


def _tree(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    if depth == 0:
        return _criteria
    return st.tuples(_criteria, st.lists(_tree(depth - 1), max_size=2)).map(
        lambda t: {**t[0], **({"provision": t[1]} if t[1] else {})}
    )


_r5 = st.builds(
    lambda cid, decision, provisions: {
        "resourceType": "Consent",
        "id": cid,
        "status": "active",
        "subject": {"reference": "Patient/f001"},
        "decision": decision,
        "provision": provisions,
    },
    st.sampled_from(["g1", "g2", "g3"]),
    st.sampled_from(["permit", "deny"]),
    st.lists(_tree(2), max_size=3),
)


def _typed(provision: dict[str, Any], parent: str) -> dict[str, Any]:
    """An R5 provision as R4 writes it: every nested rule typed with its effect."""
    effect = "deny" if parent == "permit" else "permit"
    out = {k: v for k, v in provision.items() if k != "provision"}
    out["type"] = effect
    if provision.get("provision"):
        out["provision"] = [_typed(p, effect) for p in provision["provision"]]
    return out


def to_r4(r5: dict[str, Any]) -> dict[str, Any]:
    """The same policy in R4: OPTIN/OPTOUT for the decision, a root provision without
    criteria holding the (typed) R5 provisions."""
    code = "OPTIN" if r5["decision"] == "permit" else "OPTOUT"
    r4: dict[str, Any] = {
        "resourceType": "Consent",
        "id": r5["id"],
        "status": r5["status"],
        "patient": r5["subject"],
        "policyRule": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code}]
        },
    }
    if r5["provision"]:
        r4["provision"] = {"provision": [_typed(p, r5["decision"]) for p in r5["provision"]]}
    return r4


_requests = st.builds(
    ConsentRequest,
    patient_id=st.just("f001"),
    at=st.sampled_from(["2015-01-15T00:00:00Z", "2015-12-01T00:00:00Z", "2021-03-01T00:00:00Z"]),
    actor_id=st.sampled_from(["f204", "f007", "nurse-1"]),
    actor_roles=st.sampled_from([(), ("nurse",), ("physician",)]),
    actor_organization=st.sampled_from([None, "f001", "f002"]),
    purposes=st.lists(st.sampled_from(["TREAT", "ETREAT", "BTG", "HPAYMT"]), max_size=2).map(tuple),
    action=st.sampled_from(["C", "R", "U", "D", "E"]),
    security_labels=st.lists(st.sampled_from(["N", "R", "HIV"]), max_size=2).map(tuple),
)
_any_consent = st.one_of(_r5, _r5.map(to_r4), st.sampled_from(_PUBLISHED))


def decide(consents: list[dict[str, Any]], req: ConsentRequest) -> Any:
    return evaluate_consent(consents, req, policy_table=EMPTY_POLICY_TABLE)


@settings(max_examples=300, deadline=None)
@given(r5=_r5, req=_requests)
def test_r4_and_r5_forms_of_the_same_policy_decide_alike(
    r5: dict[str, Any], req: ConsentRequest
) -> None:
    a, b = decide([r5], req), decide([to_r4(r5)], req)
    assert a.outcome == b.outcome, (a.reason, b.reason)
    if a.provision_path:  # R4's root provision (index 0) holds R5's top level
        assert b.provision_path == (0, *a.provision_path)


@settings(max_examples=200, deadline=None)
@given(consents=st.lists(_any_consent, max_size=4), req=_requests, data=st.data())
def test_the_order_of_consents_does_not_matter(
    consents: list[dict[str, Any]], req: ConsentRequest, data: st.DataObject
) -> None:
    first = decide(consents, req)
    assert decide(data.draw(st.permutations(consents)), req) == first


@settings(max_examples=200, deadline=None)
@given(
    consents=st.lists(_any_consent, max_size=3),
    extra=_any_consent,
    status=st.sampled_from(["inactive", "draft", "proposed", "rejected", "entered-in-error"]),
    req=_requests,
)
def test_an_inactive_consent_never_decides(
    consents: list[dict[str, Any]], extra: dict[str, Any], status: str, req: ConsentRequest
) -> None:
    inactive = {**copy.deepcopy(extra), "id": "zz-inactive", "status": status}
    before, after = decide(consents, req), decide([*consents, inactive], req)
    assert (after.outcome, after.consent_id, after.provision_path) == (
        before.outcome,
        before.consent_id,
        before.provision_path,
    )


def _paths(provisions: list[dict[str, Any]], prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    out = []
    for i, p in enumerate(provisions):
        out.append((*prefix, i))
        out.extend(_paths(p.get("provision", []), (*prefix, i)))
    return out


def _at(provisions: list[dict[str, Any]], path: tuple[int, ...]) -> dict[str, Any]:
    node = provisions[path[0]]
    for i in path[1:]:
        node = node["provision"][i]
    return node


def _effect(decision: str, path: tuple[int, ...]) -> str:
    """An R5 provision's effect: each level flips its parent's."""
    if len(path) % 2 == 0:
        return decision
    return "deny" if decision == "permit" else "permit"


@settings(max_examples=300, deadline=None)
@given(r5=_r5, criteria=_criteria, req=_requests, data=st.data())
def test_a_deny_nested_in_a_permit_never_widens_access(
    r5: dict[str, Any], criteria: dict[str, Any], req: ConsentRequest, data: st.DataObject
) -> None:
    before = decide([r5], req)
    permits = [p for p in _paths(r5["provision"]) if _effect(r5["decision"], p) == "permit"]
    widened = copy.deepcopy(r5)
    if permits:
        path = data.draw(st.sampled_from(permits))
        _at(widened["provision"], path).setdefault("provision", []).append(criteria)
    elif r5["decision"] == "permit":
        widened["provision"].append(criteria)  # a deny exception to the permit base
    after = decide([widened], req)
    if after.outcome == "permit":
        assert before.outcome == "permit", (before.reason, after.reason)


_NOBODY = {
    "actor": [
        {
            "role": {"coding": [{"system": PARTICIPATION, "code": "PRCP"}]},
            "reference": {"reference": "Practitioner/never-asks"},
        }
    ]
}


@settings(max_examples=300, deadline=None)
@given(consent=_any_consent, req=_requests, nested=st.booleans())
def test_a_provision_that_matches_nothing_changes_nothing(
    consent: dict[str, Any], req: ConsentRequest, nested: bool
) -> None:
    before = decide([consent], req)
    changed = copy.deepcopy(consent)
    extra = {**_NOBODY, "type": "deny"} if "policyRule" in changed else dict(_NOBODY)
    if isinstance(changed.get("provision"), dict):  # R4: under the root provision
        changed["provision"].setdefault("provision", []).append(extra)
    elif "policyRule" in changed:  # R4 without provisions
        changed["provision"] = {"provision": [extra]}
    elif not nested or not changed.get("provision"):
        changed.setdefault("provision", []).append(extra)
    else:
        changed["provision"][0].setdefault("provision", []).append(extra)
    after = decide([changed], req)
    assert (after.outcome, after.consent_id) == (before.outcome, before.consent_id)
