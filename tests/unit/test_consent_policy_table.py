"""The consent policy table: its format, its errors, how it is found, and how consents
whose rules are only a policy reference are decided with it (R4 ``policy.uri`` and
``policyRule`` codes, R5 ``policyBasis`` and ``regulatoryBasis``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from careledger_core.errors import ValidationError
from verifiers.auditor.config import DEFAULT_CONFIG
from verifiers.auditor.consent import ConsentRequest, evaluate_consent, parse_consent
from verifiers.auditor.consent.policy_table import (
    EMPTY_POLICY_TABLE,
    ENV_POLICY_TABLE,
    configured_policy_table,
    load_policy_table,
    parse_policy_table,
)

URI = "https://example.org/policies/share-for-care"
TABLE = parse_policy_table(
    f"""
[[policy]]
uri = "{URI}"
decision = "permit"
purposes = ["TREAT", "ETREAT"]
actions = ["access"]

[[policy]]
uri = "http://example.org/cs|no-research"
decision = "deny"
purposes = ["HRESCH"]
otherwise = "undecided"
""",
    "test-table",
)


def r4(**members: Any) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": members.pop("id", "c-r4"),
        "status": "active",
        "patient": {"reference": "Patient/p1"},
        **members,
    }


def r5(**members: Any) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": members.pop("id", "c-r5"),
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        **members,
    }


def ask(**fields: Any) -> ConsentRequest:
    base: dict[str, Any] = {
        "patient_id": "p1",
        "at": "2024-01-01T00:00:00Z",
        "actor_id": "a",
        "purposes": ("TREAT",),
        "action": "R",
    }
    base.update(fields)
    return ConsentRequest(**base)


@pytest.mark.parametrize(
    "consent",
    [
        r4(policy=[{"uri": URI}]),
        r5(policyBasis={"url": URI}),
    ],
    ids=["r4-policy-uri", "r5-policyBasis"],
)
def test_policy_uri_is_decided_by_the_table_with_its_conditions(consent: dict[str, Any]) -> None:
    permit = evaluate_consent([consent], ask(), policy_table=TABLE)
    assert (permit.outcome, permit.decided_by, permit.policy) == ("permit", "policy-table", URI)
    assert "policy table test-table" in permit.reason
    # outside the purposes: the opposite (default ``otherwise``)
    assert evaluate_consent([consent], ask(purposes=("HPAYMT",)), policy_table=TABLE).outcome == (
        "deny"
    )
    # an export needs "disclose" too, which the policy does not grant
    assert evaluate_consent([consent], ask(action="E"), policy_table=TABLE).outcome == "deny"


@pytest.mark.parametrize(
    "consent",
    [
        r4(policyRule={"coding": [{"system": "http://example.org/cs", "code": "no-research"}]}),
        r5(
            regulatoryBasis=[
                {"coding": [{"system": "http://example.org/cs", "code": "no-research"}]}
            ]
        ),
    ],
    ids=["r4-policyRule-code", "r5-regulatoryBasis"],
)
def test_coded_policy_is_looked_up_as_system_and_code(consent: dict[str, Any]) -> None:
    deny = evaluate_consent([consent], ask(purposes=("HRESCH",)), policy_table=TABLE)
    assert (deny.outcome, deny.decided_by) == ("deny", "policy-table")
    undecided = evaluate_consent([consent], ask(), policy_table=TABLE)
    assert (undecided.outcome, undecided.decided_by) == ("no-consent", "no-policy-rule")


def test_unknown_policy_is_no_consent_with_a_reason_never_invalid() -> None:
    consent = r4(policy=[{"uri": "urn:x:unknown"}])
    parse_consent(consent)  # valid
    got = evaluate_consent([consent], ask(), policy_table=EMPTY_POLICY_TABLE)
    assert (got.outcome, got.decided_by, got.policy) == (
        "no-consent",
        "no-policy-rule",
        "urn:x:unknown",
    )
    assert "no rule for policy urn:x:unknown" in got.reason
    assert got.to_dict()["policy"] == "urn:x:unknown"


def test_an_undecided_consent_does_not_hide_another_that_decides() -> None:
    undecided = r4(id="a-undecided", policy=[{"uri": "urn:x:unknown"}])
    opt_out = r5(id="b-decided", decision="deny")
    got = evaluate_consent([undecided, opt_out], ask(), policy_table=EMPTY_POLICY_TABLE)
    assert (got.outcome, got.consent_id, got.decided_by) == ("deny", "b-decided", "consent")
    assert "no rule for policy urn:x:unknown" in got.reason


def test_a_consent_with_its_own_base_ignores_the_table() -> None:
    consent = r5(decision="deny", policyBasis={"url": URI})
    got = evaluate_consent([consent], ask(), policy_table=TABLE)
    assert (got.outcome, got.decided_by) == ("deny", "consent")


def test_policy_table_base_keeps_the_consents_own_exceptions() -> None:
    consent = r5(
        policyBasis={"url": URI},
        provision=[{"actor": [{"reference": {"reference": "Practitioner/bad"}}]}],
    )
    assert evaluate_consent([consent], ask(actor_id="bad"), policy_table=TABLE).outcome == "deny"
    assert evaluate_consent([consent], ask(actor_id="ok"), policy_table=TABLE).outcome == "permit"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[[policy]]\ndecision = 'permit'", "policy[0].uri"),
        ("[[policy]]\nuri = 'u'\ndecision = 'maybe'", "policy[0].decision"),
        ("[[policy]]\nuri = 'u'\ndecision = 'deny'\nactions = ['read']", "policy[0].actions"),
        ("[[policy]]\nuri = 'u'\ndecision = 'deny'\npurposes = 'TREAT'", "policy[0].purposes"),
        (
            "[[policy]]\nuri = 'u'\ndecision = 'deny'\n[[policy]]\nuri = 'u'\ndecision = 'deny'",
            "policy[1].uri",
        ),
        ("[[policy]]\nuri = 'u'\ndecision = 'deny'\ncolour = 'red'", "policy[0]"),
        ("policy = 3", "policy"),
        ("not toml [", "$"),
    ],
)
def test_a_malformed_table_is_refused_with_the_place_at_fault(text: str, where: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_policy_table(text, "t")
    assert err.value.details["field"] == where


def test_the_shipped_default_table_parses_and_is_the_configured_default() -> None:
    shipped = Path(DEFAULT_CONFIG.consent_policy_table)
    assert shipped.name == "consent-policies.toml" and shipped.is_file()
    assert load_policy_table(shipped).rules == {}  # examples only, commented out


def test_the_environment_names_another_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = tmp_path / "policies.toml"
    table.write_text(f'[[policy]]\nuri = "{URI}"\ndecision = "deny"\n')
    monkeypatch.setenv(ENV_POLICY_TABLE, str(table))
    assert configured_policy_table().rules[URI].decision == "deny"
    consent = r4(policy=[{"uri": URI}])
    got = evaluate_consent([consent], ask())  # no table given: the configured one
    assert (got.outcome, got.decided_by) == ("deny", "policy-table")
    table.write_text(f'[[policy]]\nuri = "{URI}"\ndecision = "permit"\n# changed\n')
    assert configured_policy_table().rules[URI].decision == "permit"  # re-read when changed
    monkeypatch.setenv(ENV_POLICY_TABLE, str(tmp_path / "missing.toml"))
    assert configured_policy_table().rules == {}
