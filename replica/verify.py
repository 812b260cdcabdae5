"""Is this block what the processor signed? One block's bytes, checked on their own.

``verify_material`` takes a block as the blocks topic carries it (or as a replica's rows
give it back, ``careledger.storage.block_records``) and returns the ``SealedBlock`` the
processor stored, or raises :class:`Refused` with a finding code and a reason:

* the header bytes decode strictly (canonical RFC 8785, valid fields) and hash to the
  block hash the carrier names, for the chain and height it names;
* the signature verifies under one of the trusted processor keys (the replica's own
  configuration, never the data it receives);
* every record's bytes decode as the chain's kind of record and are already canonical;
  their offsets rise inside the block's range and match the header's
  ``event_offsets`` digest (ADR 0014); no record repeats; the Merkle root over their
  leaf hashes is the header's; the event times are the header's first and last;
* a source attestation (ADR 0010) proves its event is in the signed batch (the batch
  signature and the key's registration are ``careledger verify``'s to check, with the
  registrar's key);
* batch records (ADR 0020): only a header that signs ``event_records`` lets records
  share an offset, and then exactly that many distinct offsets; the events of one
  offset are one record: several of them must come with a batch (``WireBatch``, on the
  first), whose dead-lettered entries are well formed and which, with the events at the
  offset, are exactly the signed entries and give the signed root (``batch_root``). The
  batch is stored as the processor stored it (``ChainedEvent.batch``, one
  ``source_batches`` row).

``check_link`` is the chain rule between a block and the replica's head: next height,
previous block hash, offsets that touch (ADR 0003).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from careledger.storage.block_records import BlockMaterial, WireBatch, WireRecord
from careledger.storage.kinds import RecordKind
from careledger.storage.store import BatchInfo, ChainedEvent, ChainHead, SealedBlock
from careledger_core.batch_record import batch_root
from careledger_core.block import decode_header, offsets_digest
from careledger_core.errors import (
    HeaderValidationError,
    SignatureError,
    UnknownKeyError,
    ValidationError,
)
from careledger_core.hashing import leaf_hash
from careledger_core.merkle import merkle_root
from careledger_core.signing import TrustedKeys
from careledger_core.source import SourceAuthError, verify_attestation_proof

__all__ = ["Refused", "check_link", "verify_material"]


@dataclass
class Refused(Exception):
    """A block (or record) the replica does not take: a finding code and why."""

    code: str
    reason: str

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


def _refuse(code: str, m: BlockMaterial, reason: str) -> Refused:
    return Refused(code, f"{m.chain_id} height {m.height}: {reason}")


def verify_material(m: BlockMaterial, kind: RecordKind, keys: TrustedKeys) -> SealedBlock:
    """The block ``m`` stands for, checked; raises :class:`Refused` (see the module)."""
    try:
        header = decode_header(m.header)
    except HeaderValidationError as exc:
        raise _refuse("BLOCK_HEADER_INVALID", m, str(exc)) from exc
    digest = hashlib.sha256(m.header).digest()
    if digest.hex() != m.block_hash:
        raise _refuse("BLOCK_HASH_MISMATCH", m, "the header does not hash to the block hash")
    if (header.chain_id, header.height) != (m.chain_id, m.height):
        raise _refuse(
            "BLOCK_HEADER_MISMATCH",
            m,
            f"the header is of {header.chain_id} height {header.height}",
        )
    try:
        signature = bytes.fromhex(m.signature)
        keys.verify_header(header, signature)
    except UnknownKeyError as exc:
        raise _refuse("KEY_UNKNOWN", m, f"signed by key {header.key_id}, not trusted") from exc
    except (SignatureError, ValueError) as exc:
        raise _refuse("SIGNATURE_INVALID", m, "the signature does not verify") from exc
    if len(m.records) != header.event_count:
        raise _refuse(
            "EVENT_COUNT_MISMATCH",
            m,
            f"{len(m.records)} records for a header of {header.event_count}",
        )
    events: list[ChainedEvent] = []
    seen: set[object] = set()
    previous = header.first_offset - 1
    # batch records (ADR 0020): their events share the record's offset
    repeats = header.event_records is not None
    records = 0
    for i, r in enumerate(m.records):
        raw = bytes(r.canonical)
        try:
            record, canonical = kind.decode(raw)
        except ValidationError as exc:
            raise _refuse("EVENT_NOT_CANONICAL", m, f"record {i}: {exc}") from exc
        if canonical != raw:
            raise _refuse("EVENT_NOT_CANONICAL", m, f"record {i} is not in canonical form")
        lowest = previous if repeats and i else previous + 1
        if not lowest <= r.offset <= header.last_offset:
            raise _refuse(
                "EVENT_OUT_OF_ORDER",
                m,
                f"record {i} at offset {r.offset}, outside {lowest}..{header.last_offset}",
            )
        records += r.offset != previous
        previous = r.offset
        unique = kind.unique_key(record)
        if unique in seen:
            raise _refuse("EVENT_DUPLICATE_ID", m, f"record {i} repeats an earlier one")
        seen.add(unique)
        leaf = leaf_hash(canonical)
        if r.attestation is not None:
            if not kind.signed:
                raise _refuse("SOURCE_ATTESTATION_INVALID", m, f"record {i}: not an access event")
            try:
                verify_attestation_proof(leaf, r.attestation)
            except (SourceAuthError, ValidationError) as exc:
                raise _refuse("SOURCE_PROOF_INVALID", m, f"record {i}: {exc}") from exc
        events.append(ChainedEvent(r.offset, record, canonical, leaf, r.attestation))
    if merkle_root([e.leaf_hash for e in events]).hex() != header.merkle_root:
        raise _refuse("MERKLE_ROOT_MISMATCH", m, "the records do not give the header's root")
    if header.event_offsets is not None and header.event_offsets != offsets_digest(
        e.offset for e in events
    ):
        raise _refuse("EVENT_OFFSETS_MISMATCH", m, "the offsets are not the signed ones")
    if repeats and records != header.event_records:
        raise _refuse(
            "EVENT_OFFSETS_MISMATCH",
            m,
            f"the events are in {records} records, the header signs {header.event_records}",
        )
    # what the processor signed first, then the source's batches (ADR 0020)
    events = _with_batches(m, kind, events)
    if events:
        times = [kind.time_of(e.event) for e in events]
        if (min(times), max(times)) != (header.first_event_time, header.last_event_time):
            raise _refuse("BLOCK_HEADER_MISMATCH", m, "event times are not the header's")
    return SealedBlock(header, m.header, digest, signature, events)


def _with_batches(
    m: BlockMaterial, kind: RecordKind, events: list[ChainedEvent]
) -> list[ChainedEvent]:
    """``events`` with the batch record each came in (ADR 0020), checked: the events
    of one offset are one record; several must come with a batch on the first, and a
    batch with the events at its offset must be exactly the signed entries."""
    out: list[ChainedEvent] = []
    start = 0
    while start < len(events):
        end = start + 1
        while end < len(events) and events[end].offset == events[start].offset:
            end += 1
        first: WireRecord = m.records[start]
        if any(r.batch is not None for r in m.records[start + 1 : end]):
            raise _refuse(
                "SOURCE_ATTESTATION_INVALID",
                m,
                f"records {start}..{end - 1}: a batch on a record that is not its first event",
            )
        if first.batch is None:
            if end - start > 1:
                raise _refuse(
                    "SOURCE_ATTESTATION_INVALID",
                    m,
                    f"records {start}..{end - 1} share offset {first.offset} without a batch",
                )
            out.append(events[start])
        else:
            out += _batch_events(m, kind, first.batch, events[start:end], start)
        start = end
    return out


def _batch_events(
    m: BlockMaterial, kind: RecordKind, batch: WireBatch, group: list[ChainedEvent], start: int
) -> list[ChainedEvent]:
    """The events of one batch record, checked against its statement (see above)."""
    where = f"records {start}..{start + len(group) - 1} (offset {group[0].offset})"
    st = batch.statement
    if not kind.signed:  # access events, in clear or sealed (ADR 0037)
        raise _refuse("SOURCE_ATTESTATION_INVALID", m, f"{where}: not access events")
    if any(e.attestation is not None for e in group):
        raise _refuse("SOURCE_ATTESTATION_INVALID", m, f"{where}: an attestation in a batch record")
    skipped: list[tuple[int, bytes]] = []
    for index, leaf in batch.skipped:
        try:
            raw = bytes.fromhex(leaf)
        except ValueError:
            raw = b""
        if len(raw) != 32 or leaf != raw.hex() or not _skipped_after(skipped, index, st.size):
            raise _refuse(
                "SOURCE_ATTESTATION_INVALID", m, f"{where}: malformed dead-lettered entry"
            )
        skipped.append((index, raw))
    if len(group) + len(skipped) != st.size:
        raise _refuse(
            "SOURCE_PROOF_INVALID",
            m,
            f"{where}: {len(group)} events and {len(skipped)} dead-lettered entries for a "
            f"batch of {st.size}",
        )
    gone = dict(skipped)
    positions = [j for j in range(st.size) if j not in gone]
    it = iter(group)
    leaves = [gone[j] if j in gone else next(it).leaf_hash for j in range(st.size)]
    try:
        root = batch_root(st.first_seq, leaves).hex()
    except ValidationError as exc:
        raise _refuse("SOURCE_PROOF_INVALID", m, f"{where}: {exc}") from exc
    if root != st.root:
        raise _refuse("SOURCE_PROOF_INVALID", m, f"{where}: not the signed batch")
    info = BatchInfo(st, batch.signature, tuple(skipped))
    return [
        ChainedEvent(e.offset, e.event, e.canonical, e.leaf_hash, None, info, j)
        for e, j in zip(group, positions, strict=True)
    ]


def _skipped_after(skipped: list[tuple[int, bytes]], index: int, size: int) -> bool:
    """May ``index`` follow the dead-lettered entries ``skipped`` in a batch of ``size``?"""
    return 0 <= index < size and (not skipped or skipped[-1][0] < index)


def check_link(block: SealedBlock, head: ChainHead | None) -> None:
    """``block`` extends ``head`` (None: the chain is empty and ``block`` is its
    genesis). Raises :class:`Refused` (``PREV_HASH_MISMATCH``, ``OFFSET_GAP``)."""
    h = block.header
    if head is None:
        return  # height 0: the genesis prev_hash is checked by the header itself
    if h.prev_hash != head.block_hash:
        raise Refused(
            "PREV_HASH_MISMATCH",
            f"{h.chain_id} height {h.height} does not link to the block at {head.height}",
        )
    if h.first_offset != head.last_offset + 1:
        raise Refused(
            "OFFSET_GAP",
            f"{h.chain_id} height {h.height} starts at offset {h.first_offset}, "
            f"not {head.last_offset + 1}",
        )
