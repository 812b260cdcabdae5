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
unsigned. Their side columns (``event_id, source_id, key_id, epoch, seq, signed_by``:
copies a reader may query instead of the statement) must equal the signed statement and
the event's id, the statement, proof and signature columns must be the canonical text
of what was verified, and there is one attestation row per event and none for no event
(``SOURCE_ATTESTATION_INVALID`` otherwise). No row, however malformed, raises: each
becomes a finding at its event.

Batch records (ADR 0020): a batch that travelled as one Kafka record has one
``source_batches`` row instead of an attestation row per event; the events at its offset
come to ``check_sources`` together as an ``AttestedBatch``, checked with one signature and
one root (``verifiers.integrity.source_batches``, which also says how their sequence
numbers, the dead-lettered entries included, are accounted for). Events at an offset
whose batch row is gone are unsigned, like an event whose attestation row is gone.

``read_source_rows(store)`` is the I/O: committed rows only (rows whose block hash is
the committed header's), streamed chain by chain.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from careledger.storage.kinds import ACCESS, REFERENCE
from careledger.storage.store import ChainStore
from careledger_core.errors import CareledgerError, ValidationError
from careledger_core.event import is_valid_timestamp
from careledger_core.findings import Finding, FindingCode
from careledger_core.reference import (
    SourceHeartbeatBody,
    SourceKeyBody,
    decode_and_canonicalize_reference,
)
from careledger_core.signing import PublicKey
from careledger_core.source import (
    Attestation,
    BatchStatement,
    BatchVerifier,
    SeqRuns,
    SourceAuthError,
    SourceRegistry,
    statement_bytes,
    verify_heartbeat,
    verify_key_event,
)
from verifiers.integrity.fsck.model import _show, _text, _type_name
from verifiers.integrity.row_values import _as_str, _key, _leaf, _rows, _str
from verifiers.integrity.source_batches import (
    AUTH_CODES,
    AttestedBatch,
    BatchMember,
    BatchRow,
    Problem,
    Verdict,
    account_batch,
    authorize_in_window,
    choose_verdict,
    signed_time_problem,
)

log = logging.getLogger("careledger.verify.sources")

_AUTH_CODES = AUTH_CODES
#: at most this many findings of one code are listed (the rest are counted)
MAX_FINDINGS_PER_CODE = 200
#: the side columns of an attestation row, in ``AttestedEvent.columns`` order
SIDE_COLUMNS = ("event_id", "source_id", "key_id", "epoch", "seq", "signed_by")


@dataclass(frozen=True, slots=True)
class AttestedEvent:
    """A committed access event and its stored attestation columns (None: unsigned).

    Values come from the store and are untrusted: any of them may have any type."""

    chain_id: str
    height: int
    idx: int
    event_id: str
    #: the event's leaf hash (32 bytes); None when the stored one is not 64 hex digits
    leaf_hash: bytes | None
    #: (statement JCS bytes, signature, batch_index, proof "h1,h2,...") or None
    attestation: tuple[Any, Any, Any, Any] | None
    #: the signed created_at of the event's block
    block_time: str = ""
    #: the side columns as stored (``SIDE_COLUMNS``: strings as bytes, seq an int);
    #: None when not read
    columns: tuple[Any, ...] | None = None
    #: attestation rows stored for this event beyond the first (0: one row)
    extra_rows: int = 0
    #: an attestation row of a committed block for which the block has no event
    orphan: bool = False
    #: the broker append times (earliest, latest) of the block's attested events, as
    #: its header signs them (ADR 0015); None for headers signed before them
    append_window: tuple[str, str] | None = None


@dataclass
class SourceReport:
    findings: list[Finding] = field(default_factory=list)
    signed_events: int = 0
    #: batch records (ADR 0020) whose events are signed
    signed_batches: int = 0
    unsigned_events: int = 0
    #: unsigned events chained before signatures were required (not findings)
    legacy_unsigned_events: int = 0
    signatures_required_since: str | None = None
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    dropped: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "signed_events": self.signed_events,
            "signed_batches": self.signed_batches,
            "unsigned_events": self.unsigned_events,
            "legacy_unsigned_events": self.legacy_unsigned_events,
            "signatures_required_since": self.signatures_required_since,
            "sources": self.sources,
            "findings": len(self.findings),
            "findings_dropped": self.dropped,
        }


#: the sequence runs of one (source, epoch) (kept under its old name for callers)
_Seqs = SeqRuns


#: the setting (and its variable) that names the registrar keys a verifier trusts
REGISTRAR_SETTING = "trusted_registrar_keys (CARELEDGER_TRUSTED_REGISTRAR_KEYS)"


class RegistrarConfigError(CareledgerError):
    """The source checks cannot run as configured: no registrar key is trusted, or none
    of the trusted ones signed any of the ledgered key registrations. A configuration
    problem (``verify`` exit 2, naming the setting), never a finding: without the
    registrar's key nothing can be said about who signed what."""

    code = "REGISTRAR_NOT_CONFIGURED"


def missing_registrar_message() -> str:
    return (
        f"no trusted registrar key: set {REGISTRAR_SETTING} to the registrar's public "
        "key file(s) or ed25519:<base64> literal(s) (the demo's is .run/keys/registrar.key.pub) "
        "to check who emitted each event, or pass --no-sources to skip the source checks"
    )


def has_source_records(store: ChainStore) -> bool:
    """Whether the ledger holds anything the source checks need a registrar key for:
    an attestation row or a source-key registration."""
    db, backend = store.db, store.backend
    for sql in (
        f"SELECT count() FROM (SELECT 1 FROM {db}.source_attestations LIMIT 1)",
        f"SELECT count() FROM (SELECT 1 FROM {db}.source_batches LIMIT 1)",
        f"SELECT count() FROM (SELECT 1 FROM {db}.{REFERENCE.table} "
        "WHERE kind = 'source-key' LIMIT 1)",
    ):
        rows = backend.execute(sql)
        if rows and rows[0][0]:
            return True
    return False


def check_registrars(
    key_events: list[SourceKeyBody], registry: SourceRegistry, registrars: Mapping[str, PublicKey]
) -> None:
    """Raise ``RegistrarConfigError`` when the ledger has key registrations but the
    trusted registrar keys verified none of them (a wrong or missing key in the
    verifier's configuration: every signed event would otherwise look forged)."""
    if not key_events or len(registry):
        return
    if not registrars:
        raise RegistrarConfigError(missing_registrar_message())
    signers = sorted({body.statement.registrar_key_id for body in key_events})
    raise RegistrarConfigError(
        f"none of the {len(key_events)} ledgered source key registrations is signed by a "
        f"registrar key this verifier trusts (they name registrar key(s) "
        f"{', '.join(signers[:5])}; {REGISTRAR_SETTING} has {', '.join(sorted(registrars))}): "
        "fix the setting, or pass --no-sources to skip the source checks"
    )


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


#: where a finding is: (chain, height, event index, event id)
_Where = tuple[str, int | None, int | None, str | None]


def _at(ev: AttestedEvent | None) -> _Where:
    return ("", None, None, None) if ev is None else (ev.chain_id, ev.height, ev.idx, ev.event_id)


def check_sources(
    events: Iterable[AttestedEvent | AttestedBatch],
    registry: SourceRegistry,
    heartbeats: Iterable[SourceHeartbeatBody] = (),
    *,
    require_signatures: bool,
    required_since: str | None = None,
    max_skew_s: float = 900.0,
) -> SourceReport:
    """``required_since``: unsigned events in blocks created before this instant were
    chained before any source could sign (legacy history) and are counted, not
    reported; None: every unsigned event counts when signatures are required.

    Time (ADR 0015): an event whose block header signs its broker append times must have
    been signed within ``max_skew_s`` of them, by a key that could sign for its source at
    an instant of that window (the decision the processor made at the event's own
    append time): a revoked key is not made valid by a backdated ``signed_at``. Older
    headers give only their ``created_at``: the batch must not be signed more than
    ``max_skew_s`` after it, and the key is judged at ``signed_at`` as it was then.

    ``events`` may hold batch records (``AttestedBatch``, ADR 0020) among the events
    signed one by one; see ``source_batches`` for their checks."""
    check = _SourceCheck(registry, require_signatures, required_since, max_skew_s)
    for ev in events:
        if isinstance(ev, AttestedBatch):
            check.batch(ev)
        else:
            check.event(ev)
    return check.finish(heartbeats)


class _SourceCheck:
    """The state of one ``check_sources`` pass."""

    def __init__(
        self,
        registry: SourceRegistry,
        require_signatures: bool,
        required_since: str | None,
        max_skew_s: float,
    ) -> None:
        self.registry = registry
        self.require_signatures = require_signatures
        self.required_since = required_since
        self.max_skew_s = max_skew_s
        self.report = SourceReport(signatures_required_since=required_since)
        self.per_code: dict[FindingCode, int] = {}
        self.verifier = BatchVerifier(registry, cache_size=65536)
        self.seqs: dict[tuple[str, str], _Seqs] = {}
        self.epochs: set[tuple[str, str]] = set()  # with at least one verified event

    def emit(self, code: FindingCode, where: _Where, message: str, **details: Any) -> None:
        n = self.per_code.get(code, 0)
        self.per_code[code] = n + 1
        if n >= MAX_FINDINGS_PER_CODE:
            self.report.dropped += 1
            return
        chain_id, height, idx, event_id = where
        self.report.findings.append(
            Finding.of(
                code,
                chain_id,
                message,
                height=height,
                event_index=idx,
                event_id=event_id,
                details=details,
            )
        )

    def run_of(self, st: BatchStatement) -> _Seqs:
        return self.seqs.setdefault((st.source_id, st.epoch), _Seqs())

    def signed(self, st: BatchStatement, events: int) -> None:
        self.report.signed_events += events
        counts = self.report.sources.setdefault(st.source_id, {"events": 0, "epochs": 0})
        counts["events"] += events
        if (st.source_id, st.epoch) not in self.epochs:
            self.epochs.add((st.source_id, st.epoch))
            counts["epochs"] += 1

    def unsigned(self, ev: AttestedEvent) -> None:
        self.report.unsigned_events += 1
        if self.required_since is not None and ev.block_time < self.required_since:
            self.report.legacy_unsigned_events += 1
        elif self.require_signatures:
            self.emit(
                FindingCode.SOURCE_UNSIGNED, _at(ev), "access event has no source attestation"
            )

    # ------------------------------------------------------------------ one event
    def event(self, ev: AttestedEvent) -> None:
        emit, where = self.emit, _at(ev)
        if ev.orphan:
            emit(
                FindingCode.SOURCE_ATTESTATION_INVALID,
                where,
                "an attestation row of a committed block names an event the block does not have",
            )
            return
        if ev.extra_rows:
            emit(
                FindingCode.SOURCE_ATTESTATION_INVALID,
                where,
                f"{ev.extra_rows + 1} attestation rows for one event",
                rows=ev.extra_rows + 1,
            )
        if ev.attestation is None:
            self.unsigned(ev)
            return
        att, problem = _parse_attestation(ev.attestation)
        if att is None:
            emit(FindingCode.SOURCE_ATTESTATION_INVALID, where, f"attestation row: {problem}")
            return
        st = att.statement
        if problem:
            emit(FindingCode.SOURCE_ATTESTATION_INVALID, where, f"attestation row: {problem}")
        if type(ev.leaf_hash) is not bytes or len(ev.leaf_hash) != 32:
            emit(
                FindingCode.SOURCE_PROOF_INVALID,
                where,
                "the event's stored leaf hash is not 64 hex digits: its attestation "
                "cannot be checked",
                source_id=st.source_id,
                seq=att.seq,
            )
            # named here: not also a gap in the source's sequence numbers
            self.run_of(st).add(att.seq)
            return
        try:
            self.verifier.verify_batch(ev.leaf_hash, att)
            skew = signed_time_problem(st, ev.append_window, ev.block_time, self.max_skew_s)
            if skew:
                emit(
                    FindingCode.SOURCE_SIGNED_AT_SKEW,
                    where,
                    skew,
                    source_id=st.source_id,
                    key_id=st.key_id,
                    seq=att.seq,
                    signed_at=st.signed_at,
                    append_window=list(ev.append_window or ()),
                    block_created_at=ev.block_time,
                    max_skew_s=self.max_skew_s,
                )
                self.run_of(st).add(att.seq)
                return
            authorize_in_window(self.verifier, st, ev.append_window, self.max_skew_s)
        except SourceAuthError as exc:
            emit(
                _AUTH_CODES.get(exc.code, FindingCode.SOURCE_SIGNATURE_INVALID),
                where,
                exc.message,
                source_id=st.source_id,
                key_id=st.key_id,
                seq=att.seq,
            )
            return
        except ValidationError as exc:  # e.g. a sequence number beyond 2^53 - 1
            emit(
                FindingCode.SOURCE_PROOF_INVALID,
                where,
                f"the event is not in its signed batch: {exc.message}",
                source_id=st.source_id,
                seq=att.seq,
            )
            return
        if ev.columns is not None:
            diff = _side_diff(ev, att)
            if diff:
                emit(
                    FindingCode.SOURCE_ATTESTATION_INVALID,
                    where,
                    "attestation columns differ from the signed statement: " + ", ".join(diff),
                    columns=diff,
                )
        self.signed(st, 1)
        if not self.run_of(st).add(att.seq):
            emit(
                FindingCode.SOURCE_SEQ_DUPLICATE,
                where,
                f"sequence number {att.seq} of {st.source_id} chained more than once",
                source_id=st.source_id,
                epoch=st.epoch,
                seq=att.seq,
            )

    # ------------------------------------------------------------------ one batch record
    def batch(self, b: AttestedBatch) -> None:
        """A batch record (ADR 0020): one signature and one root for its events."""
        first = b.members[0] if b.members else None

        def where(m: BatchMember | None) -> _Where:
            m = m or first
            if m is None:
                return (b.chain_id, b.height, None, None)
            return (b.chain_id, b.height, m.idx, m.event_id)

        bad = FindingCode.SOURCE_ATTESTATION_INVALID
        offset = _show(b.kafka_offset)
        if first is None:
            self.emit(
                bad,
                where(None),
                f"a batch row of a committed block names offset {_text(b.kafka_offset)}, "
                "where the block has no event",
                kafka_offset=offset,
                rows=len(b.rows),
            )
            return
        if len(b.rows) > 1:
            self.emit(
                bad,
                where(None),
                f"{len(b.rows)} batch rows for one batch record",
                kafka_offset=offset,
                rows=len(b.rows),
            )
        for member in b.members:
            if member.attested:
                self.emit(
                    bad,
                    where(member),
                    "an event of a batch record has an attestation row of its own",
                    kafka_offset=offset,
                )
        verdict = choose_verdict(b, self.verifier, self.max_skew_s)
        problems: list[Problem] = list(verdict.row_problems)
        if verdict.failure is not None:
            problems.append(verdict.failure)
        for code, message, details, at in problems:
            self.emit(code, where(at), message, **{"kafka_offset": offset, **details})
        st = verdict.statement
        if st is None:
            return
        if verdict.failure is None:
            self.report.signed_batches += 1
            self.signed(st, len(b.members))
            self._count_seqs(b, st, verdict, where)
        elif verdict.accounted:  # named here: not also a gap
            self.run_of(st).add_range(st.first_seq, st.last_seq)

    def _count_seqs(self, b: AttestedBatch, st: BatchStatement, v: Verdict, where: Any) -> None:
        """Account for every entry of a verified batch; one accounted for before is a
        replay (at its event, or at the record's first event for a skipped entry)."""
        for m, j in account_batch(self.run_of(st), st, b.members, v.skipped):
            self.emit(
                FindingCode.SOURCE_SEQ_DUPLICATE,
                where(m),
                f"sequence number {st.first_seq + j} of {st.source_id} chained more than once"
                + ("" if m is not None else f" (entry {j} of this batch, dead-lettered)"),
                source_id=st.source_id,
                epoch=st.epoch,
                seq=st.first_seq + j,
                batch_index=j,
                kafka_offset=_show(b.kafka_offset),
            )

    # ------------------------------------------------------------------ the whole ledger
    def finish(self, heartbeats: Iterable[SourceHeartbeatBody]) -> SourceReport:
        announced: dict[tuple[str, str], int] = {}
        nowhere: _Where = ("", None, None, None)
        for hb in heartbeats:
            s = hb.statement
            try:
                key = self.registry.authorize(s.source_id, s.key_id, s.sent_at)
                verify_heartbeat(s, hb.signature, key)
            except SourceAuthError as exc:
                self.emit(
                    FindingCode.SOURCE_HEARTBEAT_INVALID,
                    nowhere,
                    f"heartbeat of {s.source_id}: {exc.message}",
                    source_id=s.source_id,
                    epoch=s.epoch,
                    beat=s.beat,
                )
                continue
            k = (s.source_id, s.epoch)
            announced[k] = max(announced.get(k, 0), s.last_seq)

        for source_id, epoch in sorted(set(self.seqs) | set(announced)):
            run = self.seqs.get((source_id, epoch)) or _Seqs()
            upto = max(run.max_seq, announced.get((source_id, epoch), 0))
            for first, last in run.missing(upto):
                self.emit(
                    FindingCode.SOURCE_SEQ_GAP,
                    nowhere,
                    f"{source_id} epoch {epoch}: sequence numbers {first}..{last} were sent "
                    "but never chained",
                    source_id=source_id,
                    epoch=epoch,
                    first_missing=first,
                    last_missing=last,
                    count=last - first + 1,
                )
        return self.report


def _parse_attestation(raw: tuple[Any, ...]) -> tuple[Attestation | None, str]:
    """The attestation a row's (statement, signature, batch_index, proof) columns hold,
    and what is wrong with them ("" if nothing); None when they hold none."""
    if len(raw) != 4:
        return None, f"{len(raw)} attestation columns"
    statement, signature, index, proof = raw
    types = (type(statement), type(signature), type(index), type(proof))
    if types != (bytes, str, int, str):
        names = ("statement", "signature", "batch_index", "proof")
        wrong = [f"{n} holds {_type_name(v)}" for n, v in zip(names, raw, strict=True)]
        return None, "a column of the wrong type (" + ", ".join(wrong) + ")"
    try:
        att = msgspec.convert(
            {
                "statement": msgspec.json.decode(statement),
                "signature": signature,
                "index": index,
                "proof": [p for p in proof.split(",") if p],
            },
            Attestation,
        )
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        return None, _text(str(exc)) or "undecodable"
    problems = []
    if statement_bytes(att.statement) != statement:
        problems.append("the statement column is not the canonical signed statement")
    if ",".join(att.proof) != proof:
        problems.append("the proof column is not the canonical proof")
    try:
        canonical_signature = base64.b64encode(base64.b64decode(signature, validate=True))
    except (binascii.Error, ValueError):
        canonical_signature = b""
    if canonical_signature.decode() != signature:
        problems.append("the signature column is not canonical base64")
    return att, "; ".join(problems)


def _side_diff(ev: AttestedEvent, att: Attestation) -> dict[str, Any]:
    """The side columns of ``ev``'s attestation row that differ (value or type) from the
    signed statement and the event's id."""
    st = att.statement
    signed = (
        ev.event_id.encode("utf-8", "surrogateescape"),
        st.source_id.encode(),
        st.key_id.encode(),
        st.epoch.encode(),
        att.seq,
        (st.signed_by or "").encode(),
    )
    columns = ev.columns or ()
    if len(columns) != len(signed):
        return {"columns": {"column": _show(columns), "signed": list(SIDE_COLUMNS)}}
    return {
        name: {"column": _show(col), "signed": _show(exp)}
        for name, col, exp in zip(SIDE_COLUMNS, columns, signed, strict=True)
        if type(col) is not type(exp) or col != exp
    }


# --------------------------------------------------------------------------- reading


class _HeaderTimes(msgspec.Struct):
    """The append times of a stored header (the rest of it is verify_chain's)."""

    first_append_time: str | None = None
    last_append_time: str | None = None


def _append_window(header: Any) -> tuple[str, str] | None:
    """The (first, last) broker append times a stored header signs, or None (an older
    header, or one ``verify_chain`` reports as invalid)."""
    if type(header) is not bytes:
        return None
    try:
        times = msgspec.json.decode(header, type=_HeaderTimes)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None
    first, last = times.first_append_time, times.last_append_time
    if (
        first is None
        or last is None
        or not (is_valid_timestamp(first) and is_valid_timestamp(last))
    ):
        return None
    return first, last


def read_source_rows(
    store: ChainStore, page_blocks: int = 1000
) -> tuple[Iterator[AttestedEvent | AttestedBatch], list[SourceKeyBody], list[SourceHeartbeatBody]]:
    """Committed access events with their attestations (streamed per chain), and the
    committed key events and heartbeats. Attestation rows of committed blocks that
    belong to no committed event come as ``orphan`` events."""
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
        if type(canonical) is not bytes:
            continue  # verify_chain reports malformed reference rows
        try:
            rec, _ = decode_and_canonicalize_reference(canonical)
        except CareledgerError:
            continue  # verify_chain reports malformed reference rows
        if isinstance(rec.parsed, SourceKeyBody):
            key_events.append(rec.parsed)
        elif isinstance(rec.parsed, SourceHeartbeatBody):
            heartbeats.append(rec.parsed)

    chains = [
        _str(r[0])
        for r in backend.execute(
            f"SELECT DISTINCT chain_id FROM {db}.{ACCESS.table} WHERE {committed} ORDER BY chain_id"
        )
    ]

    def events() -> Iterator[AttestedEvent | AttestedBatch]:
        for chain in chains:
            top = backend.execute(
                f"SELECT max(height) FROM {db}.blocks WHERE chain_id = %(c)s", {"c": chain}
            )
            head = top[0][0] if top and type(top[0][0]) is int else 0
            for lo in range(0, head + 1, page_blocks):
                yield from _page(chain, lo, lo + page_blocks - 1)

    def _page(chain: str, lo: int, hi: int) -> Iterator[AttestedEvent | AttestedBatch]:
        params = {"c": chain, "lo": lo, "hi": hi}
        block_times = {
            (h, _key(bh)): (_str(t), _append_window(header))
            for h, bh, t, header in backend.execute(
                f"SELECT height, block_hash, created_at, header FROM {db}.blocks "
                "WHERE chain_id = %(c)s AND height >= %(lo)s AND height <= %(hi)s",
                params,
            )
        }
        committed_heights = {h for h, _bh in block_times}
        # (height, idx, block hash) -> [((statement, signature, batch_index, proof),
        #                                  (event_id, source_id, key_id, epoch, seq, signed_by))]
        atts: dict[tuple[Any, Any, Any], list[tuple[tuple[Any, ...], tuple[Any, ...]]]] = {}
        for h, i, bh, st, sig, bi, proof, *side in backend.execute(
            "SELECT height, idx, block_hash, statement, signature, batch_index, proof, "
            "event_id, source_id, key_id, epoch, seq, signed_by "
            f"FROM {db}.source_attestations "
            "WHERE chain_id = %(c)s AND height >= %(lo)s AND height <= %(hi)s "
            "ORDER BY height, idx",
            params,
        ):
            atts.setdefault((h, i, _key(bh)), []).append(
                ((st, _as_str(sig), bi, _as_str(proof)), tuple(side))
            )
        # (height, block hash, kafka offset) -> the batch rows of that record (ADR 0020)
        batches: dict[tuple[Any, Any, Any], list[BatchRow]] = {}
        for h, bh, off, st, sig, skipped, *side in backend.execute(
            "SELECT height, block_hash, kafka_offset, statement, signature, skipped, "
            "source_id, key_id, epoch, first_seq, size, signed_by "
            f"FROM {db}.source_batches "
            "WHERE chain_id = %(c)s AND height >= %(lo)s AND height <= %(hi)s "
            "ORDER BY height, kafka_offset",
            params,
        ):
            batches.setdefault((h, _key(bh), _key(off)), []).append(
                BatchRow(st, sig, skipped, tuple(side))
            )
        # the events of the batch records of the current height, yielded when it ends
        pending: dict[tuple[Any, Any, Any], list[BatchMember]] = {}

        def batch(key: tuple[Any, Any, Any], members: list[BatchMember]) -> AttestedBatch:
            created_at, window = block_times.get(key[:2], ("", None))
            return AttestedBatch(
                chain, key[0], key[2], tuple(batches.pop(key)), tuple(members), created_at, window
            )

        height: Any = None
        record: tuple[Any, Any, Any] | None = None
        members: list[BatchMember] = []
        for h, i, bh, eid, leaf, off in _rows(
            backend,
            "SELECT height, idx, block_hash, event_id, leaf_hash, kafka_offset "
            f"FROM {db}.{ACCESS.table} "
            "WHERE chain_id = %(c)s AND height >= %(lo)s AND height <= %(hi)s "
            f"AND {committed} ORDER BY height, idx",
            params,
        ):
            if h != height:
                for key, listed in pending.items():
                    yield batch(key, listed)
                pending.clear()
                height = h
            bkey = _key(bh)
            found = atts.pop((h, i, bkey), None) if atts else None
            here = (h, bkey, _key(off))
            if here != record:  # another record than the row before (rows come by record)
                if here not in batches:
                    record = None
                else:
                    record = here
                    members = pending.setdefault(here, [])
            if record is not None:
                members.append(BatchMember(i, _str(eid), _leaf(leaf), found is not None))
                continue
            created_at, window = block_times.get((h, _key(bh)), ("", None))
            yield AttestedEvent(
                chain,
                h,
                i,
                _str(eid),
                _leaf(leaf),
                None if found is None else found[0][0],
                created_at,
                columns=None if found is None else found[0][1],
                extra_rows=0 if found is None else len(found) - 1,
                append_window=window,
            )
        for key, listed in pending.items():
            yield batch(key, listed)
        for (h, i, _bh), found in atts.items():
            if h in committed_heights:  # rows above the head are a crash's leftovers
                yield AttestedEvent(
                    chain, h, i, _str(found[0][1][0]), None, found[0][0], orphan=True
                )
        for key in list(batches):
            if key[0] in committed_heights:  # a batch row naming no event of its block
                yield batch(key, [])

    return events(), key_events, heartbeats
