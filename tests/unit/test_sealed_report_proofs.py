"""Access report lines of a sealed ledger (ADR 0037), checked offline by verify-proof:
an opened line proves its content through its opening (the salt and the sensitive part
against the signed commitment); an erased line proves only what its signed document
holds. Named after what someone holding the file could try."""

from __future__ import annotations

import base64
import json
from typing import Any

from careledger_core.block import BlockHeader, block_hash, header_bytes
from careledger_core.event import AccessEvent, event_to_dict
from careledger_core.hashing import leaf_hash
from careledger_core.jcs import canonicalize
from careledger_core.merkle import MerkleTree
from careledger_core.sealed_event import sealed_document
from careledger_core.sealing import commitment, split
from tests.unit.test_proofs import KEY, TRUSTED, _doc, _event
from verifiers.reports.proofs import redact_report, verify_report

SALTS = [bytes([i]) * 32 for i in range(1, 6)]


def _sealed_block(events: list[AccessEvent]) -> dict[str, Any]:
    docs, openings = [], []
    for event, salt in zip(events, SALTS, strict=False):
        public, sensitive = split(event_to_dict(event))
        docs.append(sealed_document(public, commitment(salt, sensitive)))
        openings.append(salt + canonicalize(sensitive))
    tree = MerkleTree([leaf_hash(d) for d in docs])
    header = BlockHeader(
        chain_id="careledger.local/careledger.access-events/0",
        height=1,
        prev_hash="ab" * 32,
        merkle_root=tree.root.hex(),
        event_count=len(docs),
        first_offset=10,
        last_offset=10 + len(docs) - 1,
        dead_lettered=0,
        absent_offsets=0,
        first_event_time=events[0].occurred_at,
        last_event_time=events[-1].occurred_at,
        created_at="2026-11-02T09:00:00.000000Z",
        key_id=KEY.key_id,
    )
    return {
        "header": header,
        "docs": docs,
        "openings": openings,
        "tree": tree,
        "signature": KEY.sign_header(header),
    }


def _proof(block: dict[str, Any], i: int, *, opened: bool) -> dict[str, Any]:
    header: BlockHeader = block["header"]
    proof = {
        "chain_id": header.chain_id,
        "height": 1,
        "index": i,
        "block_hash": block_hash(header).hex(),
        "leaf_hash": leaf_hash(block["docs"][i]).hex(),
        "canonical": base64.b64encode(block["docs"][i]).decode(),
        "audit_path": [p.hex() for p in block["tree"].inclusion_proof(i)],
        "header": base64.b64encode(header_bytes(header)).decode(),
        "signature": block["signature"].hex(),
    }
    if opened:
        proof["opening"] = base64.b64encode(block["openings"][i]).decode()
    return proof


def _opened_line(block: dict[str, Any], i: int, event: AccessEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "occurred_at": event.occurred_at,
        "patient_id": event.patient.id,
        "actor_id": event.actor.id,
        "action": event.action,
        "purpose": list(event.purpose_of_use),
        "proof": _proof(block, i, opened=True),
    }


def _erased_line(block: dict[str, Any], i: int, event: AccessEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "occurred_at": event.occurred_at,
        "action": event.action,
        "outcome": event.outcome,
        "purpose": list(event.purpose_of_use),
        "erased": {"record_id": "erasure-1", "reason": "gdpr-17"},
        "proof": _proof(block, i, opened=False),
    }


EVENTS = [_event(1), _event(2, patient="MRN2"), _event(3)]
BLOCK = _sealed_block(EVENTS)


def _failures(doc: dict[str, Any]) -> dict[int, list[str]]:
    return {r.line: r.codes for r in verify_report(doc, TRUSTED) if not r.ok}


def test_opened_and_erased_lines_verify_and_the_erased_one_says_whose_is_unproven() -> None:
    doc = _doc([_opened_line(BLOCK, 0, EVENTS[0]), _erased_line(BLOCK, 2, EVENTS[2])])
    results = verify_report(doc, TRUSTED)
    assert [r.ok for r in results] == [True, True]
    assert results[0].unbound == [] and results[1].unbound == ["patient"]


def test_an_opening_of_another_event_does_not_open_the_commitment() -> None:
    line = _opened_line(BLOCK, 0, EVENTS[0])
    line["proof"]["opening"] = base64.b64encode(BLOCK["openings"][1]).decode()
    assert _failures(_doc([line])) == {0: ["OPENING_INVALID"]}


def test_an_opening_edited_to_name_another_actor_does_not_open_the_commitment() -> None:
    salt, body = BLOCK["openings"][0][:32], json.loads(BLOCK["openings"][0][32:])
    body["actor.id"] = "someone-else"
    line = _opened_line(BLOCK, 0, EVENTS[0])
    line["proof"]["opening"] = base64.b64encode(salt + canonicalize(body)).decode()
    line["actor_id"] = "someone-else"
    assert _failures(_doc([line])) == {0: ["OPENING_INVALID"]}


def test_another_patients_opened_line_is_refused_in_this_patients_report() -> None:
    assert _failures(_doc([_opened_line(BLOCK, 1, EVENTS[1])])) == {0: ["PATIENT_MISMATCH"]}


def test_a_displayed_field_that_is_not_the_opened_events_is_refused() -> None:
    line = _opened_line(BLOCK, 0, EVENTS[0])
    line["action"] = "D"
    assert _failures(_doc([line])) == {0: ["FIELD_MISMATCH"]}


def test_an_erased_line_cannot_claim_a_patient_or_an_actor() -> None:
    line = _erased_line(BLOCK, 2, EVENTS[2])
    line["actor_id"] = "E3"
    line["patient_id"] = "MRN1"
    assert _failures(_doc([line])) == {0: ["FIELD_UNBOUND", "FIELD_UNBOUND"]}


def test_an_erased_line_must_show_the_documents_own_fields() -> None:
    line = _erased_line(BLOCK, 2, EVENTS[2])
    line["purpose"] = ["HMARKT"]
    assert _failures(_doc([line])) == {0: ["FIELD_MISMATCH"]}


def test_a_sealed_line_without_its_opening_must_say_it_was_erased() -> None:
    line = _opened_line(BLOCK, 0, EVENTS[0])
    del line["proof"]["opening"]
    assert _failures(_doc([line])) == {0: ["CONTENT_NOT_PROVEN"]}


def test_redacting_a_report_drops_the_openings_which_name_the_patient() -> None:
    doc = _doc([_opened_line(BLOCK, 0, EVENTS[0])], view="gdpr")
    redacted = redact_report(doc)
    proof = redacted["lines"][0]["proof"]
    assert "opening" not in proof and "canonical" not in proof
