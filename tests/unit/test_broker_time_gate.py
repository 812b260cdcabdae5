"""Time the signer cannot choose, and replays whenever they come (ADR 0015), without Kafka.

The source gate decides a key's status at the broker's append time, refuses times the
producer stamped, and remembers chained sequence numbers beyond its own memory. Named
after what an attacker who can produce to the events topic would try.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careledger_core.block import decode_header, header_bytes
from careledger_core.errors import HeaderValidationError
from careledger_core.event import canonical_event_bytes
from careledger_core.hashing import leaf_hash
from careledger_core.signing import SigningKey
from careledger_core.source import (
    KeyEventStatement,
    SeqRuns,
    SourceRegistry,
    encode_signed_event,
    processor_source_id,
    seconds_of,
    sign_batch,
    timestamp_of,
)
from processors.chainer import PartitionChain
from processors.seq_state import SeqState, Snapshot
from processors.sources import CREATE_TIME, SourceGate, processor_key_problem
from producers.simulator import HospitalModel, simulate

BLOCK_KEY = SigningKey.from_seed(hashlib.sha256(b"block").digest())
EHR = SigningKey.from_seed(hashlib.sha256(b"ehr").digest())
REGISTRAR_ID = "00000000000000aa"
CHAIN = "careledger.local/careledger.access-events/0"
OTHER_CHAIN = "careledger.local/careledger.access-events/1"
EPOCH = "00000000000000e1"
NOW = 1_793_000_000.0  # the broker's append time in these tests


def ts(seconds: float) -> str:
    return timestamp_of(seconds)


def key_event(
    key: SigningKey,
    source: str,
    status: str = "active",
    valid_from: str = "2026-01-01T00:00:00.000000Z",
) -> KeyEventStatement:
    return KeyEventStatement(
        source_id=source,
        key_id=key.key_id,
        public_key=base64.b64encode(key.public_key.raw).decode(),
        status=status,  # type: ignore[arg-type]
        valid_from=valid_from,
        registrar_key_id=REGISTRAR_ID,
    )


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    return [canonical_event_bytes(e) for e in simulate(HospitalModel(seed=5), count=20, seed=5)]


def signed(
    payloads: list[bytes], signed_at: float, key: SigningKey = EHR, first_seq: int = 1
) -> list[bytes]:
    atts = sign_batch(
        key,
        source_id="ehr",
        epoch=EPOCH,
        first_seq=first_seq,
        event_leaf_hashes=[leaf_hash(p) for p in payloads],
        signed_at=ts(signed_at),
    )
    return [encode_signed_event(p, a) for p, a in zip(payloads, atts, strict=True)]


def gate_for(*events: KeyEventStatement, seqs: SeqState | None = None) -> SourceGate:
    registry = SourceRegistry(events)
    return SourceGate(
        require_signatures=True, load_registry=lambda: registry, refresh_interval_s=0, seqs=seqs
    )


def chain_for(gate: SourceGate, chain_id: str = CHAIN) -> PartitionChain:
    return PartitionChain(chain_id, max_event_bytes=65536, next_offset=0, gate=gate)


def feed(
    chain: PartitionChain,
    values: list[bytes],
    first_offset: int = 0,
    broker_ts: float = NOW,
    timestamp_type: int = 1,
) -> list[str | None]:
    out: list[str | None] = []
    for offset, v in enumerate(values, start=first_offset):
        r = chain.add(offset, v, None, broker_ts, 0.0, timestamp_type)
        out.append(None if r is None else r.code)
    return out


# --------------------------------------------------------------------------- broker time


def test_a_revoked_key_cannot_sign_by_backdating_signed_at_to_before_its_revocation(
    payloads: list[bytes],
) -> None:
    """The key was revoked 5 minutes before the broker appended the record; the signer
    wrote a signed_at 6 minutes back (within the 15 minute skew), when the key was still
    active. Judged at signed_at (as before ADR 0015) this was chained."""
    revoked_at = NOW - 300
    gate = gate_for(key_event(EHR, "ehr"), key_event(EHR, "ehr", "revoked", ts(revoked_at)))
    assert feed(chain_for(gate), signed(payloads[:2], signed_at=NOW - 360)) == [
        "REVOKED_KEY",
        "REVOKED_KEY",
    ]
    # the same batch appended before the revocation is genuine
    again = gate_for(key_event(EHR, "ehr"), key_event(EHR, "ehr", "revoked", ts(revoked_at)))
    assert feed(chain_for(again), signed(payloads[:2], NOW - 360), broker_ts=NOW - 350) == [
        None,
        None,
    ]


def test_a_backdated_record_whose_create_time_was_backdated_too_is_not_trusted(
    payloads: list[bytes],
) -> None:
    """On a topic that keeps the producer's CreateTime, the attacker sets it to match the
    backdated signed_at: the skew check alone would pass."""
    revoked_at = NOW - 3600
    gate = gate_for(key_event(EHR, "ehr"), key_event(EHR, "ehr", "revoked", ts(revoked_at)))
    backdated = NOW - 7200
    assert feed(
        chain_for(gate),
        signed(payloads[:1], signed_at=backdated),
        broker_ts=backdated,
        timestamp_type=CREATE_TIME,
    ) == ["UNTRUSTED_TIME"]
    # with the broker's own time it is far from signed_at
    assert feed(chain_for(gate), signed(payloads[1:2], backdated, first_seq=2)) == [
        "SIGNED_AT_SKEW"
    ]


def test_a_key_registered_just_before_the_broker_time_is_accepted_whatever_signed_at_says(
    payloads: list[bytes],
) -> None:
    """The decision is at the broker's time: a source whose clock runs a little behind
    (signed_at before its registration, within the skew) is not refused."""
    gate = gate_for(key_event(EHR, "ehr", valid_from=ts(NOW - 60)))
    assert feed(chain_for(gate), signed(payloads[:1], signed_at=NOW - 120)) == [None]


def test_a_sealed_block_signs_the_broker_times_its_keys_were_judged_at(
    payloads: list[bytes],
) -> None:
    gate = gate_for(key_event(EHR, "ehr"))
    chain = chain_for(gate)
    records = signed(payloads[:3], signed_at=NOW)
    for i, (offset_ts, record) in enumerate(zip((NOW + 2, NOW, NOW + 1), records, strict=True)):
        assert chain.add(i, record, None, offset_ts, 0.0, 1) is None
    block = chain.seal(BLOCK_KEY, NOW + 3)
    assert block is not None
    assert (block.header.first_append_time, block.header.last_append_time) == (
        ts(NOW),
        ts(NOW + 2),
    )
    assert decode_header(block.header_bytes) == block.header
    # the next block starts a new window; one without attested events has none
    assert feed(chain, [payloads[5]], first_offset=3) == ["UNSIGNED"]
    empty = chain.seal(BLOCK_KEY, NOW + 4)
    assert empty is not None and empty.header.first_append_time is None
    assert b"append_time" not in empty.header_bytes, "absent, as in headers before ADR 0015"


def test_a_header_with_null_append_times_is_not_canonical(payloads: list[bytes]) -> None:
    chain = chain_for(gate_for(key_event(EHR, "ehr")))
    feed(chain, signed(payloads[:1], NOW))
    block = chain.seal(BLOCK_KEY, NOW)
    assert block is not None
    doc = msgspec.json.decode(header_bytes(block.header))
    doc["first_append_time"] = doc["last_append_time"] = None
    with pytest.raises(HeaderValidationError):
        decode_header(msgspec.json.encode(doc, order="sorted"))
    doc.pop("first_append_time")
    doc["last_append_time"] = ts(NOW)
    with pytest.raises(HeaderValidationError, match="go together"):
        decode_header(msgspec.json.encode(doc, order="sorted"))


def test_a_processor_key_cannot_sign_events(payloads: list[bytes]) -> None:
    """The processor's block key sits in the same registry (ADR 0015): it must not be
    taken for a source's key, whatever source the batch claims."""
    processor = processor_source_id("careledger.local")
    gate = gate_for(key_event(EHR, processor))
    atts = sign_batch(
        EHR,
        source_id=processor,
        epoch=EPOCH,
        first_seq=1,
        event_leaf_hashes=[leaf_hash(payloads[0])],
        signed_at=ts(NOW),
    )
    record = encode_signed_event(payloads[0], atts[0])
    assert feed(chain_for(gate), [record]) == ["KEY_NOT_FOR_SOURCE"]


def test_a_signed_at_that_is_no_real_instant_is_dead_lettered_not_a_crash(
    payloads: list[bytes],
) -> None:
    [good] = signed(payloads[:1], NOW)
    bad = good.replace(ts(NOW).encode(), b"2026-02-30T00:00:00.000000Z")
    chain = chain_for(gate_for(key_event(EHR, "ehr")))
    r = chain.add(0, bad, None, NOW, 0.0, 1)
    assert r is not None and r.code == "SIGNED_EVENT_INVALID" and not r.quarantine


# --------------------------------------------------------------------------- replays


def test_a_replay_a_day_later_is_replayed_not_merely_skewed(payloads: list[bytes]) -> None:
    """The copy is quarantined for what it is, whenever it arrives."""
    gate = gate_for(key_event(EHR, "ehr"))
    chain = chain_for(gate)
    records = signed(payloads[:2], NOW)
    assert feed(chain, records) == [None, None]
    block = chain.seal(BLOCK_KEY, NOW)
    assert block is not None
    gate.seqs.commit([block])
    assert feed(chain, records[:1], first_offset=2, broker_ts=NOW + 86_400) == ["REPLAYED"]


def test_a_replay_after_a_restart_is_found_in_the_committed_state(payloads: list[bytes]) -> None:
    """A new process knows only what the store says: its snapshot."""
    records = signed(payloads[:3], NOW)
    runs = SeqRuns()
    runs.add_range(1, 3)
    seqs = SeqState()
    seqs.install(Snapshot(runs={("ehr", EPOCH): runs}, heights={CHAIN: 0}))
    chain = chain_for(gate_for(key_event(EHR, "ehr"), seqs=seqs), OTHER_CHAIN)
    assert feed(chain, records) == ["REPLAYED"] * 3
    assert seqs.replays == 3


def test_rereading_the_same_offsets_after_a_failed_write_is_not_a_replay(
    payloads: list[bytes],
) -> None:
    gate = gate_for(key_event(EHR, "ehr"))
    records = signed(payloads[:3], NOW)
    assert feed(chain_for(gate), records) == [None] * 3
    # the write failed: the processor forgets the chain and reads the offsets again
    gate.seqs.forget([CHAIN])
    assert feed(chain_for(gate), records) == [None] * 3
    # without forgetting, the same offsets are still not replays of themselves
    assert feed(chain_for(gate), records) == [None] * 3
    # but another partition's copy is
    assert feed(chain_for(gate, OTHER_CHAIN), records[:1]) == ["REPLAYED"]


def test_committing_a_block_keeps_only_its_own_records_pending_elsewhere(
    payloads: list[bytes],
) -> None:
    gate = gate_for(key_event(EHR, "ehr"))
    a = chain_for(gate)
    records = signed(payloads[:4], NOW)
    assert feed(a, records[:2]) == [None, None]
    block = a.seal(BLOCK_KEY, NOW)
    assert feed(a, records[2:], first_offset=2) == [None, None]
    assert block is not None and gate.seqs.pending == 4
    gate.seqs.commit([block])
    assert gate.seqs.pending == 2
    assert gate.seqs.committed[("ehr", EPOCH)].has(2)
    assert not gate.seqs.committed[("ehr", EPOCH)].has(3)


# --------------------------------------------------------------------------- pieces


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 60), st.integers(0, 8)), max_size=25))
def test_sequence_runs_with_ranges_behave_like_a_set_of_numbers(
    ranges: list[tuple[int, int]],
) -> None:
    runs, model = SeqRuns(), set()
    for first, length in ranges:
        runs.add_range(first, first + length)
        model |= set(range(first, first + length + 1))
        assert all(s < e + 1 for s, e in zip(runs.ends, runs.starts[1:], strict=False))
        assert list(runs.starts) == sorted(runs.starts)
    for n in range(0, 75):
        assert runs.has(n) == (n in model)
    # runs are maximal: two runs never touch
    assert all(runs.ends[i] + 1 < runs.starts[i + 1] for i in range(len(runs) - 1))


@settings(max_examples=500, deadline=None)
@given(st.integers(-2_000_000_000_000_000, 8_000_000_000_000_000))
def test_timestamps_are_the_datetime_ones_without_importing_datetime(us: int) -> None:
    expected = (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
    assert timestamp_of(us / 1_000_000) == expected
    assert round(seconds_of(expected) * 1_000_000) == us


def test_the_processor_refuses_to_sign_with_a_retired_key() -> None:
    old = SigningKey.from_seed(b"\x01" * 32)
    new = SigningKey.from_seed(b"\x02" * 32)
    identity = processor_source_id("careledger.local")
    t = "2026-06-01T00:00:00.000000Z"
    registry = SourceRegistry(
        [
            key_event(old, identity, valid_from="1970-01-01T00:00:00.000000Z"),
            key_event(new, identity, valid_from=t),
            key_event(old, identity, "revoked", t),
        ]
    )
    after = "2026-07-01T00:00:00.000000Z"
    assert processor_key_problem(registry, "careledger.local", new.key_id, after) is None
    problem = processor_key_problem(registry, "careledger.local", old.key_id, after)
    assert problem is not None and "retired" in problem and "CARELEDGER_SIGNING_KEY" in problem
    stranger = processor_key_problem(registry, "careledger.local", EHR.key_id, after)
    assert stranger is not None and "not a registered processor key" in stranger
    # a log that never rotated: any key
    assert processor_key_problem(SourceRegistry(), "careledger.local", old.key_id, after) is None
    # another log's rotation does not concern this one
    assert processor_key_problem(registry, "other.example", old.key_id, after) is None
