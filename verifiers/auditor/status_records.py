"""Alert status changes and their ledgered records (ADR 0016).

A reviewer's status change is a row of ``alert_status`` (hash-linked to the alert's
previous change) *and* an access event chained and signed by the processor ("Audit Log
Used", source system ``careledger-alerts``, ``raw_ref`` = ``careledger.alert-status/1``
and the change's ``entry_hash``). The row can be edited, deleted or forged by anyone who
can write to ClickHouse; the ledgered record cannot without ``verify`` noticing. So the
status of an alert is what the ledger says:

* ``status_event`` / ``status_event_id``: the access event of a change (on a sealed
  ledger it carries, sealed, who made it and the note, and the row keeps only the
  reviewer's pseudonym and no note: ``SealedStatus``);
* ``read_ledgered_status``: every committed status record (decoded from the signed
  canonical bytes, never from a denormalised column; on a sealed ledger opened through
  the key store, or read from its public part alone when it does not open);
* ``reconcile``: the rows against the records, both ways (pure): a row without its
  record, a record without its row, an edited row, a broken link, each a finding, and
  per alert the status a user may be shown (``AlertStatus``): the ledgered one, plus
  changes too recent to be chained yet (*pending*, said so), never a row the ledger
  contradicts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from careledger.storage.backend import SqlBackend
from careledger.storage.migrations import check_identifier
from careledger_core.errors import CareledgerError
from careledger_core.event import AccessEvent, decode_event, event_from_dict
from careledger_core.findings import Finding, FindingCode

from ._time import US_PER_MINUTE, ts_to_us
from .history import NO_PATIENT_ID
from .runner.rows import STATUS_COLUMNS, status_entry_hash

__all__ = [
    "STATUS_LEDGER_GRACE_US",
    "STATUS_RECORD_FORMAT",
    "STATUS_SOURCE_SYSTEM",
    "AlertStatus",
    "EventOpener",
    "LedgeredStatus",
    "SealedStatus",
    "StatusReconciliation",
    "StatusRow",
    "ledgered_status_of",
    "parse_status_rows",
    "read_ledgered_status",
    "read_status_rows",
    "reconcile",
    "status_event",
    "status_event_id",
]

DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
STATUS_RECORD_FORMAT: Final = "careledger.alert-status/1"
STATUS_SOURCE_SYSTEM: Final = "careledger-alerts"
#: a status row younger than this may not be chained yet: pending, not "not ledgered"
STATUS_LEDGER_GRACE_US: Final = 15 * US_PER_MINUTE
#: a row claiming a time this far after the verifier's clock cannot be a real change
_FUTURE_SKEW_US: Final = 5 * US_PER_MINUTE
_TABLE: Final = "alert_status"


def status_event_id(entry_hash: str) -> str:
    """The id of the access event that ledgers a status change (from its hash)."""
    return str(uuid.UUID(hex=entry_hash[:32], version=4))


def status_event(
    entry: Mapping[str, Any], *, by: str | None = None, note: str | None = None
) -> AccessEvent:
    """A status change as an access event (DICOM 110101 "Audit Log Used", action U,
    about no patient): chained and signed by the processor like any access. It carries
    the change's ``entry_hash`` (``raw_ref``) and who made it (``actor.id``; ``by``: the
    name, when the row holds a pseudonym). In clear it leaves the note out: free text
    that may name a patient must stay erasable, in the row, not in the immutable ledger.
    On a sealed ledger the row keeps no note and ``note`` goes into the event's sealed
    part (``outcome_desc`` = ``alert <status>: <note>``), erasable with its day's key."""
    who = str(entry["changed_by"]) if by is None else by
    text = note or ""
    return event_from_dict(
        {
            "schema": "careledger.access-event/1",
            "event_id": status_event_id(entry["entry_hash"]),
            "occurred_at": entry["changed_at"],
            "recorded_at": entry["changed_at"],
            "event_type": {"system": DCM, "code": "110101", "display": "Audit Log Used"},
            "action": "U",
            "outcome": 0,
            "outcome_desc": f"alert {entry['status']}" + (f": {text}" if text else ""),
            "actor": {"id": who, "roles": [], "is_requestor": True},
            "source": {"system": STATUS_SOURCE_SYSTEM, "type": 4},
            "patient": {"id": NO_PATIENT_ID},
            "object": {"type": "alert", "id": entry["alert_id"]},
            "correlation_id": entry["alert_id"],
            "raw_ref": {"format": STATUS_RECORD_FORMAT, "sha256": entry["entry_hash"]},
        }
    )


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class LedgeredStatus:
    """A status change as the ledger has it: what the signed event says, and where.

    A sealed record that does not open (its day's key expired, or no key store at hand)
    is read from its public part: ``opened`` is False and only ``entry_hash``,
    ``changed_at``, the event id and the place are known. That is enough to vouch for
    its row: the row's ``entry_hash`` is the hash of all its columns, and the ledger
    signed it."""

    alert_id: str
    status: str
    changed_by: str
    changed_at: str
    entry_hash: str
    chain_id: str
    height: int
    idx: int
    event_id: str
    note: str = ""
    #: what the row's ``changed_by`` must be: the name, or on a sealed ledger its pseudonym
    row_by: str = ""
    opened: bool = True

    @property
    def position(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "height": self.height, "idx": self.idx}


def ledgered_status_of(
    event: AccessEvent,
    chain_id: str,
    height: int,
    idx: int,
    actor_ref: Callable[[str], str] | None = None,
) -> LedgeredStatus | None:
    """The status change an access event ledgers, or None if it is no status record
    (or one that does not hold together: its id is not derived from its hash).
    ``actor_ref``: a sealed ledger's pseudonym of the reviewer (what its row holds)."""
    ref, obj = event.raw_ref, event.object
    if (
        ref is None
        or ref.format != STATUS_RECORD_FORMAT
        or event.source.system != STATUS_SOURCE_SYSTEM
        or obj is None
        or obj.type != "alert"
        or not obj.id
        or not (event.outcome_desc or "").startswith("alert ")
    ):
        return None
    try:
        if status_event_id(ref.sha256) != event.event_id:
            return None
    except ValueError:
        return None
    status, _, note = (event.outcome_desc or "")[len("alert ") :].partition(": ")
    return LedgeredStatus(
        alert_id=str(obj.id),
        status=status,
        note=note,
        row_by=event.actor.id if actor_ref is None else actor_ref(event.actor.id),
        changed_by=event.actor.id,
        changed_at=event.occurred_at,
        entry_hash=ref.sha256,
        chain_id=chain_id,
        height=height,
        idx=idx,
        event_id=event.event_id,
    )


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


#: opens a sealed ledger's event row (its signed document, sealed part and data key id)
#: to the event, or None when it does not open (ADR 0037)
EventOpener = Callable[[bytes, str, str], AccessEvent | None]


@dataclass(frozen=True, slots=True)
class SealedStatus:
    """How a sealed ledger's status changes are written and read (ADR 0037): the row
    keeps the reviewer's pseudonym (``actor_ref``) and no note; the status event, sealed
    under its day's key, carries the name and the note, and ``open_event`` opens it."""

    open_event: EventOpener
    actor_ref: Callable[[str], str]


def _public_status(document: bytes, chain_id: str, height: int, idx: int) -> LedgeredStatus | None:
    """A sealed status record that does not open, from its signed public part: its
    hash, time and id (None if the public part is no status record's)."""
    try:
        doc = msgspec.json.decode(document)
    except msgspec.DecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    ref, source = doc.get("raw_ref"), doc.get("source")
    event_id, at = doc.get("event_id"), doc.get("occurred_at")
    if not (
        isinstance(ref, dict)
        and isinstance(source, dict)
        and ref.get("format") == STATUS_RECORD_FORMAT
        and source.get("system") == STATUS_SOURCE_SYSTEM
        and isinstance(ref.get("sha256"), str)
        and isinstance(event_id, str)
        and isinstance(at, str)
    ):
        return None
    try:
        if status_event_id(ref["sha256"]) != event_id:
            return None
    except ValueError:
        return None
    return LedgeredStatus(
        alert_id="",
        status="",
        changed_by="",
        changed_at=at,
        entry_hash=ref["sha256"],
        chain_id=chain_id,
        height=height,
        idx=idx,
        event_id=event_id,
        opened=False,
    )


def read_ledgered_status(
    backend: SqlBackend,
    database: str,
    alert_ids: Sequence[str] | None = None,
    sealed: SealedStatus | None = None,
) -> list[LedgeredStatus]:
    """Every status change chained in a committed block (of ``alert_ids`` only, if
    given: a sealed record that does not open is kept whatever its alert), read from
    the signed canonical bytes: a denormalised column an insider edits cannot hide one.
    In ledger order. A sealed record (its ``sealed`` column set) is opened with
    ``sealed``; without it, or when it does not open, it is read from its public part
    (``LedgeredStatus.opened`` False)."""
    db = check_identifier(database)
    rows = backend.execute(
        f"SELECT chain_id, height, idx, canonical, sealed, data_key_id FROM {db}.access_events "
        "WHERE position(canonical, %(fmt)s) > 0 AND (chain_id, height, block_hash) IN "
        f"(SELECT chain_id, height, block_hash FROM {db}.blocks) "
        "ORDER BY chain_id, height, idx",
        {"fmt": STATUS_RECORD_FORMAT},
    )
    wanted = None if alert_ids is None else set(alert_ids)
    out: list[LedgeredStatus] = []
    for chain, height, idx, canonical, sealed_part, key_id in rows:
        place = (_text(chain), int(height), int(idx))
        try:
            event = None
            if not sealed_part:
                event = decode_event(bytes(canonical))
            elif sealed is not None:
                event = sealed.open_event(bytes(canonical), _text(sealed_part), _text(key_id))
            if event is not None:
                record = ledgered_status_of(
                    event, *place, sealed.actor_ref if sealed and sealed_part else None
                )
            else:  # erased, or no key store: its public part still vouches for its row
                record = _public_status(bytes(canonical), *place)
        except (CareledgerError, TypeError, ValueError):
            continue  # a tampered event row: the integrity checks report it
        if record is None:
            continue
        if wanted is None or not record.opened or record.alert_id in wanted:
            out.append(record)
    return out


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class StatusRow:
    """One ``alert_status`` row as stored (text columns decoded; ``seq`` None when the
    stored value is not a number)."""

    alert_id: str
    seq: int | None
    status: str
    changed_by: str
    changed_at: str
    note: str
    prev_hash: str
    entry_hash: str

    def entry(self) -> dict[str, Any]:
        """The row as the dict ``status_entry_hash`` and ``status_histories`` use."""
        return {
            "alert_id": self.alert_id,
            "seq": self.seq,
            "status": self.status,
            "changed_by": self.changed_by,
            "changed_at": self.changed_at,
            "note": self.note,
            "prev_hash": self.prev_hash,
            "entry_hash": self.entry_hash,
        }

    def hash_holds(self) -> bool:
        """The stored ``entry_hash`` is the hash of the row's other columns."""
        if self.seq is None:
            return False
        body = {k: v for k, v in self.entry().items() if k != "entry_hash"}
        return status_entry_hash(self.prev_hash, body) == self.entry_hash


def parse_status_rows(rows: Iterable[Sequence[Any]]) -> list[StatusRow]:
    """``alert_status`` rows (``STATUS_COLUMNS`` order) -> ``StatusRow`` (never raises)."""
    out: list[StatusRow] = []
    for r in rows:
        values = list(r) + [""] * (len(STATUS_COLUMNS) - len(r))
        seq_value = values[1]
        seq = seq_value if type(seq_value) is int and seq_value >= 0 else None
        text = [_text(v) for v in values]
        out.append(StatusRow(text[0], seq, *text[2:8]))
    return out


def read_status_rows(
    backend: SqlBackend, database: str, alert_ids: Sequence[str] | None = None
) -> list[StatusRow]:
    db = check_identifier(database)
    where, params = "", None
    if alert_ids is not None:
        if not alert_ids:
            return []
        where, params = "WHERE alert_id IN %(ids)s", {"ids": tuple(alert_ids)}
    rows = backend.execute(
        f"SELECT {', '.join(STATUS_COLUMNS)} FROM {db}.alert_status {where} ORDER BY alert_id, seq",
        params,
    )
    return parse_status_rows(rows)


# --------------------------------------------------------------------------- reconcile


@dataclass
class AlertStatus:
    """What a user may be told about one alert's status."""

    alert_id: str
    #: the ledgered changes in order (the truth), then the pending rows
    changes: list[dict[str, Any]] = field(default_factory=list)
    #: every row is ledgered, every ledgered change has its row, the links hold
    verified: bool = True
    #: changes stored but too recent to be chained yet (not the truth yet)
    pending: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ledgered(self) -> bool:
        """Verified, and every change is chained (none pending)."""
        return self.verified and not self.pending

    @property
    def current(self) -> dict[str, Any] | None:
        return self.changes[-1] if self.changes else None

    @property
    def status(self) -> str:
        c = self.current
        return "open" if c is None else str(c["status"])


@dataclass
class StatusReconciliation:
    findings: list[Finding] = field(default_factory=list)
    alerts: dict[str, AlertStatus] = field(default_factory=dict)
    #: rows older than the grace that are not ledgered while nothing was chained since:
    #: the processor may be down (cannot tell), listed as pending
    stalled: int = 0
    rows: int = 0
    records: int = 0

    def of(self, alert_id: str) -> AlertStatus:
        return self.alerts.get(alert_id) or AlertStatus(alert_id)


def _row_where(row: StatusRow) -> dict[str, Any]:
    return {"table": _TABLE, "alert_id": row.alert_id, "seq": row.seq}


def reconcile(
    rows: Sequence[StatusRow],
    records: Sequence[LedgeredStatus],
    *,
    now_us: int,
    chained_since: Callable[[str], bool] = lambda _t: True,
    grace_us: int = STATUS_LEDGER_GRACE_US,
    rows_sealed: bool = False,
) -> StatusReconciliation:
    """Compare the status rows with the ledgered status records, both ways.

    * a row whose ``entry_hash`` is not the hash of its columns, or whose ``seq`` /
      ``prev_hash`` does not continue the alert's previous row: ``ALERT_STATUS_MISMATCH``;
    * a row whose hash no ledgered record carries: ``ALERT_STATUS_NOT_LEDGERED``, unless
      it is younger than ``grace_us`` (or the processor chained nothing after it:
      ``chained_since(t)`` is False) and not in the future: ``ALERT_STATUS_PENDING``;
    * a ledgered record whose row is gone: ``ALERT_STATUS_MISSING`` (at the record's
      place in the ledger);
    * a row and its record that disagree on the alert, status, who (on a sealed ledger:
      the row's pseudonym is not the reviewer's), when or the note (a row that keeps
      one): ``ALERT_STATUS_MISMATCH``.

    A sealed record that does not open (``opened`` False) vouches for the row whose
    hash it carries (and whose time it gives): that row's hash covers its columns.

    Per alert, ``AlertStatus.changes`` are the ledgered records (ledger order by
    ``changed_at``), each with the note the record carries (else its row's, if the row
    holds), then the pending rows that continue the history. A change read from a record
    that does not open has its row's status and pseudonym, no note, and ``sealed``
    True; so has a pending row when ``rows_sealed`` (a sealed ledger's rows keep the
    reviewer's pseudonym and no note)."""
    out = StatusReconciliation(rows=len(rows), records=len(records))
    by_hash: dict[str, LedgeredStatus] = {}
    for record in records:
        by_hash.setdefault(record.entry_hash, record)
    rows_by_alert: dict[str, list[StatusRow]] = {}
    alert_of_hash: dict[str, str] = {}
    for row in rows:
        rows_by_alert.setdefault(row.alert_id, []).append(row)
        alert_of_hash.setdefault(row.entry_hash, row.alert_id)
    recs_by_alert: dict[str, list[LedgeredStatus]] = {}
    unplaced: list[LedgeredStatus] = []
    for record in by_hash.values():
        alert = record.alert_id if record.opened else alert_of_hash.get(record.entry_hash)
        if alert is None:
            unplaced.append(record)  # sealed, does not open, and no row carries its hash
        else:
            recs_by_alert.setdefault(alert, []).append(record)
    matched: set[str] = set()
    for alert_id in sorted(set(rows_by_alert) | set(recs_by_alert)):
        view = out.alerts[alert_id] = AlertStatus(alert_id)
        notes: dict[str, str] = {}
        held: dict[str, StatusRow] = {}
        pending: list[StatusRow] = []
        mine = sorted(
            rows_by_alert.get(alert_id, []),
            key=lambda r: (r.seq if r.seq is not None else -1, r.entry_hash),
        )
        prev = ""
        for k, row in enumerate(mine):
            where = _row_where(row)
            problem = None
            if not row.hash_holds():
                problem = "its entry_hash is not the hash of its columns (edited)"
            elif row.seq != k or row.prev_hash != prev:
                problem = (
                    f"it does not continue the alert's history (seq {row.seq} at place {k}, "
                    "or prev_hash not the previous change's hash): a change was deleted, "
                    "inserted or reordered"
                )
            prev = row.entry_hash
            found = by_hash.get(row.entry_hash)
            rec = (
                found
                if found is not None and (found.alert_id == alert_id or not found.opened)
                else None
            )
            if rec is not None:
                matched.add(rec.entry_hash)
                compared = [("changed_at", row.changed_at, rec.changed_at)]
                if rec.opened:
                    compared += [
                        ("status", row.status, rec.status),
                        ("changed_by", row.changed_by, rec.row_by or rec.changed_by),
                        ("note", row.note or rec.note, rec.note or row.note),
                    ]
                differs = [name for name, a, b in compared if a != b]
                if differs and problem is None:
                    problem = f"{', '.join(differs)} differ from the ledgered change"
                if problem is None:
                    notes[rec.entry_hash] = rec.note or row.note
                    held[rec.entry_hash] = row
            if problem is not None:
                _flag(view, f"seq {row.seq}: {problem}")
                out.findings.append(
                    Finding.of(
                        FindingCode.ALERT_STATUS_MISMATCH,
                        _TABLE,
                        f"status change {row.seq} of alert {alert_id}: {problem}",
                        details=where,
                    )
                )
            if rec is not None:
                continue
            t = _us(row.changed_at)
            future = t is None or t > now_us + _FUTURE_SKEW_US
            young = t is not None and t > now_us - grace_us
            if not future and (young or not chained_since(row.changed_at)):
                if not young:
                    out.stalled += 1
                if problem is None:
                    pending.append(row)
                view.pending += 1
                out.findings.append(
                    Finding.of(
                        FindingCode.ALERT_STATUS_PENDING,
                        _TABLE,
                        f"status change {row.seq} of alert {alert_id} ({row.status} by "
                        f"{row.changed_by} at {row.changed_at}) is not chained yet",
                        details=where,
                    )
                )
                continue
            _flag(view, f"seq {row.seq} ({row.status}) is not ledgered")
            out.findings.append(
                Finding.of(
                    FindingCode.ALERT_STATUS_NOT_LEDGERED,
                    _TABLE,
                    f"status change {row.seq} of alert {alert_id} ({row.status} by "
                    f"{row.changed_by} at {row.changed_at}) was never ledgered: not a real "
                    "change (forged or replayed into the table)",
                    details={**where, "entry_hash": row.entry_hash},
                )
            )
        ledgered = sorted(
            recs_by_alert.get(alert_id, []),
            key=lambda r: (r.changed_at, r.chain_id, r.height, r.idx),
        )
        for led in ledgered:
            change: dict[str, Any] = {
                "status": led.status,
                "changed_by": led.changed_by,
                "changed_at": led.changed_at,
                "note": notes.get(led.entry_hash),
                "entry_hash": led.entry_hash,
                "ledgered": led.position,
            }
            if not led.opened:
                row_of = held.get(led.entry_hash)
                if row_of is None:  # its row does not hold: reported above as a mismatch
                    continue
                change.update(
                    status=row_of.status, changed_by=row_of.changed_by, note=None, sealed=True
                )
            view.changes.append(change)
            if led.entry_hash in matched:
                continue
            _flag(view, f"the ledgered change to {led.status} at {led.changed_at} has no row")
            out.findings.append(_missing(led, alert_id))
        for row in pending:
            view.changes.append(
                {
                    "status": row.status,
                    "changed_by": row.changed_by,
                    "changed_at": row.changed_at,
                    "note": row.note,
                    "entry_hash": row.entry_hash,
                    "ledgered": None,
                    "pending": True,
                    **({"sealed": True} if rows_sealed else {}),
                }
            )
    for led in unplaced:
        out.findings.append(_missing(led, None))
    return out


def _missing(led: LedgeredStatus, alert_id: str | None) -> Finding:
    """``ALERT_STATUS_MISSING`` at a ledgered record's place (``alert_id`` None: a
    sealed record that does not open and that no row carries)."""
    if led.opened:
        what = (
            f"alert {alert_id}: the status change to {led.status} by {led.changed_by} at "
            f"{led.changed_at}"
        )
    else:
        what = (
            f"alert {alert_id or '(unknown: sealed, does not open)'}: a sealed status change "
            f"at {led.changed_at}"
        )
    return Finding.of(
        FindingCode.ALERT_STATUS_MISSING,
        led.chain_id,
        f"{what} is ledgered here but its alert_status row is gone (deleted or edited)",
        height=led.height,
        event_index=led.idx,
        event_id=led.event_id,
        details={"table": _TABLE, "alert_id": alert_id or "", "entry_hash": led.entry_hash},
    )


def _flag(view: AlertStatus, problem: str) -> None:
    view.verified = False
    view.problems.append(problem)


def _us(ts: str) -> int | None:
    try:
        return ts_to_us(ts)
    except (ValueError, IndexError, TypeError):
        return None
