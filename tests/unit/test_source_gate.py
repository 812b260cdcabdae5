"""The processor's source gate on the chainer (ADR 0010), without Kafka.

Named after what an attacker with write access to the events topic would try.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

import pytest

from careledger.storage.store import attestation_rows
from careledger_core.event import canonical_event_bytes
from careledger_core.hashing import leaf_hash
from careledger_core.signing import SigningKey
from careledger_core.source import (
    KeyEventStatement,
    SourceRegistry,
    decode_signed_event,
    encode_signed_event,
    sign_batch,
)
from processors.app import quarantine_alerts
from processors.chainer import PartitionChain
from processors.sources import SourceGate
from producers.simulator import HospitalModel, simulate

BLOCK_KEY = SigningKey.from_seed(hashlib.sha256(b"block").digest())
EHR = SigningKey.from_seed(hashlib.sha256(b"ehr").digest())
ROGUE = SigningKey.from_seed(hashlib.sha256(b"rogue").digest())
REGISTRAR_ID = "00000000000000aa"
CHAIN = "careledger.local/careledger.access-events/0"
EPOCH = "00000000000000e1"
NOW = 1_793_000_000.0  # 2026-10-26
SIGNED_AT = dt.datetime.fromtimestamp(NOW, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def registration(
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
    return [canonical_event_bytes(e) for e in simulate(HospitalModel(seed=2), count=20, seed=2)]


def signed(
    payloads: list[bytes], key: SigningKey = EHR, first_seq: int = 1, **kw: str
) -> list[bytes]:
    atts = sign_batch(
        key,
        source_id=kw.get("source_id", "ehr"),
        epoch=EPOCH,
        first_seq=first_seq,
        event_leaf_hashes=[leaf_hash(p) for p in payloads],
        signed_at=kw.get("signed_at", SIGNED_AT),
    )
    return [encode_signed_event(p, a) for p, a in zip(payloads, atts, strict=True)]


class Registry:
    """A registry "topic": what the gate reads when it refreshes."""

    def __init__(self, *events: KeyEventStatement) -> None:
        self.events = list(events)
        self.reads = 0

    def load(self) -> SourceRegistry:
        self.reads += 1
        return SourceRegistry(self.events)


def chain_with(registry: Registry, require: bool = True) -> PartitionChain:
    gate = SourceGate(require_signatures=require, load_registry=registry.load, refresh_interval_s=0)
    return PartitionChain(CHAIN, max_event_bytes=65536, next_offset=0, gate=gate)


def feed(chain: PartitionChain, values: list[bytes], first_offset: int = 0) -> list[str | None]:
    out: list[str | None] = []
    for offset, v in enumerate(values, start=first_offset):
        r = chain.add(offset, v, None, NOW, 0.0)
        out.append(None if r is None else r.code)
    return out


def test_signed_events_are_chained_with_their_attestations(payloads: list[bytes]) -> None:
    chain = chain_with(Registry(registration(EHR, "ehr")))
    assert feed(chain, signed(payloads[:10])) == [None] * 10
    block = chain.seal(BLOCK_KEY, NOW)
    assert block is not None and block.header.event_count == 10
    rows = attestation_rows([block])
    assert [r[8] for r in rows] == list(range(1, 11))  # seq
    assert {r[5] for r in rows} == {"ehr"}
    assert chain.gate is not None and chain.gate.signature_checks == 1


def test_plain_event_is_quarantined_as_unsigned_when_signatures_are_required(
    payloads: list[bytes],
) -> None:
    chain = chain_with(Registry(registration(EHR, "ehr")))
    assert feed(chain, payloads[:1]) == ["UNSIGNED"]
    legacy = chain_with(Registry(), require=False)
    assert feed(legacy, payloads[:1]) == [None]


def test_batch_signed_by_an_unregistered_key_is_quarantined(payloads: list[bytes]) -> None:
    chain = chain_with(Registry(registration(EHR, "ehr")))
    assert feed(chain, signed(payloads[:2], key=ROGUE)) == ["UNKNOWN_KEY", "UNKNOWN_KEY"]


def test_a_key_registered_after_the_gate_started_is_found_by_a_refresh(
    payloads: list[bytes],
) -> None:
    registry = Registry()
    chain = chain_with(registry)
    assert feed(chain, signed(payloads[:1])) == ["UNKNOWN_KEY"]
    registry.events.append(registration(EHR, "ehr"))
    assert feed(chain, signed(payloads[1:4], first_seq=2), first_offset=1) == [None, None, None]
    assert registry.reads >= 2


def test_forged_event_inside_a_genuine_batch_is_quarantined(payloads: list[bytes]) -> None:
    records = signed(payloads[:3])
    _event, _canonical, attestation = decode_signed_event(records[1])
    forged = encode_signed_event(payloads[5], attestation)  # another event, same attestation
    chain = chain_with(Registry(registration(EHR, "ehr")))
    assert feed(chain, [records[0], forged, records[2]]) == [None, "BAD_PROOF", None]


def test_batch_signed_after_its_key_was_revoked_is_quarantined(payloads: list[bytes]) -> None:
    revoked = registration(EHR, "ehr", status="revoked", valid_from="2026-06-01T00:00:00.000000Z")
    chain = chain_with(Registry(registration(EHR, "ehr"), revoked))
    assert feed(chain, signed(payloads[:1])) == ["REVOKED_KEY"]


def test_replayed_record_is_quarantined_but_rereading_the_same_offset_is_not(
    payloads: list[bytes],
) -> None:
    records = signed(payloads[:2])
    chain = chain_with(Registry(registration(EHR, "ehr")))
    assert feed(chain, records) == [None, None]
    # an insider produces the same signed record again: a new offset
    assert feed(chain, records[:1], first_offset=2) == ["REPLAYED"]
    # after a failed write the processor reads the same offsets again: no replay
    again = chain_with(Registry(registration(EHR, "ehr")))
    again.gate = chain.gate
    assert feed(again, records) == [None, None]


def test_batch_signed_long_before_it_reached_kafka_is_quarantined(payloads: list[bytes]) -> None:
    chain = chain_with(Registry(registration(EHR, "ehr")))
    assert feed(chain, signed(payloads[:1], signed_at="2026-10-25T00:00:00.000000Z")) == [
        "SIGNED_AT_SKEW"
    ]


def test_quarantined_records_are_accounted_in_the_header_and_alerted(
    payloads: list[bytes],
) -> None:
    chain = chain_with(Registry(registration(EHR, "ehr")))
    rejected = [
        chain.add(i, v, None, NOW, 0.0)
        for i, v in enumerate([*signed(payloads[:2]), *signed(payloads[2:4], key=ROGUE)])
    ]
    block = chain.seal(BLOCK_KEY, NOW)
    assert block is not None
    h = block.header
    assert (h.event_count, h.dead_lettered) == (2, 2)
    assert h.event_count + h.dead_lettered == h.last_offset - h.first_offset + 1
    quarantined = [(("careledger.access-events", 0), r) for r in rejected if r is not None]
    assert all(r.quarantine for _, r in quarantined)
    [alert] = quarantine_alerts(quarantined)
    assert alert["rule"] == "SOURCE_UNKNOWN_KEY" and alert["evidence"]["records"] == 2
    assert alert["evidence"]["claimed_key_id"] == ROGUE.key_id
    assert "patient" not in repr(alert).lower()


def test_malformed_envelope_is_dead_lettered_not_quarantined(payloads: list[bytes]) -> None:
    chain = chain_with(Registry(registration(EHR, "ehr")))
    bad = b'{"schema":"careledger.signed-event/1","event":{},"attestation":{}}'
    r = chain.add(0, bad, None, NOW, 0.0)
    assert r is not None and not r.quarantine and r.code == "SIGNED_EVENT_INVALID"
