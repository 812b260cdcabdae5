"""Source identity (ADR 0010): signed batches, key registry, heartbeats.

Tests are named after the attack or failure they cover.
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import msgspec.structs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careledger_core.event import canonical_event_bytes, event_from_dict
from careledger_core.hashing import leaf_hash
from careledger_core.signing import SigningKey
from careledger_core.source import (
    Attestation,
    BatchVerifier,
    HeartbeatStatement,
    KeyEventStatement,
    SourceAuthError,
    SourceEnvelopeError,
    SourceRegistry,
    decode_signed_event,
    encode_signed_event,
    looks_signed,
    sign_batch,
    sign_heartbeat,
    sign_key_event,
    verify_heartbeat,
    verify_key_event,
)

REGISTRAR = SigningKey.from_seed(b"r" * 32)
EHR = SigningKey.from_seed(b"e" * 32)
LAB = SigningKey.from_seed(b"l" * 32)
GATEWAY = SigningKey.from_seed(b"g" * 32)
EPOCH = "0123456789abcdef"
T0 = "2026-11-02T08:00:00.000000Z"


def key_event(
    key: SigningKey,
    source: str,
    status: str = "active",
    valid_from: str = "2026-01-01T00:00:00.000000Z",
    signs_for: tuple[str, ...] = (),
) -> KeyEventStatement:
    return KeyEventStatement(
        source_id=source,
        key_id=key.key_id,
        public_key=base64.b64encode(key.public_key.raw).decode(),
        status=status,  # type: ignore[arg-type]
        valid_from=valid_from,
        signs_for=signs_for,
        registrar_key_id=REGISTRAR.key_id,
    )


def registry() -> SourceRegistry:
    return SourceRegistry(
        [
            key_event(EHR, "ehr"),
            key_event(LAB, "lab"),
            key_event(GATEWAY, "gateway", signs_for=("legacy-pacs",)),
        ]
    )


def event_bytes(i: int, patient: str = "P1") -> bytes:
    d: dict[str, Any] = {
        "schema": "careledger.access-event/1",
        "event_id": f"00000000-0000-4000-8000-{i:012d}",
        "occurred_at": T0,
        "recorded_at": T0,
        "event_type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "action": "R",
        "outcome": 0,
        "actor": {"id": "N1", "roles": ["nurse"], "is_requestor": True},
        "source": {"system": "ehr", "type": 4},
        "patient": {"id": patient},
    }
    return canonical_event_bytes(event_from_dict(d))


def signed(n: int, key: SigningKey = EHR, source: str = "ehr", **kw: Any) -> list[bytes]:
    events = [event_bytes(i) for i in range(n)]
    atts = sign_batch(
        key,
        source_id=source,
        epoch=EPOCH,
        first_seq=kw.pop("first_seq", 1),
        event_leaf_hashes=[leaf_hash(e) for e in events],
        signed_at=kw.pop("signed_at", T0),
        **kw,
    )
    return [encode_signed_event(e, a) for e, a in zip(events, atts, strict=True)]


def check(record: bytes, verifier: BatchVerifier | None = None) -> Attestation:
    _event, canonical, att = decode_signed_event(record)
    (verifier or BatchVerifier(registry())).check(leaf_hash(canonical), att)
    return att


def test_a_signed_batch_verifies_with_one_signature_check() -> None:
    records = signed(50)
    verifier = BatchVerifier(registry())
    seqs = [check(r, verifier).seq for r in records]
    assert seqs == list(range(1, 51))
    assert verifier.signature_checks == 1


def test_envelope_keeps_the_canonical_event_bytes() -> None:
    record = signed(1)[0]
    event, canonical, _ = decode_signed_event(record)
    assert canonical == event_bytes(0) and event.patient.id == "P1"
    assert looks_signed(record) and not looks_signed(event_bytes(0))


def _swap_event(record: bytes, new_event: bytes) -> bytes:
    _e, _c, att = decode_signed_event(record)
    return encode_signed_event(new_event, att)


def test_altered_event_is_not_in_the_signed_batch() -> None:
    record = signed(4)[2]
    forged = _swap_event(record, event_bytes(2, patient="P2"))
    with pytest.raises(SourceAuthError) as err:
        check(forged)
    assert err.value.code == "BAD_PROOF"


def test_event_moved_to_another_sequence_number_is_not_in_the_batch() -> None:
    records = signed(4)
    _e, canonical, att = decode_signed_event(records[1])
    moved = msgspec.structs.replace(att, index=2, proof=decode_signed_event(records[2])[2].proof)
    with pytest.raises(SourceAuthError) as err:
        check(encode_signed_event(canonical, moved))
    assert err.value.code == "BAD_PROOF"


def test_statement_edited_after_signing_fails_the_signature() -> None:
    record = signed(2)[0]
    _e, canonical, att = decode_signed_event(record)
    bumped = msgspec.structs.replace(att.statement, first_seq=100)
    with pytest.raises(SourceAuthError) as err:
        check(encode_signed_event(canonical, msgspec.structs.replace(att, statement=bumped)))
    assert err.value.code == "BAD_SIGNATURE"


def test_signature_by_an_unregistered_key_is_unknown_key() -> None:
    rogue = SigningKey.from_seed(b"x" * 32)
    with pytest.raises(SourceAuthError) as err:
        check(signed(1, key=rogue)[0])
    assert err.value.code == "UNKNOWN_KEY"


def test_one_source_cannot_sign_as_another() -> None:
    with pytest.raises(SourceAuthError) as err:
        check(signed(1, key=LAB, source="ehr")[0])
    assert err.value.code == "KEY_NOT_FOR_SOURCE"


def test_gateway_may_sign_for_a_legacy_source_only_saying_so() -> None:
    ok = signed(1, key=GATEWAY, source="legacy-pacs", signed_by="gateway")[0]
    assert check(ok).statement.signed_by == "gateway"
    with pytest.raises(SourceAuthError) as err:
        check(signed(1, key=GATEWAY, source="legacy-pacs")[0])
    assert err.value.code == "KEY_NOT_FOR_SOURCE"
    with pytest.raises(SourceAuthError) as err:
        check(signed(1, key=GATEWAY, source="ehr", signed_by="gateway")[0])
    assert err.value.code == "KEY_NOT_FOR_SOURCE"


def test_batch_signed_after_revocation_is_revoked_key() -> None:
    reg = registry()
    reg.apply(key_event(EHR, "ehr", status="revoked", valid_from="2026-11-01T00:00:00.000000Z"))
    verifier = BatchVerifier(reg)
    with pytest.raises(SourceAuthError) as err:
        check(signed(1)[0], verifier)
    assert err.value.code == "REVOKED_KEY"
    # signed before the revocation: still attributable
    check(signed(1, signed_at="2026-10-31T23:59:59.000000Z")[0], verifier)


def test_batch_signed_before_registration_is_unknown_key() -> None:
    reg = SourceRegistry([key_event(EHR, "ehr", valid_from="2026-12-01T00:00:00.000000Z")])
    with pytest.raises(SourceAuthError) as err:
        check(signed(1)[0], BatchVerifier(reg))
    assert err.value.code == "UNKNOWN_KEY"


def test_a_key_id_cannot_be_taken_over_by_another_source() -> None:
    reg = registry()
    reg.apply(key_event(EHR, "lab"))  # a later registration of the same key for another source
    check(signed(1)[0], BatchVerifier(reg))
    with pytest.raises(SourceAuthError):
        check(signed(1, source="lab")[0], BatchVerifier(reg))


def test_key_event_needs_a_trusted_registrar() -> None:
    e = key_event(EHR, "ehr")
    sig = sign_key_event(REGISTRAR, e)
    verify_key_event(e, sig, {REGISTRAR.key_id: REGISTRAR.public_key})
    with pytest.raises(SourceAuthError) as err:
        verify_key_event(e, sig, {})
    assert err.value.code == "UNKNOWN_REGISTRAR"
    forged = msgspec.structs.replace(e, signs_for=("everything",))
    with pytest.raises(SourceAuthError) as err:
        verify_key_event(forged, sig, {REGISTRAR.key_id: REGISTRAR.public_key})
    assert err.value.code == "BAD_SIGNATURE"


def test_key_event_whose_key_id_does_not_match_its_public_key_is_refused() -> None:
    e = msgspec.structs.replace(key_event(EHR, "ehr"), key_id=LAB.key_id)
    sig = sign_key_event(REGISTRAR, e)
    with pytest.raises(SourceAuthError):
        verify_key_event(e, sig, {REGISTRAR.key_id: REGISTRAR.public_key})


def test_heartbeat_signature_binds_its_last_sequence_number() -> None:
    hb = HeartbeatStatement(
        source_id="ehr", key_id=EHR.key_id, epoch=EPOCH, beat=1, last_seq=10, sent_at=T0
    )
    sig = sign_heartbeat(EHR, hb)
    verify_heartbeat(hb, sig, EHR.public_key)
    with pytest.raises(SourceAuthError):
        verify_heartbeat(msgspec.structs.replace(hb, last_seq=9), sig, EHR.public_key)


def test_malformed_envelopes_are_envelope_errors() -> None:
    record = signed(1)[0]
    for bad in (b"{}", b"not json", record.replace(b'"index":0', b'"index":-1')):
        with pytest.raises(SourceEnvelopeError):
            decode_signed_event(bad)
    doc = msgspec.json.decode(record)
    doc["attestation"]["extra"] = 1
    with pytest.raises(SourceEnvelopeError):
        decode_signed_event(msgspec.json.encode(doc))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(min_value=1, max_value=40), first=st.integers(min_value=1, max_value=10**9))
def test_every_event_of_any_batch_verifies_at_its_own_sequence_number(n: int, first: int) -> None:
    verifier = BatchVerifier(registry())
    seqs = [check(r, verifier).seq for r in signed(n, first_seq=first)]
    assert seqs == list(range(first, first + n))
    assert verifier.signature_checks == 1


def test_key_events_and_heartbeats_are_reference_records() -> None:
    from careledger_core.errors import ReferenceValidationError
    from careledger_core.reference import (
        SourceHeartbeatBody,
        SourceKeyBody,
        decode_and_canonicalize_reference,
        reference_from_dict,
    )

    e = key_event(EHR, "ehr")
    body = {"statement": msgspec.to_builtins(e), "signature": sign_key_event(REGISTRAR, e)}
    envelope = {
        "schema": "careledger.reference/1",
        "kind": "source-key",
        "record_id": f"ehr/{EHR.key_id}",
        "version": 1,
        "recorded_at": T0,
        "effective_at": e.valid_from,
        "body": body,
    }
    rec, _canonical = decode_and_canonicalize_reference(msgspec.json.encode(envelope))
    assert isinstance(rec.parsed, SourceKeyBody) and rec.parsed.statement == e
    assert rec.subject_id == "ehr"
    verify_key_event(
        rec.parsed.statement, rec.parsed.signature, {REGISTRAR.key_id: REGISTRAR.public_key}
    )
    with pytest.raises(ReferenceValidationError):
        reference_from_dict({**envelope, "record_id": "ehr/other"})

    hb = HeartbeatStatement(
        source_id="ehr", key_id=EHR.key_id, epoch=EPOCH, beat=3, last_seq=10, sent_at=T0
    )
    beat = reference_from_dict(
        {
            **envelope,
            "kind": "source-heartbeat",
            "record_id": f"ehr/{EPOCH}/3",
            "body": {"statement": msgspec.to_builtins(hb), "signature": sign_heartbeat(EHR, hb)},
        }
    )
    assert isinstance(beat.parsed, SourceHeartbeatBody) and beat.parsed.statement.last_seq == 10


def test_deeply_nested_envelope_is_an_envelope_error_not_a_crash() -> None:
    """A hostile record nested 100,000 levels deep made msgspec raise RecursionError,
    which the processor does not catch: one record could stop the chain."""
    from careledger_core.source import SourceEnvelopeError, decode_signed_event

    hostile = b'{"event":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(SourceEnvelopeError):
        decode_signed_event(hostile)
