"""Sealed events (ADR 0037): the sealed document a source signs, the ingest ciphertext it
seals to the processor, and the processor opening it, named after the attacks of someone
who can write to the events topic (but holds neither the source's key nor the ingest
key)."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from careledger.ingest_keys import (
    IngestSealer,
    load_ingest_key,
    load_ingest_public_key,
    write_ingest_key,
)
from careledger.kafka.batching import SourceBatcher
from careledger.keys import KeyFileError
from careledger_core.batch_record import (
    encode_batch_record,
    open_batch_record,
    read_opened_batch_record,
)
from careledger_core.errors import EventValidationError, ValidationError
from careledger_core.event import AccessEvent, canonical_event_bytes, event_to_dict
from careledger_core.jcs import canonicalize
from careledger_core.jcs import canonicalize as reference_jcs
from careledger_core.sealed_event import (
    SEALED_EVENT_SCHEMA,
    decode_sealed_document,
    decode_sealed_documents,
    ingest_key,
    open_ingest,
    read_sealed_columns,
    sealed_document,
)
from careledger_core.sealing import SealError, canonical, commitment, split
from careledger_core.signing import SigningKey
from careledger_core.source import SourceEnvelopeError
from producers.simulator import HospitalModel, simulate

INGEST = PrivateKey(bytes(range(32)))
PK, SK = bytes(INGEST.public_key), bytes(INGEST)
OTHER = PrivateKey(bytes(range(1, 33)))
EVENTS = list(simulate(HospitalModel(staff=30, patients=80, seed=5), 300, seed=5))
SEALER = IngestSealer(PK)
#: the processor's key for SEALER's records
KEY = ingest_key(SEALER.public, SK)


def seal_for_ingest(event: AccessEvent, _pk: bytes = PK) -> tuple[bytes, bytes]:
    return SEALER.seal(event)


def open_ingest_box(box: bytes, _pk: bytes, _sk: bytes, document: bytes):  # type: ignore[no-untyped-def]
    return open_ingest(KEY, document, box)


def _identifiers(e: AccessEvent) -> list[str]:
    found = [e.patient.id, e.actor.id, *([e.actor.name] if e.actor.name else [])]
    if e.client is not None:
        found.append(e.client.address)
    return [v for v in found if len(v) >= 4]


def test_a_sealed_event_opens_to_the_event_the_source_sent_byte_for_byte() -> None:
    for event in EVENTS:
        document, box = seal_for_ingest(event, PK)
        doc, canonical = decode_sealed_document(document)
        assert canonical == document and doc.schema == SEALED_EVENT_SCHEMA
        assert doc.event_id == event.event_id and doc.action == event.action
        opened = open_ingest_box(box, PK, SK, document)
        assert canonical_event_bytes(opened.event) == canonical_event_bytes(event)
        assert commitment(opened.salt, opened.sensitive).hex() == doc.sealed_commitment


def test_the_signed_document_and_the_box_name_no_one() -> None:
    for event in EVENTS:
        document, box = seal_for_ingest(event, PK)
        for identifier in _identifiers(event):
            assert identifier.encode() not in document
            assert identifier.encode() not in box


def test_two_seals_of_one_event_share_nothing_but_the_public_part() -> None:
    """A fresh salt per seal: the commitment does not let anyone test a guessed identity
    against the ledger, nor link two events of one patient."""
    event = EVENTS[0]
    (a, box_a), (b, box_b) = seal_for_ingest(event, PK), seal_for_ingest(event, PK)
    da, db = json.loads(a), json.loads(b)
    assert da.pop("sealed_commitment") != db.pop("sealed_commitment") and da == db
    assert box_a != box_b


def test_a_ciphertext_swapped_with_another_events_does_not_open_for_this_document() -> None:
    doc_a, _box_a = seal_for_ingest(EVENTS[0], PK)
    _doc_b, box_b = seal_for_ingest(EVENTS[1], PK)
    with pytest.raises(SealError) as err:
        open_ingest_box(box_b, PK, SK, doc_a)
    assert err.value.code == "SEALED_UNOPENED"


def test_a_ciphertext_sealed_to_another_ingest_key_does_not_open() -> None:
    document, box = IngestSealer(bytes(OTHER.public_key)).seal(EVENTS[0])
    with pytest.raises(SealError) as err:
        open_ingest_box(box, PK, SK, document)
    assert err.value.code == "SEALED_UNOPENED"


def test_the_canonical_fast_path_is_rfc_8785_on_every_simulated_part() -> None:
    for event in EVENTS:
        public, sensitive = split(event_to_dict(event))
        assert canonical(sensitive) == reference_jcs(sensitive)
        assert canonical(public) == reference_jcs(public)


@pytest.mark.parametrize("cut", [0, 1, 40, 81])
def test_a_truncated_or_empty_box_is_refused_without_a_crash(cut: int) -> None:
    document, box = seal_for_ingest(EVENTS[0], PK)
    with pytest.raises(SealError) as err:
        open_ingest_box(box[:cut], PK, SK, document)
    assert err.value.code in {"SEALED_MALFORMED", "SEALED_UNOPENED"}


def _forge_box(document: bytes, sensitive_body: bytes, salt: bytes = b"\x05" * 32) -> bytes:
    """What a writer of the events topic can do without the ingest private key: seal
    anything to the public key (with an ephemeral key of their own, here SEALER's)."""
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

    from careledger_core.hashing import leaf_hash
    from careledger_core.sealed_event import ingest_nonce

    leaf = leaf_hash(document)
    return bytes(
        crypto_aead_xchacha20poly1305_ietf_encrypt(
            salt + sensitive_body, leaf, ingest_nonce(leaf), KEY
        )
    )


def test_a_forged_box_does_not_open_the_signed_commitment() -> None:
    """The ingest key is public: anyone can seal to it. The commitment signed by the
    source is what binds the sensitive part: a forged box names another patient in vain."""
    document, _ = seal_for_ingest(EVENTS[0], PK)
    _public, sensitive = split(event_to_dict(EVENTS[0]))
    sensitive["patient"] = {"id": "P-SOMEONE-ELSE"}
    with pytest.raises(SealError) as err:
        open_ingest_box(_forge_box(document, canonicalize(sensitive)), PK, SK, document)
    assert err.value.code == "COMMITMENT_MISMATCH"


def test_a_box_of_json_that_is_not_canonical_is_refused() -> None:
    public, sensitive = split(event_to_dict(EVENTS[0]))
    salt = b"\x07" * 32
    document = sealed_document(public, commitment(salt, sensitive))
    loose = json.dumps(sensitive, indent=1).encode()
    with pytest.raises(SealError) as err:
        open_ingest_box(_forge_box(document, loose, salt), PK, SK, document)
    assert err.value.code == "SEALED_MALFORMED"


def test_a_sensitive_part_that_is_not_a_valid_event_is_refused_even_when_committed() -> None:
    """A source (or its key's thief) commits to an invalid patient id: the processor
    rebuilds the event and validates it like any other."""
    public, sensitive = split(event_to_dict(EVENTS[0]))
    sensitive["patient"] = {"id": "P\u200b-1"}  # an invisible character
    salt = b"\x09" * 32
    document = sealed_document(public, commitment(salt, sensitive))
    with pytest.raises(EventValidationError):
        open_ingest_box(_forge_box(document, canonicalize(sensitive), salt), PK, SK, document)


def test_a_sensitive_part_cannot_overwrite_a_public_field() -> None:
    public, sensitive = split(event_to_dict(EVENTS[0]))
    sensitive["action"] = "D"  # not a sensitive path: the signed action stands
    salt = b"\x0a" * 32
    document = sealed_document(public, commitment(salt, sensitive))
    with pytest.raises(SealError) as err:
        open_ingest_box(_forge_box(document, canonicalize(sensitive), salt), PK, SK, document)
    assert err.value.code == "BAD_INPUT"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("patient", {"id": "MRN-1"}),
        ("client", {"address": "10.0.0.1", "address_type": "ip"}),
        ("query", "c2VsZWN0"),
        ("session_ref", "s-1"),
    ],
)
def test_a_document_that_names_someone_is_refused(field: str, value: object) -> None:
    document, _ = seal_for_ingest(EVENTS[0], PK)
    doc = json.loads(document)
    doc[field] = value
    with pytest.raises(EventValidationError):
        decode_sealed_document(canonicalize(doc))


def test_an_actor_id_in_the_document_is_refused() -> None:
    document, _ = seal_for_ingest(EVENTS[0], PK)
    doc = json.loads(document)
    doc["actor"]["id"] = "dr.house"
    with pytest.raises(EventValidationError):
        decode_sealed_document(canonicalize(doc))


def test_a_document_not_in_canonical_bytes_is_refused() -> None:
    document, _ = seal_for_ingest(EVENTS[0], PK)
    with pytest.raises(EventValidationError, match="canonical"):
        decode_sealed_document(json.dumps(json.loads(document), indent=1).encode())


def test_sealed_document_refuses_a_public_part_that_still_names_someone() -> None:
    public, _ = split(event_to_dict(EVENTS[0]))
    public["patient"] = {"id": "MRN-1"}
    with pytest.raises(EventValidationError):
        sealed_document(public, b"\x00" * 32)


@hyp_settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400))
def test_hostile_bytes_never_crash_the_opener(data: bytes) -> None:
    document, _ = seal_for_ingest(EVENTS[0], PK)
    with pytest.raises((SealError, ValidationError)):
        open_ingest_box(data, PK, SK, document)
    with pytest.raises(ValidationError):
        decode_sealed_document(data)


def _alone(documents: list[bytes]) -> list[object] | None:
    """What decoding each document alone gives: the documents, or None if one fails."""
    try:
        return [decode_sealed_document(d)[0] for d in documents]
    except ValidationError:
        return None


def test_a_batch_of_documents_decodes_in_one_call_exactly_as_each_decodes_alone() -> None:
    documents = [seal_for_ingest(e, PK)[0] for e in EVENTS[:40]]
    assert decode_sealed_documents(documents) == _alone(documents)
    assert decode_sealed_documents([]) == []
    doc = json.loads(documents[0])
    named = dict(doc, actor={**doc["actor"], "id": "dr.house"})
    hostile = [
        json.dumps(doc, indent=1).encode(),  # not canonical
        canonicalize(named),  # names someone
        canonicalize(dict(doc, occurred_at="2026-02-30T00:00:00.000000Z")),  # no such day
        documents[1] + b"," + documents[2],  # two documents as one entry
        documents[1][:-1],  # cut short
        b"",
        b"null",
    ]
    for bad in hostile:
        for at in (0, 17, 39):
            batch = [*documents[:at], bad, *documents[at + 1 :]]
            assert decode_sealed_documents(batch) is None, (bad[:60], at)
            assert _alone(batch) is None


def test_the_columns_read_without_validation_are_the_validated_documents_columns() -> None:
    documents = [seal_for_ingest(e, PK)[0] for e in EVENTS[:40]]
    decoded = decode_sealed_documents(documents)
    assert decoded is not None
    columns = read_sealed_columns(documents)
    assert columns is not None and len(columns) == len(decoded)
    for c, d in zip(columns, decoded, strict=True):
        assert (c.event_id, c.occurred_at, c.action, c.outcome, c.source.system) == (
            d.event_id,
            d.occurred_at,
            d.action,
            d.outcome,
            d.source.system,
        )
        assert c.sealed_commitment == d.sealed_commitment
    assert read_sealed_columns([]) == []


def test_columns_that_cannot_be_read_send_the_caller_back_to_validating() -> None:
    """Not a validation (the worker's full decode is): but bytes that do not hold one
    document with the columns' types are never read as if they did."""
    documents = [seal_for_ingest(e, PK)[0] for e in EVENTS[:10]]
    doc = json.loads(documents[0])
    hostile = [
        documents[1] + b"," + documents[2],  # two documents as one entry
        documents[1][:-1],  # cut short
        canonicalize({k: v for k, v in doc.items() if k != "sealed_commitment"}),
        canonicalize(dict(doc, action="X")),
        canonicalize(dict(doc, outcome=3)),
        canonicalize(dict(doc, source={"type": 1})),
        b"",
        b"null",
    ]
    for bad in hostile:
        for at in (0, 9):
            batch = [*documents[:at], bad, *documents[at + 1 :]]
            assert read_sealed_columns(batch) is None, (bad[:60], at)


@hyp_settings(max_examples=80, deadline=None)
@given(st.integers(min_value=0, max_value=9), st.binary(max_size=200))
def test_a_batch_with_hostile_bytes_in_it_is_never_taken_where_one_alone_would_not_be(
    at: int, data: bytes
) -> None:
    documents = [seal_for_ingest(e, PK)[0] for e in EVENTS[:10]]
    documents[at] = data
    decoded = decode_sealed_documents(documents)
    assert decoded is None or decoded == _alone(documents)


# --------------------------------------------------------------- batch records, SDK


def _sealed_batch(n: int) -> tuple[SourceBatcher, bytes]:
    """A sealing batcher and the one batch record it made of the first ``n`` events."""
    batcher = SourceBatcher(
        SigningKey.from_seed(b"\x01" * 32),
        "ehr",
        "00000000000000e1",
        max_events=10,
        max_age_s=1.0,
        seal_to=PK,
    )
    for e in EVENTS[:n]:
        value, box = batcher.encode(e)
        batcher.add(value, b"", 0.0, None, box)
    batch = batcher.take("ehr", "2026-12-05T00:00:00.000000Z")
    assert batch is not None
    ((_k, record),) = batch.records
    return batcher, record


def test_a_sealed_batch_record_carries_one_box_per_event_and_a_plain_one_none() -> None:
    batcher, record = _sealed_batch(5)
    opened = open_batch_record(record)
    assert len(opened.sealed) == 5
    key = ingest_key(opened.sealed_key, SK)
    for document, box, event in zip(opened.events, opened.sealed, EVENTS[:5], strict=True):
        assert open_ingest(key, document, box).event == event
    assert opened.sealed_key == batcher._sealer.public  # type: ignore[union-attr]
    plain = encode_batch_record(opened.statement, opened.signature, opened.events)
    assert b'"sealed":' not in plain and b'"sealed_key"' not in plain
    assert open_batch_record(plain).sealed == ()


def test_a_batch_record_with_a_ciphertext_too_few_no_key_or_not_base64_is_refused_whole() -> None:
    record = msgspec.json.decode(_sealed_batch(3)[1])
    short = {**record, "sealed": record["sealed"][:2]}
    with pytest.raises(SourceEnvelopeError, match="ingest ciphertexts"):
        open_batch_record(msgspec.json.encode(short, order="sorted"))
    garbled = {**record, "sealed": ["!!!", *record["sealed"][1:]]}
    with pytest.raises(SourceEnvelopeError, match="base64"):
        open_batch_record(msgspec.json.encode(garbled, order="sorted"))
    keyless = {k: v for k, v in record.items() if k != "sealed_key"}
    with pytest.raises(SourceEnvelopeError, match="sealed_key"):
        open_batch_record(msgspec.json.encode(keyless, order="sorted"))


def test_a_record_read_with_the_workers_leaves_is_the_record_opened_without_its_ciphertexts() -> (
    None
):
    """``read_opened_batch_record`` (ADR 0039): what the event loop reads of a sealed record
    its worker opened from the same bytes; anything that does not fit is refused (the loop
    then opens the record in full)."""
    _batcher, record = _sealed_batch(4)
    opened = open_batch_record(record)
    read = read_opened_batch_record(record, opened.leaf_hashes)
    assert read == dataclasses.replace(opened, sealed=(), sealed_ahead=True)
    for leaves in (opened.leaf_hashes[:3], [*opened.leaf_hashes, bytes(32)]):
        with pytest.raises(SourceEnvelopeError, match="does not fit"):
            read_opened_batch_record(record, leaves)
    with pytest.raises(SourceEnvelopeError, match="does not fit"):
        read_opened_batch_record(record, [h[:31] for h in opened.leaf_hashes])
    plain = encode_batch_record(opened.statement, opened.signature, opened.events)
    with pytest.raises(SourceEnvelopeError, match="does not fit"):  # no ciphertexts
        read_opened_batch_record(plain, opened.leaf_hashes)
    doc = msgspec.json.decode(record)
    for bad in ("!!!", base64.b64encode(b"short").decode()):
        with pytest.raises(SourceEnvelopeError, match="sealed"):
            read_opened_batch_record(
                msgspec.json.encode({**doc, "sealed_key": bad}, order="sorted"),
                opened.leaf_hashes,
            )
    with pytest.raises(SourceEnvelopeError, match="invalid signed batch record"):
        read_opened_batch_record(b"not json", opened.leaf_hashes)


def test_a_sealing_batcher_takes_sealed_events_only_and_batch_records_only() -> None:
    key = SigningKey.from_seed(b"\x01" * 32)
    with pytest.raises(ValidationError, match="batch records only"):
        SourceBatcher(
            key, "ehr", "e1", max_events=5, max_age_s=1.0, record_format="event", seal_to=PK
        )
    sealing = SourceBatcher(key, "ehr", "e1", max_events=5, max_age_s=1.0, seal_to=PK)
    with pytest.raises(ValidationError, match="sealed events only"):
        sealing.add(canonical_event_bytes(EVENTS[0]), b"", 0.0)
    plain = SourceBatcher(key, "ehr", "e1", max_events=5, max_age_s=1.0)
    with pytest.raises(ValidationError, match="sealed events only"):
        plain.add(canonical_event_bytes(EVENTS[0]), b"", 0.0, None, b"box")


def test_the_ingest_key_is_owner_only_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "ingest.key"
    made = write_ingest_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_ingest_key(path, env={}) == made
    assert load_ingest_public_key(tmp_path / "ingest.key.pub") == made.public
    assert made.private.hex() not in repr(made)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_ingest_key(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="group or others"):
        load_ingest_key(path, env={})
    text = base64.b16encode(made.private).decode().lower()
    assert load_ingest_key(None, env={"CARELEDGER_INGEST_KEY_TEXT": text}) == made
    with pytest.raises(KeyFileError, match="64 hex"):
        load_ingest_key(None, env={"CARELEDGER_INGEST_KEY_TEXT": "zz"})
