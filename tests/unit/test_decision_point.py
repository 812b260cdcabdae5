"""The consent decision point's logic (pure): answers with the deciding consent version,
provision and fallback, the position it read, replay as of that position, and the
checks that find tampered, forged and missing decisions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from careledger_core.event import canonical_event_bytes
from careledger_core.reference import REFERENCE_SCHEMA, reference_from_dict
from verifiers.auditor._time import ts_to_us
from verifiers.auditor.decision_point import (
    ConsentLedger,
    LedgeredConsent,
    Question,
    QuestionError,
    Requester,
    answer,
    build_record,
    parse_question,
    replay_answer,
)
from verifiers.auditor.decision_point.ledger import MemoryDecisionLedger
from verifiers.auditor.decision_point.model import (
    decision_bytes,
    decision_event,
    decision_sha256,
    ledgered_decision_hash,
)
from verifiers.auditor.decision_point.replay import check_rows, compare
from verifiers.auditor.decision_point.service import DecisionPoint, NotLedgered
from verifiers.auditor.decision_point.store import DecisionRow, LedgeredDecision

CHAIN = "careledger/careledger.consents/0"
T_V1 = "2026-01-01T00:00:00.000000Z"
T_V2 = "2026-06-01T00:00:00.000000Z"
ASK_1 = "2026-03-01T10:00:00.000000Z"
ASK_2 = "2026-07-01T10:00:00.000000Z"
NOW_US = 1_800_000_000_000_000  # 2027-01-15


def consent(status: str = "active", decision: str = "deny", **extra: Any) -> dict[str, Any]:
    """Overall deny, except dr-a for treatment (R5)."""
    return {
        "resourceType": "Consent",
        "id": "c-1",
        "status": status,
        "subject": {"reference": "Patient/p-1"},
        "decision": decision,
        "provision": [
            {
                "actor": [{"reference": {"reference": "Practitioner/dr-a"}}],
                "purpose": [{"code": "TREAT"}],
            }
        ],
        **extra,
    }


def ledgered(
    body: dict[str, Any], version: int, height: int, effective: str, idx: int = 0
) -> LedgeredConsent:
    rec = reference_from_dict(
        {
            "schema": REFERENCE_SCHEMA,
            "kind": "consent",
            "record_id": "c-1",
            "version": version,
            "recorded_at": effective,
            "effective_at": effective,
            "body": body,
        }
    )
    return LedgeredConsent(rec, CHAIN, height, idx, effective.replace("00.000000Z", "05.000000Z"))


def q(actor: str = "dr-a", purpose: str = "TREAT", patient: str = "p-1") -> Question:
    return Question(patient_id=patient, actor_id=actor, action="R", purposes=(purpose,))


def ledger_with(*records: LedgeredConsent) -> ConsentLedger:
    led = ConsentLedger()
    led.apply(records, {CHAIN: max(r.height for r in records)})
    return led


V1 = ledgered(consent(), 1, 1, T_V1)
#: version 2 withdraws the consent (status inactive): nothing in force from T_V2 on
V2 = ledgered(consent(status="inactive"), 2, 2, T_V2)


def test_a_provision_permits_and_is_named_with_the_consent_version_and_its_place() -> None:
    got = answer(ledger_with(V1), q(), ASK_1)
    assert got["outcome"] == "permit"
    assert got["provision_path"] == [0]
    assert got["fallback"] is None
    assert got["consent"] == {
        "record_id": "c-1",
        "version": 1,
        "chain_id": CHAIN,
        "height": 1,
        "idx": 0,
        "ledgered_at": V1.block_time,
    }
    assert [c["version"] for c in got["consents_in_force"]] == [1]
    assert got["evaluation"]["outcome"] == "permit"


def test_the_base_decision_denies_others_and_says_it_was_the_fallback() -> None:
    got = answer(ledger_with(V1), q(actor="dr-b"), ASK_1)
    assert got["outcome"] == "deny"
    assert got["provision_path"] == []
    assert got["fallback"] == "consent-base"
    assert got["consent"]["record_id"] == "c-1"
    wrong_purpose = answer(ledger_with(V1), q(purpose="HMARKT"), ASK_1)
    assert wrong_purpose["outcome"] == "deny"


def test_no_consent_on_file() -> None:
    for led, question, at in (
        (ledger_with(V1), q(patient="p-2"), ASK_1),
        (ledger_with(V1), q(), "2025-12-31T23:59:59.000000Z"),  # before it took effect
        (ConsentLedger(), q(), ASK_1),
    ):
        got = answer(led, question, at)
        assert got["outcome"] == "no-consent"
        assert got["fallback"] == "no-consent-on-file"
        assert got["consent"] is None and got["consents_in_force"] == []


def test_an_unevaluable_consent_fails_closed_and_is_named() -> None:
    broken = ledgered(
        consent(modifierExtension=[{"url": "urn:x", "valueBoolean": True}]), 1, 1, T_V1
    )
    got = answer(ledger_with(broken), q(), ASK_1)
    assert got["outcome"] == "deny"
    assert got["fallback"] == "consent-unevaluable"
    assert got["consent"]["record_id"] == "c-1"


def record_at(led: ConsentLedger, question: Question, at: str) -> dict[str, Any]:
    return build_record(
        led,
        question,
        at=at,
        decision_id="6f1c3d2a-0000-4000-8000-000000000001",
        requester=Requester("local"),
    )


def test_the_record_states_its_position_and_replays_identically_after_a_new_version() -> None:
    old = record_at(ledger_with(V1), q(), ASK_1)
    assert old["as_of"]["chains"] == {CHAIN: 1}
    assert old["as_of"]["known_at"] == V1.block_time
    assert len(old["as_of"]["policy_table_sha256"]) == 64
    assert old["answer"]["outcome"] == "permit"
    # version 2 withdraws the consent: a new question gets another answer
    both = ledger_with(V1, V2)
    new = record_at(both, q(), ASK_2)
    assert new["answer"]["outcome"] == "no-consent"
    assert new["as_of"]["chains"] == {CHAIN: 2}
    # ... and the same question at the old instant, knowing v2, is unchanged (v2 is
    # effective later), while the old decision replays identically over the whole ledger
    replayed, as_of = replay_answer(old, [V1, V2])
    assert replayed == old["answer"] and as_of == old["as_of"]
    assert compare(old, [V1, V2])[1] == []
    assert compare(new, [V1, V2])[1] == []


def test_replay_reads_only_up_to_the_stated_height() -> None:
    # a version effective *before* the question but ledgered after the decision must
    # not change its replay: the position is the cutoff, not the effective time
    backdated = ledgered(consent(status="inactive"), 2, 2, "2026-02-01T00:00:00.000000Z")
    old = record_at(ledger_with(V1), q(), ASK_1)
    assert compare(old, [V1, backdated])[1] == []
    assert answer(ledger_with(V1, backdated), q(), ASK_1)["outcome"] == "no-consent"


def test_replay_finds_a_rewritten_consent_and_a_rewritten_answer() -> None:
    old = record_at(ledger_with(V1), q(), ASK_1)
    flipped = ledgered(consent(decision="permit"), 1, 1, T_V1)
    flipped = LedgeredConsent(flipped.record, CHAIN, 1, 0, V1.block_time)
    # permit-all base: the provision no longer decides (its effect flips to deny)
    assert compare(old, [flipped])[1]
    forged = json.loads(json.dumps(old))
    forged["answer"]["outcome"] = "deny"
    assert "answer.outcome" in compare(forged, [V1])[1]


def _row(record: dict[str, Any], sha: str | None = None) -> DecisionRow:
    data = decision_bytes(record)
    return DecisionRow(record["decision_id"], "raw/0", 3, 0, sha or decision_sha256(data), record)


def _event(record: dict[str, Any]) -> LedgeredDecision:
    sha = decision_sha256(decision_bytes(record))
    return LedgeredDecision(record["decision_id"], sha, "events/0", 5, 1, record["decided_at"])


def test_checks_find_tampered_forged_and_missing_decisions() -> None:
    good = record_at(ledger_with(V1), q(), ASK_1)
    ok = check_rows([_row(good)], [_event(good)], [V1], now_us=NOW_US)
    assert ok.intact and ok.identical == 1 and not ok.problems

    edited = json.loads(json.dumps(good))
    edited["answer"]["reason"] = "nothing to see"
    bad = check_rows([_row(edited)], [_event(good)], [V1], now_us=NOW_US)
    assert {p.code for p in bad.problems} == {"DECISION_TAMPERED", "DECISION_REPLAY_MISMATCH"}

    forged = check_rows([_row(good)], [], [V1], now_us=NOW_US)
    assert [p.code for p in forged.problems] == ["DECISION_NOT_LEDGERED"]
    young = check_rows([_row(good)], [], [V1], now_us=ts_to_us(ASK_1) + 60_000_000)
    assert [p.code for p in young.problems] == ["DECISION_PENDING"] and young.intact

    gone = check_rows([], [_event(good)], [V1], now_us=NOW_US)
    assert [p.code for p in gone.problems] == ["DECISION_RECORD_MISSING"]
    assert gone.problems[0].where["height"] == 5

    unreadable = DecisionRow(good["decision_id"], "raw/0", 3, 0, None, None, "bad bytes")
    assert [
        p.code for p in check_rows([unreadable], [_event(good)], [V1], now_us=NOW_US).problems
    ] == ["DECISION_TAMPERED"]


def test_the_ledger_event_names_no_patient_and_carries_the_hash() -> None:
    record = record_at(ledger_with(V1), q(), ASK_1)
    sha = decision_sha256(decision_bytes(record))
    event = decision_event(record, sha)
    assert event.patient.id == "-" and b"p-1" not in canonical_event_bytes(event)
    assert ledgered_decision_hash(event) == (record["decision_id"], sha)


def test_a_decision_that_cannot_be_ledgered_is_not_given() -> None:
    point = DecisionPoint(MemoryDecisionLedger(fail=True))
    point.load([V1], {CHAIN: 1})
    with pytest.raises(NotLedgered):
        point.decide(q(), Requester("local"))
    sink = MemoryDecisionLedger()
    point = DecisionPoint(sink, clock=lambda: 1_772_359_200.0)
    point.load([V1], {CHAIN: 1})
    first, sha = point.decide(q(), Requester("local"))
    second, _ = point.decide(q(), Requester("local"))
    assert first["answer"]["outcome"] == "permit" and sink.records[0][2] == sha
    assert second["decided_at"] > first["decided_at"]  # one instant per decision


# --------------------------------------------------------------------------- hostile JSON

GOOD = {"patient_id": "p-1", "actor": {"id": "dr-a", "roles": ["doctor"]}, "action": "R"}


def test_a_question_parses_and_is_normalised() -> None:
    body = {**GOOD, "purposes": ["TREAT", "TREAT", "ETREAT"], "data_class": "Observation"}
    got = parse_question(json.dumps(body).encode())
    assert got.purposes == ("ETREAT", "TREAT") and got.actor_roles == ("doctor",)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b"", "$"),
        (b"not json", "$"),
        (b"[]", "$"),
        (json.dumps({**GOOD, "extra": 1}).encode(), "$"),
        (json.dumps({**GOOD, "patient_id": None}).encode(), "$.patient_id"),
        (json.dumps({**GOOD, "patient_id": ""}).encode(), "$.patient_id"),
        (json.dumps({**GOOD, "patient_id": "x" * 300}).encode(), "$.patient_id"),
        (json.dumps({**GOOD, "patient_id": "a\u0000b"}).encode(), "$.patient_id"),
        (json.dumps({**GOOD, "action": "X"}).encode(), "$.action"),
        (json.dumps({**GOOD, "actor": {"id": "a", "roles": "doctor"}}).encode(), "$.actor.roles"),
        (json.dumps({**GOOD, "purposes": ["T"] * 100}).encode(), "$.purposes"),
        (json.dumps({**GOOD, "purposes": [{"code": "TREAT"}]}).encode(), "$.purposes[0]"),
        (json.dumps({**GOOD, "actor": [[[[[[]]]]]]}).encode(), "$.actor"),
        (
            b'{"patient_id": "p", "patient_id": "q", '
            + b'"x": '
            + b"[" * 5000
            + b"]" * 5000
            + b"}",
            "$",
        ),
        (b"{" + b" " * 20_000 + b"}", "$"),
    ],
)
def test_hostile_questions_are_refused_with_the_path(body: bytes, path: str) -> None:
    with pytest.raises(QuestionError) as info:
        parse_question(body)
    assert info.value.code == "QUESTION_INVALID"
    assert info.value.path.startswith(path)


POLICY = "http://example.org/policies/emergency-only"


def test_a_policy_only_consent_is_decided_by_the_table_and_the_table_is_part_of_the_record() -> (
    None
):
    from verifiers.auditor.consent.policy_table import parse_policy_table

    body = {
        "resourceType": "Consent",
        "id": "c-1",
        "status": "active",
        "subject": {"reference": "Patient/p-1"},
        "policyBasis": {"url": POLICY},
    }
    table = parse_policy_table(
        f'[[policy]]\nuri = "{POLICY}"\ndecision = "permit"\npurposes = ["ETREAT"]\n'
    )
    led = ConsentLedger(table)
    led.apply([ledgered(body, 1, 1, T_V1)], {CHAIN: 1})
    emergency = answer(led, q(purpose="ETREAT"), ASK_1)
    assert emergency["outcome"] == "permit"
    assert emergency["fallback"] == f"policy-table:{POLICY}"
    assert answer(led, q(purpose="TREAT"), ASK_1)["outcome"] == "deny"
    unknown = ConsentLedger(parse_policy_table(""))
    unknown.apply([ledgered(body, 1, 1, T_V1)], {CHAIN: 1})
    got = answer(unknown, q(purpose="ETREAT"), ASK_1)
    assert got["outcome"] == "no-consent" and got["fallback"] == f"no-policy-rule:{POLICY}"
    # replayed with another table: the difference is named
    record = record_at(led, q(purpose="TREAT"), ASK_1)
    replayed, as_of = replay_answer(record, [ledgered(body, 1, 1, T_V1)], parse_policy_table(""))
    assert as_of["policy_table_sha256"] != record["as_of"]["policy_table_sha256"]
    assert replayed["outcome"] == "no-consent"
