"""Sealed batch records through the processor's gate and chainer (ADR 0037), without Kafka,
with a real SoftHSM2 token: what a sealed ledger chains, what it refuses whole or alone,
and that neither kind of ledger takes the other's records."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable

import msgspec
import pytest
from nacl.public import PrivateKey

from careledger.ingest_keys import IngestKey, IngestSealer
from careledger.keystore import KeyStore, local_token
from careledger.storage.kinds import SEALED, SealedRecord
from careledger.storage.store import event_rows
from careledger_core.batch_record import encode_batch_record
from careledger_core.event import AccessEvent, canonical_event_bytes
from careledger_core.hashing import leaf_hash
from careledger_core.sealed_event import key_subject
from careledger_core.sealing import patient_ref, unseal
from processors.sealing import EventOpener
from producers.simulator import HospitalModel, simulate
from tests.softhsm import softhsm_dir
from tests.unit.test_batch_chaining import chain_for, gate_for, sealed, sign, take

INGEST = PrivateKey(bytes(range(7, 39)))
KEY = IngestKey(bytes(INGEST.public_key), bytes(INGEST))
EVENTS = list(simulate(HospitalModel(staff=20, patients=40, seed=11), 30, seed=11))


@pytest.fixture
def keystore() -> KeyStore:
    store = KeyStore(local_token(softhsm_dir(), f"g{uuid.uuid4().hex[:12]}"), create=True)
    yield store  # type: ignore[misc]
    store.close()


def _sealed_record(
    events: list[AccessEvent],
    swap: tuple[int, int] | None = None,
    edit: Callable[[list[bytes]], None] | None = None,
) -> bytes:
    """A signed batch record of ``events`` sealed to the ingest key; ``swap``: two
    events' boxes exchanged; ``edit``: changes the documents before they are signed."""
    sealer = IngestSealer(KEY.public)
    pairs = [sealer.seal(e) for e in events]
    documents = [d for d, _ in pairs]
    boxes = [b for _, b in pairs]
    if swap is not None:
        i, j = swap
        boxes[i], boxes[j] = boxes[j], boxes[i]
    if edit is not None:
        edit(documents)
    statement, signature = sign(documents)
    return encode_batch_record(statement, signature, documents, boxes, sealer.public)


def test_a_sealed_batch_is_chained_with_pseudonyms_and_parts_that_open(
    keystore: KeyStore,
) -> None:
    gate = gate_for()
    gate.opener = EventOpener(KEY, keystore)
    chain = chain_for(gate, kind=SEALED)
    assert take(chain, _sealed_record(EVENTS[:10])) == []
    block = sealed(chain)
    assert len(block.events) == 10
    rows = event_rows([block], SEALED)
    for chained, row, event in zip(block.events, rows, EVENTS[:10], strict=True):
        record = chained.event
        assert isinstance(record, SealedRecord)
        if len(event.patient.id) >= 4:  # not the "-" of an event about no patient
            assert event.patient.id.encode() not in chained.canonical
        lookup = keystore.lookup(*key_subject(event))
        key = keystore.key(lookup, bytes.fromhex(record.data_key_id), "test")
        assert key is not None
        assert record.patient_ref == patient_ref(key.key)
        assert record.actor_ref == keystore.actor_ref(event.actor.id)
        commitment = bytes.fromhex(record.document.sealed_commitment)
        _salt, sensitive = unseal(
            key.key, leaf_hash(chained.canonical), base64.b64decode(record.sealed), commitment
        )
        assert sensitive["patient"]["id"] == event.patient.id
        assert record.patient_ref in row and record.sealed in row
    # one key per patient, reused across events
    patients = {key_subject(e) for e in EVENTS[:10]}
    assert keystore.count() == len(patients)


def test_a_swapped_box_is_refused_alone_and_its_entry_kept_for_verify(
    keystore: KeyStore,
) -> None:
    gate = gate_for()
    gate.opener = EventOpener(KEY, keystore)
    chain = chain_for(gate, kind=SEALED)
    refused = take(chain, _sealed_record(EVENTS[:6], swap=(1, 4)))
    assert sorted((r.batch_index, r.code) for r in refused) == [
        (1, "SEALED_UNOPENED"),
        (4, "SEALED_UNOPENED"),
    ]
    block = sealed(chain)
    assert [e.batch_index for e in block.events] == [0, 2, 3, 5]
    batch = block.events[0].batch
    assert batch is not None and [i for i, _ in batch.skipped] == [1, 4]


def test_a_malformed_document_in_a_sealed_batch_is_refused_alone_with_its_reason(
    keystore: KeyStore,
) -> None:
    # the batch is decoded in one call when every document is valid; one that is not
    # (signed as it is by a buggy source) sends the batch down the one-by-one path
    gate = gate_for()
    gate.opener = EventOpener(KEY, keystore)
    chain = chain_for(gate, kind=SEALED)
    documents: list[bytes] = []

    def reindent(signed: list[bytes]) -> None:
        signed[2] = json.dumps(json.loads(signed[2]), indent=1).encode()
        documents.extend(signed)

    refused = take(chain, _sealed_record(EVENTS[:5], edit=reindent))
    assert [(r.batch_index, r.code) for r in refused] == [(2, "EVENT_INVALID")], refused
    assert "canonical" in refused[0].reason and refused[0].value == documents[2]
    block = sealed(chain)
    assert [e.batch_index for e in block.events] == [0, 1, 3, 4]


def test_a_sealed_ledger_refuses_a_batch_in_clear_whole() -> None:
    gate = gate_for()
    gate.opener = EventOpener(KEY, KeyStoreStub())
    chain = chain_for(gate, kind=SEALED)
    plain = [canonical_event_bytes(e) for e in EVENTS[:3]]
    statement, signature = sign(plain)
    (refused,) = take(chain, encode_batch_record(statement, signature, plain))
    assert "this ledger is sealed" in refused.reason and refused.batch_index is None


def test_a_ledger_in_clear_refuses_a_sealed_batch_whole() -> None:
    chain = chain_for(gate_for())  # no opener: seal_events is off
    (refused,) = take(chain, _sealed_record(EVENTS[:3]))
    assert "this ledger is not sealed" in refused.reason
    assert chain.pending == []


def test_a_sealed_batch_with_its_boxes_removed_is_refused_whole() -> None:
    gate = gate_for()
    gate.opener = EventOpener(KEY, KeyStoreStub())
    chain = chain_for(gate, kind=SEALED)
    record = msgspec.json.decode(_sealed_record(EVENTS[:3]))
    del record["sealed"]
    (refused,) = take(chain, msgspec.json.encode(record, order="sorted"))
    assert "sealed_key" in refused.reason  # the key without its ciphertexts
    del record["sealed_key"]
    (refused,) = take(chain, msgspec.json.encode(record, order="sorted"))
    assert "this ledger is sealed" in refused.reason


class KeyStoreStub:
    """Never reached: the records of these tests are refused before any key is used."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the key store was used ({name}) for a refused record")
