"""Sealed reference records (ADR 0037): the pure core (``careledger_core.sealed_reference``)
and the processor's two steps (``processors.sealing.ReferenceSealer`` in the chainer),
with a real SoftHSM2 token. Tests are named after what they defend against."""

from __future__ import annotations

import base64
import dataclasses
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from careledger.ingest_keys import IngestKey, reference_message, seal_reference_for_ingest
from careledger.keystore import KeyStore, local_token
from careledger.storage.kinds import (
    SEALED_REFERENCE,
    SealedReference,
    decode_sealed_reference_row,
)
from careledger.storage.store import event_rows
from careledger_core.errors import ReferenceValidationError
from careledger_core.hashing import leaf_hash
from careledger_core.reference import ReferenceRecord, canonical_reference_bytes
from careledger_core.sealed_reference import (
    STAFF_KEY_SYSTEM,
    check_opening,
    decode_sealed_reference,
    open_reference,
    open_reference_transit,
    record_ref,
    reference_commitment,
    seal_reference,
    sealed_reference_document,
)
from careledger_core.sealing import SealError, patient_ref
from processors.sealing import ReferenceSealer, SubjectKeys
from producers.simulator import HospitalModel
from tests.softhsm import softhsm_dir
from tests.unit.test_batch_chaining import chain_for, gate_for, sealed, take

INGEST = PrivateKey(bytes(range(3, 35)))
KEY = IngestKey(bytes(INGEST.public_key), bytes(INGEST))
DATA_KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SALT = bytes(range(100, 132))
PATIENT_SYSTEM = "urn:oid:2.16.840.1.113883.19.5"
RECORDS = HospitalModel(staff=12, patients=20, seed=5).reference_records()


def _of(kind: str) -> ReferenceRecord:
    return next(r for r in RECORDS if r.kind == kind)


def _sealed(record: ReferenceRecord, key: bytes = DATA_KEY) -> tuple[bytes, bytes]:
    data = canonical_reference_bytes(record)
    document = sealed_reference_document(record, reference_commitment(SALT, data))
    return document, seal_reference(key, document, SALT, data)


@pytest.fixture
def keystore() -> Iterator[KeyStore]:
    store = KeyStore(local_token(softhsm_dir(), f"r{uuid.uuid4().hex[:12]}"), create=True)
    yield store
    store.close()


# --------------------------------------------------------------------------- the core


@pytest.mark.parametrize("kind", ["consent", "care-relationship", "staff", "patient"])
def test_a_sealed_record_opens_to_its_bytes_with_its_key(kind: str) -> None:
    record = _of(kind)
    document, part = _sealed(record)
    opened = open_reference(DATA_KEY, document, part)
    assert opened.record == record
    assert opened.record_bytes == canonical_reference_bytes(record)
    doc, _ = decode_sealed_reference(document)
    assert (doc.kind, doc.version, doc.recorded_at) == (kind, record.version, record.recorded_at)


def test_the_document_names_no_one() -> None:
    record = _of("patient")
    document, _ = _sealed(record)
    body = record.body
    for value in (record.record_id, body["family_name"], body["given_name"]):
        assert value.encode() not in document


@pytest.mark.parametrize("field", ['"record_id":"P-1"', '"body":{}', '"subject_id":"P-1"'])
def test_a_document_carrying_an_identifier_is_refused(field: str) -> None:
    document, _ = _sealed(_of("patient"))
    forged = document.replace(b'{"effective_at"', b"{" + field.encode() + b',"effective_at"')
    with pytest.raises(ReferenceValidationError):
        decode_sealed_reference(forged)


def test_a_part_moved_to_another_document_does_not_open() -> None:
    first, part = _sealed(_of("consent"))
    other, _ = _sealed(_of("patient"))
    with pytest.raises(SealError) as exc:
        open_reference(DATA_KEY, other, part)
    assert exc.value.code == "SEALED_UNOPENED"
    assert open_reference(DATA_KEY, first, part).record.kind == "consent"


def test_another_subjects_key_does_not_open() -> None:
    document, part = _sealed(_of("patient"))
    with pytest.raises(SealError) as exc:
        open_reference(OTHER_KEY, document, part)
    assert exc.value.code == "SEALED_UNOPENED"


def test_an_opening_of_another_record_does_not_match_the_commitment() -> None:
    document, _ = _sealed(_of("patient"))
    other = canonical_reference_bytes(RECORDS[-1])
    with pytest.raises(SealError) as exc:
        check_opening(document, SALT, other)
    assert exc.value.code == "COMMITMENT_MISMATCH"


def test_a_document_that_retracts_what_its_record_does_not_is_refused() -> None:
    # the commitment binds the record's bytes; the document's public fields are checked
    # against the record opened, so a document edited to say "retracted" does not stand
    record = _of("consent")
    data = canonical_reference_bytes(record)
    commitment = reference_commitment(SALT, data)
    forged = sealed_reference_document(dataclasses.replace(record, retracted=True), commitment)
    with pytest.raises(SealError) as exc:
        check_opening(forged, SALT, data)
    assert exc.value.code == "SEALED_MALFORMED"


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_flipped_byte_of_a_sealed_part_does_not_open(data: st.DataObject) -> None:
    document, part = _sealed(_of("care-relationship"))
    i = data.draw(st.integers(0, len(part) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = part[:i] + bytes([part[i] ^ (1 << bit)]) + part[i + 1 :]
    with pytest.raises(SealError):
        open_reference(DATA_KEY, document, flipped)


def test_record_ref_is_shared_by_versions_and_unlinkable_across_keys() -> None:
    record = _of("consent")
    later = dataclasses.replace(record, version=record.version + 1)
    assert record_ref(DATA_KEY, record.kind, record.record_id) == record_ref(
        DATA_KEY, later.kind, later.record_id
    )
    assert record_ref(DATA_KEY, "consent", "C-1") != record_ref(OTHER_KEY, "consent", "C-1")
    assert record_ref(DATA_KEY, "consent", "C-1") != record_ref(DATA_KEY, "patient", "C-1")


def test_a_transit_envelope_opens_with_the_ingest_key_only() -> None:
    data = canonical_reference_bytes(_of("staff"))
    envelope = seal_reference_for_ingest(KEY.public, data)
    assert data not in envelope
    assert open_reference_transit(KEY.private, envelope) == data
    with pytest.raises(SealError) as exc:
        open_reference_transit(bytes(PrivateKey.generate()), envelope)
    assert exc.value.code == "SEALED_UNOPENED"
    for hostile in (b"", b"{}", b"\xff" * 40, envelope[:-7], b'{"schema":1}'):
        with pytest.raises(SealError):
            open_reference_transit(KEY.private, hostile)


def test_reference_messages_are_sealed_and_unkeyed_only_for_kinds_that_name_someone() -> None:
    patient = _of("patient")
    key, value = reference_message(patient, KEY.public)
    assert key is None and patient.record_id.encode() not in value
    assert reference_message(patient, None) == (
        patient.record_id.encode(),
        canonical_reference_bytes(patient),
    )


def test_a_stored_row_in_clear_of_a_kind_that_names_someone_is_refused() -> None:
    # what verify decodes on a sealed ledger's reference chain
    with pytest.raises(ReferenceValidationError):
        decode_sealed_reference_row(canonical_reference_bytes(_of("patient")))


# --------------------------------------------------------------------------- the processor


def _chain(keystore: KeyStore, salt: bytes = SALT) -> tuple[object, ReferenceSealer]:
    gate = gate_for()
    sealer = ReferenceSealer(KEY, SubjectKeys(keystore), PATIENT_SYSTEM, salt=lambda n: salt[:n])
    gate.reference_sealer = sealer
    return chain_for(gate, kind=SEALED_REFERENCE), sealer


def test_sealed_records_are_chained_with_pseudonyms_and_parts_that_open(
    keystore: KeyStore,
) -> None:
    chain, sealer = _chain(keystore)
    records = [_of(k) for k in ("consent", "care-relationship", "staff", "patient")]
    for r in records:
        assert (
            take(chain, seal_reference_for_ingest(KEY.public, canonical_reference_bytes(r))) == []
        )
    block = sealed(chain)
    # before the write: no key was used, and such a record cannot be written
    with pytest.raises(RuntimeError, match="not sealed"):
        event_rows([block], SEALED_REFERENCE)
    assert sealer.complete([block]) == 4
    assert sealer.complete([block]) == 0  # idempotent
    rows = event_rows([block], SEALED_REFERENCE)
    for record, row, ev in zip(records, rows, block.events, strict=True):
        stored: SealedReference = ev.event  # type: ignore[assignment]
        record_id, kind, subject_id = row[5], row[6], row[8]
        sealed_part, key_id = row[13], row[14]
        assert kind == record.kind
        assert ev.leaf_hash == leaf_hash(ev.canonical)
        system = STAFF_KEY_SYSTEM if record.kind == "staff" else PATIENT_SYSTEM
        key = keystore.data_key(keystore.lookup(system, record.subject_id), "test")
        assert key is not None and key.key_id.hex() == key_id
        opened = open_reference(key.key, ev.canonical, base64.b64decode(sealed_part))
        assert opened.record == record
        assert record_id == record_ref(key.key, record.kind, record.record_id)
        expected_subject = (
            keystore.actor_ref(record.subject_id)
            if record.kind == "staff"
            else patient_ref(key.key)
        )
        assert subject_id == expected_subject == stored.subject_ref
        for identifier in (record.record_id, record.subject_id):
            assert identifier not in repr(row[5:])


def test_a_patients_records_share_the_key_of_their_events(keystore: KeyStore) -> None:
    chain, sealer = _chain(keystore)
    consent = _of("consent")
    take(chain, seal_reference_for_ingest(KEY.public, canonical_reference_bytes(consent)))
    block = sealed(chain)
    sealer.complete([block])
    events_key = keystore.data_key(keystore.lookup(PATIENT_SYSTEM, consent.subject_id), "t")
    assert events_key is not None
    assert block.events[0].event.data_key_id == events_key.key_id.hex()  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["consent", "patient", "staff", "care-relationship"])
def test_a_record_in_clear_naming_someone_is_refused_on_a_sealed_ledger(
    keystore: KeyStore, kind: str
) -> None:
    chain, _ = _chain(keystore)
    rejected = take(chain, canonical_reference_bytes(_of(kind)))
    assert [r.code for r in rejected] == ["REFERENCE_NOT_SEALED"]
    assert chain.pending == []


def test_a_sealed_document_sent_without_its_part_is_refused(keystore: KeyStore) -> None:
    # it would be a leaf nothing opens: refused at the door, never chained
    chain, _ = _chain(keystore)
    document, _ = _sealed(_of("patient"))
    rejected = take(chain, document)
    assert len(rejected) == 1 and rejected[0].code == "REFERENCE_INVALID"


def test_a_hostile_envelope_is_dead_lettered_with_its_reason(keystore: KeyStore) -> None:
    chain, _ = _chain(keystore)
    envelope = seal_reference_for_ingest(bytes(PrivateKey.generate().public_key), b"{}")
    rejected = take(chain, envelope)
    assert [(r.code, r.value) for r in rejected] == [("SEALED_UNOPENED", envelope)]
    garbage = b'{"schema":"careledger.sealed-reference-transit/1","sealed":"!!"}'
    assert [r.code for r in take(chain, garbage)] == ["SEALED_MALFORMED"]


def test_an_erasure_record_stays_in_clear_on_a_sealed_ledger(keystore: KeyStore) -> None:
    from careledger_core.reference import reference_from_dict

    erasure = reference_from_dict(
        {
            "schema": "careledger.reference/1",
            "kind": "legal-hold",
            "record_id": "ab" * 32,
            "version": 1,
            "recorded_at": "2026-01-01T00:00:00.000000Z",
            "effective_at": "2026-01-01T00:00:00.000000Z",
            "body": {
                "patient_ref": "ab" * 32,
                "status": "active",
                "reason": "litigation",
                "placed_by": "legal",
                "signature": base64.b64encode(bytes(64)).decode(),
            },
        }
    )
    chain, sealer = _chain(keystore)
    assert take(chain, canonical_reference_bytes(erasure)) == []
    block = sealed(chain)
    assert sealer.complete([block]) == 0
    (row,) = event_rows([block], SEALED_REFERENCE)
    assert row[5] == erasure.record_id and row[13:15] == ("", "")
    # and it may not travel sealed: it names no one, readers need it in clear
    envelope = seal_reference_for_ingest(KEY.public, canonical_reference_bytes(erasure))
    assert [r.code for r in take(chain, envelope)] == ["REFERENCE_NOT_SEALED"]
