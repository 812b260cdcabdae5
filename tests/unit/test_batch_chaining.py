"""Batch records through the processor's gate and chainer (ADR 0020), without Kafka.

One Kafka record per source-signed batch: the processor checks one signature and one
root per record, chains the record's events into one block, and refuses per record or
per event, never silently. Named after what an attacker who can produce to the events
topic would try, and after what a faulty source sends.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from careledger.storage.store import BatchInfo, SealedBlock, batch_rows
from careledger_core.batch_record import batch_root, encode_batch_record, looks_batch
from careledger_core.block import decode_header, offsets_digest
from careledger_core.event import canonical_event_bytes, decode_and_canonicalize
from careledger_core.event_batch import decode_canonical_events
from careledger_core.hashing import leaf_hash
from careledger_core.signing import SigningKey
from careledger_core.source import (
    BatchStatement,
    KeyEventStatement,
    SeqRuns,
    SourceAuthError,
    SourceRegistry,
    encode_signed_event,
    sign_batch,
    timestamp_of,
)
from processors.chainer import PartitionChain, Rejected
from processors.seq_state import SeqState, Snapshot, chained_ranges, skipped_indices
from processors.sources import CREATE_TIME, SourceGate
from producers.simulator import HospitalModel, simulate

BLOCK_KEY = SigningKey.from_seed(hashlib.sha256(b"block").digest())
EHR = SigningKey.from_seed(hashlib.sha256(b"ehr").digest())
ROGUE = SigningKey.from_seed(hashlib.sha256(b"rogue").digest())
REGISTRAR_ID = "00000000000000aa"
CHAIN = "careledger.local/careledger.access-events/0"
OTHER_CHAIN = "careledger.local/careledger.access-events/1"
EPOCH = "00000000000000e1"
NOW = 1_793_000_000.0  # the broker's append time in these tests


def registration(key: SigningKey, source: str = "ehr") -> KeyEventStatement:
    return KeyEventStatement(
        source_id=source,
        key_id=key.key_id,
        public_key=base64.b64encode(key.public_key.raw).decode(),
        status="active",
        valid_from="2026-01-01T00:00:00.000000Z",
        registrar_key_id=REGISTRAR_ID,
    )


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    return [canonical_event_bytes(e) for e in simulate(HospitalModel(seed=9), count=40, seed=9)]


def sign(
    events: list[bytes], first_seq: int = 1, key: SigningKey = EHR, signed_at: float = NOW
) -> tuple[BatchStatement, str]:
    """The statement and signature a source makes over these events' bytes."""
    att = sign_batch(
        key,
        source_id="ehr",
        epoch=EPOCH,
        first_seq=first_seq,
        event_leaf_hashes=[leaf_hash(e) for e in events],
        signed_at=timestamp_of(signed_at),
    )[0]
    return att.statement, att.signature


def record(events: list[bytes], first_seq: int = 1, **kw: Any) -> bytes:
    statement, signature = sign(events, first_seq, **kw)
    return encode_batch_record(statement, signature, events)


def forged(statement: BatchStatement, signature: str, events: list[bytes]) -> bytes:
    """A batch record written by hand: any events under any statement."""
    doc = {
        "events": [msgspec.Raw(e) for e in events],
        "schema": "careledger.signed-batch/1",
        "signature": signature,
        "statement": statement,
    }
    return msgspec.json.encode(doc)


class Registry:
    def __init__(self, *events: KeyEventStatement) -> None:
        self.events = list(events)
        self.reads = 0

    def load(self) -> SourceRegistry:
        self.reads += 1
        return SourceRegistry(self.events)


def gate_for(registry: Registry | None = None, seqs: SeqState | None = None) -> SourceGate:
    registry = registry or Registry(registration(EHR))
    return SourceGate(
        require_signatures=True, load_registry=registry.load, refresh_interval_s=0, seqs=seqs
    )


def chain_for(gate: SourceGate, chain_id: str = CHAIN, **kw: Any) -> PartitionChain:
    return PartitionChain(chain_id, max_event_bytes=65536, next_offset=0, gate=gate, **kw)


def take(
    chain: PartitionChain,
    value: bytes,
    offset: int | None = None,
    broker_ts: float = NOW,
    timestamp_type: int = 1,
) -> list[Rejected]:
    at = chain.next_offset if offset is None else offset
    assert at is not None
    return chain.take(at, value, b"key", broker_ts, 0.0, timestamp_type)


def sealed(chain: PartitionChain) -> SealedBlock:
    block = chain.seal(BLOCK_KEY, NOW)
    assert block is not None
    # the header is valid as stored: decoding its canonical bytes re-checks every rule
    assert decode_header(block.header_bytes) == block.header
    return block


# --------------------------------------------------------------------------- round trip


def test_a_batch_record_is_chained_with_one_signature_check_into_one_block(
    payloads: list[bytes],
) -> None:
    gate = gate_for()
    chain = chain_for(gate)
    value = record(payloads[:10])
    assert looks_batch(value)
    assert take(chain, value) == []
    assert len(chain.pending) == 10 and chain.dead_lettered == 0
    block = sealed(chain)
    h = block.header
    assert (h.first_offset, h.last_offset, h.event_count, h.event_records) == (0, 0, 10, 1)
    assert h.event_offsets == offsets_digest([0] * 10)
    assert h.first_append_time == h.last_append_time == timestamp_of(NOW)
    # the events are the record's bytes, in batch order, sharing one BatchInfo
    assert [e.canonical for e in block.events] == payloads[:10]
    assert [e.batch_index for e in block.events] == list(range(10))
    info = block.events[0].batch
    assert info is not None and all(e.batch is info for e in block.events)
    assert all(e.attestation is None for e in block.events)
    assert info.skipped == () and info.statement.first_seq == 1 and info.statement.size == 10
    assert gate.signature_checks == 1
    [row] = batch_rows([block])
    assert row[3] == 0 and row[7:9] == (1, 10) and row[12] == ""
    # the store's row reproduces the signed root from the chained events
    assert batch_root(1, [e.leaf_hash for e in block.events]).hex() == info.statement.root


def test_batch_and_single_event_records_mix_in_a_block_and_the_offsets_add_up(
    payloads: list[bytes],
) -> None:
    gate = gate_for()
    chain = chain_for(gate)
    singles = [
        encode_signed_event(p, a)
        for p, a in zip(
            payloads[5:7],
            sign_batch(
                EHR,
                source_id="ehr",
                epoch=EPOCH,
                first_seq=6,
                event_leaf_hashes=[leaf_hash(p) for p in payloads[5:7]],
                signed_at=timestamp_of(NOW),
            ),
            strict=True,
        )
    ]
    assert take(chain, record(payloads[:5])) == []  # offset 0: seqs 1..5
    assert take(chain, singles[0]) == [] and take(chain, singles[1]) == []  # offsets 1, 2
    [bad] = take(chain, b"{not json")  # offset 3: the record dead-lettered
    assert not bad.quarantine and bad.batch_index is None
    assert take(chain, record(payloads[7:10], first_seq=8)) == []  # offset 4
    block = sealed(chain)
    h = block.header
    assert h.event_count == 10 and h.event_records == 4 and h.dead_lettered == 1
    assert h.event_records + h.dead_lettered + h.absent_offsets == h.last_offset + 1
    assert h.event_offsets == offsets_digest([0] * 5 + [1, 2] + [4] * 3)
    assert [r[3] for r in batch_rows([block])] == [0, 4]


def test_a_block_without_batch_records_keeps_todays_header_bytes(payloads: list[bytes]) -> None:
    chain = chain_for(SourceGate(require_signatures=False, load_registry=None))
    for p in payloads[:3]:
        assert take(chain, p) == []
    block = sealed(chain)
    assert block.header.event_records is None
    assert b"event_records" not in block.header_bytes
    # after a block with a batch record, the next one without is back to today's form
    gate = gate_for()
    chain = chain_for(gate)
    assert take(chain, record(payloads[:2])) == []
    assert sealed(chain).header.event_records == 1
    [bad] = take(chain, b"[]")
    assert bad.code
    after = sealed(chain)
    assert after.header.event_records is None and b"event_records" not in after.header_bytes


def test_the_whole_batch_is_decoded_in_one_call_only_when_every_event_is_canonical(
    payloads: list[bytes],
) -> None:
    """The one-call fast path agrees with ``decode_and_canonicalize`` event by event:
    it accepts exactly the batches whose every event is valid and canonical."""
    decoded = decode_canonical_events(payloads[:5])
    assert decoded is not None
    assert decoded == [decode_and_canonicalize(p)[0] for p in payloads[:5]]
    spaced = json.dumps(json.loads(payloads[0]), separators=(", ", ": ")).encode()
    with_null = payloads[1][:-1] + b',"reason":null}'
    duplicate = payloads[2][:-1] + b',"action":"read"}'
    for odd in (spaced, with_null, duplicate, b'{"schema":"careledger.access-event/1"}', b"1"):
        assert decode_canonical_events([payloads[3], odd]) is None, odd[:40]


# --------------------------------------------------------------------------- refused whole


def test_a_batch_whose_signature_fails_is_quarantined_whole_with_its_reason(
    payloads: list[bytes],
) -> None:
    chain = chain_for(gate_for())
    statement, _ = sign(payloads[:4])
    _, other_signature = sign(payloads[4:8])  # a real signature, of another statement
    value = forged(statement, other_signature, payloads[:4])
    [r] = take(chain, value)
    assert (r.code, r.quarantine, r.value, r.batch_index) == ("BAD_SIGNATURE", True, value, None)
    assert "does not verify" in r.reason
    assert dict(r.claim)["source_id"] == "ehr"
    assert chain.pending == [] and chain.dead_lettered == 1
    block = sealed(chain)
    assert block.header.event_count == 0 and block.header.event_records is None


def test_a_batch_signed_by_an_unknown_key_is_quarantined_until_the_key_is_registered(
    payloads: list[bytes],
) -> None:
    registry = Registry(registration(EHR))
    chain = chain_for(gate_for(registry))
    [r] = take(chain, record(payloads[:3], key=ROGUE))
    assert (r.code, r.quarantine) == ("UNKNOWN_KEY", True)
    registry.events.append(registration(ROGUE, "ehr"))
    assert take(chain, record(payloads[3:6], first_seq=4, key=ROGUE)) == []


@pytest.mark.parametrize(
    "tamper",
    ["changed", "removed", "added", "reordered", "size", "first_seq"],
)
def test_a_batch_whose_events_are_not_the_signed_ones_is_quarantined_whole_as_bad_proof(
    payloads: list[bytes], tamper: str
) -> None:
    events = payloads[:6]
    statement, signature = sign(events)
    if tamper == "changed":
        events = [*events[:2], payloads[20], *events[3:]]
    elif tamper == "removed":
        events = events[:2] + events[3:]
    elif tamper == "added":
        events = [*events, payloads[20]]
    elif tamper == "reordered":
        events = [events[1], events[0], *events[2:]]
    elif tamper == "size":
        # a genuine signature over a statement claiming one event more than it carries
        statement, signature = sign([*events, payloads[20]])
    else:  # the same events, under a statement signed for other sequence numbers
        statement, signature = sign(events, first_seq=2)
        statement = msgspec.structs.replace(statement, first_seq=1)
    value = forged(statement, signature, events)
    chain = chain_for(gate := gate_for())
    [r] = take(chain, value)
    assert (r.code, r.quarantine, r.value) == ("BAD_PROOF", True, value), r.reason
    assert chain.pending == [] and chain.dead_lettered == 1
    assert gate.quarantined == 1


def test_a_malformed_batch_envelope_is_dead_lettered_whole(payloads: list[bytes]) -> None:
    statement, signature = sign(payloads[:2])
    good = encode_batch_record(statement, signature, payloads[:2])
    chain = chain_for(gate_for())
    truncated = good[:-10]
    extra = good[:-1] + b',"zzz":1}'
    empty = forged(statement, signature, [])
    for value in (truncated, extra, empty):
        assert looks_batch(value)
        [r] = take(chain, value)
        assert (r.code, r.quarantine, r.value) == ("SIGNED_EVENT_INVALID", False, value)
    assert chain.dead_lettered == 3 and chain.pending == []


def test_a_batch_record_over_its_size_limit_is_dead_lettered_whole(payloads: list[bytes]) -> None:
    value = record(payloads[:20])
    chain = chain_for(gate_for(), max_batch_record_bytes=len(value) - 1)
    [r] = take(chain, value)
    assert (r.code, r.quarantine, r.value) == ("BATCH_TOO_LARGE", False, value)
    # the per-event limit does not apply to the record: at its size limit it is chained
    chain = chain_for(gate_for(), max_batch_record_bytes=len(value))
    chain.max_event_bytes = max(len(p) for p in payloads[:20])
    assert len(value) > chain.max_event_bytes
    assert take(chain, value) == []


def test_batch_time_and_key_status_are_checked_at_the_broker_time(payloads: list[bytes]) -> None:
    chain = chain_for(gate_for())
    [r] = take(chain, record(payloads[:2]), timestamp_type=CREATE_TIME)
    assert (r.code, r.quarantine) == ("UNTRUSTED_TIME", True)
    [r] = take(chain, record(payloads[:2], signed_at=NOW - 3600))
    assert (r.code, r.quarantine) == ("SIGNED_AT_SKEW", True)
    revoked = Registry(
        registration(EHR),
        msgspec.structs.replace(
            registration(EHR), status="revoked", valid_from=timestamp_of(NOW - 60)
        ),
    )
    chain = chain_for(gate_for(revoked))
    [r] = take(chain, record(payloads[:2], signed_at=NOW - 120))
    assert (r.code, r.quarantine) == ("REVOKED_KEY", True)


# --------------------------------------------------------------------------- refused alone


def test_one_malformed_and_one_non_canonical_event_are_dead_lettered_alone(
    payloads: list[bytes],
) -> None:
    """The source signed what it sent: the bad events' entries are in the root. Exactly
    those events are dead-lettered (bytes, reason, index); the others are chained; the
    batch row lists them as skipped, so the signed root is reproducible."""
    malformed = b'{"schema":"careledger.access-event/1","action":"read"}'
    spaced = json.dumps(json.loads(payloads[4]), separators=(", ", ": ")).encode()
    events = [*payloads[:2], malformed, payloads[3], spaced, *payloads[5:8]]
    value = record(events, first_seq=101)
    chain = chain_for(gate := gate_for())
    refused = take(chain, value, offset=0)
    assert [(r.batch_index, r.value, r.code, r.quarantine) for r in refused] == [
        (2, malformed, "EVENT_INVALID", False),
        (4, spaced, "EVENT_NOT_CANONICAL", False),
    ]
    assert all(r.offset == 0 and r.reason for r in refused)
    assert dict(refused[0].claim)["seq"] == "103" and dict(refused[1].claim)["seq"] == "105"
    assert chain.dead_lettered == 0, "the record is chained: its batch accounts for them"
    block = sealed(chain)
    assert block.header.event_count == 6 and block.header.event_records == 1
    assert [e.batch_index for e in block.events] == [0, 1, 3, 5, 6, 7]
    info = block.events[0].batch
    assert info is not None and all(e.batch is info for e in block.events)
    assert info.skipped == ((2, leaf_hash(malformed)), (4, leaf_hash(spaced)))
    [row] = batch_rows([block])
    assert skipped_indices(row[12]) == [2, 4]
    # chained leaves + skipped entries, in index order, are the signed batch
    leaves = {e.batch_index: e.leaf_hash for e in block.events} | dict(info.skipped)
    assert batch_root(101, [leaves[i] for i in range(8)]).hex() == info.statement.root
    # the numbers of the skipped entries are not chained
    gate.seqs.commit([block])
    runs = gate.seqs.committed[("ehr", EPOCH)]
    assert [n for n in range(100, 110) if runs.has(n)] == [101, 102, 104, 106, 107, 108]
    assert gate.seqs.pending == 0


def _with(data: bytes, path: tuple[str, ...], value: str) -> bytes:
    doc = json.loads(data)
    at = doc
    for name in path[:-1]:
        at = at[name]
    at[path[-1]] = value
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("event_id",), "not-a-uuid"),
        (("occurred_at",), "2026-02-30T10:00:00.000000Z"),  # no such day
        (("recorded_at",), "yesterday"),
        (("actor", "id"), " padded "),
        (("patient", "id"), "MRN\u0000"),
    ],
)
def test_an_event_failing_a_field_pattern_is_dead_lettered_alone_not_the_batch(
    payloads: list[bytes], path: tuple[str, ...], value: str
) -> None:
    """The patterns are checked after msgspec's decode (``AccessEvent.__post_init__``),
    which raises the event's own error: the one-call decode of the batch must fall back
    to the events one by one, not refuse the signed record whole."""
    bad = _with(payloads[2], path, value)
    chain = chain_for(gate_for())
    [r] = take(chain, record([*payloads[:2], bad, payloads[3]], first_seq=201))
    assert (r.batch_index, r.value, r.code, r.quarantine) == (2, bad, "EVENT_INVALID", False)
    assert r.reason and len(chain.pending) == 3


def test_an_event_over_the_event_limit_is_dead_lettered_alone(payloads: list[bytes]) -> None:
    big = payloads[3][:-1] + b',"reason":"' + b"x" * 2000 + b'"}'
    chain = chain_for(gate_for())
    chain.max_event_bytes = 1500
    events = [*payloads[:2], big]
    [r] = take(chain, record(events))
    assert (r.code, r.batch_index, r.value) == ("EVENT_TOO_LARGE", 2, big)
    assert len(chain.pending) == 2


def test_a_well_signed_batch_with_no_chainable_event_counts_as_one_dead_lettered_record(
    payloads: list[bytes],
) -> None:
    events = [b'{"a":1}', b"[]", b'"x"']
    gate = gate_for()
    chain = chain_for(gate)
    refused = take(chain, record(events))
    assert [(r.batch_index, r.value) for r in refused] == list(enumerate(events))
    assert chain.pending == [] and chain.dead_lettered == 1
    assert gate.seqs.pending == 0, "nothing pending: nothing will be written"
    block = sealed(chain)
    h = block.header
    assert (h.event_count, h.dead_lettered, h.event_records) == (0, 1, None)
    assert batch_rows([block]) == []


# --------------------------------------------------------------------------- replays


def test_the_same_batch_record_at_another_offset_is_replayed(payloads: list[bytes]) -> None:
    gate = gate_for()
    chain = chain_for(gate)
    value = record(payloads[:5])
    assert take(chain, value) == []
    # pending (not yet written), on the same chain and on another
    [r] = take(chain, value)
    assert (r.code, r.quarantine, r.value) == ("REPLAYED", True, value)
    [r] = take(chain_for(gate, OTHER_CHAIN), value)
    assert r.code == "REPLAYED"
    # written: the same, whenever it comes
    block = sealed(chain)
    gate.seqs.commit([block])
    [r] = take(chain, value, broker_ts=NOW + 86_400)
    assert r.code == "REPLAYED"
    assert gate.seqs.replays == 3


def test_a_batch_overlapping_chained_numbers_is_replayed_and_so_is_a_single_inside_one(
    payloads: list[bytes],
) -> None:
    gate = gate_for()
    chain = chain_for(gate)
    assert take(chain, record(payloads[:10], first_seq=11)) == []  # 11..20, pending
    # a genuinely signed batch re-using 20..22: one number in common is enough
    [r] = take(chain, record(payloads[10:13], first_seq=20))
    assert r.code == "REPLAYED"
    # a single signed record re-using number 15
    att = sign_batch(
        EHR,
        source_id="ehr",
        epoch=EPOCH,
        first_seq=15,
        event_leaf_hashes=[leaf_hash(payloads[30])],
        signed_at=timestamp_of(NOW),
    )[0]
    [r] = take(chain, encode_signed_event(payloads[30], att))
    assert r.code == "REPLAYED"
    # numbers next to the range are fine
    assert take(chain, record(payloads[13:15], first_seq=21)) == []
    assert take(chain, record(payloads[15:17], first_seq=9)) == []
    # and a batch over a single record's number is replayed too
    [r] = take(chain, record(payloads[17:20], first_seq=8))
    assert r.code == "REPLAYED"


def test_the_same_record_read_again_at_the_same_offset_is_not_a_replay(
    payloads: list[bytes],
) -> None:
    gate = gate_for()
    value = record(payloads[:5])
    assert take(chain_for(gate), value, offset=0) == []
    # read again (a seek back) without the chain forgetting: not a replay of itself
    assert take(chain_for(gate), value, offset=0) == []
    # after a failed write the processor forgets the chain and reads it again
    gate.seqs.forget([CHAIN])
    assert gate.seqs.pending == 0
    chain = chain_for(gate)
    assert take(chain, value, offset=0) == []
    assert gate.seqs.pending == 5
    # written: no longer pending, committed
    gate.seqs.commit([sealed(chain)])
    assert gate.seqs.pending == 0 and gate.seqs.committed[("ehr", EPOCH)].has(5)


def test_a_replay_after_a_restart_is_found_in_the_snapshot(payloads: list[bytes]) -> None:
    runs = SeqRuns()
    runs.add_range(1, 5)
    seqs = SeqState()
    seqs.install(Snapshot(runs={("ehr", EPOCH): runs}, heights={CHAIN: 0}))
    chain = chain_for(gate_for(seqs=seqs), OTHER_CHAIN)
    [r] = take(chain, record(payloads[:5]))
    assert r.code == "REPLAYED"
    assert take(chain, record(payloads[5:8], first_seq=6)) == []


def test_committing_a_block_releases_only_its_own_records(payloads: list[bytes]) -> None:
    gate = gate_for()
    a = chain_for(gate)
    assert take(a, record(payloads[:3])) == []
    block = sealed(a)
    assert take(a, record(payloads[3:7], first_seq=4)) == []
    assert gate.seqs.pending == 7
    gate.seqs.commit([block])
    assert gate.seqs.pending == 4
    runs = gate.seqs.committed[("ehr", EPOCH)]
    assert runs.has(3) and not runs.has(4)
    # what is still pending stays a replay from elsewhere
    [r] = take(chain_for(gate, OTHER_CHAIN), record(payloads[3:7], first_seq=4))
    assert r.code == "REPLAYED"


def test_seq_pieces() -> None:
    assert chained_ranges(10, 5, []) == [(10, 14)]
    assert chained_ranges(10, 5, [0, 4]) == [(11, 13)]
    assert chained_ranges(10, 5, [2, 2, 3]) == [(10, 11), (14, 14)]
    assert chained_ranges(10, 2, [0, 1]) == []
    assert skipped_indices("") == []
    assert skipped_indices("2:ab,4:cd") == [2, 4]
    with pytest.raises(ValueError):
        skipped_indices("x:ab")


# --------------------------------------------------------------------------- blocks


def test_a_record_never_spans_two_blocks(payloads: list[bytes]) -> None:
    """Records arrive one at a time; a block is sealed between records (the processor
    seals once ``block_max_events`` is reached), so a batch lands whole in one block
    and a block exceeds the limit by less than one batch."""
    gate = gate_for()
    chain = chain_for(gate)
    max_events = 10
    blocks: list[SealedBlock] = []
    seq = 1
    for n in range(6):
        events = payloads[n * 7 % 33 : n * 7 % 33 + 7]
        before = len(chain.pending)
        assert take(chain, record(events, first_seq=seq)) == []
        assert len(chain.pending) == before + 7, "all of a record's events at once"
        seq += 7
        if len(chain.pending) >= max_events:
            blocks.append(sealed(chain))
    for block in blocks:
        offsets = [e.offset for e in block.events]
        assert block.header.event_count == 14 < max_events + 7
        assert block.header.event_records == len(set(offsets)) == 2
        infos = {id(e.batch) for e in block.events}
        assert len(infos) == 2
    all_offsets = [e.offset for b in blocks for e in b.events]
    assert len(all_offsets) == 42
    per_block = [{e.offset for e in b.events} for b in blocks]
    assert sum(map(len, per_block)) == len(set().union(*per_block)) == 6, "no offset in two"


def test_skipped_batch_info_is_shared_by_the_chained_events(payloads: list[bytes]) -> None:
    events = [payloads[0], b"{}", payloads[2]]
    chain = chain_for(gate_for())
    assert len(take(chain, record(events))) == 1
    infos = {id(e.batch) for e in chain.pending}
    assert len(infos) == 1
    info = chain.pending[0].batch
    assert isinstance(info, BatchInfo) and info.skipped == ((1, leaf_hash(b"{}")),)


@hyp_settings(max_examples=300, deadline=None)
@given(
    records=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 6)), min_size=1, max_size=8),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 7)), max_size=30),
)
def test_pending_ranges_behave_like_a_map_of_numbers_to_positions(
    records: list[tuple[int, int]], ops: list[tuple[bool, int]]
) -> None:
    """Reading records (ranges at fixed positions) and forgetting chains, in any order:
    the range state refuses exactly what a number-by-number model refuses."""
    seqs = SeqState()
    model: dict[int, tuple[str, int]] = {}
    chains = (CHAIN, OTHER_CHAIN)
    for read, k in ops:
        if not read:
            chain = chains[k % 2]
            seqs.forget([chain])
            model = {n: w for n, w in model.items() if w[0] != chain}
            continue
        first, size = records[k % len(records)]
        where = (chains[k % 2], k % len(records))
        numbers = range(first, first + size)
        replayed = any(n in model and model[n] != where for n in numbers)
        try:
            seqs.check_range("s", EPOCH, first, first + size - 1, where)
        except SourceAuthError as exc:
            assert replayed and exc.code == "REPLAYED"
        else:
            assert not replayed
            seqs.admit_range("s", EPOCH, first, first + size - 1, where)
            model.update(dict.fromkeys(numbers, where))
        assert seqs.pending == len(model)
