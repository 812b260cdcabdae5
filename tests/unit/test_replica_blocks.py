"""Blocks on the blocks topic and what a replica accepts of them (ADR 0017), no services.

Every chain kind of ``tests.ledger_builder.mixed_ledger`` (signed access events with a
dead letter, the sources chain, staff records, raw records) crosses the wire format and
comes back as the very rows the processor wrote. Then the attacks, each one a record
someone with write access to the blocks topic could produce: every one is refused with
its finding code, none is stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from careledger.storage.block_records import (
    BlockMaterial,
    BlockRecordError,
    WireRecord,
    decode_part,
    encode_block,
    encode_material,
    material_of,
)
from careledger.storage.store import (
    ChainHead,
    SealedBlock,
    attestation_rows,
    event_rows,
    header_rows,
)
from careledger_core.block import BlockHeader, block_hash, header_bytes
from careledger_core.event import decode_event
from careledger_core.signing import SigningKey
from replica.restore import restore_event
from replica.verify import Refused, check_link, verify_material
from tests.ledger_builder import ACCESS_CHAIN, PROCESSOR, TRUSTED, kind_of, mixed_ledger

ATTACKER = SigningKey.from_seed(hashlib.sha256(b"replica attacker key").digest())


@pytest.fixture(scope="module")
def ledger() -> dict[str, list[SealedBlock]]:
    return mixed_ledger()


def rows(block: SealedBlock) -> tuple[Any, ...]:
    kind = kind_of(block.header.chain_id)
    return header_rows([block]), event_rows([block], kind), attestation_rows([block])


def material_from_wire(values: list[bytes]) -> BlockMaterial:
    parts = sorted((decode_part(v) for v in values), key=lambda p: p.part)
    first = parts[0]
    records = tuple(r for p in parts for r in p.records)
    return BlockMaterial(
        first.chain_id,
        first.height,
        first.block_hash,
        bytes(first.header),
        first.signature,
        records,
    )


def test_every_kind_of_block_crosses_the_topic_and_comes_back_row_for_row(
    ledger: dict[str, list[SealedBlock]],
) -> None:
    kinds = set()
    for chain, blocks in ledger.items():
        for block in blocks:
            values = encode_block(block)
            assert len(values) == 1
            again = verify_material(material_from_wire(values), kind_of(chain), TRUSTED)
            assert rows(again) == rows(block)
            kinds.add(kind_of(chain).name)
    assert kinds == {"access-event", "reference", "raw-record"}
    # the signed access events keep their attestations, row for row
    assert any(attestation_rows([b]) for b in ledger[ACCESS_CHAIN])


def test_a_large_block_goes_in_parts_that_each_carry_the_header(
    ledger: dict[str, list[SealedBlock]],
) -> None:
    block = ledger[ACCESS_CHAIN][0]
    values = encode_block(block, max_part_bytes=1)  # one record per part
    parts = [decode_part(v) for v in values]
    assert [p.part for p in parts] == list(range(len(block.events)))
    assert {p.parts for p in parts} == {len(block.events)}
    assert [p.first_index for p in parts] == list(range(len(block.events)))
    assert {bytes(p.header) for p in parts} == {block.header_bytes}
    again = verify_material(material_from_wire(values[::-1]), kind_of(ACCESS_CHAIN), TRUSTED)
    assert rows(again) == rows(block)


@pytest.mark.parametrize(
    "value",
    [b"", b"not json", b"{}", b'{"schema":"careledger.block-record/1"}', b"[1,2,3]"],
    ids=["empty", "garbage", "empty-object", "schema-only", "array"],
)
def test_a_record_that_is_not_a_block_part_is_refused_as_malformed(value: bytes) -> None:
    with pytest.raises(BlockRecordError):
        decode_part(value)


def test_a_part_number_outside_its_block_is_malformed(
    ledger: dict[str, list[SealedBlock]],
) -> None:
    [value] = encode_block(ledger[ACCESS_CHAIN][0])
    doc = msgspec.json.decode(value)
    doc["part"] = 3
    with pytest.raises(BlockRecordError):
        decode_part(msgspec.json.encode(doc))


# --------------------------------------------------------------------------- attacks


def _resigned(block: SealedBlock, key: SigningKey, **changes: Any) -> BlockMaterial:
    header = msgspec.structs.replace(block.header, key_id=key.key_id, **changes)
    m = material_of(block)
    return dataclasses.replace(
        m,
        header=header_bytes(header),
        block_hash=block_hash(header).hex(),
        signature=key.sign_header(header).hex(),
    )


def _record(m: BlockMaterial, i: int, **changes: Any) -> BlockMaterial:
    records = list(m.records)
    records[i] = msgspec.structs.replace(records[i], **changes)
    return dataclasses.replace(m, records=tuple(records))


def _other_event_bytes(block: SealedBlock) -> bytes:
    event = decode_event(block.events[0].canonical)
    forged = msgspec.structs.replace(
        event, actor=msgspec.structs.replace(event.actor, id="someone-else")
    )
    return msgspec.json.Encoder(order="sorted").encode(forged)


ATTACKS: dict[str, tuple[Callable[[SealedBlock], BlockMaterial], str]] = {
    "signed-by-an-unknown-key": (lambda b: _resigned(b, ATTACKER), "KEY_UNKNOWN"),
    "signature-of-another-header": (
        lambda b: dataclasses.replace(
            _resigned(b, PROCESSOR, created_at="2030-01-01T00:00:00.000000Z"),
            signature=b.signature.hex(),
        ),
        "SIGNATURE_INVALID",
    ),
    "signature-not-hex": (
        lambda b: dataclasses.replace(material_of(b), signature="zz"),
        "SIGNATURE_INVALID",
    ),
    "an-event-rewritten": (
        lambda b: _record(
            material_of(b), 0, canonical=msgspec.Raw(_other_event_bytes(b)), attestation=None
        ),
        "MERKLE_ROOT_MISMATCH",
    ),
    "an-event-rewritten-keeping-its-attestation": (
        lambda b: _record(material_of(b), 0, canonical=msgspec.Raw(_other_event_bytes(b))),
        "SOURCE_PROOF_INVALID",
    ),
    "an-event-not-canonical": (
        # the same event, members in declaration order instead of RFC 8785's
        lambda b: _record(
            material_of(b),
            0,
            canonical=msgspec.Raw(msgspec.json.encode(decode_event(b.events[0].canonical))),
        ),
        "EVENT_NOT_CANONICAL",
    ),
    "an-event-left-out": (
        lambda b: dataclasses.replace(material_of(b), records=material_of(b).records[1:]),
        "EVENT_COUNT_MISMATCH",
    ),
    "an-event-moved-to-a-dead-lettered-offset": (
        # block 0 of the access chain dead-letters offset 2: record 2 (offset 3) moved to 2
        lambda b: _record(material_of(b), 2, offset=b.events[2].offset - 1),
        "EVENT_OFFSETS_MISMATCH",
    ),
    "events-swapped": (
        lambda b: dataclasses.replace(
            material_of(b),
            records=(
                material_of(b).records[1],
                material_of(b).records[0],
                *material_of(b).records[2:],
            ),
        ),
        "EVENT_OUT_OF_ORDER",
    ),
    "an-attestation-of-another-event": (
        lambda b: _record(material_of(b), 0, attestation=b.events[1].attestation),
        "SOURCE_PROOF_INVALID",
    ),
    "header-of-another-block-hash": (
        lambda b: dataclasses.replace(material_of(b), block_hash="0" * 64),
        "BLOCK_HASH_MISMATCH",
    ),
    "header-claimed-for-another-height": (
        lambda b: dataclasses.replace(material_of(b), height=b.header.height + 1),
        "BLOCK_HEADER_MISMATCH",
    ),
    "header-bytes-not-canonical": (
        lambda b: dataclasses.replace(
            material_of(b),
            header=msgspec.json.encode(b.header),
            block_hash=hashlib.sha256(msgspec.json.encode(b.header)).hexdigest(),
        ),
        "BLOCK_HEADER_INVALID",
    ),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_forged_block_is_refused_with_its_finding_code(
    attack: str, ledger: dict[str, list[SealedBlock]]
) -> None:
    block = ledger[ACCESS_CHAIN][0]
    forge, code = ATTACKS[attack]
    material = forge(block)
    with pytest.raises(Refused) as refused:
        # and through the wire, as the replica gets it
        verify_material(
            material_from_wire(encode_material(material)), kind_of(ACCESS_CHAIN), TRUSTED
        )
    assert refused.value.code == code, refused.value


def test_a_block_that_does_not_extend_the_head_is_refused(
    ledger: dict[str, list[SealedBlock]],
) -> None:
    b0, b1 = ledger[ACCESS_CHAIN][:2]
    head = ChainHead(ACCESS_CHAIN, 0, b0.block_hash.hex(), b0.header.last_offset)
    check_link(b1, head)  # the genuine next block
    with pytest.raises(Refused) as refused:
        check_link(b1, dataclasses.replace(head, block_hash="ab" * 32))
    assert refused.value.code == "PREV_HASH_MISMATCH"
    with pytest.raises(Refused) as refused:
        check_link(b1, dataclasses.replace(head, last_offset=head.last_offset - 1))
    assert refused.value.code == "OFFSET_GAP"


def test_a_restore_is_ledgered_as_an_access_event_about_no_patient(
    ledger: dict[str, list[SealedBlock]],
) -> None:
    block = ledger[ACCESS_CHAIN][1]
    event = restore_event(block, "dpo@hospital", "run-1", at="2026-12-03T10:00:00.000000Z")
    assert event == restore_event(block, "dpo@hospital", "run-1", at="2026-12-03T10:00:00.000000Z")
    assert event.source.system == "careledger-restore"
    assert event.patient.id == "-" and event.actor.id == "dpo@hospital"
    assert event.object is not None and event.object.id == f"{ACCESS_CHAIN}#1"
    assert event.raw_ref is not None and event.raw_ref.sha256 == block.block_hash.hex()
    other = restore_event(block, "dpo@hospital", "run-2", at="2026-12-03T10:00:00.000000Z")
    assert other.event_id != event.event_id  # each restore run is its own access


def test_wire_records_are_plain_json_with_the_canonical_bytes_verbatim(
    ledger: dict[str, list[SealedBlock]],
) -> None:
    block = ledger[ACCESS_CHAIN][0]
    [value] = encode_block(block)
    assert block.header_bytes in value
    for ev in block.events:
        assert ev.canonical in value
    assert isinstance(msgspec.json.decode(value), dict)
    assert isinstance(BlockHeader, type) and isinstance(WireRecord, type)
