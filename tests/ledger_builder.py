"""A small signed ledger built in memory, for the verifier's attack tests.

Everything goes through the real code: simulated access events signed at the source
(``sign_batch``) and admitted by the processor's ``SourceGate``, chained and sealed by
``processors.chainer.PartitionChain``; the source's key registration is a registrar-signed
``source-key`` reference record chained on the sources topic, like
``careledger source register`` does. ``rows_as_read`` turns sealed blocks into the rows
``ChainStore`` reads back (strings as bytes), so a fake reader serves exactly what the
real one would; ``ChainStore.write_blocks`` stores the same blocks in a real database.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from careledger.raw_record import build_envelope
from careledger.storage.kinds import ACCESS, RAW, REFERENCE, RecordKind, topic_of
from careledger.storage.store import (
    HEADER_COLUMNS,
    ChainStore,
    SealedBlock,
    StoredEvent,
    StoredHeader,
    StoredRaw,
    StoredReference,
    event_rows,
    row_columns,
)
from careledger_core.event import canonical_event_bytes, decode_event
from careledger_core.reference import (
    REFERENCE_SCHEMA,
    ReferenceRecord,
    canonical_reference_bytes,
)
from careledger_core.reference import reference_from_dict as reference
from careledger_core.signing import SigningKey, TrustedKeys
from careledger_core.source import (
    KeyEventStatement,
    encode_signed_event,
    sign_batch,
    sign_key_event,
)
from processors.chainer import PartitionChain
from processors.sources import SourceGate
from producers.simulator import HospitalModel, simulate

PROCESSOR = SigningKey.from_seed(hashlib.sha256(b"ledger builder processor key").digest())
REGISTRAR = SigningKey.from_seed(hashlib.sha256(b"ledger builder registrar key").digest())
SOURCE = SigningKey.from_seed(hashlib.sha256(b"ledger builder source key").digest())
TRUSTED = TrustedKeys([PROCESSOR.public_key])
SOURCE_ID = "ehr"
EPOCH = "00000000000000e1"
ORIGIN = "careledger.local"
EVENTS_TOPIC = "careledger.access-events"
SOURCES_TOPIC = "careledger.sources"
ACCESS_CHAIN = f"{ORIGIN}/{EVENTS_TOPIC}/0"
SOURCES_CHAIN = f"{ORIGIN}/{SOURCES_TOPIC}/0"
REFERENCE_CHAIN = f"{ORIGIN}/careledger.workforce/0"
RAW_CHAIN = f"{ORIGIN}/careledger.raw-records/0"
#: the kind of each topic's chains (the default Settings' topic names)
KINDS = {
    EVENTS_TOPIC: ACCESS,
    SOURCES_TOPIC: REFERENCE,
    "careledger.workforce": REFERENCE,
    "careledger.raw-records": RAW,
}
#: the block time of the ledger (2027-01-15T08:00:00Z) and when the key became valid
T0 = 1_800_000_000.0
VALID_FROM = "2026-01-01T00:00:00.000000Z"
#: a record the processor dead-letters (not JSON), leaving a free offset in its block
JUNK = b"this is not an access event"

StoredRow = StoredEvent | StoredReference | StoredRaw
_ROW_CLASS: dict[str, type[Any]] = {
    ACCESS.name: StoredEvent,
    REFERENCE.name: StoredReference,
    RAW.name: StoredRaw,
}


def _ts(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def access_payloads(count: int, seed: int = 3) -> list[bytes]:
    model = HospitalModel(seed=seed, staff=40, patients=200)
    return [canonical_event_bytes(e) for e in simulate(model, count=count, seed=seed)]


def key_event_record(
    key: SigningKey = SOURCE, source_id: str = SOURCE_ID, registrar: SigningKey = REGISTRAR
) -> bytes:
    statement = msgspec.convert(
        {
            "source_id": source_id,
            "key_id": key.key_id,
            "public_key": base64.b64encode(key.public_key.raw).decode(),
            "status": "active",
            "valid_from": VALID_FROM,
            "registrar_key_id": registrar.key_id,
        },
        KeyEventStatement,
    )
    record = ReferenceRecord(
        kind="source-key",
        record_id=f"{source_id}/{key.key_id}",
        version=1,
        recorded_at=VALID_FROM,
        effective_at=VALID_FROM,
        body={
            "statement": msgspec.to_builtins(statement),
            "signature": sign_key_event(registrar, statement),
        },
    )
    return canonical_reference_bytes(record)


def sources_chain(
    records: Sequence[bytes] | None = None, chain_id: str = SOURCES_CHAIN
) -> list[SealedBlock]:
    """One block on the sources topic registering the source key."""
    chain = PartitionChain(chain_id, max_event_bytes=65536, kind=REFERENCE, next_offset=0)
    for offset, value in enumerate(records if records is not None else [key_event_record()]):
        assert chain.add(offset, value, SOURCE_ID.encode(), T0, T0) is None
    block = chain.seal(PROCESSOR, now=T0)
    assert block is not None
    return [block]


def _registry_gate() -> SourceGate:
    from careledger_core.reference import SourceKeyBody, decode_and_canonicalize_reference
    from careledger_core.source import SourceRegistry, verify_key_event

    registry = SourceRegistry()
    rec, _ = decode_and_canonicalize_reference(key_event_record())
    body = rec.parsed
    assert isinstance(body, SourceKeyBody)
    verify_key_event(body.statement, body.signature, {REGISTRAR.key_id: REGISTRAR.public_key})
    registry.apply(body.statement)
    return SourceGate(require_signatures=True, load_registry=lambda: registry)


def signed_access_chain(
    payloads: Sequence[bytes],
    *,
    blocks: int = 3,
    per_block: int = 4,
    junk_at: Sequence[int] = (2,),
    chain_id: str = ACCESS_CHAIN,
    first_seq: int = 1,
) -> list[SealedBlock]:
    """``blocks`` blocks of ``per_block`` signed events each, one batch per block; the
    records at the offsets ``junk_at`` (counted over the whole chain) are dead-lettered."""
    chain = PartitionChain(chain_id, max_event_bytes=65536, next_offset=0)
    chain.gate = _registry_gate()
    it = iter(payloads)
    sealed: list[SealedBlock] = []
    offset = 0
    seq = first_seq
    for b in range(blocks):
        events = [next(it) for _ in range(per_block)]
        leaves = [hashlib.sha256(b"\x00" + e).digest() for e in events]
        now = T0 + 60 * b
        atts = sign_batch(
            SOURCE,
            source_id=SOURCE_ID,
            epoch=EPOCH,
            first_seq=seq,
            event_leaf_hashes=leaves,
            signed_at=_ts(now),
        )
        seq += per_block
        for value, att in zip(events, atts, strict=True):
            while offset in junk_at:
                rejected = chain.add(offset, JUNK, b"k", now, now)
                assert rejected is not None and not rejected.quarantine
                offset += 1
            admitted = chain.add(offset, encode_signed_event(value, att), b"k", now, now)
            assert admitted is None, admitted
            offset += 1
        block = chain.seal(PROCESSOR, now=now)
        assert block is not None
        sealed.append(block)
    return sealed


def plain_chain(
    kind: RecordKind, chain_id: str, payloads: Sequence[bytes], *, blocks: int, per_block: int
) -> list[SealedBlock]:
    """Unsigned records of ``kind`` (legacy access events, reference or raw records)."""
    chain = PartitionChain(chain_id, max_event_bytes=65536, kind=kind, next_offset=0)
    it = iter(payloads)
    sealed: list[SealedBlock] = []
    offset = 0
    for b in range(blocks):
        for _ in range(per_block):
            assert chain.add(offset, next(it), b"k", T0, T0) is None
            offset += 1
        block = chain.seal(PROCESSOR, now=T0 + b)
        assert block is not None
        sealed.append(block)
    return sealed


def staff(user: str, version: int) -> bytes:
    return canonical_reference_bytes(
        reference(
            {
                "schema": REFERENCE_SCHEMA,
                "kind": "staff",
                "record_id": user,
                "version": version,
                "recorded_at": f"2026-11-0{version}T08:00:00.000000Z",
                "effective_at": f"2026-11-0{version}T08:00:00.000000Z",
                "body": {
                    "user_id": user,
                    "family_name": "Smith",
                    "given_name": "Ana",
                    "roles": ["nurse"],
                    "department": "CARD",
                    "status": "active",
                    "start_date": "2020-01-01",
                },
            }
        )
    )


def raw(n: int) -> bytes:
    data = f"<85>1 - host app - IHE+RFC-3881 - <AuditMessage n='{n}'/>".encode()
    _env, canonical = build_envelope(
        record_id=str(uuid.UUID(int=n + 1)),
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        format="syslog+dicom-audit+xml",
        received_at=f"2026-11-29T10:00:0{n % 10}.123456Z",
        transport={"protocol": "syslog-tcp", "source_id": "pacs"},
    )
    return canonical


def mixed_ledger(settings: Any = None) -> dict[str, list[SealedBlock]]:
    """Every kind of chain: signed access events (a dead letter in the first block), the
    sources chain registering their key, staff records, raw records. Chain ids are
    those of ``settings``' topics (partition 0), else of the default topic names."""
    access, sources, workforce, raws = (
        (ACCESS_CHAIN, SOURCES_CHAIN, REFERENCE_CHAIN, RAW_CHAIN)
        if settings is None
        else (
            settings.chain_id(settings.topic_events, 0),
            settings.chain_id(settings.topic_sources, 0),
            settings.chain_id(settings.topic_workforce, 0),
            settings.chain_id(settings.topic_raw, 0),
        )
    )
    return {
        access: signed_access_chain(access_payloads(40), chain_id=access),
        sources: sources_chain(chain_id=sources),
        workforce: plain_chain(
            REFERENCE,
            workforce,
            [staff(f"E{i}", v) for i in range(3) for v in (1, 2)],
            blocks=2,
            per_block=3,
        ),
        raws: plain_chain(RAW, raws, [raw(i) for i in range(4)], blocks=2, per_block=2),
    }


def kind_of(chain_id: str) -> RecordKind:
    return KINDS.get(topic_of(chain_id), ACCESS)


def _as_read(value: Any) -> Any:
    """What the reader returns for a value the writer stores: strings as bytes,
    dates as ``datetime.date``."""
    if isinstance(value, str):
        return value.encode()
    return value


def headers_as_read(blocks: Sequence[SealedBlock]) -> list[StoredHeader]:
    from careledger.storage.store import header_rows

    rows = []
    for values in header_rows(blocks):
        d = dict(zip(HEADER_COLUMNS, values, strict=True))
        rows.append(
            StoredHeader(
                d["chain_id"], *(_as_read(d[c]) for c in HEADER_COLUMNS if c != "chain_id")
            )
        )
    return rows


def rows_as_read(kind: RecordKind, blocks: Sequence[SealedBlock]) -> list[StoredRow]:
    """The record rows of ``blocks`` as ``ChainStore.events`` returns them."""
    columns = row_columns(kind)
    selected = ("height", "idx", "block_hash", "kafka_offset", *kind.read_columns)
    selected += ("canonical", "leaf_hash")
    cls = _ROW_CLASS[kind.name]
    out: list[StoredRow] = []
    for values in event_rows(blocks, kind):
        d = dict(zip(columns, values, strict=True))
        out.append(cls(d["chain_id"], *(_as_read(d[c]) for c in selected)))
    return out


def _order(value: Any) -> tuple[int, Any]:
    """A sort key that never raises, whatever a hostile row holds."""
    if type(value) is int:
        return (0, value)
    if isinstance(value, bytes):
        return (1, value)
    return (2, repr(value))


def _odd(height: Any) -> bool:
    """A height no UInt64 column could hold: served with every query."""
    return type(height) is not int or not 0 <= height < 2**64


class FakeReader:
    """``ChainReader`` over lists of rows (headers, and records of one kind per chain),
    with the store's ordering; hostile values in any column are served as they are."""

    def __init__(self) -> None:
        self.header_rows: list[StoredHeader] = []
        self.rows: list[StoredRow] = []

    @classmethod
    def of(cls, kind: RecordKind, blocks: Sequence[SealedBlock]) -> FakeReader:
        reader = cls()
        reader.add(kind, blocks)
        return reader

    def add(self, kind: RecordKind, blocks: Sequence[SealedBlock]) -> None:
        self.header_rows += headers_as_read(blocks)
        self.rows += rows_as_read(kind, blocks)

    def chain_ids(self) -> list[str]:
        found = {h.chain_id for h in self.header_rows} | {r.chain_id for r in self.rows}
        return sorted(c for c in found if isinstance(c, str))

    def headers(
        self, chain_id: str, from_height: int = 0, page_size: int = 500
    ) -> Iterator[StoredHeader]:
        mine = [
            h
            for h in self.header_rows
            if h.chain_id == chain_id and (_odd(h.height) or h.height >= from_height)
        ]
        yield from sorted(mine, key=lambda h: (_order(h.height), _order(h.block_hash)))

    def events(self, chain_id: str, from_height: int, to_height: int) -> list[Any]:
        mine = [
            r
            for r in self.rows
            if r.chain_id == chain_id and (_odd(r.height) or from_height <= r.height <= to_height)
        ]
        return sorted(mine, key=lambda r: (_order(r.height), _order(r.idx), _order(r.kafka_offset)))

    # -- tampering -------------------------------------------------------------------
    def find(self, chain_id: str, height: int, idx: int) -> int:
        return next(
            k
            for k, r in enumerate(self.rows)
            if r.chain_id == chain_id and r.height == height and r.idx == idx
        )

    def update_row(self, chain_id: str, height: int, idx: int, /, **changes: Any) -> StoredRow:
        k = self.find(chain_id, height, idx)
        self.rows[k] = dataclasses.replace(self.rows[k], **changes)
        return self.rows[k]


def event_of(row: StoredEvent) -> Any:
    return decode_event(row.canonical)


class StoreLedger:
    """A ledger written to a real database, and an attacker's SQL against it.

    ``sync_mutations``: chDB waits for an ``ALTER`` with ``SETTINGS mutations_sync``;
    ClickHouse 18.16 has no such setting, so the mutation is polled in
    ``system.mutations`` instead."""

    def __init__(self, store: ChainStore, *, sync_mutations: bool) -> None:
        self.store = store
        self.backend = store.backend
        self.db = store.db
        self.sync_mutations = sync_mutations

    def sql(self, statement: str, params: dict[str, Any] | None = None) -> list[Any]:
        return self.backend.execute(statement.replace("{db}", self.db), params)

    def mutate(self, statement: str, params: dict[str, Any] | None = None) -> None:
        """An ALTER that is done when this returns."""
        if self.sync_mutations:
            self.sql(statement + " SETTINGS mutations_sync = 1", params)
            return
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

    def update(self, table: str, sets: str, chain: str, height: int, idx: int) -> None:
        self.mutate(
            f"ALTER TABLE {{db}}.{table} UPDATE {sets} "
            "WHERE chain_id = %(c)s AND height = %(h)s AND idx = %(i)s",
            {"c": chain, "h": height, "i": idx},
        )

    def columns(self, table: str) -> list[str]:
        rows = self.sql(
            "SELECT name FROM system.columns WHERE database = %(db)s AND table = %(t)s",
            {"db": self.db, "t": table},
        )
        return [r[0].decode() for r in rows]

    def copy_rows(self, table: str, where: str, **exprs: str) -> None:
        """Insert copies of the rows ``where`` selects, some columns replaced by SQL
        expressions (a subquery: an alias must not shadow a column in ``where``)."""
        cols = self.columns(table)
        select = ", ".join(f"{exprs[c]} AS {c}" if c in exprs else c for c in cols)
        self.sql(
            f"INSERT INTO {{db}}.{table} ({', '.join(cols)}) SELECT {select} "
            f"FROM (SELECT * FROM {{db}}.{table} WHERE {where})"
        )

    def reinsert(self, table: str, chain: str, height: int, idx: int, **exprs: str) -> None:
        """Replace a row by a copy with some columns changed: how a key or partition
        column (``occurred_date``) is 'updated'."""
        where = f"chain_id = '{chain}' AND height = {int(height)} AND idx = {int(idx)}"
        [[before]] = self.sql(f"SELECT count() FROM {{db}}.{table} WHERE {where}")
        marker = next(iter(exprs))
        [[old]] = self.sql(f"SELECT {marker} FROM {{db}}.{table} WHERE {where}")
        self.copy_rows(table, where, **exprs)
        self.mutate(
            f"ALTER TABLE {{db}}.{table} DELETE WHERE {where} AND {marker} = %(old)s",
            {"old": old},
        )
        [[after]] = self.sql(f"SELECT count() FROM {{db}}.{table} WHERE {where}")
        assert after == before
