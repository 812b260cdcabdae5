"""Batch records (ADR 0020) in ``verify`` and in replicas, no services.

The standard batch ledger (``tests/batch_ledger.py``: five batch records, one with an
entry dead-lettered alone, one event signed on its own, two records dead-lettered whole)
through the pure checks: fsck of the event rows (offsets shared by a record's events),
the source checks of each batch record (one signature, one root), the wire format of the
blocks topic and what a replica accepts of it, and ``restore`` over real stores (chDB).
Against ClickHouse 18.16 with SQL attacks: tests/integration/test_tamper_batches.py.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from careledger.config import Settings
from careledger.storage.backend import ChdbBackend
from careledger.storage.block_records import (
    BlockMaterial,
    WireBatch,
    decode_part,
    encode_block,
    encode_material,
    material_of,
    stored_block_records,
)
from careledger.storage.compare import compare
from careledger.storage.kinds import ACCESS
from careledger.storage.migrations import migrate_backend
from careledger.storage.store import (
    BATCH_COLUMNS,
    ChainStore,
    SealedBlock,
    attestation_rows,
    batch_rows,
    event_rows,
    header_rows,
)
from careledger_core.block import BlockHeader, block_hash, header_bytes
from careledger_core.chain_tree import ChainTree
from careledger_core.checkpoint import checkpoint_for, format_checkpoint, sign_note
from careledger_core.findings import FindingCode
from careledger_core.hashing import leaf_hash
from careledger_core.reference import SourceHeartbeatBody, SourceKeyBody
from careledger_core.source import (
    Attestation,
    HeartbeatStatement,
    SourceRegistry,
    sign_batch,
    sign_heartbeat,
    verify_key_event,
)
from replica.checkpoints import SignedCheckpoints, accept_note
from replica.restore import apply_restore, plan_restore
from replica.verify import Refused, verify_material
from tests.batch_ledger import Batch, Dead, batch_ledger, chain_of, payloads
from tests.ledger_builder import (
    ACCESS_CHAIN,
    EPOCH,
    ORIGIN,
    PROCESSOR,
    REGISTRAR,
    SOURCE,
    TRUSTED,
    FakeReader,
    StoreLedger,
    key_event_record,
    sources_chain,
)
from verifiers.integrity.fsck import ChainReport, verify_chain
from verifiers.integrity.source_batches import (
    AttestedBatch,
    BatchMember,
    BatchRow,
    parse_skipped,
)
from verifiers.integrity.sources import AttestedEvent, SourceReport, check_sources

C = FindingCode
Where = tuple[str, int | None, int | None]


@pytest.fixture(scope="module")
def blocks() -> list[SealedBlock]:
    return batch_ledger()


# --------------------------------------------------------------------------- fsck


def fsck(reader: FakeReader) -> ChainReport:
    return verify_chain(reader, ACCESS_CHAIN, TRUSTED)


def fsck_where(report: ChainReport) -> set[Where]:
    return {(str(f.code), f.height, f.event_index) for f in report.findings}


def test_a_batch_ledger_passes_fsck(blocks: list[SealedBlock]) -> None:
    report = fsck(FakeReader.of(ACCESS, blocks))
    assert report.findings == [] and report.events == 16
    assert [b.header.event_records for b in blocks] == [3, 2, 1]


def test_an_event_moved_to_the_next_record_of_its_block_is_an_offsets_mismatch(
    blocks: list[SealedBlock],
) -> None:
    reader = FakeReader.of(ACCESS, blocks)
    reader.update_row(ACCESS_CHAIN, 0, 3, kafka_offset=2)  # batch A's last event into B
    report = fsck(reader)
    assert fsck_where(report) == {("EVENT_OFFSETS_MISMATCH", 0, None)}
    [f] = report.findings
    assert (f.details["event_records"], f.details["stored_records"]) == (3, 3)


def test_an_event_moved_to_a_dead_lettered_offset_adds_a_record(
    blocks: list[SealedBlock],
) -> None:
    reader = FakeReader.of(ACCESS, blocks)
    reader.update_row(ACCESS_CHAIN, 0, 3, kafka_offset=1)
    [f] = fsck(reader).findings
    assert f.code == C.EVENT_OFFSETS_MISMATCH and f.height == 0
    assert (f.details["event_records"], f.details["stored_records"]) == (3, 4)


def test_offsets_going_back_inside_a_batch_block_are_out_of_order(
    blocks: list[SealedBlock],
) -> None:
    reader = FakeReader.of(ACCESS, blocks)
    reader.update_row(ACCESS_CHAIN, 1, 1, kafka_offset=5)  # C's middle event at D's offset
    found = fsck_where(fsck(reader))
    assert ("EVENT_OUT_OF_ORDER", 1, 1) in found
    assert all(code == "EVENT_OUT_OF_ORDER" for code, _, _ in found)


def test_an_offset_outside_the_range_of_a_batch_block_is_found_at_its_row(
    blocks: list[SealedBlock],
) -> None:
    reader = FakeReader.of(ACCESS, blocks)
    reader.update_row(ACCESS_CHAIN, 2, 1, kafka_offset=9)
    assert ("EVENT_OFFSET_OUT_OF_RANGE", 2, 1) in fsck_where(fsck(reader))


def test_a_signed_header_whose_records_are_not_its_events_is_found(
    blocks: list[SealedBlock],
) -> None:
    """A processor that signed event_records = 2 for the three records of block 0 (and
    counted one more dead letter to balance the range): the digest is right, the count
    is not."""
    b = blocks[0]
    header = msgspec.structs.replace(b.header, event_records=2, dead_lettered=2)
    wrong = SealedBlock(
        header, header_bytes(header), block_hash(header), PROCESSOR.sign_header(header), b.events
    )
    report = fsck(FakeReader.of(ACCESS, [wrong]))
    assert fsck_where(report) == {("EVENT_OFFSETS_MISMATCH", 0, None)}
    assert report.findings[0].details["stored_records"] == 3


# --------------------------------------------------------------------------- sources


def registry() -> SourceRegistry:
    from careledger_core.reference import decode_and_canonicalize_reference

    rec, _ = decode_and_canonicalize_reference(key_event_record())
    body = rec.parsed
    assert isinstance(body, SourceKeyBody)
    verify_key_event(body.statement, body.signature, {REGISTRAR.key_id: REGISTRAR.public_key})
    return SourceRegistry([body.statement])


def _read(value: Any) -> Any:
    return value.encode() if isinstance(value, str) else value


def items(blocks: Sequence[SealedBlock]) -> list[AttestedEvent | AttestedBatch]:
    """What ``read_source_rows`` gives for ``blocks``: one ``AttestedBatch`` per batch
    record (its stored row, the events at its offset), an ``AttestedEvent`` per event
    signed alone."""
    out: list[AttestedEvent | AttestedBatch] = []
    rows = {
        (r[1], r[3]): dict(zip(BATCH_COLUMNS, map(_read, r), strict=True))
        for r in batch_rows(blocks)
    }
    for block in blocks:
        h = block.header
        window = (h.first_append_time, h.last_append_time)
        assert window[0] is not None and window[1] is not None
        members: dict[int, list[BatchMember]] = {}
        for idx, ev in enumerate(block.events):
            eid = ev.event.event_id  # type: ignore[union-attr]
            if ev.batch is not None:
                members.setdefault(ev.offset, []).append(BatchMember(idx, eid, ev.leaf_hash))
                continue
            att = ev.attestation
            assert att is not None
            out.append(
                AttestedEvent(
                    h.chain_id,
                    h.height,
                    idx,
                    eid,
                    ev.leaf_hash,
                    (
                        attestation_rows([block])[0][10],
                        att.signature,
                        att.index,
                        ",".join(att.proof),
                    ),
                    h.created_at,
                    append_window=(window[0], window[1]),
                )
            )
        for offset, ms in members.items():
            r = rows[(h.height, offset)]
            out.append(
                AttestedBatch(
                    h.chain_id,
                    h.height,
                    offset,
                    (
                        BatchRow(
                            r["statement"],
                            r["signature"],
                            r["skipped"],
                            tuple(r[c] for c in BATCH_COLUMNS[4:10]),
                        ),
                    ),
                    tuple(ms),
                    h.created_at,
                    (window[0], window[1]),
                )
            )
    return out


def check(events: Sequence[AttestedEvent | AttestedBatch], **kwargs: Any) -> SourceReport:
    return check_sources(events, registry(), require_signatures=True, **kwargs)


def where(report: SourceReport) -> set[Where]:
    return {(str(f.code), f.height, f.event_index) for f in report.findings}


def batch_at(found: list[AttestedEvent | AttestedBatch], height: int, offset: int) -> int:
    return next(
        k
        for k, b in enumerate(found)
        if isinstance(b, AttestedBatch) and (b.height, b.kafka_offset) == (height, offset)
    )


def test_batch_records_are_signed_and_a_dead_lettered_entry_is_no_gap(
    blocks: list[SealedBlock],
) -> None:
    report = check(items(blocks))
    assert report.findings == []
    assert (report.signed_events, report.signed_batches) == (16, 5)
    assert report.sources == {"ehr": {"events": 16, "epochs": 1}}


def test_a_heartbeat_beyond_the_last_batch_names_only_what_never_came(
    blocks: list[SealedBlock],
) -> None:
    hb = HeartbeatStatement(
        source_id="ehr",
        key_id=SOURCE.key_id,
        epoch=EPOCH,
        beat=1,
        last_seq=20,
        sent_at="2027-01-15T08:10:00.000000Z",
    )
    report = check_sources(
        items(blocks),
        registry(),
        [SourceHeartbeatBody(hb, sign_heartbeat(SOURCE, hb))],
        require_signatures=True,
    )
    [gap] = report.findings
    assert gap.code == C.SOURCE_SEQ_GAP
    assert (gap.details["first_missing"], gap.details["last_missing"]) == (18, 20)


def _replace(found: list[AttestedEvent | AttestedBatch], k: int, **changes: Any) -> None:
    b = found[k]
    assert isinstance(b, AttestedBatch)
    found[k] = dataclasses.replace(b, **changes)


def _member(b: AttestedEvent | AttestedBatch, i: int, **changes: Any) -> tuple[BatchMember, ...]:
    assert isinstance(b, AttestedBatch)
    ms = list(b.members)
    ms[i] = dataclasses.replace(ms[i], **changes)
    return tuple(ms)


def test_an_altered_leaf_fails_the_batch_root(blocks: list[SealedBlock]) -> None:
    found = items(blocks)
    k = batch_at(found, 1, 4)
    _replace(found, k, members=_member(found[k], 1, leaf_hash=b"\x01" * 32))
    report = check(found)
    assert where(report) == {("SOURCE_PROOF_INVALID", 1, 0)}
    assert report.signed_events == 13  # and seq 9..11 are no gap: the statement verified


def test_an_unreadable_leaf_is_found_at_its_event(blocks: list[SealedBlock]) -> None:
    found = items(blocks)
    k = batch_at(found, 1, 5)
    _replace(found, k, members=_member(found[k], 2, leaf_hash=None))
    assert where(check(found)) == {("SOURCE_PROOF_INVALID", 1, 5)}


def test_a_batch_row_naming_no_event_is_found_at_its_block(blocks: list[SealedBlock]) -> None:
    found = items(blocks)
    k = batch_at(found, 2, 6)
    b = found[k]
    assert isinstance(b, AttestedBatch)
    stray = dataclasses.replace(b, kafka_offset=7, members=())
    assert where(check([*found, stray])) == {("SOURCE_ATTESTATION_INVALID", 2, None)}


def test_of_two_rows_for_one_record_the_signed_one_is_taken(blocks: list[SealedBlock]) -> None:
    found = items(blocks)
    k = batch_at(found, 1, 4)
    b = found[k]
    assert isinstance(b, AttestedBatch)
    good = b.rows[0]
    bad = dataclasses.replace(good, skipped=b"0:" + b"00" * 32)
    _replace(found, k, rows=(bad, good))
    report = check(found)
    assert where(report) == {("SOURCE_ATTESTATION_INVALID", 1, 0)}
    assert report.findings[0].details["rows"] == 2 and report.signed_events == 16


def test_an_event_of_a_batch_with_an_attestation_row_of_its_own_is_found(
    blocks: list[SealedBlock],
) -> None:
    found = items(blocks)
    k = batch_at(found, 1, 5)
    _replace(found, k, members=_member(found[k], 1, attested=True))
    assert where(check(found)) == {("SOURCE_ATTESTATION_INVALID", 1, 4)}


def test_a_replayed_batch_is_a_duplicate_for_its_chained_and_its_dead_lettered_entries(
    blocks: list[SealedBlock],
) -> None:
    found = items(blocks)
    b = found[batch_at(found, 0, 2)]  # batch B: seq 5, 7 chained, 6 dead-lettered
    assert isinstance(b, AttestedBatch)
    replay = dataclasses.replace(b, chain_id="other/1", height=9)
    report = check([*found, replay])
    dups = [f for f in report.findings]
    assert {(f.code, f.chain_id, f.height, f.event_index) for f in dups} == {
        (C.SOURCE_SEQ_DUPLICATE, "other/1", 9, 4),
        (C.SOURCE_SEQ_DUPLICATE, "other/1", 9, 5),
    }
    assert sorted(f.details["seq"] for f in dups) == [5, 6, 7]  # type: ignore[type-var]


def test_a_batch_signed_long_before_its_append_window_is_skew_not_a_gap(
    blocks: list[SealedBlock],
) -> None:
    found = items(blocks)
    k = batch_at(found, 1, 4)
    _replace(found, k, append_window=("2027-03-01T00:00:00.000000Z", "2027-03-01T00:00:01.000000Z"))
    assert where(check(found)) == {("SOURCE_SIGNED_AT_SKEW", 1, 0)}


def test_a_batch_under_an_unregistered_key_is_found_and_its_seqs_are_not_accounted(
    blocks: list[SealedBlock],
) -> None:
    report = check_sources(items(blocks), SourceRegistry(), require_signatures=True)
    assert {str(f.code) for f in report.findings} == {"SOURCE_KEY_UNKNOWN"}
    assert report.signed_events == 0


def test_events_without_their_batch_row_are_unsigned_unless_legacy(
    blocks: list[SealedBlock],
) -> None:
    found = items(blocks)
    b = found.pop(batch_at(found, 1, 4))
    assert isinstance(b, AttestedBatch)
    stripped = [
        AttestedEvent(b.chain_id, b.height, m.idx, m.event_id, m.leaf_hash, None, b.block_time)
        for m in b.members
    ]
    report = check([*found, *stripped])
    assert where(report) == {
        ("SOURCE_UNSIGNED", 1, 0),
        ("SOURCE_UNSIGNED", 1, 1),
        ("SOURCE_UNSIGNED", 1, 2),
        ("SOURCE_SEQ_GAP", None, None),
    }
    legacy = check_sources(stripped, registry(), require_signatures=False)
    assert legacy.findings == [] and legacy.unsigned_events == 3


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("", True),
        ("1:" + "ab" * 32, True),
        ("0:" + "ab" * 32 + ",2:" + "cd" * 32, True),
        ("2:" + "ab" * 32 + ",1:" + "cd" * 32, False),  # not increasing
        ("1:" + "ab" * 32 + ",1:" + "ab" * 32, False),  # repeated
        ("3:" + "ab" * 32, False),  # outside a batch of 3
        ("01:" + "ab" * 32, False),  # not canonical
        ("1:" + "AB" * 32, False),
        ("1:" + "ab" * 31, False),
        ("1:" + "ab" * 32 + ",", False),
        ("-1:" + "ab" * 32, False),
    ],
)
def test_the_skipped_column_is_read_strictly(text: str, ok: bool) -> None:
    entries, problem = parse_skipped(text, 3)
    assert (entries is not None) == ok and (problem == "") == ok


_HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.binary(max_size=80),
    st.text(max_size=80),
    st.sampled_from([b"{}", b"[]", b'{"schema":1}', b"null", b"\xff\xfe", "0:" + "zz" * 32]),
    st.lists(st.integers(), max_size=3),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.integers(min_value=0, max_value=9), value=_HOSTILE)
def test_a_hostile_batch_row_never_raises(field: int, value: Any) -> None:
    found = items(batch_ledger())
    k = batch_at(found, 0, 2)
    b = found[k]
    assert isinstance(b, AttestedBatch)
    row = b.rows[0]
    if field < 3:
        row = dataclasses.replace(row, **{("statement", "signature", "skipped")[field]: value})
    elif field < 9:
        cols = list(row.columns)
        cols[field - 3] = value
        row = dataclasses.replace(row, columns=tuple(cols))
    _replace(found, k, rows=(row,), kafka_offset=value if field == 9 else b.kafka_offset)
    report = check(found)  # must not raise
    assert all(f.height == 0 or f.height is None for f in report.findings)


# --------------------------------------------------------------------------- replicas


def material_from_wire(values: list[bytes]) -> BlockMaterial:
    parts = sorted((decode_part(v) for v in values), key=lambda p: p.part)
    first = parts[0]
    records = tuple(r for p in parts for r in p.records)
    return BlockMaterial(
        first.chain_id, first.height, first.block_hash, bytes(first.header), first.signature,
        records,
    )  # fmt: skip


def rows_of(block: SealedBlock) -> tuple[Any, ...]:
    return (
        header_rows([block]),
        event_rows([block], ACCESS),
        attestation_rows([block]),
        batch_rows([block]),
    )


def test_batch_blocks_cross_the_topic_and_come_back_row_for_row(
    blocks: list[SealedBlock],
) -> None:
    for block in blocks:
        values = encode_block(block, max_part_bytes=2000)  # split inside a batch record
        again = verify_material(material_from_wire(values), ACCESS, TRUSTED)
        assert rows_of(again) == rows_of(block)
        assert [(e.batch, e.batch_index) for e in again.events] == [
            (e.batch, e.batch_index) for e in block.events
        ]
    # the statement travels once per batch record, not once per event
    [value] = encode_block(blocks[1])
    assert value.count(b'"statement"') == 2 and value.count(b'"batch"') == 2


def _with_record(m: BlockMaterial, i: int, **changes: Any) -> BlockMaterial:
    records = list(m.records)
    records[i] = msgspec.structs.replace(records[i], **changes)
    return dataclasses.replace(m, records=tuple(records))


def _batch_of(m: BlockMaterial, i: int, **changes: Any) -> WireBatch:
    batch = m.records[i].batch
    assert batch is not None
    return msgspec.structs.replace(batch, **changes)


def _own_attestation(canonical: bytes) -> Attestation:
    [att] = sign_batch(
        SOURCE,
        source_id="ehr",
        epoch=EPOCH,
        first_seq=99,
        event_leaf_hashes=[leaf_hash(canonical)],
        signed_at="2027-01-15T08:00:00.000000Z",
    )
    return att


def _records_miscounted(m: BlockMaterial) -> BlockMaterial:
    """A processor that signed event_records = 2 for three records (one more dead
    letter to balance the range)."""
    header = msgspec.structs.replace(
        msgspec.json.decode(m.header, type=BlockHeader), event_records=2, dead_lettered=2
    )
    return dataclasses.replace(
        m,
        header=header_bytes(header),
        block_hash=block_hash(header).hex(),
        signature=PROCESSOR.sign_header(header).hex(),
    )


BATCH_ATTACKS: dict[str, tuple[int, Callable[[BlockMaterial], BlockMaterial], str]] = {
    # block 0: records 0-3 batch A (offset 0), 4-5 batch B (offset 2, entry 1 skipped)
    "a-skipped-entry-altered": (
        0,
        lambda m: _with_record(m, 4, batch=_batch_of(m, 4, skipped=((1, "00" * 32),))),
        "SOURCE_PROOF_INVALID",
    ),
    "a-skipped-entry-dropped": (
        0,
        lambda m: _with_record(m, 4, batch=_batch_of(m, 4, skipped=())),
        "SOURCE_PROOF_INVALID",
    ),
    "a-skipped-entry-malformed": (
        0,
        lambda m: _with_record(m, 4, batch=_batch_of(m, 4, skipped=((1, "zz" * 32),))),
        "SOURCE_ATTESTATION_INVALID",
    ),
    "a-skipped-entry-outside-the-batch": (
        0,
        lambda m: _with_record(m, 4, batch=_batch_of(m, 4, skipped=((7, "00" * 32),))),
        "SOURCE_ATTESTATION_INVALID",
    ),
    "the-batch-left-out": (
        0,
        lambda m: _with_record(m, 0, batch=None),
        "SOURCE_ATTESTATION_INVALID",
    ),
    "the-batch-on-a-later-event": (
        0,
        lambda m: _with_record(_with_record(m, 1, batch=m.records[0].batch), 0, batch=None),
        "SOURCE_ATTESTATION_INVALID",
    ),
    "the-statement-of-another-batch": (
        0,
        lambda m: _with_record(m, 0, batch=m.records[4].batch),
        "SOURCE_PROOF_INVALID",
    ),
    "an-attestation-in-a-batch-record": (
        0,
        # a valid one-event attestation of that very event, signed by the source
        lambda m: _with_record(m, 1, attestation=_own_attestation(bytes(m.records[1].canonical))),
        "SOURCE_ATTESTATION_INVALID",
    ),
    # the block's root and offsets (the processor's signature) before the batches
    "an-event-moved-to-the-next-record": (
        0,
        lambda m: _with_record(m, 3, offset=2),
        "EVENT_OFFSETS_MISMATCH",
    ),
    "records-not-the-signed-count": (0, _records_miscounted, "EVENT_OFFSETS_MISMATCH"),
    "events-of-a-record-reordered": (
        1,
        lambda m: dataclasses.replace(
            m,
            records=(
                msgspec.structs.replace(m.records[1], batch=m.records[0].batch),
                msgspec.structs.replace(m.records[0], batch=None),
                *m.records[2:],
            ),
        ),
        "MERKLE_ROOT_MISMATCH",
    ),
    "offsets-going-back": (1, lambda m: _with_record(m, 3, offset=3), "EVENT_OUT_OF_ORDER"),
}


@pytest.mark.parametrize("attack", sorted(BATCH_ATTACKS))
def test_a_forged_batch_block_is_refused_with_its_finding_code(
    attack: str, blocks: list[SealedBlock]
) -> None:
    height, forge, code = BATCH_ATTACKS[attack]
    material = forge(material_of(blocks[height]))
    with pytest.raises(Refused) as refused:
        verify_material(material_from_wire(encode_material(material)), ACCESS, TRUSTED)
    assert refused.value.code == code, refused.value


def test_a_batch_record_of_one_event_needs_no_shared_offset() -> None:
    p = payloads(4)
    [block] = chain_of([[Batch(p[0:1], 1), Dead(), Batch(p[1:3], 2, skipped=frozenset({0}))]])
    assert [e.offset for e in block.events] == [0, 2]
    again = verify_material(material_from_wire(encode_block(block)), ACCESS, TRUSTED)
    assert rows_of(again) == rows_of(block)
    assert len(batch_rows([again])) == 2


# --------------------------------------------------------------------------- restore


def notes_for(blocks: list[SealedBlock]) -> list[str]:
    notes = []
    for block in blocks:
        tree = ChainTree.of_blocks([b.block_hash for b in blocks[: block.header.height + 1]])
        cp = checkpoint_for(block.header, tree)
        notes.append(sign_note(format_checkpoint(cp), cp.origin, PROCESSOR))
    return notes


class World:
    def __init__(self, blocks: list[SealedBlock]) -> None:
        self.backend = ChdbBackend()
        tag = uuid.uuid4().hex[:8]
        self.primary = self._store(f"careledger_bp_{tag}")
        self.replica = self._store(f"careledger_br_{tag}")
        for store in (self.primary, self.replica):
            store.write_blocks(sources_chain())
            store.write_blocks(blocks)
        self.checkpoints = SignedCheckpoints()
        for chain in (sources_chain(), blocks):
            for note in notes_for(chain):
                accept_note(note, [PROCESSOR.public_key], ORIGIN, None, self.checkpoints)
        self.attacker_primary = StoreLedger(self.primary, sync_mutations=True)
        self.attacker_replica = StoreLedger(self.replica, sync_mutations=True)
        self.ledgered: list[list[SealedBlock]] = []

    def _store(self, db: str) -> ChainStore:
        migrate_backend(self.backend, db)
        return ChainStore.for_settings(self.backend, Settings(clickhouse_database=db))

    def close(self) -> None:
        for store in (self.primary, self.replica):
            self.backend.execute(f"DROP DATABASE IF EXISTS {store.db}")
        self.backend.close()


@pytest.fixture
def world(blocks: list[SealedBlock]) -> Iterator[World]:
    w = World(blocks)
    try:
        yield w
    finally:
        w.close()


def test_stored_batch_blocks_read_back_as_the_material_that_was_published(
    world: World, blocks: list[SealedBlock]
) -> None:
    for m, block in zip(
        stored_block_records(world.replica, ACCESS_CHAIN, 0, 2), blocks, strict=True
    ):
        assert rows_of(verify_material(m, ACCESS, TRUSTED)) == rows_of(block)


def test_a_deleted_batch_row_is_compared_and_restored(world: World) -> None:
    world.attacker_primary.mutate(
        "ALTER TABLE {db}.source_batches DELETE WHERE height = 1 AND kafka_offset = 4"
    )
    diff = compare(world.primary, world.replica)
    [d] = diff.differences
    assert (d.table, d.kind, d.height, d.idx, d.kafka_offset) == (
        "source_batches", "missing_in_primary", 1, None, 4,
    )  # fmt: skip
    assert d.to_json()["kafka_offset"] == 4 and "offset 4" in d.describe()
    plan = plan_restore(world.primary, world.replica, TRUSTED, world.checkpoints)
    cp = next(c for c in plan.chains if c.chain_id == ACCESS_CHAIN)
    assert cp.heights == [1] and plan.complete
    assert apply_restore(plan, world.primary, world.ledgered.append) == [(ACCESS_CHAIN, 1)]
    assert compare(world.primary, world.replica).total == 0


def test_an_altered_batch_row_in_the_primary_is_restored(world: World) -> None:
    world.attacker_primary.mutate(
        "ALTER TABLE {db}.source_batches UPDATE first_seq = first_seq + 1 "
        "WHERE height = 0 AND kafka_offset = 2"
    )
    [d] = compare(world.primary, world.replica).differences
    assert (d.table, d.kind, d.columns) == ("source_batches", "differs", ("first_seq",))
    plan = plan_restore(world.primary, world.replica, TRUSTED, world.checkpoints)
    assert apply_restore(plan, world.primary, world.ledgered.append) == [(ACCESS_CHAIN, 0)]
    assert compare(world.primary, world.replica).total == 0


def test_a_replica_whose_batch_row_was_altered_is_not_copied(world: World) -> None:
    world.attacker_primary.mutate(
        "ALTER TABLE {db}.source_batches DELETE WHERE height = 0 AND kafka_offset = 2"
    )
    world.attacker_replica.mutate(
        "ALTER TABLE {db}.source_batches UPDATE skipped = replaceOne(skipped, '1:', '0:') "
        "WHERE height = 0 AND kafka_offset = 2"
    )
    plan = plan_restore(world.primary, world.replica, TRUSTED, world.checkpoints)
    cp = next(c for c in plan.chains if c.chain_id == ACCESS_CHAIN)
    assert cp.code == "SOURCE_PROOF_INVALID" and cp.blocks == []
    assert apply_restore(plan, world.primary, world.ledgered.append) == []
    assert world.ledgered == []


def test_a_replica_with_a_batch_side_column_altered_is_reported_not_copied(
    world: World,
) -> None:
    world.attacker_replica.mutate(
        "ALTER TABLE {db}.source_batches UPDATE source_id = 'lab' "
        "WHERE height = 1 AND kafka_offset = 5"
    )
    plan = plan_restore(world.primary, world.replica, TRUSTED, world.checkpoints)
    cp = next(c for c in plan.chains if c.chain_id == ACCESS_CHAIN)
    assert cp.blocks == [] and cp.replica_rows_altered == [1] and cp.refused is None
