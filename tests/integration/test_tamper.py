"""Tampering with the real ClickHouse store, the way an attacker with write access would.

Each test gets a fresh database (fixture ``isolated``) holding 3 chains x 5 blocks x
50 simulated events, built by the real chainer, signed with a test key and written
with ``ChainStore.write_blocks``. The attacks are SQL statements: ``ALTER TABLE ...
UPDATE/DELETE`` (asynchronous mutations on 18.16: we wait for ``system.mutations``)
and plain ``INSERT``s (rows cannot change key columns chain_id/height/idx in place, so
moving a row means deleting and re-inserting it). Every test asserts the exact
finding codes and where they point, and that the other chains stay intact.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from careledger.config import Settings
from careledger.storage.backend import ClickHouseBackend
from careledger.storage.store import (
    EVENT_COLUMNS,
    HEADER_COLUMNS,
    ChainHead,
    ChainStore,
    SealedBlock,
)
from careledger_core.block import BlockHeader, block_hash, header_bytes
from careledger_core.event import canonical_event_bytes, decode_event
from careledger_core.findings import FindingCode, Severity
from careledger_core.hashing import leaf_hash
from careledger_core.signing import SigningKey, TrustedKeys
from processors.chainer import PartitionChain
from producers.simulator import HospitalModel, simulate
from verifiers.integrity.fsck import ChainReport, verify_chain
from verifiers.integrity.state import VerifierState

pytestmark = pytest.mark.integration

KEY = SigningKey.from_seed(hashlib.sha256(b"careledger tamper test key").digest())
ATTACKER_KEY = SigningKey.from_seed(hashlib.sha256(b"attacker key").digest())
TRUSTED = TrustedKeys([KEY.public_key])
CHAINS = 3
BLOCKS = 5
PER_BLOCK = 50
C = FindingCode

Where = tuple[str, int | None, int | None]


@dataclass
class Ledger:
    settings: Settings
    store: ChainStore
    chains: list[str]
    blocks: dict[str, list[SealedBlock]]
    spare: list[bytes]  # simulated events not in any chain

    @property
    def db(self) -> str:
        return self.store.db

    # -- attacker's tools ----------------------------------------------------------
    def sql(self, statement: str, params: dict[str, Any] | None = None) -> list[Any]:
        return self.store.backend.execute(statement, params)

    def mutate(self, statement: str, params: dict[str, Any] | None = None) -> None:
        """Run an ALTER ... UPDATE/DELETE and wait until the mutation is done."""
        self.sql(statement, params)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pending = self.sql(
                "SELECT count() FROM system.mutations WHERE database = %(db)s AND is_done = 0",
                {"db": self.db},
            )
            if int(pending[0][0]) == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"mutation did not finish: {statement}")

    def update_event(self, chain: str, height: int, idx: int, **values: Any) -> None:
        sets = ", ".join(f"{k} = %({k})s" for k in values)
        self.mutate(
            f"ALTER TABLE {self.db}.access_events UPDATE {sets} "
            "WHERE chain_id = %(chain)s AND height = %(height)s AND idx = %(idx)s",
            {**values, "chain": chain, "height": height, "idx": idx},
        )

    def update_header(self, chain: str, height: int, **values: Any) -> None:
        sets = ", ".join(f"{k} = %({k})s" for k in values)
        self.mutate(
            f"ALTER TABLE {self.db}.blocks UPDATE {sets} "
            "WHERE chain_id = %(chain)s AND height = %(height)s",
            {**values, "chain": chain, "height": height},
        )

    def delete_events(self, chain: str, where: str, params: dict[str, Any] | None = None) -> None:
        self.mutate(
            f"ALTER TABLE {self.db}.access_events DELETE WHERE chain_id = %(chain)s AND {where}",
            {**(params or {}), "chain": chain},
        )

    def delete_headers(self, chain: str, where: str, params: dict[str, Any] | None = None) -> None:
        self.mutate(
            f"ALTER TABLE {self.db}.blocks DELETE WHERE chain_id = %(chain)s AND {where}",
            {**(params or {}), "chain": chain},
        )

    def event_row(self, chain: str, height: int, idx: int) -> dict[str, Any]:
        rows = self.sql(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM {self.db}.access_events "
            "WHERE chain_id = %(chain)s AND height = %(height)s AND idx = %(idx)s",
            {"chain": chain, "height": height, "idx": idx},
        )
        assert len(rows) == 1
        return dict(zip(EVENT_COLUMNS, rows[0], strict=True))

    def header_row(self, chain: str, height: int) -> dict[str, Any]:
        rows = self.sql(
            f"SELECT {', '.join(HEADER_COLUMNS)} FROM {self.db}.blocks "
            "WHERE chain_id = %(chain)s AND height = %(height)s",
            {"chain": chain, "height": height},
        )
        assert len(rows) == 1
        return dict(zip(HEADER_COLUMNS, rows[0], strict=True))

    def insert_events(self, rows: list[dict[str, Any]]) -> None:
        self.store.backend.insert(
            f"{self.db}.access_events",
            EVENT_COLUMNS,
            [tuple(_plain(r[c]) for c in EVENT_COLUMNS) for r in rows],
        )

    def insert_header(self, row: dict[str, Any]) -> None:
        self.store.backend.insert(
            f"{self.db}.blocks", HEADER_COLUMNS, [tuple(_plain(row[c]) for c in HEADER_COLUMNS)]
        )

    # -- verifying -----------------------------------------------------------------
    def verify(self, chain: str, **kwargs: Any) -> ChainReport:
        return verify_chain(self.store, chain, TRUSTED, **kwargs)

    def verify_all(self, **kwargs: Any) -> dict[str, ChainReport]:
        return {chain: self.verify(chain, **kwargs) for chain in self.chains}

    def assert_only(self, chain: str, expected: set[Where]) -> ChainReport:
        """``chain`` has exactly the ``expected`` findings; every other chain is intact."""
        reports = self.verify_all()
        for other, report in reports.items():
            if other != chain:
                assert report.findings == [], (other, report.findings)
        report = reports[chain]
        assert where(report) == expected, report.findings
        assert all(f.chain_id == chain for f in report.findings)
        return report


def _plain(value: Any) -> Any:
    """Rows read back are bytes; the writer client wants str for String columns."""
    return value.decode("utf-8", errors="surrogateescape") if isinstance(value, bytes) else value


def where(report: ChainReport) -> set[Where]:
    return {(str(f.code), f.height, f.event_index) for f in report.findings}


def build_chain(
    chain_id: str, payloads: list[bytes], key: SigningKey = KEY, first_offset: int = 0
) -> list[SealedBlock]:
    chain = PartitionChain(chain_id, max_event_bytes=65536)
    sealed = []
    it = iter(payloads)
    offset = first_offset
    for b in range(BLOCKS):
        for _ in range(PER_BLOCK):
            assert chain.add(offset, next(it), b"k", 0.0, 0.0) is None
            offset += 1
        block = chain.seal(key, now=1_800_000_000.0 + b)
        assert block is not None
        sealed.append(block)
    return sealed


def forged_block(
    block: SealedBlock, key: SigningKey, **changes: Any
) -> tuple[SealedBlock, dict[str, Any]]:
    """``block`` with header fields changed, signed by ``key``; and its header row."""
    fields = msgspec.structs.asdict(block.header)
    fields.update(changes)
    fields["key_id"] = key.key_id
    header = BlockHeader(**fields)
    forged = SealedBlock(
        header, header_bytes(header), block_hash(header), key.sign_header(header), block.events
    )
    values = {name: getattr(header, name, None) for name in HEADER_COLUMNS}
    values.update(
        block_hash=forged.block_hash.hex(),
        header=forged.header_bytes,
        signature=forged.signature.hex(),
    )
    return forged, values


@pytest.fixture
def ledger(isolated: Settings) -> Iterator[Ledger]:
    model = HospitalModel(seed=11, staff=80, patients=500)
    events = [
        canonical_event_bytes(e)
        for e in simulate(model, count=CHAINS * BLOCKS * PER_BLOCK + 100, seed=11)
    ]
    store = ChainStore(ClickHouseBackend.from_settings(isolated), isolated.clickhouse_database)
    chains = [isolated.chain_id(isolated.topic_events, p) for p in range(CHAINS)]
    blocks: dict[str, list[SealedBlock]] = {}
    n = BLOCKS * PER_BLOCK
    for i, chain in enumerate(chains):
        # Chains start at different offsets, as partitions that lost old segments would.
        blocks[chain] = build_chain(chain, events[i * n : (i + 1) * n], first_offset=1000 * i)
        store.write_blocks(blocks[chain])
    try:
        yield Ledger(isolated, store, chains, blocks, events[CHAINS * n :])
    finally:
        store.backend.close()


# --------------------------------------------------------------------------- intact


def test_intact_chains_verify_clean(ledger: Ledger) -> None:
    for chain, report in ledger.verify_all().items():
        assert report.findings == [], report.findings
        assert report.result == "intact"
        assert (report.blocks, report.events) == (BLOCKS, BLOCKS * PER_BLOCK)
        assert report.head is not None
        assert report.head.block_hash == ledger.blocks[chain][-1].block_hash.hex()
    assert sorted(ledger.store.chain_ids()) == ledger.chains


# --------------------------------------------------------------------------- events


def test_modified_event_bytes(ledger: Ledger) -> None:
    chain = ledger.chains[1]
    row = ledger.event_row(chain, 2, 7)
    forged = row["canonical"].replace(b'"id":"' + row["patient_id"] + b'"', b'"id":"P-FORGED"')
    assert forged != row["canonical"]
    ledger.update_event(chain, 2, 7, canonical=forged)
    report = ledger.assert_only(
        chain,
        {
            ("EVENT_HASH_MISMATCH", 2, 7),
            ("EVENT_FIELD_MISMATCH", 2, 7),
            ("MERKLE_ROOT_MISMATCH", 2, None),
        },
    )
    finding = next(f for f in report.findings if f.code == C.EVENT_HASH_MISMATCH)
    assert finding.event_id == row["event_id"].decode()
    assert report.result == "tampered"


def test_modified_event_bytes_and_leaf_hash(ledger: Ledger) -> None:
    chain = ledger.chains[0]
    row = ledger.event_row(chain, 1, 3)
    event = decode_event(row["canonical"])
    forged = canonical_event_bytes(msgspec.structs.replace(event, purpose_of_use=("HMARKT",)))
    ledger.update_event(chain, 1, 3, canonical=forged, leaf_hash=leaf_hash(forged).hex())
    ledger.assert_only(chain, {("MERKLE_ROOT_MISMATCH", 1, None)})


def test_modified_denormalised_column(ledger: Ledger) -> None:
    chain = ledger.chains[2]
    row = ledger.event_row(chain, 4, 49)
    ledger.update_event(chain, 4, 49, patient_id="P-FORGED")
    report = ledger.assert_only(chain, {("EVENT_FIELD_MISMATCH", 4, 49)})
    finding = report.findings[0]
    assert finding.event_id == row["event_id"].decode()
    withheld = "(identifier withheld: read the row at this location)"
    assert finding.details["columns"] == {"patient_id": {"column": withheld, "event": withheld}}
    assert row["patient_id"].decode() not in repr(finding.to_dict())


def test_modified_stored_leaf_hash(ledger: Ledger) -> None:
    chain = ledger.chains[0]
    ledger.update_event(chain, 0, 0, leaf_hash="00" * 32)
    ledger.assert_only(chain, {("EVENT_HASH_MISMATCH", 0, 0)})


def test_deleted_event(ledger: Ledger) -> None:
    chain = ledger.chains[1]
    row = ledger.event_row(chain, 3, 11)
    ledger.delete_events(chain, "height = 3 AND idx = 11")
    report = ledger.assert_only(
        chain, {("EVENT_MISSING", 3, 11), ("EVENT_COUNT_MISMATCH", 3, None)}
    )
    assert row["event_id"] not in {f.event_id for f in report.findings}  # it is gone


def test_inserted_forged_event(ledger: Ledger) -> None:
    """A forged access appended to a block, and one slipped in at an existing index."""
    chain = ledger.chains[2]
    template = ledger.event_row(chain, 1, 0)
    block = ledger.blocks[chain][1]
    forged_bytes = ledger.spare[0]
    event = decode_event(forged_bytes)
    forged = {
        **template,
        "kafka_offset": block.header.last_offset,
        "event_id": event.event_id,
        "occurred_at": event.occurred_at,
        "actor_id": event.actor.id,
        "patient_id": event.patient.id,
        "action": event.action,
        "outcome": event.outcome,
        "source_system": event.source.system,
        "canonical": forged_bytes,
        "leaf_hash": leaf_hash(forged_bytes).hex(),
    }
    block3_hash = ledger.blocks[chain][3].block_hash.hex()
    ledger.insert_events(
        [
            {**forged, "idx": PER_BLOCK},
            {**forged, "idx": 5, "height": 3, "block_hash": block3_hash},
        ]
    )
    report = ledger.assert_only(
        chain,
        {
            ("EVENT_UNEXPECTED", 1, PER_BLOCK),
            ("EVENT_COUNT_MISMATCH", 1, None),
            ("EVENT_UNEXPECTED", 3, 5),
            ("EVENT_COUNT_MISMATCH", 3, None),
        },
    )
    unexpected = [f for f in report.findings if f.code == C.EVENT_UNEXPECTED]
    assert {f.event_id for f in unexpected} == {event.event_id}


def test_swapped_events(ledger: Ledger) -> None:
    chain = ledger.chains[0]
    a, b = ledger.event_row(chain, 3, 4), ledger.event_row(chain, 3, 9)
    ledger.delete_events(chain, "height = 3 AND idx IN (4, 9)")
    ledger.insert_events([{**a, "idx": 9}, {**b, "idx": 4}])
    report = ledger.assert_only(
        chain,
        {
            ("EVENT_OUT_OF_ORDER", 3, 4),
            ("EVENT_OUT_OF_ORDER", 3, 9),
            ("MERKLE_ROOT_MISMATCH", 3, None),
        },
    )
    out_of_order = {f.event_index: f.event_id for f in report.findings if f.event_index}
    assert out_of_order == {4: b["event_id"].decode(), 9: a["event_id"].decode()}


# --------------------------------------------------------------------------- blocks


def test_altered_merkle_root(ledger: Ledger) -> None:
    """The attacker rewrites the root everywhere it is stored (header bytes, column,
    block hash, the events' block hash) but cannot re-sign."""
    chain = ledger.chains[1]
    old = ledger.header_row(chain, 2)
    old_root = old["merkle_root"]
    new_root = b"0" * 64
    header = old["header"].replace(old_root, new_root)
    new_hash = hashlib.sha256(header).hexdigest()
    ledger.update_header(chain, 2, merkle_root=new_root, header=header, block_hash=new_hash)
    ledger.mutate(
        f"ALTER TABLE {ledger.db}.access_events UPDATE block_hash = %(h)s "
        "WHERE chain_id = %(chain)s AND height = 2",
        {"h": new_hash, "chain": chain},
    )
    ledger.assert_only(
        chain,
        {
            ("SIGNATURE_INVALID", 2, None),
            ("MERKLE_ROOT_MISMATCH", 2, None),
            ("PREV_HASH_MISMATCH", 3, None),  # block 3 still names the genuine block 2
        },
    )


def test_altered_merkle_root_column_only(ledger: Ledger) -> None:
    chain = ledger.chains[1]
    ledger.update_header(chain, 2, merkle_root="ab" * 32)
    report = ledger.assert_only(chain, {("BLOCK_HEADER_MISMATCH", 2, None)})
    assert set(report.findings[0].details["columns"]) == {"merkle_root"}  # type: ignore[arg-type]


def test_broken_previous_hash_link(ledger: Ledger) -> None:
    chain = ledger.chains[2]
    old = ledger.header_row(chain, 3)
    header = old["header"].replace(old["prev_hash"], b"1" * 64)
    new_hash = hashlib.sha256(header).hexdigest()
    ledger.update_header(chain, 3, prev_hash="1" * 64, header=header, block_hash=new_hash)
    ledger.mutate(
        f"ALTER TABLE {ledger.db}.access_events UPDATE block_hash = %(h)s "
        "WHERE chain_id = %(chain)s AND height = 3",
        {"h": new_hash, "chain": chain},
    )
    report = ledger.assert_only(
        chain,
        {
            ("PREV_HASH_MISMATCH", 3, None),
            ("SIGNATURE_INVALID", 3, None),
            ("PREV_HASH_MISMATCH", 4, None),
        },
    )
    link = next(f for f in report.findings if f.code == C.PREV_HASH_MISMATCH and f.height == 3)
    assert link.details["expected"] == ledger.blocks[chain][2].block_hash.hex()


def test_deleted_middle_block(ledger: Ledger) -> None:
    chain = ledger.chains[0]
    ledger.delete_headers(chain, "height = 2")
    ledger.delete_events(chain, "height = 2")
    report = ledger.assert_only(chain, {("HEIGHT_GAP", 2, None)})
    assert report.findings[0].details == {"missing_from": 2, "missing_to": 2}


def test_deleted_middle_header_only(ledger: Ledger) -> None:
    chain = ledger.chains[0]
    ledger.delete_headers(chain, "height = 2")
    report = ledger.assert_only(chain, {("HEIGHT_GAP", 2, None), ("EVENT_UNEXPECTED", 2, None)})
    orphans = next(f for f in report.findings if f.code == C.EVENT_UNEXPECTED)
    assert orphans.details["rows"] == PER_BLOCK


def test_block_signed_by_an_unknown_key(ledger: Ledger) -> None:
    """The newest block replaced by one the attacker signed with their own key."""
    chain = ledger.chains[1]
    ledger.delete_headers(chain, "height = 4")
    ledger.delete_events(chain, "height = 4")
    prev = ledger.blocks[chain][3]
    resumed = PartitionChain.resume(
        chain,
        ChainHead(chain, 3, prev.block_hash.hex(), prev.header.last_offset),
        max_event_bytes=65536,
    )
    offset = prev.header.last_offset + 1
    for i, value in enumerate(ledger.spare[:PER_BLOCK]):
        resumed.add(offset + i, value, None, 0.0, 0.0)
    forged = resumed.seal(ATTACKER_KEY, now=1_800_000_100.0)
    assert forged is not None
    ledger.store.write_blocks([forged])
    report = ledger.assert_only(chain, {("KEY_UNKNOWN", 4, None)})
    assert report.findings[0].details["key_id"] == ATTACKER_KEY.key_id


def test_bad_signature(ledger: Ledger) -> None:
    chain = ledger.chains[2]
    signature = bytearray(ledger.blocks[chain][1].signature)
    signature[0] ^= 0x80
    ledger.update_header(chain, 1, signature=signature.hex())
    ledger.assert_only(chain, {("SIGNATURE_INVALID", 1, None)})


def test_fork_extra_header_at_an_existing_height(ledger: Ledger) -> None:
    chain = ledger.chains[0]
    genuine = ledger.blocks[chain][2]
    forged, row = forged_block(genuine, ATTACKER_KEY, created_at="2031-01-01T00:00:00.000000Z")
    ledger.insert_header(row)
    report = ledger.assert_only(chain, {("HEIGHT_FORK", 2, None)})
    fork = report.findings[0]
    assert fork.details["chosen"] == genuine.block_hash.hex()
    hashes = {b["block_hash"] for b in fork.details["blocks"]}  # type: ignore[attr-defined]
    assert hashes == {genuine.block_hash.hex(), forged.block_hash.hex()}


# --------------------------------------------------------------------------- chain ends


def test_truncated_newest_blocks_detected_against_verifier_state(ledger: Ledger) -> None:
    state = VerifierState(ledger.settings.verifier_state, ledger.db)
    reports = ledger.verify_all()
    state.save({c: r.head for c, r in reports.items() if r.head is not None})
    chain = ledger.chains[2]
    ledger.delete_headers(chain, "height >= 3")
    ledger.delete_events(chain, "height >= 3")
    known = state.load()
    for other in ledger.chains:
        report = ledger.verify(other, known_head=known[other])
        if other != chain:
            assert report.findings == []
    report = ledger.verify(chain, known_head=known[chain])
    assert where(report) == {("CHAIN_TRUNCATED", 3, None)}
    assert report.findings[0].details["known_height"] == BLOCKS - 1
    # Without the state the shorter chain is self-consistent: nothing to see.
    assert ledger.verify(chain).findings == []


def test_truncation_leaving_the_event_rows(ledger: Ledger) -> None:
    """Headers of the newest blocks deleted, their events left: looks like a crash
    (info) without the state, is a truncation with it."""
    state = VerifierState(ledger.settings.verifier_state, ledger.db)
    state.save({c: r.head for c, r in ledger.verify_all().items() if r.head is not None})
    chain = ledger.chains[0]
    ledger.delete_headers(chain, "height = 4")
    report = ledger.verify(chain, known_head=state.get(chain))
    assert where(report) == {("CHAIN_TRUNCATED", 4, None), ("UNCOMMITTED_EVENTS", 4, None)}
    assert report.result == "tampered"


def test_uncommitted_rows_above_the_head_are_info_only(ledger: Ledger) -> None:
    chain = ledger.chains[1]
    prev = ledger.blocks[chain][-1]
    resumed = PartitionChain.resume(
        chain,
        ChainHead(chain, BLOCKS - 1, prev.block_hash.hex(), prev.header.last_offset),
        max_event_bytes=65536,
    )
    for i, value in enumerate(ledger.spare[:10]):
        resumed.add(prev.header.last_offset + 1 + i, value, None, 0.0, 0.0)
    block = resumed.seal(KEY, now=1_800_000_200.0)
    assert block is not None
    # The processor crashed between the events insert and the header insert.
    ledger.store.backend.insert(
        f"{ledger.db}.access_events",
        EVENT_COLUMNS,
        [
            (
                chain,
                BLOCKS,
                idx,
                block.block_hash.hex(),
                ev.offset,
                ev.event.event_id,
                ev.event.occurred_at,
                dt.date.fromisoformat(ev.event.occurred_at[:10]),
                ev.event.actor.id,
                ev.event.patient.id,
                ev.event.action,
                ev.event.outcome,
                ev.event.source.system,
                ev.canonical,
                ev.leaf_hash.hex(),
            )
            for idx, ev in enumerate(block.events)
        ],
    )
    report = ledger.assert_only(chain, {("UNCOMMITTED_EVENTS", BLOCKS, None)})
    assert report.findings[0].severity == Severity.INFO
    assert report.result == "intact" and report.uncommitted_events == 10
    # The processor discards them when it resumes; then there is nothing to report.
    ledger.store.discard_uncommitted(chain, BLOCKS - 1)
    assert ledger.verify(chain).findings == []
