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

``read_source_rows(store)`` is the I/O: committed rows only (rows whose block hash is
the committed header's), streamed chain by chain.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
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
    BatchVerifier,
    SeqRuns,
    SourceAuthError,
    SourceRegistry,
    seconds_of,
    statement_bytes,
    timestamp_of,
    verify_heartbeat,
    verify_key_event,
)
from verifiers.integrity.fsck.model import _show, _text, _type_name

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
#: the side columns of an attestation row, in ``AttestedEvent.columns`` order
SIDE_COLUMNS = ("event_id", "source_id", "key_id", "epoch", "seq", "signed_by")
_HEX64 = re.compile(rb"\A[0-9a-f]{64}\Z")


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


def check_sources(
    events: Iterable[AttestedEvent],
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
    ``max_skew_s`` after it, and the key is judged at ``signed_at`` as it was then."""
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
    epochs: set[tuple[str, str]] = set()  # with at least one verified event
    for ev in events:
        if ev.orphan:
            emit(
                FindingCode.SOURCE_ATTESTATION_INVALID,
                ev,
                "an attestation row of a committed block names an event the block does not have",
            )
            continue
        if ev.extra_rows:
            emit(
                FindingCode.SOURCE_ATTESTATION_INVALID,
                ev,
                f"{ev.extra_rows + 1} attestation rows for one event",
                rows=ev.extra_rows + 1,
            )
        if ev.attestation is None:
            report.unsigned_events += 1
            if required_since is not None and ev.block_time < required_since:
                report.legacy_unsigned_events += 1
            elif require_signatures:
                emit(FindingCode.SOURCE_UNSIGNED, ev, "access event has no source attestation")
            continue
        att, problem = _parse_attestation(ev.attestation)
        if att is None:
            emit(FindingCode.SOURCE_ATTESTATION_INVALID, ev, f"attestation row: {problem}")
            continue
        st = att.statement
        if problem:
            emit(FindingCode.SOURCE_ATTESTATION_INVALID, ev, f"attestation row: {problem}")
        if type(ev.leaf_hash) is not bytes or len(ev.leaf_hash) != 32:
            emit(
                FindingCode.SOURCE_PROOF_INVALID,
                ev,
                "the event's stored leaf hash is not 64 hex digits: its attestation "
                "cannot be checked",
                source_id=st.source_id,
                seq=att.seq,
            )
            # named here: not also a gap in the source's sequence numbers
            seqs.setdefault((st.source_id, st.epoch), _Seqs()).add(att.seq)
            continue
        try:
            verifier.verify_batch(ev.leaf_hash, att)
            skew = _time_problem(ev, att, max_skew_s)
            if skew:
                emit(
                    FindingCode.SOURCE_SIGNED_AT_SKEW,
                    ev,
                    skew,
                    source_id=st.source_id,
                    key_id=st.key_id,
                    seq=att.seq,
                    signed_at=st.signed_at,
                    append_window=list(ev.append_window or ()),
                    block_created_at=ev.block_time,
                    max_skew_s=max_skew_s,
                )
                seqs.setdefault((st.source_id, st.epoch), _Seqs()).add(att.seq)
                continue
            _authorize(verifier, ev, att, max_skew_s)
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
        except ValidationError as exc:  # e.g. a sequence number beyond 2^53 - 1
            emit(
                FindingCode.SOURCE_PROOF_INVALID,
                ev,
                f"the event is not in its signed batch: {exc.message}",
                source_id=st.source_id,
                seq=att.seq,
            )
            continue
        if ev.columns is not None:
            diff = _side_diff(ev, att)
            if diff:
                emit(
                    FindingCode.SOURCE_ATTESTATION_INVALID,
                    ev,
                    "attestation columns differ from the signed statement: " + ", ".join(diff),
                    columns=diff,
                )
        report.signed_events += 1
        counts = report.sources.setdefault(st.source_id, {"events": 0, "epochs": 0})
        counts["events"] += 1
        if (st.source_id, st.epoch) not in epochs:
            epochs.add((st.source_id, st.epoch))
            counts["epochs"] += 1
        run = seqs.setdefault((st.source_id, st.epoch), _Seqs())
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


def _time_problem(ev: AttestedEvent, att: Attestation, max_skew_s: float) -> str:
    """Why ``signed_at`` is outside the window the block's signed times allow ("" if it
    is not)."""
    signed = seconds_of(att.statement.signed_at)
    if ev.append_window is not None:
        first, last = (seconds_of(t) for t in ev.append_window)
        if first - max_skew_s <= signed <= last + max_skew_s:
            return ""
        return (
            f"batch signed at {att.statement.signed_at}, more than {max_skew_s:g} s from the "
            f"broker append times {ev.append_window[0]}..{ev.append_window[1]} the block signs"
        )
    if not ev.block_time:
        return ""
    try:
        created = seconds_of(ev.block_time)
    except ValueError:
        return ""  # verify_chain reports the block's header
    if signed <= created + max_skew_s:
        return ""
    return (
        f"batch signed at {att.statement.signed_at}, more than {max_skew_s:g} s after the "
        f"block that chains it was sealed ({ev.block_time})"
    )


def _authorize(
    verifier: BatchVerifier, ev: AttestedEvent, att: Attestation, max_skew_s: float
) -> None:
    """May the key sign for the source when the processor judged it? At an instant of
    the block's append window within ``max_skew_s`` of ``signed_at`` (ADR 0015), or at
    ``signed_at`` for headers signed before the append times."""
    st = att.statement
    if ev.append_window is None:
        verifier.authorize(st, st.signed_at)
        return
    signed = seconds_of(st.signed_at)
    lo = max(ev.append_window[0], timestamp_of(signed - max_skew_s))
    hi = min(ev.append_window[1], timestamp_of(signed + max_skew_s))
    verifier.authorize_within(st, lo, hi)


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


def _str(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _as_str(v: Any) -> Any:
    """A String column's bytes as text; anything else (a changed schema) as it is."""
    return v.decode("utf-8", "replace") if type(v) is bytes else v


def _leaf(v: Any) -> bytes | None:
    """A stored leaf hash as 32 bytes, or None if it is not 64 lowercase hex digits."""
    return bytes.fromhex(v.decode("ascii")) if type(v) is bytes and _HEX64.match(v) else None


def _key(v: Any) -> Any:
    """A column value usable in a dict key whatever its type."""
    return v if v is None or isinstance(v, bytes | str | int) else repr(v)


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
) -> tuple[Iterator[AttestedEvent], list[SourceKeyBody], list[SourceHeartbeatBody]]:
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

    def events() -> Iterator[AttestedEvent]:
        for chain in chains:
            top = backend.execute(
                f"SELECT max(height) FROM {db}.blocks WHERE chain_id = %(c)s", {"c": chain}
            )
            head = top[0][0] if top and type(top[0][0]) is int else 0
            for lo in range(0, head + 1, page_blocks):
                yield from _page(chain, lo, lo + page_blocks - 1)

    def _page(chain: str, lo: int, hi: int) -> Iterator[AttestedEvent]:
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
        for h, i, bh, eid, leaf in backend.execute(
            f"SELECT height, idx, block_hash, event_id, leaf_hash FROM {db}.{ACCESS.table} "
            "WHERE chain_id = %(c)s AND height >= %(lo)s AND height <= %(hi)s "
            f"AND {committed} ORDER BY height, idx",
            params,
        ):
            found = atts.pop((h, i, _key(bh)), None)
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
        for (h, i, _bh), found in atts.items():
            if h in committed_heights:  # rows above the head are a crash's leftovers
                yield AttestedEvent(
                    chain, h, i, _str(found[0][1][0]), None, found[0][0], orphan=True
                )

    return events(), key_events, heartbeats
