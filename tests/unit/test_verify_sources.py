"""Source checks of `careledger verify` (ADR 0010), on rows built in memory.

Named after what went wrong between a source and the ledger.
"""

from __future__ import annotations

import base64
import hashlib

from careledger_core.findings import FindingCode
from careledger_core.reference import SourceHeartbeatBody, SourceKeyBody
from careledger_core.signing import SigningKey
from careledger_core.source import (
    HeartbeatStatement,
    KeyEventStatement,
    SourceRegistry,
    sign_batch,
    sign_heartbeat,
    sign_key_event,
    statement_bytes,
)
from verifiers.integrity.sources import AttestedEvent, SourceReport, build_registry, check_sources

REGISTRAR = SigningKey.from_seed(hashlib.sha256(b"registrar").digest())
EHR = SigningKey.from_seed(hashlib.sha256(b"ehr").digest())
EPOCH = "00000000000000e1"
T = "2026-11-02T08:00:00.000000Z"


def key_body(key: SigningKey, source: str, registrar: SigningKey = REGISTRAR) -> SourceKeyBody:
    st = KeyEventStatement(
        source_id=source,
        key_id=key.key_id,
        public_key=base64.b64encode(key.public_key.raw).decode(),
        status="active",
        valid_from="2026-01-01T00:00:00.000000Z",
        registrar_key_id=registrar.key_id,
    )
    return SourceKeyBody(st, sign_key_event(registrar, st))


def registry() -> SourceRegistry:
    reg, problems = build_registry([key_body(EHR, "ehr")], {REGISTRAR.key_id: REGISTRAR.public_key})
    assert problems == []
    return reg


def rows(n: int, first_seq: int = 1, first_height: int = 0) -> list[AttestedEvent]:
    leaves = [hashlib.sha256(f"event {first_seq + i}".encode()).digest() for i in range(n)]
    atts = sign_batch(
        EHR,
        source_id="ehr",
        epoch=EPOCH,
        first_seq=first_seq,
        event_leaf_hashes=leaves,
        signed_at=T,
    )
    return [
        AttestedEvent(
            "c/0",
            first_height,
            i,
            f"e{first_seq + i}",
            leaf,
            (statement_bytes(a.statement), a.signature, a.index, ",".join(a.proof)),
        )
        for i, (leaf, a) in enumerate(zip(leaves, atts, strict=True))
    ]


def codes(report: SourceReport) -> list[str]:
    return [str(f.code) for f in report.findings]


def test_a_complete_signed_stream_has_no_findings() -> None:
    report = check_sources(
        [*rows(5), *rows(5, first_seq=6, first_height=1)], registry(), require_signatures=True
    )
    assert codes(report) == [] and report.signed_events == 10
    assert report.sources == {"ehr": {"events": 10, "epochs": 1}}


def test_events_lost_between_source_and_kafka_are_a_sequence_gap() -> None:
    stream = [*rows(5), *rows(5, first_seq=6, first_height=1)]
    del stream[3:5]  # seq 4 and 5 never reached the ledger
    [gap] = check_sources(stream, registry(), require_signatures=True).findings
    assert gap.code == FindingCode.SOURCE_SEQ_GAP
    assert (gap.details["first_missing"], gap.details["last_missing"]) == (4, 5)


def test_lost_tail_is_found_through_a_later_heartbeat() -> None:
    hb = HeartbeatStatement(
        source_id="ehr", key_id=EHR.key_id, epoch=EPOCH, beat=1, last_seq=8, sent_at=T
    )
    beat = SourceHeartbeatBody(hb, sign_heartbeat(EHR, hb))
    report = check_sources(rows(5), registry(), [beat], require_signatures=True)
    [gap] = report.findings
    assert gap.code == FindingCode.SOURCE_SEQ_GAP and gap.details["count"] == 3
    # without the heartbeat the loss of the tail is invisible: that is what it is for
    assert check_sources(rows(5), registry(), require_signatures=True).findings == []


def test_forged_heartbeat_is_reported_and_not_believed() -> None:
    hb = HeartbeatStatement(
        source_id="ehr", key_id=EHR.key_id, epoch=EPOCH, beat=1, last_seq=50, sent_at=T
    )
    rogue = SigningKey.from_seed(b"\x01" * 32)
    forged = SourceHeartbeatBody(hb, base64.b64encode(rogue.sign(b"x")).decode())
    report = check_sources(rows(5), registry(), [forged], require_signatures=True)
    assert codes(report) == ["SOURCE_HEARTBEAT_INVALID"]


def test_a_replay_chained_twice_is_a_duplicate_sequence_number() -> None:
    stream = rows(3)
    replay = AttestedEvent("c/1", 7, 0, "e2-again", stream[1].leaf_hash, stream[1].attestation)
    report = check_sources([*stream, replay], registry(), require_signatures=True)
    [dup] = report.findings
    assert dup.code == FindingCode.SOURCE_SEQ_DUPLICATE and dup.event_id == "e2-again"


def test_deleted_attestation_leaves_an_unsigned_event() -> None:
    stream = rows(3)
    stripped = AttestedEvent("c/0", 0, 1, "e2", stream[1].leaf_hash, None)
    report = check_sources([stream[0], stripped, stream[2]], registry(), require_signatures=True)
    # the event is unsigned, and its sequence number is missing from the signed stream
    assert codes(report) == ["SOURCE_UNSIGNED", "SOURCE_SEQ_GAP"]
    assert report.findings[0].event_index == 1
    legacy = check_sources([stripped], registry(), require_signatures=False)
    assert legacy.findings == [] and legacy.unsigned_events == 1


def test_attestation_moved_to_another_event_fails_its_proof() -> None:
    stream = rows(3)
    moved = AttestedEvent("c/0", 0, 1, "e2", stream[0].leaf_hash, stream[1].attestation)
    report = check_sources([stream[0], moved, stream[2]], registry(), require_signatures=True)
    assert "SOURCE_PROOF_INVALID" in codes(report)


def test_edited_attestation_row_fails_its_signature() -> None:
    stream = rows(2)
    st, sig, idx, proof = stream[0].attestation  # type: ignore[misc]
    edited = AttestedEvent(
        "c/0", 0, 0, "e1", stream[0].leaf_hash, (st.replace(b'"ehr"', b'"lab"'), sig, idx, proof)
    )
    report = check_sources([edited, stream[1]], registry(), require_signatures=True)
    assert codes(report)[0] in ("SOURCE_SIGNATURE_INVALID", "SOURCE_KEY_NOT_FOR_SOURCE")


def test_key_event_from_an_untrusted_registrar_is_not_applied() -> None:
    rogue_registrar = SigningKey.from_seed(b"\x02" * 32)
    reg, problems = build_registry(
        [key_body(EHR, "ehr", registrar=rogue_registrar)], {REGISTRAR.key_id: REGISTRAR.public_key}
    )
    assert len(problems) == 1 and len(reg) == 0
    report = check_sources(rows(1), reg, require_signatures=True)
    assert codes(report) == ["SOURCE_KEY_UNKNOWN"]


def test_garbled_attestation_row_is_reported_not_crashing() -> None:
    leaf = hashlib.sha256(b"x").digest()
    bad = AttestedEvent("c/0", 0, 0, "e", leaf, (b"{not json", "sig", 0, "zz"))
    assert codes(check_sources([bad], registry(), require_signatures=True)) == [
        "SOURCE_ATTESTATION_INVALID"
    ]


def test_unsigned_history_from_before_the_first_registration_is_legacy_not_a_finding() -> None:
    reg = registry()
    since = reg.first_registered_at()
    assert since == "2026-01-01T00:00:00.000000Z"
    leaf = hashlib.sha256(b"old").digest()
    old = AttestedEvent("c/0", 0, 0, "e-old", leaf, None, "2025-12-31T23:59:59.000000Z")
    new = AttestedEvent("c/0", 9, 0, "e-new", leaf, None, "2026-02-01T00:00:00.000000Z")
    report = check_sources([old, new], reg, require_signatures=True, required_since=since)
    # the one chained after sources could sign is reported; the older one is history
    assert [f.event_id for f in report.findings] == ["e-new"]
    assert (report.unsigned_events, report.legacy_unsigned_events) == (2, 1)
    # with no registration at all there is no such history: fail closed
    empty = check_sources([old], SourceRegistry(), require_signatures=True, required_since=None)
    assert codes(empty) == ["SOURCE_UNSIGNED"]
