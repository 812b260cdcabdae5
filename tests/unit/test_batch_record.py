"""Batch records (ADR 0020): one Kafka record ``careledger.signed-batch/1`` per signed batch.

The format pinned by a known-answer vector, round trips, and every way of tampering with
a record: each is refused with ``SourceAuthError`` (quarantine) or ``SourceEnvelopeError``
(dead-letter), and no hostile bytes raise anything else.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from careledger_core.batch_record import (
    batch_root,
    encode_batch_record,
    looks_batch,
    open_batch_record,
    sign_batch_record,
)
from careledger_core.errors import ValidationError
from careledger_core.event import canonical_event_bytes, event_from_dict
from careledger_core.hashing import leaf_hash
from careledger_core.signing import SigningKey
from careledger_core.source import (
    BatchStatement,
    BatchVerifier,
    KeyEventStatement,
    SourceAuthError,
    SourceEnvelopeError,
    SourceRegistry,
    looks_signed,
    sign_batch,
)

KEY = SigningKey.from_seed(bytes(range(32)))
REGISTRAR = SigningKey.from_seed(b"r" * 32)
EPOCH = "0123456789abcdef"
T0 = "2026-11-02T08:00:00.000000Z"

#: The known-answer vector: KEY (seed 00 01 .. 1f), source "ehr", EPOCH, first_seq 7,
#: the three events of ``vector_events()``, signed at T0.
KAT_ROOT = "2275e787ffb7848e3032f9c4a7a678ce086054b06d1e7434a393a40bbc9fe8d0"
KAT_SIGNATURE = (
    "0LTEru4scpj6nrO7lwKsg2NIV4AFUDFIqy4f87jYyKZmt7dzb+56ktZMGn8OWowcnUcYZfTci86URIM7ZpMGAA=="
)
KAT_RECORD_SHA256 = "7365e959309318859943293d5a5dcf82313d9787e3c2ee2972aa985a81064350"


def access_event(i: int, patient: str = "P1") -> bytes:
    return canonical_event_bytes(
        event_from_dict(
            {
                "schema": "careledger.access-event/1",
                "event_id": f"00000000-0000-4000-8000-{i:012d}",
                "occurred_at": T0,
                "recorded_at": T0,
                "event_type": {
                    "system": "http://dicom.nema.org/resources/ontology/DCM",
                    "code": "110110",
                },
                "action": "R",
                "outcome": 0,
                "actor": {"id": "N1", "roles": ["nurse"], "is_requestor": True},
                "source": {"system": "ehr", "type": 4},
                "patient": {"id": patient},
            }
        )
    )


def vector_events() -> list[bytes]:
    return [access_event(1, "P1"), access_event(2, "P2"), access_event(3, "P1")]


def signed(
    events: list[bytes] | None = None,
    *,
    first_seq: int = 7,
    source_id: str = "ehr",
    signed_by: str | None = None,
) -> tuple[BatchStatement, str, bytes]:
    return sign_batch_record(
        KEY,
        source_id=source_id,
        epoch=EPOCH,
        first_seq=first_seq,
        canonical_events=vector_events() if events is None else events,
        signed_at=T0,
        signed_by=signed_by,
    )


def verifier() -> BatchVerifier:
    statement = KeyEventStatement(
        source_id="ehr",
        key_id=KEY.key_id,
        public_key=base64.b64encode(KEY.public_key.raw).decode(),
        status="active",
        valid_from="2026-01-01T00:00:00.000000Z",
        signs_for=("pacs",),
        registrar_key_id=REGISTRAR.key_id,
    )
    return BatchVerifier(SourceRegistry([statement]))


def accept(data: bytes) -> tuple[BatchStatement, tuple[bytes, ...]]:
    """What a receiver does: open the record and check its signature."""
    opened = open_batch_record(data)
    verifier().verify_signature(opened.statement, opened.signature)
    return opened.statement, opened.events


def doc_of(data: bytes) -> dict[str, Any]:
    doc = json.loads(data)
    assert isinstance(doc, dict)
    return doc


# --------------------------------------------------------------------------- the format


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_known_answer_vector() -> None:
    statement, signature, record = signed()
    # the root recomputed by hand (RFC 6962, three leaves: node(node(e7, e8), e9))
    e7, e8, e9 = (
        _sha(b"\x00" + seq.to_bytes(8, "big") + _sha(b"\x00" + ev))
        for seq, ev in zip((7, 8, 9), vector_events(), strict=True)
    )
    assert _sha(b"\x01" + _sha(b"\x01" + e7 + e8) + e9).hex() == KAT_ROOT
    assert statement.root == KAT_ROOT
    assert signature == KAT_SIGNATURE
    assert hashlib.sha256(record).hexdigest() == KAT_RECORD_SHA256
    assert record.startswith(b'{"events":[' + vector_events()[0] + b",")
    assert (
        b'"schema":"careledger.signed-batch/1","signature":"' + signature.encode() + b'"'
    ) in record


def test_same_statement_and_signature_as_per_event_signing() -> None:
    """A batch record signs exactly what ``sign_batch`` signed for per-event records."""
    events = vector_events()
    statement, signature, _record = signed(events, signed_by="gw")
    attestations = sign_batch(
        KEY,
        source_id="ehr",
        epoch=EPOCH,
        first_seq=7,
        event_leaf_hashes=[leaf_hash(e) for e in events],
        signed_at=T0,
        signed_by="gw",
    )
    assert attestations[0].statement == statement and attestations[0].signature == signature
    assert batch_root(7, [leaf_hash(e) for e in events]).hex() == statement.root


def test_round_trip() -> None:
    events = vector_events()
    statement, signature, record = signed(events)
    assert looks_batch(record) and not looks_signed(record)
    assert record == encode_batch_record(statement, signature, events)
    opened = open_batch_record(record)
    assert opened.statement == statement and opened.signature == signature
    assert opened.events == tuple(events)
    assert opened.leaf_hashes == tuple(leaf_hash(e) for e in events)
    assert (statement.first_seq, statement.size, statement.last_seq) == (7, 3, 9)
    verifier().verify_signature(opened.statement, opened.signature)


def test_signing_refuses_an_empty_batch_and_bad_statement_fields() -> None:
    with pytest.raises(ValidationError):
        signed([])
    with pytest.raises(ValidationError):
        signed(first_seq=0)
    with pytest.raises(ValidationError):
        sign_batch_record(
            KEY, source_id="ehr", epoch="xyz", first_seq=1, canonical_events=[b"{}"], signed_at=T0
        )
    with pytest.raises(ValidationError):
        signed(source_id="")
    with pytest.raises(ValidationError):
        encode_batch_record(signed()[0], signed()[1], vector_events()[:2])


def test_a_relayed_batch_names_its_signer() -> None:
    statement, _sig, record = signed(source_id="pacs", signed_by="ehr")
    got, _events = accept(record)
    assert got == statement and (got.source_id, got.signed_by) == ("pacs", "ehr")


events_strategy = st.lists(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.one_of(st.integers(-(2**53), 2**53), st.text(max_size=20), st.booleans()),
        max_size=4,
    ).map(lambda d: msgspec.json.Encoder(order="sorted").encode(d)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(events=events_strategy, first_seq=st.integers(1, 2**40))
def test_any_batch_round_trips(events: list[bytes], first_seq: int) -> None:
    statement, signature, record = signed(events, first_seq=first_seq)
    opened = open_batch_record(record)
    assert (opened.statement, opened.signature, opened.events) == (
        statement,
        signature,
        tuple(events),
    )


# --------------------------------------------------------------------------- attacks


def with_events(record: bytes, events: list[bytes]) -> bytes:
    """The record with its statement and signature, carrying ``events`` instead."""
    opened = open_batch_record(record)
    return msgspec.json.Encoder(order="sorted").encode(
        {
            "events": [msgspec.Raw(e) for e in events],
            "schema": "careledger.signed-batch/1",
            "signature": opened.signature,
            "statement": opened.statement,
        }
    )


def other_statement(record: bytes, **changes: Any) -> bytes:
    opened = open_batch_record(record)
    st_doc = msgspec.to_builtins(opened.statement)
    st_doc.update(changes)
    return msgspec.json.Encoder(order="sorted").encode(
        {
            "events": [msgspec.Raw(e) for e in opened.events],
            "schema": "careledger.signed-batch/1",
            "signature": opened.signature,
            "statement": st_doc,
        }
    )


def refused(data: bytes) -> SourceAuthError:
    with pytest.raises(SourceAuthError) as caught:
        accept(data)
    return caught.value


def test_an_altered_event_is_refused() -> None:
    _st, _sig, record = signed()
    events = vector_events()
    events[1] = events[1].replace(b'"P2"', b'"P9"')
    assert refused(with_events(record, events)).code == "BAD_PROOF"


def test_a_removed_event_is_refused() -> None:
    _st, _sig, record = signed()
    err = refused(with_events(record, vector_events()[:2]))
    assert err.code == "BAD_PROOF" and "holds 2 events" in str(err)


def test_an_added_event_is_refused() -> None:
    _st, _sig, record = signed()
    err = refused(with_events(record, [*vector_events(), access_event(4)]))
    assert err.code == "BAD_PROOF"


def test_reordered_events_are_refused() -> None:
    _st, _sig, record = signed()
    a, b, c = vector_events()
    assert refused(with_events(record, [b, a, c])).code == "BAD_PROOF"


def test_a_duplicated_event_is_refused() -> None:
    _st, _sig, record = signed()
    a, _b, c = vector_events()
    assert refused(with_events(record, [a, a, c])).code == "BAD_PROOF"


def test_a_removed_event_with_a_matching_size_is_refused() -> None:
    """Dropping an event and shrinking ``size`` to match: the root no longer fits."""
    _st, _sig, record = signed()
    shrunk = other_statement(with_events(record, vector_events()), size=2)
    opened_doc = doc_of(shrunk)
    opened_doc["events"] = opened_doc["events"][:2]
    data = msgspec.json.Encoder(order="sorted").encode(opened_doc)
    assert refused(data).code == "BAD_PROOF"


def test_a_shifted_sequence_number_is_refused() -> None:
    """The statement's first_seq is bound into every entry: moving it breaks the root."""
    _st, _sig, record = signed()
    assert refused(other_statement(record, first_seq=8)).code == "BAD_PROOF"


@pytest.mark.parametrize(
    "changes",
    [
        {"source_id": "lab"},
        {"epoch": "fedcba9876543210"},
        {"signed_at": "2026-11-02T08:00:00.000001Z"},
        {"signed_by": "ehr"},
        {"key_id": "00" * 8},
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_changed_statement_field_is_refused(changes: dict[str, Any]) -> None:
    """Fields outside the root: the signature no longer verifies (or names no key)."""
    _st, _sig, record = signed()
    err = refused(other_statement(record, **changes))
    assert err.code in ("BAD_SIGNATURE", "UNKNOWN_KEY")


def test_a_statement_replayed_over_other_events_is_refused() -> None:
    _st, _sig, record = signed()
    others = [access_event(10), access_event(11), access_event(12)]
    assert refused(with_events(record, others)).code == "BAD_PROOF"


def test_a_forged_signature_is_refused() -> None:
    _st, _sig, record = signed()
    doc = doc_of(record)
    sig = base64.b64decode(doc["signature"])
    doc["signature"] = base64.b64encode(bytes([sig[0] ^ 1]) + sig[1:]).decode()
    data = msgspec.json.Encoder(order="sorted").encode(
        {**doc, "events": [msgspec.Raw(e) for e in vector_events()]}
    )
    assert refused(data).code == "BAD_SIGNATURE"


def test_a_non_canonical_envelope_opens_to_the_same_batch() -> None:
    """The envelope is not signed: spaces or another member order change nothing that
    matters (what is accepted is exactly the signed statement and events)."""
    statement, _sig, record = signed()
    doc = doc_of(record)
    events = b",".join(vector_events())
    spaced = (
        b'{ "statement" : '
        + msgspec.json.encode(doc["statement"])
        + b' ,\n "signature": "'
        + doc["signature"].encode()
        + b'", "events" : [ '
        + events.replace(b"},{", b"} , {")
        + b' ] , "schema" : "careledger.signed-batch/1" }'
    )
    assert looks_batch(spaced)
    assert accept(spaced) == (statement, tuple(vector_events()))


def test_a_non_canonical_event_is_refused() -> None:
    """Events are hashed as they stand: the same event re-serialised is another leaf."""
    _st, _sig, record = signed()
    a, b, c = vector_events()
    spaced = json.dumps(json.loads(b), indent=1).encode()
    assert refused(with_events(record, [a, spaced, c])).code == "BAD_PROOF"


def test_a_duplicated_member_cannot_smuggle_events() -> None:
    """JSON with ``events`` twice: whichever one the decoder keeps, only the signed
    events are accepted."""
    _st, _sig, record = signed()
    others = b"[" + b",".join([access_event(20), access_event(21), access_event(22)]) + b"]"
    evil = record[:1] + b'"events":' + others + b"," + record[1:]
    assert accept(evil)[1] == tuple(vector_events())
    evil_last = record[:-1] + b',"events":' + others + b"}"
    with pytest.raises(SourceAuthError):
        accept(evil_last)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: {**d, "extra": 1},
        lambda d: {**d, "statement": {**d["statement"], "extra": 1}},
        lambda d: {**d, "schema": "careledger.signed-batch/2"},
        lambda d: {k: v for k, v in d.items() if k != "signature"},
        lambda d: {**d, "events": []},
        lambda d: {**d, "signature": "not base64"},
        lambda d: {**d, "statement": {**d["statement"], "size": 0}},
        lambda d: {
            **d,
            "statement": {**d["statement"], "signed_at": "2026-02-30T00:00:00.000000Z"},
        },
        lambda d: {**d, "statement": {**d["statement"], "root": "AB" * 32}},
    ],
    ids=[
        "unknown member",
        "unknown statement member",
        "other schema",
        "no signature",
        "no events",
        "signature not base64",
        "size 0",
        "impossible signed_at",
        "root not lowercase hex",
    ],
)
def test_a_malformed_envelope_is_an_envelope_error(mutate: Any) -> None:
    _st, _sig, record = signed()
    doc = mutate(doc_of(record))
    with pytest.raises(SourceEnvelopeError):
        open_batch_record(json.dumps(doc).encode())


HOSTILE = [
    b"",
    b"null",
    b"[]",
    b"{}",
    b"\xff\xfe\x00",
    b'{"events":[',
    b'{"events":[' + b"[" * 100_000 + b"]" * 100_000 + b'],"schema":"careledger.signed-batch/1"}',
    b'{"statement":' + b'{"a":' * 50_000,
    b'{"events":[1e999999],"schema":"careledger.signed-batch/1"}',
    b'{"events":[NaN]}',
    b'{"events":["\\ud800"],"schema":"careledger.signed-batch/1"}',
]


@pytest.mark.parametrize("data", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_bytes_raise_only_envelope_or_auth_errors(data: bytes) -> None:
    with pytest.raises((SourceEnvelopeError, SourceAuthError)):
        open_batch_record(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_mutation_is_refused_or_changes_nothing(data: st.DataObject) -> None:
    """Flip, drop or insert bytes anywhere in a record: it is refused with a source
    error, or what is accepted is exactly the signed statement and events (e.g. the
    unused low bits of the signature's last base64 character)."""
    statement, _sig, record = signed()
    edits = data.draw(
        st.lists(
            st.tuples(
                st.sampled_from(["flip", "drop", "insert"]),
                st.integers(0, len(record) - 1),
                st.integers(1, 255),
            ),
            min_size=1,
            max_size=3,
        )
    )
    mutated = bytearray(record)
    for kind, where, byte in edits:
        where = min(where, len(mutated) - 1)
        if kind == "flip":
            mutated[where] ^= byte
        elif kind == "drop":
            del mutated[where]
        else:
            mutated.insert(where, byte)
    try:
        got = accept(bytes(mutated))
    except (SourceEnvelopeError, SourceAuthError):
        return
    assert got == (statement, tuple(vector_events()))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600))
def test_random_bytes_raise_only_envelope_or_auth_errors(data: bytes) -> None:
    with pytest.raises((SourceEnvelopeError, SourceAuthError)):
        accept(data)


@settings(max_examples=200, deadline=None)
@given(prefix=st.binary(max_size=40))
def test_random_bytes_after_a_batch_prefix_raise_only_source_errors(prefix: bytes) -> None:
    data = b'{"events":[' + prefix + b'],"schema":"careledger.signed-batch/1"}'
    with pytest.raises((SourceEnvelopeError, SourceAuthError)):
        accept(data)


@pytest.mark.parametrize(
    ("data", "claims"),
    [
        (b'{"schema":"careledger.signed-batch/1","events":[{}]}', True),  # first
        (b'{"events":[{}],"schema":"careledger.signed-batch/1","x":1}', True),  # sorted
        (b'{"events":[{"a":"careledger.signed-batch/1"}],"schema":"y"}', True),  # a claim
        (b'{"events":[{}],"schema":"careledger.signed-batch/2"}', False),
        (b'{"action":"R","schema":"careledger.signed-batch/1"}', False),  # one event
        (b'{"events":[]}', False),
        (b"", False),
    ],
)
def test_what_claims_to_be_a_batch_record_wherever_its_schema_stands(
    data: bytes, claims: bool
) -> None:
    """Where the schema stands does not change the answer (it is searched from the end)."""
    assert looks_batch(data) is claims
    padded = data.replace(b'"events":[{}]', b'"events":[' + b'{"a":"' + b"x" * 100_000 + b'"}]')
    assert looks_batch(padded) is claims
