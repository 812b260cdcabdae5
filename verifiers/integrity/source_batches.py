"""Batch records (ADR 0020) in the source checks: one ``source_batches`` row per record.

A source-signed batch that travelled as one Kafka record (``careledger.signed-batch/1``)
is stored as one row: the statement and signature once, the side copies
``source_id, key_id, epoch, first_seq, size, signed_by``, and ``skipped``
(``index:leafhex,...``: the entries dead-lettered alone). The record's chained events are
the block's event rows at the row's ``kafka_offset``, in index order; they fill the batch
indices ``0..size-1`` not in ``skipped``, in order. ``judge_batch`` checks one row against
those events, at the cost of one signature and one root per batch (no per-event proof):

* the columns are of their types, the statement decodes, and the statement, signature
  and skipped columns are the canonical text of what is checked; the side columns equal
  the statement (``SOURCE_ATTESTATION_INVALID`` otherwise; the checks go on with the
  statement, which the signature covers);
* the signature verifies under the registered key, whatever its status
  (``SOURCE_SIGNATURE_INVALID`` / ``SOURCE_KEY_UNKNOWN``);
* ``skipped`` lists strictly increasing indexes inside the batch with 64-hex leaf hashes,
  none of them the leaf of a chained event at the offset (``SOURCE_ATTESTATION_INVALID``);
* the chained events and the skipped entries are exactly ``size`` entries and
  ``batch_root(first_seq, leaves)`` is the signed root (``SOURCE_PROOF_INVALID``: an
  event added to, removed from, moved into or reordered inside the record, or a skipped
  entry altered); the leaf hashes come from the event rows, which ``verify_chain``
  checks against the signed block roots;
* ``signed_at`` is within the skew of the block's signed append window and the key may
  sign for the source within it (ADR 0015), as for one-event records
  (``signed_time_problem`` / ``authorize_in_window``, shared with ``sources``).

Sequence numbers (decided here, used by ``sources.check_sources``): every entry of a
batch whose statement verified is *accounted for*, the dead-lettered ``skipped`` ones
included: they were sent, reached Kafka and were dead-lettered with their bytes and
reason, so they are not a ``SOURCE_SEQ_GAP``. A replay is a sequence number accounted
for twice (``SOURCE_SEQ_DUPLICATE``): at the event for a chained entry, at the record's
first event (``batch_index`` in the details) for a skipped one. A batch whose root or
time fails is still accounted for (its finding names it; a gap would say the events
never arrived); one whose signature or key fails is not (nothing says the source sent
those numbers), nor one whose statement cannot be read.

Rows are untrusted: whatever a column holds (another type, NULL, garbage), it becomes a
finding, never an exception.
"""

from __future__ import annotations

import base64
import binascii
import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from careledger_core.batch_record import batch_root
from careledger_core.errors import ValidationError
from careledger_core.findings import FindingCode
from careledger_core.source import (
    BatchStatement,
    BatchVerifier,
    SeqRuns,
    SourceAuthError,
    seconds_of,
    statement_bytes,
    timestamp_of,
)
from verifiers.integrity.fsck.model import _show, _text, _type_name

C = FindingCode

AUTH_CODES = {
    "BAD_SIGNATURE": C.SOURCE_SIGNATURE_INVALID,
    "BAD_PROOF": C.SOURCE_PROOF_INVALID,
    "UNKNOWN_KEY": C.SOURCE_KEY_UNKNOWN,
    "REVOKED_KEY": C.SOURCE_KEY_REVOKED,
    "KEY_NOT_FOR_SOURCE": C.SOURCE_KEY_NOT_FOR_SOURCE,
}
#: the side columns of a ``source_batches`` row, in ``BatchRow.columns`` order
BATCH_SIDE_COLUMNS = ("source_id", "key_id", "epoch", "first_seq", "size", "signed_by")
_SKIPPED_ENTRY = re.compile(r"\A(0|[1-9][0-9]{0,5}):([0-9a-f]{64})\Z")
_STATEMENT = msgspec.json.Decoder(BatchStatement)


@dataclass(frozen=True, slots=True)
class BatchMember:
    """A chained event at a batch record's offset (values from the event rows)."""

    idx: int
    event_id: str
    #: the event's leaf hash (32 bytes); None when the stored one is not 64 hex digits
    leaf_hash: bytes | None
    #: the event also has a ``source_attestations`` row of its own (it should not)
    attested: bool = False


@dataclass(frozen=True, slots=True)
class BatchRow:
    """One ``source_batches`` row's columns as stored (untrusted: any type)."""

    statement: Any
    signature: Any
    skipped: Any
    #: ``BATCH_SIDE_COLUMNS`` as stored (strings as bytes, integers as int)
    columns: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class AttestedBatch:
    """A batch record of a committed block: its stored row(s) and the events at its
    offset. No ``members``: a row naming an offset at which the block has no event."""

    chain_id: str
    height: int
    kafka_offset: Any
    #: the rows stored for this record (one, unless some were duplicated)
    rows: tuple[BatchRow, ...]
    members: tuple[BatchMember, ...] = ()
    #: the signed created_at of the record's block
    block_time: str = ""
    #: the broker append times the block's header signs (ADR 0015), if any
    append_window: tuple[str, str] | None = None


#: a finding to make: code, message, details, and the member it is at (None: the first)
Problem = tuple[FindingCode, str, dict[str, Any], BatchMember | None]


@dataclass
class Verdict:
    """What one batch row says about its record."""

    statement: BatchStatement | None = None
    skipped: tuple[tuple[int, bytes], ...] = ()
    #: the row is not what was signed (side columns, text): the events stay signed
    row_problems: list[Problem] = field(default_factory=list)
    #: why the events are not signed as chained (None: they are)
    failure: Problem | None = None
    #: the statement's sequence numbers are accounted for (see the module docstring)
    accounted: bool = False

    @property
    def clean(self) -> bool:
        return self.statement is not None and self.failure is None and not self.row_problems


# --------------------------------------------------------------------------- time


def signed_time_problem(
    statement: BatchStatement,
    append_window: tuple[str, str] | None,
    block_time: str,
    max_skew_s: float,
) -> str:
    """Why ``signed_at`` is outside the window the block's signed times allow ("" if it
    is not)."""
    signed = seconds_of(statement.signed_at)
    if append_window is not None:
        first, last = (seconds_of(t) for t in append_window)
        if first - max_skew_s <= signed <= last + max_skew_s:
            return ""
        return (
            f"batch signed at {statement.signed_at}, more than {max_skew_s:g} s from the "
            f"broker append times {append_window[0]}..{append_window[1]} the block signs"
        )
    if not block_time:
        return ""
    try:
        created = seconds_of(block_time)
    except ValueError:
        return ""  # verify_chain reports the block's header
    if signed <= created + max_skew_s:
        return ""
    return (
        f"batch signed at {statement.signed_at}, more than {max_skew_s:g} s after the "
        f"block that chains it was sealed ({block_time})"
    )


def authorize_in_window(
    verifier: BatchVerifier,
    statement: BatchStatement,
    append_window: tuple[str, str] | None,
    max_skew_s: float,
) -> None:
    """May the key sign for the source when the processor judged it? At an instant of
    the block's append window within ``max_skew_s`` of ``signed_at`` (ADR 0015), or at
    ``signed_at`` for headers signed before the append times."""
    st = statement
    if append_window is None:
        verifier.authorize(st, st.signed_at)
        return
    signed = seconds_of(st.signed_at)
    lo = max(append_window[0], timestamp_of(signed - max_skew_s))
    hi = min(append_window[1], timestamp_of(signed + max_skew_s))
    verifier.authorize_within(st, lo, hi)


# --------------------------------------------------------------------------- one row


def parse_skipped(text: str, size: int) -> tuple[tuple[tuple[int, bytes], ...] | None, str]:
    """The entries of a ``skipped`` column (``index:leafhex,...``), or None and why not."""
    if not text:
        return (), ""
    out: list[tuple[int, bytes]] = []
    last = -1
    for part in text.split(","):
        m = _SKIPPED_ENTRY.match(part)
        if m is None:
            return None, f"skipped entry {_text(part, 80)!r} is not index:leafhex"
        index = int(m.group(1))
        if index <= last:
            return None, "skipped indexes are not strictly increasing"
        if index >= size:
            return None, f"skipped index {index} is outside the batch of {size}"
        out.append((index, bytes.fromhex(m.group(2))))
        last = index
    return tuple(out), ""


def _side_diff(st: BatchStatement, columns: tuple[Any, ...]) -> dict[str, Any]:
    signed = (
        st.source_id.encode(),
        st.key_id.encode(),
        st.epoch.encode(),
        st.first_seq,
        st.size,
        (st.signed_by or "").encode(),
    )
    if len(columns) != len(signed):
        return {"columns": {"column": _show(columns), "signed": list(BATCH_SIDE_COLUMNS)}}
    return {
        name: {"column": _show(col), "signed": _show(exp)}
        for name, col, exp in zip(BATCH_SIDE_COLUMNS, columns, signed, strict=True)
        if type(col) is not type(exp) or col != exp
    }


def _text_column(value: Any) -> Any:
    """A String column's bytes as text; anything else (a changed schema) as it is."""
    if type(value) is bytes:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def judge_batch(
    b: AttestedBatch, row: BatchRow, verifier: BatchVerifier, max_skew_s: float
) -> Verdict:
    """Check one row of ``b`` against the events at its offset (see the module)."""
    v = Verdict()
    bad = C.SOURCE_ATTESTATION_INVALID
    statement, signature = row.statement, _text_column(row.signature)
    skipped_text = _text_column(row.skipped)
    types = (type(statement), type(signature), type(skipped_text))
    if types != (bytes, str, str):
        wrong = ", ".join(
            f"{n} holds {_type_name(x)}"
            for n, x in zip(
                ("statement", "signature", "skipped"),
                (statement, signature, skipped_text),
                strict=True,
            )
        )
        v.row_problems.append((bad, f"batch row: a column of the wrong type ({wrong})", {}, None))
        return v
    try:
        st = _STATEMENT.decode(statement)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, ValueError) as exc:
        reason = _text(str(exc)) or "undecodable"
        v.row_problems.append(
            (bad, f"batch row: the statement does not decode: {reason}", {}, None)
        )
        return v
    v.statement = st
    about = {"source_id": st.source_id, "key_id": st.key_id, "first_seq": st.first_seq}
    text_problems = []
    if statement_bytes(st) != statement:
        text_problems.append("the statement column is not the canonical signed statement")
    try:
        canonical_signature = base64.b64encode(base64.b64decode(signature, validate=True))
    except (binascii.Error, ValueError):
        canonical_signature = b""
    if canonical_signature.decode() != signature:
        text_problems.append("the signature column is not canonical base64")
    if text_problems:
        v.row_problems.append((bad, "batch row: " + "; ".join(text_problems), {}, None))
    diff = _side_diff(st, row.columns)
    if diff:
        v.row_problems.append(
            (
                bad,
                "batch row columns differ from the signed statement: " + ", ".join(diff),
                {"columns": diff},
                None,
            )
        )
    try:
        verifier.verify_signature(st, signature)
    except SourceAuthError as exc:
        v.failure = (AUTH_CODES.get(exc.code, C.SOURCE_SIGNATURE_INVALID), exc.message, about, None)
        return v
    v.accounted = True  # the source signed these sequence numbers
    skipped, problem = parse_skipped(skipped_text, st.size)
    if skipped is None:
        v.failure = (bad, f"batch row: {problem}", about, None)
        return v
    v.skipped = skipped
    v.failure = _fit(b, st, skipped, about)
    if v.failure is not None:
        return v
    skew = signed_time_problem(st, b.append_window, b.block_time, max_skew_s)
    if skew:
        details = {
            **about,
            "signed_at": st.signed_at,
            "append_window": list(b.append_window or ()),
            "block_created_at": b.block_time,
            "max_skew_s": max_skew_s,
        }
        v.failure = (C.SOURCE_SIGNED_AT_SKEW, skew, details, None)
        return v
    try:
        authorize_in_window(verifier, st, b.append_window, max_skew_s)
    except SourceAuthError as exc:
        v.accounted = False  # the key could not sign them then
        v.failure = (AUTH_CODES.get(exc.code, C.SOURCE_SIGNATURE_INVALID), exc.message, about, None)
    return v


def _fit(
    b: AttestedBatch,
    st: BatchStatement,
    skipped: tuple[tuple[int, bytes], ...],
    about: dict[str, Any],
) -> Problem | None:
    """Are the events at the offset and the skipped entries the signed batch?"""
    members = b.members
    where = {
        **about,
        "kafka_offset": _show(b.kafka_offset),
        "size": st.size,
        "events": len(members),
        "skipped": len(skipped),
    }
    if skipped:
        chained = {m.leaf_hash: m for m in members}
        for index, leaf in skipped:
            twin = chained.get(leaf)
            if twin is not None:
                return (
                    C.SOURCE_ATTESTATION_INVALID,
                    f"batch row: skipped entry {index} is the chained event at index {twin.idx}",
                    {**where, "batch_index": index},
                    twin,
                )
    if len(members) + len(skipped) != st.size:
        return (
            C.SOURCE_PROOF_INVALID,
            f"the {len(members)} events chained at offset {_text(b.kafka_offset)} and the "
            f"{len(skipped)} entries dead-lettered are not the {st.size} entries the source "
            "signed",
            where,
            None,
        )
    for m in members:
        if m.leaf_hash is None or len(m.leaf_hash) != 32:
            return (
                C.SOURCE_PROOF_INVALID,
                "the event's stored leaf hash is not 64 hex digits: its batch cannot be checked",
                where,
                m,
            )
    leaves: list[bytes]
    if skipped:
        it = iter(members)
        gaps = dict(skipped)
        leaves = [gaps[i] if i in gaps else next(it).leaf_hash or b"" for i in range(st.size)]
    else:
        leaves = [m.leaf_hash or b"" for m in members]
    try:
        root = batch_root(st.first_seq, leaves)
    except ValidationError as exc:  # a sequence number beyond 2^53 - 1
        return (C.SOURCE_PROOF_INVALID, f"the batch cannot be checked: {exc.message}", where, None)
    if root.hex() != st.root:
        return (
            C.SOURCE_PROOF_INVALID,
            "the events chained at this offset and the entries dead-lettered do not give "
            "the signed batch root: an event was added, removed, moved or reordered, or a "
            "skipped entry altered",
            {**where, "computed_root": root.hex(), "signed_root": st.root},
            None,
        )
    return None


def choose_verdict(b: AttestedBatch, verifier: BatchVerifier, max_skew_s: float) -> Verdict:
    """The verdict on the record's row; of several rows, the first clean one (else the
    first row's)."""
    first: Verdict | None = None
    for row in b.rows:
        v = judge_batch(b, row, verifier, max_skew_s)
        if v.clean:
            return v
        first = first or v
    return first if first is not None else Verdict()


def account_batch(
    run: SeqRuns,
    st: BatchStatement,
    members: Sequence[BatchMember],
    skipped: Sequence[tuple[int, bytes]],
) -> list[tuple[BatchMember | None, int]]:
    """Mark every entry of a verified batch accounted for in ``run``; returns those
    accounted for before (a replay) as (the member, or None for a skipped entry; the
    batch index). One range operation unless some were seen before."""
    lo, hi = st.first_seq, st.last_seq
    i = bisect_right(run.starts, hi) - 1
    if i < 0 or run.ends[i] < lo:  # none of them seen before: the usual case
        run.add_range(lo, hi)
        return []
    gone = {j for j, _ in skipped}
    positions = [j for j in range(st.size) if j not in gone]
    seen: list[tuple[BatchMember | None, int]] = [
        (m, j) for m, j in zip(members, positions, strict=True) if not run.add(lo + j)
    ]
    seen += [(None, j) for j in sorted(gone) if not run.add(lo + j)]
    return seen
