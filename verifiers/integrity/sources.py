"""Who emitted each chained access event, and did any go missing? (ADR 0010)

``check_sources`` (pure) takes the committed access events with their stored source
attestations, the committed source-key events and heartbeats, and reports:

* per event: no attestation while signatures are required (``SOURCE_UNSIGNED``), a
  malformed attestation row (``SOURCE_ATTESTATION_INVALID``), a batch signature that
  does not verify (``SOURCE_SIGNATURE_INVALID``), an event that is not in its signed
  batch (``SOURCE_PROOF_INVALID``), a key unknown, revoked, or of another source at
  the signed time (``SOURCE_KEY_UNKNOWN`` / ``SOURCE_KEY_REVOKED`` /
  ``SOURCE_KEY_NOT_FOR_SOURCE``);
* over the whole ledger, per (source, epoch): a sequence number chained twice
  (``SOURCE_SEQ_DUPLICATE``: a replay) and sequence numbers that were sent — below
  the highest one chained or announced by a verified heartbeat — but never chained
  (``SOURCE_SEQ_GAP``: events lost between the source and Kafka, or deleted before
  chaining); a heartbeat whose signature does not verify (``SOURCE_HEARTBEAT_INVALID``).

The registry is rebuilt from the *ledgered* key events, each checked against the
registrar keys the verifier trusts from its own configuration; the leaf hash of each
event comes from the event rows that ``verify_chain`` checks against the signed
Merkle roots. Attestation rows are self-authenticating (signed by the source), so a
row that is altered fails its signature and one that is deleted leaves the event
unsigned.

``read_source_rows(store)`` is the I/O: committed rows only (rows whose block hash is
the committed header's), streamed chain by chain.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from careledger.storage.kinds import ACCESS, REFERENCE
from careledger.storage.store import ChainStore
from careledger_core.errors import CareledgerError
from careledger_core.findings import Finding, FindingCode
from careledger_core.reference import (
    SourceHeartbeatBody,
    SourceKeyBody,
    decode_and_canonicalize_reference,
)
from careledger_core.signing import PublicKey
from careledger_core.source import (
    Attestation,
    BatchVerifier,
    SourceAuthError,
    SourceRegistry,
    verify_heartbeat,
    verify_key_event,
)

log = logging.getLogger("careledger.verify.sources")

_AUTH_CODES = {
    "BAD_SIGNATURE": FindingCode.SOURCE_SIGNATURE_INVALID,
    "BAD_PROOF": FindingCode.SOURCE_PROOF_INVALID,
    "UNKNOWN_KEY": FindingCode.SOURCE_KEY_UNKNOWN,
    "REVOKED_KEY": FindingCode.SOURCE_KEY_REVOKED,
    "KEY_NOT_FOR_SOURCE": FindingCode.SOURCE_KEY_NOT_FOR_SOURCE,
}
#: at most this many findings of one code are listed (the rest are counted)
MAX_FINDINGS_PER_CODE = 200


@dataclass(frozen=True, slots=True)
class AttestedEvent:
    """A committed access event and its stored attestation columns (None: unsigned)."""

    chain_id: str
    height: int
    idx: int
    event_id: str
    leaf_hash: bytes
    #: (statement JCS bytes, signature, batch_index, proof "h1,h2,...") or None
    attestation: tuple[bytes, str, int, str] | None
    #: the signed created_at of the event's block
    block_time: str = ""


@dataclass
class SourceReport:
    findings: list[Finding] = field(default_factory=list)
    signed_events: int = 0
    unsigned_events: int = 0
    #: unsigned events chained before signatures were required (not findings)
    legacy_unsigned_events: int = 0
    signatures_required_since: str | None = None
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    dropped: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "signed_events": self.signed_events,
            "unsigned_events": self.unsigned_events,
            "legacy_unsigned_events": self.legacy_unsigned_events,
            "signatures_required_since": self.signatures_required_since,
            "sources": self.sources,
            "findings": len(self.findings),
            "findings_dropped": self.dropped,
        }


class _Seqs:
    """Sequence numbers seen in one (source, epoch), as a bitmap."""

    __slots__ = ("bits", "max_seq")

    def __init__(self) -> None:
        self.bits = bytearray()
        self.max_seq = 0

    def add(self, seq: int) -> bool:
        """Mark ``seq`` seen; False if it was seen before (a replay)."""
        byte, bit = divmod(seq, 8)
        if byte >= len(self.bits):
            self.bits.extend(bytes(byte - len(self.bits) + 1024))
        if self.bits[byte] & (1 << bit):
            return False
        self.bits[byte] |= 1 << bit
        self.max_seq = max(self.max_seq, seq)
        return True

    def has(self, seq: int) -> bool:
        byte, bit = divmod(seq, 8)
        return byte < len(self.bits) and bool(self.bits[byte] & (1 << bit))

    def missing(self, upto: int) -> list[tuple[int, int]]:
        """Ranges of sequence numbers 1..upto not seen (inclusive bounds)."""
        out: list[tuple[int, int]] = []
        start: int | None = None
        for seq in range(1, upto + 1):
            if not self.has(seq):
                if start is None:
                    start = seq
            elif start is not None:
                out.append((start, seq - 1))
                start = None
        if start is not None:
            out.append((start, upto))
        return out


def build_registry(
    key_events: Iterable[SourceKeyBody], registrars: Mapping[str, PublicKey]
) -> tuple[SourceRegistry, list[str]]:
    """The registry from ledgered key events; events failing the registrar check are
    left out and described."""
    registry = SourceRegistry()
    problems: list[str] = []
    for body in key_events:
        try:
            verify_key_event(body.statement, body.signature, registrars)
        except SourceAuthError as exc:
            problems.append(
                f"key event for {body.statement.source_id}/{body.statement.key_id}: "
                f"{exc.code}: {exc.message}"
            )
            continue
        registry.apply(body.statement)
    return registry, problems


def check_sources(
    events: Iterable[AttestedEvent],
    registry: SourceRegistry,
    heartbeats: Iterable[SourceHeartbeatBody] = (),
    *,
    require_signatures: bool,
    required_since: str | None = None,
) -> SourceReport:
    """``required_since``: unsigned events in blocks created before this instant were
    chained before any source could sign (legacy history) and are counted, not
    reported; None: every unsigned event counts when signatures are required."""
    report = SourceReport(signatures_required_since=required_since)
    per_code: dict[FindingCode, int] = {}

    def emit(code: FindingCode, ev: AttestedEvent | None, message: str, **details: Any) -> None:
        n = per_code.get(code, 0)
        per_code[code] = n + 1
        if n >= MAX_FINDINGS_PER_CODE:
            report.dropped += 1
            return
        report.findings.append(
            Finding.of(
                code,
                "" if ev is None else ev.chain_id,
                message,
                height=None if ev is None else ev.height,
                event_index=None if ev is None else ev.idx,
                event_id=None if ev is None else ev.event_id,
                details=details,
            )
        )

    verifier = BatchVerifier(registry, cache_size=65536)
    seqs: dict[tuple[str, str], _Seqs] = {}
    for ev in events:
        if ev.attestation is None:
            report.unsigned_events += 1
            if required_since is not None and ev.block_time < required_since:
                report.legacy_unsigned_events += 1
            elif require_signatures:
                emit(FindingCode.SOURCE_UNSIGNED, ev, "access event has no source attestation")
            continue
        statement_bytes, signature, index, proof = ev.attestation
        try:
            att = msgspec.convert(
                {
                    "statement": msgspec.json.decode(statement_bytes),
                    "signature": signature,
                    "index": index,
                    "proof": [p for p in proof.split(",") if p],
                },
                Attestation,
            )
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            emit(FindingCode.SOURCE_ATTESTATION_INVALID, ev, f"attestation row: {exc}")
            continue
        st = att.statement
        try:
            verifier.check(ev.leaf_hash, att)
        except SourceAuthError as exc:
            emit(
                _AUTH_CODES.get(exc.code, FindingCode.SOURCE_SIGNATURE_INVALID),
                ev,
                exc.message,
                source_id=st.source_id,
                key_id=st.key_id,
                seq=att.seq,
            )
            continue
        report.signed_events += 1
        counts = report.sources.setdefault(st.source_id, {"events": 0, "epochs": 0})
        counts["events"] += 1
        run = seqs.get((st.source_id, st.epoch))
        if run is None:
            run = seqs[(st.source_id, st.epoch)] = _Seqs()
            counts["epochs"] += 1
        if not run.add(att.seq):
            emit(
                FindingCode.SOURCE_SEQ_DUPLICATE,
                ev,
                f"sequence number {att.seq} of {st.source_id} chained more than once",
                source_id=st.source_id,
                epoch=st.epoch,
                seq=att.seq,
            )

    announced: dict[tuple[str, str], int] = {}
    for hb in heartbeats:
        s = hb.statement
        try:
            key = registry.authorize(s.source_id, s.key_id, s.sent_at)
            verify_heartbeat(s, hb.signature, key)
        except SourceAuthError as exc:
            emit(
                FindingCode.SOURCE_HEARTBEAT_INVALID,
                None,
                f"heartbeat of {s.source_id}: {exc.message}",
                source_id=s.source_id,
                epoch=s.epoch,
                beat=s.beat,
            )
            continue
        k = (s.source_id, s.epoch)
        announced[k] = max(announced.get(k, 0), s.last_seq)

    for source_id, epoch in sorted(set(seqs) | set(announced)):
        run = seqs.get((source_id, epoch)) or _Seqs()
        upto = max(run.max_seq, announced.get((source_id, epoch), 0))
        for first, last in run.missing(upto):
            emit(
                FindingCode.SOURCE_SEQ_GAP,
                None,
                f"{source_id} epoch {epoch}: sequence numbers {first}..{last} were sent "
                "but never chained",
                source_id=source_id,
                epoch=epoch,
                first_missing=first,
                last_missing=last,
                count=last - first + 1,
            )
    return report


# --------------------------------------------------------------------------- reading


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def read_source_rows(
    store: ChainStore, page_blocks: int = 1000
) -> tuple[Iterator[AttestedEvent], list[SourceKeyBody], list[SourceHeartbeatBody]]:
    """Committed access events with their attestations (streamed per chain), and the
    committed key events and heartbeats."""
    db, backend = store.db, store.backend
    key_events: list[SourceKeyBody] = []
    heartbeats: list[SourceHeartbeatBody] = []
    committed = (
        f"(chain_id, height, block_hash) IN (SELECT chain_id, height, block_hash FROM {db}.blocks)"
    )
    rows = backend.execute(
        f"SELECT canonical FROM {db}.{REFERENCE.table} "
        f"WHERE kind IN ('source-key', 'source-heartbeat') AND {committed} "
        "ORDER BY chain_id, height, idx"
    )
    for (canonical,) in rows:
        try:
            rec, _ = decode_and_canonicalize_reference(
                canonical if isinstance(canonical, bytes) else canonical.encode()
            )
        except CareledgerError:
            continue  # verify_chain reports malformed reference rows
        if isinstance(rec.parsed, SourceKeyBody):
            key_events.append(rec.parsed)
        elif isinstance(rec.parsed, SourceHeartbeatBody):
            heartbeats.append(rec.parsed)

    chains = [
        _text(r[0])
        for r in backend.execute(
            f"SELECT DISTINCT chain_id FROM {db}.{ACCESS.table} WHERE {committed} ORDER BY chain_id"
        )
    ]

    def events() -> Iterator[AttestedEvent]:
        for chain in chains:
            top = backend.execute(
                f"SELECT max(height) FROM {db}.blocks WHERE chain_id = %(c)s", {"c": chain}
            )
            head = int(top[0][0]) if top else 0
            for lo in range(0, head + 1, page_blocks):
                yield from _page(chain, lo, lo + page_blocks - 1)

    def _page(chain: str, lo: int, hi: int) -> Iterator[AttestedEvent]:
        params = {"c": chain, "lo": lo, "hi": hi}
        block_times = {
            (int(h), _text(bh)): _text(t)
            for h, bh, t in backend.execute(
                f"SELECT height, block_hash, created_at FROM {db}.blocks "
                "WHERE chain_id = %(c)s AND height >= %(lo)s AND height <= %(hi)s",
                params,
            )
        }
        atts = {
            (int(h), int(i), _text(bh)): (
                st if isinstance(st, bytes) else st.encode(),
                _text(sig),
                int(bi),
                _text(proof),
            )
            for h, i, bh, st, sig, bi, proof in backend.execute(
                "SELECT height, idx, block_hash, statement, signature, batch_index, proof "
                f"FROM {db}.source_attestations "
                "WHERE chain_id = %(c)s AND height >= %(lo)s AND height <= %(hi)s",
                params,
            )
        }
        for h, i, bh, eid, leaf in backend.execute(
            f"SELECT height, idx, block_hash, event_id, leaf_hash FROM {db}.{ACCESS.table} "
            "WHERE chain_id = %(c)s AND height >= %(lo)s AND height <= %(hi)s "
            f"AND {committed} ORDER BY height, idx",
            params,
        ):
            yield AttestedEvent(
                chain,
                int(h),
                int(i),
                _text(eid),
                bytes.fromhex(_text(leaf)),
                atts.get((int(h), int(i), _text(bh))),
                block_times.get((int(h), _text(bh)), ""),
            )

    return events(), key_events, heartbeats
