"""What the auditor caches for speed never answers with stale data: a view's lookups
after more reference data is applied, a consent parsed once per version when the consent
changes between accesses (or cannot be parsed), the policy table read once per run or
follower cycle when it changes between cycles, and the memoised pseudonyms, times and row
encodings against the functions they stand for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from careledger_core.errors import ConsentFormatError
from careledger_core.reference import ReferenceRecord
from tests.unit.test_audit_runner import REFERENCE_CHAIN, MemoryStore
from tests.unit.test_auditor_rules import (
    MONDAY_9AM,
    at,
    decide,
    event,
    hospital,
    ref,
    relationship,
    staff,
)
from verifiers.auditor import (
    AccessHistory,
    Auditor,
    ExplanationKind,
    ReferenceState,
    RuleCode,
    evaluate,
    patient_pseudonym,
)
from verifiers.auditor._time import ts_to_us, us_to_ts
from verifiers.auditor.alerts import cached_pseudonym
from verifiers.auditor.consent.policy_table import ENV_POLICY_TABLE
from verifiers.auditor.decisions import Explanation
from verifiers.auditor.explanations import _core_verdict
from verifiers.auditor.rules import core_consent_evaluator
from verifiers.auditor.runner import Follower, dumps
from verifiers.auditor.runner.rows import DECISION_COLUMNS

POLICY = "https://example.org/policies/research-only"


def permit_n2(version: int, effective_at: str) -> ReferenceRecord:
    """P2's consent: deny, but nurse N2 may (an R5 provision reversing the base)."""
    body = {
        "resourceType": "Consent",
        "id": "C-P2",
        "status": "active",
        "subject": {"reference": "Patient/P2"},
        "decision": "deny",
        "provision": [{"actor": [{"reference": {"reference": "Practitioner/N2"}}]}],
    }
    return ref("consent", "C-P2", body, version=version, effective_at=effective_at)


def deny_all(version: int, effective_at: str) -> ReferenceRecord:
    body = {
        "resourceType": "Consent",
        "id": "C-P2",
        "status": "active",
        "subject": {"reference": "Patient/P2"},
        "decision": "deny",
    }
    return ref("consent", "C-P2", body, version=version, effective_at=effective_at)


def unparseable(version: int, effective_at: str) -> ReferenceRecord:
    """An R4 consent without any base (no policy, no policyRule, no typed root: ppc-1)."""
    body = {
        "resourceType": "Consent",
        "id": "C-P2",
        "status": "active",
        "patient": {"reference": "Patient/P2"},
    }
    return ref("consent", "C-P2", body, version=version, effective_at=effective_at)


def policy_only(version: int = 1) -> ReferenceRecord:
    """An R4 consent decided only by the policy table."""
    body = {
        "resourceType": "Consent",
        "id": "C-P2",
        "status": "active",
        "patient": {"reference": "Patient/P2"},
        "policy": [{"uri": POLICY}],
    }
    return ref("consent", "C-P2", body, version=version)


# --------------------------------------------------------------------------- views


def test_a_view_looks_records_up_again_after_more_reference_data_is_applied() -> None:
    state = ReferenceState(hospital())
    view = state.as_of(at(60))
    n2 = view.staff("N2")
    assert n2 is not None and n2.department == "CARD"
    assert view.staff("N9") is None and view.staff_status("N9") is None
    state.apply(staff("N2", "Kowalski", "nurse", "MED", version=2, effective_at=at(30)))
    state.apply(staff("N9", "Berg", "nurse", "CARD"))
    n2 = view.staff("N2")
    assert n2 is not None and n2.department == "MED"
    assert view.staff_status("N9") == "active"
    # a version effective after the view's instant is not in force there
    state.apply(staff("N2", "Kowalski", "nurse", "ICU", version=3, effective_at=at(90)))
    n2 = view.staff("N2")
    assert n2 is not None and n2.department == "MED"


def test_a_duplicate_known_earlier_is_seen_by_a_view_with_a_knowledge_cutoff() -> None:
    """Applying an identical version again with an earlier ledger time changes what a view
    with a cutoff knows, although nothing new is counted as applied."""
    state = ReferenceState(hospital())
    moved = staff("N2", "Kowalski", "nurse", "MED", version=2, effective_at=at(-60))
    state.apply(moved, at(120))  # ledgered late
    view = state.as_of(at(60), known_at=at(0))
    before = view.staff("N2")
    assert before is not None and before.department == "CARD"
    applied = state.applied
    state.apply(moved, at(-30))  # the same record, ledgered earlier elsewhere
    assert state.applied == applied
    after = view.staff("N2")
    assert after is not None and after.department == "MED"


# --------------------------------------------------------------------------- consents


def test_a_consent_changed_between_accesses_decides_the_next_access() -> None:
    state = ReferenceState([*hospital(), permit_n2(1, at(-600))])
    auditor = Auditor(state, consent_evaluator=core_consent_evaluator)
    first = auditor.process(event("N2", "P2", at(0)))[-1]
    assert first.explanation is not None and first.explanation.kind == ExplanationKind.CONSENT
    assert RuleCode.CONSENT_DENIED not in first.codes()
    state.apply(deny_all(2, at(5)))
    second = auditor.process(event("N2", "P2", at(10)))[-1]
    assert RuleCode.CONSENT_DENIED in second.codes()
    flag = second.flag(RuleCode.CONSENT_DENIED)
    assert flag is not None and flag.evidence["consent_version"] == 2
    # an access at an instant before the new version still has the old one in force
    earlier = auditor.process(event("N2", "P2", at(3)))[-1]
    assert RuleCode.CONSENT_DENIED not in earlier.codes() and earlier.explained
    # a version that cannot be parsed makes the evaluation fail (no consent verdict) ...
    broken = unparseable(3, at(15))
    state.apply(broken)
    assert isinstance(state.consent_policy(broken), ConsentFormatError)
    third = auditor.process(event("N2", "P2", at(20)))[-1]
    assert RuleCode.CONSENT_DENIED not in third.codes()
    assert third.explanation is None or third.explanation.kind != ExplanationKind.CONSENT
    # ... until a usable one replaces it
    state.apply(permit_n2(4, at(25)))
    fourth = auditor.process(event("N2", "P2", at(30)))[-1]
    assert fourth.explanation is not None and fourth.explanation.kind == ExplanationKind.CONSENT
    assert fourth.explanation.record_id == "C-P2"


@pytest.mark.parametrize("make", [permit_n2, deny_all, unparseable])
@pytest.mark.parametrize("actor", ["N1", "N2", "M1"])
def test_parsed_consents_give_the_verdict_of_the_evaluator_on_resources(
    make: Any, actor: str
) -> None:
    rec = make(1, at(-600))
    state = ReferenceState([*hospital(), rec])
    view = state.as_of(MONDAY_9AM)
    ev = event(actor, "P2", purpose=("TREAT",))
    directory = view.staff(actor)
    assert state.consent_policy(rec) is state.consent_policy(rec)  # parsed once
    assert _core_verdict([view.consent_policy(rec)], ev, directory) == core_consent_evaluator(
        [dict(rec.body)], ev, directory
    )


def test_the_policy_table_is_read_once_per_run_and_again_for_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = tmp_path / "policies.toml"
    table.write_text(f'[[policy]]\nuri = "{POLICY}"\ndecision = "deny"\n')
    monkeypatch.setenv(ENV_POLICY_TABLE, str(table))
    records = [*hospital(), policy_only(), relationship("ENC-P2", "P2", practitioner_id="N2")]
    first = Auditor(ReferenceState(records), consent_evaluator=core_consent_evaluator).run(
        [event("N2", "P2", at(0))]
    )
    assert RuleCode.CONSENT_DENIED in first[0].codes()
    table.write_text(f'[[policy]]\nuri = "{POLICY}"\ndecision = "permit"\n# changed\n')
    second = Auditor(ReferenceState(records), consent_evaluator=core_consent_evaluator).run(
        [event("N2", "P2", at(0))]
    )
    assert RuleCode.CONSENT_DENIED not in second[0].codes()
    # evaluate() alone reads the configured table for each access, as before
    table.write_text(f'[[policy]]\nuri = "{POLICY}"\ndecision = "deny"\n# again\n')
    state = ReferenceState(records)
    ev = event("N2", "P2", at(0))
    alone = evaluate(
        ev,
        state.as_of(ev.occurred_at),
        AccessHistory(),
        consent_evaluator=core_consent_evaluator,
    )
    assert RuleCode.CONSENT_DENIED in alone.codes()


def test_a_follower_reads_a_changed_policy_table_at_its_next_cycle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = tmp_path / "policies.toml"
    table.write_text(f'[[policy]]\nuri = "{POLICY}"\ndecision = "deny"\n')
    monkeypatch.setenv(ENV_POLICY_TABLE, str(table))
    store = MemoryStore(
        [*hospital(), policy_only(), relationship("ENC-P2", "P2", practitioner_id="N2")]
    )
    follower = Follower(store, salt="a-salt-of-the-caches-test")  # type: ignore[arg-type]
    store.add_block("o/careledger.events/0", [event("N2", "P2", at(0))])
    assert follower.cycle() == 1
    table.write_text(f'[[policy]]\nuri = "{POLICY}"\ndecision = "permit"\n# changed\n')
    store.add_block("o/careledger.events/0", [event("N2", "P2", at(1))])
    assert follower.cycle() == 1
    flags = DECISION_COLUMNS.index("flags")
    codes = [{f["code"] for f in json.loads(row[flags])} for row in store.decisions]
    assert "CONSENT_DENIED" in codes[0] and "CONSENT_DENIED" not in codes[1]
    assert follower.auditor.policy_table is None  # not kept between cycles
    assert REFERENCE_CHAIN in store.heads()


def test_a_malformed_policy_table_fails_each_evaluation_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = tmp_path / "policies.toml"
    table.write_text("not toml [")
    monkeypatch.setenv(ENV_POLICY_TABLE, str(table))
    records = [*hospital(), policy_only(), relationship("ENC-P2", "P2", practitioner_id="N2")]
    ran = Auditor(ReferenceState(records), consent_evaluator=core_consent_evaluator).run(
        [event("N2", "P2", at(0))]
    )
    alone = decide(records, event("N2", "P2", at(0)), consent_evaluator=core_consent_evaluator)
    assert ran[0].codes() == alone.codes() and RuleCode.CONSENT_DENIED not in alone.codes()


# --------------------------------------------------------------------------- memoised values


def test_cached_pseudonyms_are_the_pseudonyms_of_each_salt() -> None:
    for salt in ("first-salt-of-the-test", "other-salt-of-the-test", b"bytes-salt-0123456"):
        for pid in ("P1", "P2", "MRN-0001"):
            assert cached_pseudonym(pid, salt) == patient_pseudonym(pid, salt)
    assert cached_pseudonym("P1", "first-salt-of-the-test") != cached_pseudonym(
        "P1", "other-salt-of-the-test"
    )


def test_time_conversion_gives_each_instant_its_own_value_when_they_alternate() -> None:
    a, b = "2026-11-02T09:00:00.000001Z", "2026-11-02T09:00:00.000002Z"
    for _ in range(3):
        assert ts_to_us(a) + 1 == ts_to_us(b)
        assert us_to_ts(ts_to_us(a)) == a and ts_to_us(a) == ts_to_us(a)


def test_decision_rows_encode_as_the_plain_encoder_does() -> None:
    from verifiers.auditor.runner.rows import _explanation_json, _searched_json

    e = Explanation(ExplanationKind.GROUP, record_id="E-1", relationship_kind="encounter", via="é")
    assert _explanation_json(e) == json.dumps(
        e.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert _searched_json(("consent", "relationship")) == '["consent","relationship"]'
    assert dumps({"b": [1, "ü"], "a": None}) == '{"a":null,"b":[1,"ü"]}'


def test_relationships_applied_after_a_query_are_found_by_the_next_one() -> None:
    state = ReferenceState(hospital())
    assert state.as_of(MONDAY_9AM).relationships("P2") == ()
    state.apply(relationship("ENC-P2", "P2", practitioner_id="N2"))
    assert [r.record_id for r in state.as_of(MONDAY_9AM).relationships("P2")] == ["ENC-P2"]
    state.apply(relationship("APT-P2", "P2", practitioner_id="M1"))
    found = state.as_of(MONDAY_9AM).relationships("P2")
    assert [r.record_id for r in found] == ["APT-P2", "ENC-P2"]  # still sorted by id
    # a new version ending the encounter before the access: no longer active then
    state.apply(
        relationship(
            "ENC-P2",
            "P2",
            practitioner_id="N2",
            end="2026-11-02T08:00:00.000000Z",
            version=2,
            effective_at="2026-11-01T09:00:00.000000Z",
        )
    )
    assert [r.record_id for r in state.as_of(MONDAY_9AM).relationships("P2")] == ["APT-P2"]
    # the version moves the relationship to another patient: P1 has it, P2 no more
    state.apply(
        relationship(
            "APT-P2",
            "P1",
            practitioner_id="M1",
            version=2,
            effective_at="2026-11-01T10:00:00.000000Z",
        )
    )
    assert state.as_of(MONDAY_9AM).relationships("P2") == ()
    assert "APT-P2" in [r.record_id for r in state.as_of(MONDAY_9AM).relationships("P1")]
