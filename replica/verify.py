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
  registrar's key).

``check_link`` is the chain rule between a block and the replica's head: next height,
previous block hash, offsets that touch (ADR 0003).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from careledger.storage.block_records import BlockMaterial
from careledger.storage.kinds import ACCESS, RecordKind
from careledger.storage.store import ChainedEvent, ChainHead, SealedBlock
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
    for i, r in enumerate(m.records):
        raw = bytes(r.canonical)
        try:
            record, canonical = kind.decode(raw)
        except ValidationError as exc:
            raise _refuse("EVENT_NOT_CANONICAL", m, f"record {i}: {exc}") from exc
        if canonical != raw:
            raise _refuse("EVENT_NOT_CANONICAL", m, f"record {i} is not in canonical form")
        if not previous < r.offset <= header.last_offset:
            raise _refuse(
                "EVENT_OUT_OF_ORDER",
                m,
                f"record {i} at offset {r.offset}, outside {previous + 1}..{header.last_offset}",
            )
        previous = r.offset
        unique = kind.unique_key(record)
        if unique in seen:
            raise _refuse("EVENT_DUPLICATE_ID", m, f"record {i} repeats an earlier one")
        seen.add(unique)
        leaf = leaf_hash(canonical)
        if r.attestation is not None:
            if kind is not ACCESS:
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
    if events:
        times = [kind.time_of(e.event) for e in events]
        if (min(times), max(times)) != (header.first_event_time, header.last_event_time):
            raise _refuse("BLOCK_HEADER_MISMATCH", m, "event times are not the header's")
    return SealedBlock(header, m.header, digest, signature, events)


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
