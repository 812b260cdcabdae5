"""The audit runner: the rules engine over the store (``careledger audit``).

* **Range** (``audit_range``): rebuild the reference state from every committed
  reference record, each known from its block's signed ``created_at`` (its *ledger
  time*, never decreasing along a chain), feed the committed access events of
  ``[from - warm-up, to + look-ahead)`` in a deterministic order (``occurred_at,
  chain_id, height, idx``) to an :class:`~verifiers.auditor.rules.Auditor`, keep the
  decisions about events in ``[from, to)``, group them into alerts, then *replace* that
  range in ClickHouse: ``ALTER ... DELETE`` of the range's decisions and alerts
  (waiting for the mutations, as 18.16 has no ``mutations_sync``), then batched
  inserts. Every decision stores its knowledge cutoff (``reference_known_at``): an event
  already decided is decided again with the cutoff its decision used (``Knowledge``),
  so the same range audited twice gives the same decisions (same rows but
  ``decided_at``) and alert ids, even after back-dated reference records arrived;
  ``reconsider`` decides the range with what is known now instead.
* **Follow** (``Follower``): every ``audit_poll_interval_s``, apply the reference
  records and evaluate the access events of the blocks committed since the last poll
  (cutoff: the newest ledger time applied), insert their decisions, regroup the flagged
  decisions around the times of the new flags and upsert (and publish) the alerts that
  are new or grew.
* **Reviews** (``AuditStore.reviews``, pure ``review_alerts``): closed alerts take no
  more flags (``group_alerts(closed=...)``); resolved alerts whose status history is
  intact are confirmed violations, one per case (alerts sharing a flagged event); a
  broken history is reported, never counted.

Alerts go to ``Settings.topic_alerts`` as JSON (key = alert id) with an idempotent
producer: only alerts not already stored with the same content are published.

The pure parts (bounds, rows, documents, the range evaluation over an iterable of
events) are separate from the I/O so they can be unit-tested without services.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from careledger.storage.backend import SqlBackend, StorageError
from careledger.storage.kinds import topic_of
from careledger.storage.migrations import check_identifier
from careledger_core.event import AccessEvent, decode_event
from careledger_core.reference import ReferenceRecord, reference_from_dict

from ._time import ts_to_us, us_to_ts
from .alerts import CLOSED_STATUSES, Alert, ClosedAlert, group_alerts, patient_pseudonym
from .config import DEFAULT_CONFIG, AuditConfig
from .history import NO_PATIENT_ID, is_btg_start
from .rules import AccessDecision, Auditor, core_consent_evaluator
from .state import ReferenceState

log = logging.getLogger("careledger.auditor")

DECISION_COLUMNS: Final = (
    "event_id",
    "chain_id",
    "height",
    "idx",
    "occurred_at",
    "occurred_date",
    "actor_id",
    "patient_ref",
    "amends",
    "explanation_kind",
    "explanation",
    "searched",
    "flags",
    "severity",
    "score",
    "decided_at",
    "audit_run",
    "reference_known_at",
)
ALERT_COLUMNS: Final = (
    "alert_id",
    "rule",
    "severity",
    "score",
    "actor_id",
    "patient_ref",
    "patient_refs",
    "event_ids",
    "evidence",
    "explanations_searched",
    "first_at",
    "last_at",
    "created_at",
    "audit_run",
    "version",
)
STATUS_COLUMNS: Final = (
    "alert_id",
    "seq",
    "status",
    "changed_by",
    "changed_at",
    "note",
    "prev_hash",
    "entry_hash",
)
INSERT_BATCH: Final = 5000
SALT_FILE: Final = "audit-salt"
#: the knowledge cutoff of a decision made while no reference record was known
NOTHING_KNOWN: Final = "1970-01-01T00:00:00.000000Z"


# --------------------------------------------------------------------------- pure


def dumps(value: Any) -> str:
    """Deterministic compact JSON (what is stored and compared across replays)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def utc_now_ts() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_instant(text: str) -> str:
    """``YYYY-MM-DD``, ``YYYY-MM-DDTHH:MM[:SS[.ffffff]]`` (UTC, optional ``Z``) ->
    the event timestamp format."""
    t = text.strip().removesuffix("Z").replace(" ", "T")
    try:
        moment = dt.datetime.fromisoformat(t)
    except ValueError as exc:
        raise ValueError(f"not a UTC date or time: {text!r}") from exc
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def warmup_us(config: AuditConfig) -> int:
    """History the rules look back on: events this long before ``from`` are fed to the
    auditor (not decided) so windows and open overrides at ``from`` are as in a
    continuous run."""
    return max(
        config.btg_episode_us,
        config.volume_window_us,
        config.denied_burst_window_us,
        config.shared_credentials_window_us,
    )


def lookahead_us(config: AuditConfig) -> int:
    """Events this long after ``to`` are fed so a break-the-glass start near ``to``
    sees its stop (or its missing stop is decided)."""
    return config.btg_stop_window_us + 1


def read_bounds(from_ts: str, to_ts: str, config: AuditConfig) -> tuple[str, str]:
    return (
        us_to_ts(ts_to_us(from_ts) - warmup_us(config)),
        us_to_ts(ts_to_us(to_ts) + lookahead_us(config)),
    )


@dataclass(frozen=True, slots=True)
class Position:
    chain_id: str
    height: int
    idx: int


@dataclass(frozen=True, slots=True)
class LedgeredEvent:
    position: Position
    event: AccessEvent

    @property
    def sort_key(self) -> tuple[str, str, int, int]:
        p = self.position
        return (self.event.occurred_at, p.chain_id, p.height, p.idx)


@dataclass(frozen=True, slots=True)
class PlacedDecision:
    decision: AccessDecision
    position: Position
    #: the knowledge cutoff the decision used (reference versions ledgered later were
    #: ignored); a late break-the-glass flag carries its start's
    known_at: str = NOTHING_KNOWN


@dataclass(frozen=True, slots=True)
class LedgeredReference:
    """A committed reference record and the signed ``created_at`` of its block."""

    record: ReferenceRecord
    chain_id: str
    height: int
    block_time: str


def ledger_times(
    refs: Iterable[LedgeredReference], latest: dict[str, tuple[int, str]]
) -> Iterator[tuple[ReferenceRecord, str]]:
    """(record, ledger time) in ledger order per chain. A record's ledger time is its
    block's ``created_at`` or, if a processor clock stepped back, 1 µs after the time of
    the chain's previous block (``latest``: chain -> (height, time) of the last block
    seen, updated in place): a record is never known before one chained earlier."""
    for r in refs:
        last = latest.get(r.chain_id)
        if last is not None and last[0] == r.height:
            t = last[1]
        else:
            t = r.block_time
            if last is not None and last[1] > t:
                t = us_to_ts(ts_to_us(last[1]) + 1)
            latest[r.chain_id] = (r.height, t)
        yield r.record, t


@dataclass(frozen=True, slots=True)
class Knowledge:
    """Which reference knowledge each event of a run is decided with: a cutoff on the
    ledger times of reference versions (``ReferenceState.as_of(t, known_at=...)``).

    * an event decided in this run uses the cutoff of its stored decision (``stored``,
      by event id), so a replay reproduces it; an event without one, or every event
      with ``reconsider``, uses ``current`` (what is known now);
    * an event only fed to the rules' windows (warm-up, look-ahead) uses its stored
      cutoff too, else ``others`` (default ``current``).
    """

    current: str
    stored: Mapping[str, str] = field(default_factory=dict)
    reconsider: bool = False
    others: str | None = None

    def cutoff(self, event_id: str, decided: bool) -> str:
        if decided and self.reconsider:
            return self.current
        known = self.stored.get(event_id)
        if known is not None:
            return known
        if decided or self.others is None:
            return self.current
        return self.others


def plan_knowledge(
    current: str | None,
    stored: Iterable[tuple[str, str, str]],
    from_ts: str,
    to_ts: str,
    *,
    reconsider: bool = False,
    undecided: int = 0,
) -> Knowledge:
    """The ``Knowledge`` of a range run. ``current``: the newest ledger time applied
    (None: no reference data); ``stored``: (event id, occurred_at, cutoff) of the stored
    decisions around the range (legacy rows without a cutoff left out); ``undecided``:
    how many events of ``[from_ts, to_ts)`` have none.

    Events outside the range without a stored decision (only fed to the windows) use the
    cutoff the range's decisions use: ``current`` when something in the range is
    decided with it (new events, ``reconsider``), otherwise the newest stored cutoff of
    the range, which is what the run that stored them used; so a replay feeds them the
    same knowledge as the run it reproduces."""
    now = NOTHING_KNOWN if current is None else current
    cutoffs: dict[str, str] = {}
    in_range: str | None = None
    for event_id, occurred_at, known_at in stored:
        known_at = cutoffs.setdefault(event_id, known_at)
        if from_ts <= occurred_at < to_ts and (in_range is None or known_at > in_range):
            in_range = known_at
    others = now if reconsider or undecided or in_range is None else in_range
    return Knowledge(now, cutoffs, reconsider, others)


def decide_range(
    state: ReferenceState,
    events: Iterable[LedgeredEvent],
    from_ts: str,
    to_ts: str,
    *,
    horizon_ts: str | None = None,
    config: AuditConfig = DEFAULT_CONFIG,
    auditor: Auditor | None = None,
    confirmed: Iterable[tuple[str, str]] = (),
    knowledge: Knowledge | None = None,
) -> list[PlacedDecision]:
    """Decisions about the events in ``[from_ts, to_ts)`` (``events`` sorted by
    ``sort_key``, including the warm-up and look-ahead).

    At the end of the input, an override still open is reported as missing its stop
    only if its stop window ended before ``horizon_ts`` (the latest committed event
    time: later, the stop may still come); ``horizon_ts=None`` reports all of them.
    ``confirmed``: (actor id, time) of confirmed violations (REPEAT_OFFENDER weighting).
    ``knowledge``: the cutoff of each event (default: everything in ``state``).
    """
    if auditor is None:
        auditor = Auditor(state, config=config, consent_evaluator=core_consent_evaluator)
    ref_state = auditor.state
    if knowledge is None:
        knowledge = Knowledge(ref_state.latest_known_at or NOTHING_KNOWN)
    for actor_id, when in sorted(confirmed, key=lambda c: (c[1], c[0])):
        auditor.history.record_confirmed_violation(actor_id, when)
    positions: dict[str, tuple[Position, str]] = {}
    out: list[PlacedDecision] = []

    def keep(d: AccessDecision) -> None:
        if from_ts <= d.occurred_at < to_ts:
            placed = positions.get(d.event_id)
            if placed is not None:
                out.append(PlacedDecision(d, placed[0], placed[1]))

    before = ref_state.known_at
    try:
        for le in events:
            event_id = le.event.event_id
            decided = from_ts <= le.event.occurred_at < to_ts
            cutoff = knowledge.cutoff(event_id, decided)
            if decided:
                cutoff = positions.setdefault(event_id, (le.position, cutoff))[1]
            ref_state.known_at = cutoff
            for d in auditor.process(le.event):
                keep(d)
    finally:
        ref_state.known_at = before
    horizon = None if horizon_ts is None else ts_to_us(horizon_ts)
    window = auditor.config.btg_stop_window_us
    for d in auditor.finish():
        if horizon is None or ts_to_us(d.occurred_at) + window < horizon:
            keep(d)
    return out


def sort_decisions(placed: Iterable[PlacedDecision]) -> list[PlacedDecision]:
    return sorted(
        placed,
        key=lambda p: (
            p.decision.occurred_at,
            p.decision.event_id,
            p.decision.amends,
            p.position.chain_id,
            p.position.height,
            p.position.idx,
        ),
    )


def patient_ref(patient_id: str, salt: str) -> str:
    return "" if patient_id == NO_PATIENT_ID else patient_pseudonym(patient_id, salt)


def _public_flag(flag: dict[str, Any]) -> dict[str, Any]:
    # flags never name a patient; related event ids stay (they are event ids)
    return flag


def decision_row(
    placed: PlacedDecision, *, salt: str, decided_at: str, audit_run: str
) -> tuple[Any, ...]:
    d = placed.decision
    pos = placed.position
    severity = d.severity
    explanation = d.explanation
    return (
        d.event_id,
        pos.chain_id,
        pos.height,
        pos.idx,
        d.occurred_at,
        dt.date(int(d.occurred_at[0:4]), int(d.occurred_at[5:7]), int(d.occurred_at[8:10])),
        d.actor_id,
        patient_ref(d.patient_id, salt),
        1 if d.amends else 0,
        "" if explanation is None else str(explanation.kind),
        "" if explanation is None else dumps(explanation.to_dict()),
        dumps(list(d.searched)),
        dumps([_public_flag(f.to_dict()) for f in d.flags]),
        "" if severity is None else str(severity),
        float(d.score),
        decided_at,
        audit_run,
        placed.known_at,
    )


def alert_document(alert: Alert) -> dict[str, Any]:
    """The alert as published and shown (patients only as pseudonyms)."""
    doc = alert.to_dict()
    doc["schema"] = "careledger.alert/1"
    doc["source"] = "auditor"
    return doc


def alert_fingerprint(alert: Alert) -> str:
    """What must change for a stored alert to be rewritten and published again."""
    doc = alert_document(alert)
    doc.pop("status", None)
    return hashlib.sha256(dumps(doc).encode()).hexdigest()


def alert_row(alert: Alert, *, created_at: str, audit_run: str, version: int) -> tuple[Any, ...]:
    return (
        alert.alert_id,
        str(alert.rule),
        str(alert.severity),
        float(alert.score),
        alert.actor_id,
        alert.patient_ref or "",
        dumps(list(alert.patient_refs)),
        dumps(list(alert.event_ids)),
        dumps(dict(alert.evidence)),
        dumps(list(alert.explanations_searched)),
        alert.first_at,
        alert.last_at,
        created_at,
        audit_run,
        version,
    )


def stored_alert_fingerprint(row: Sequence[Any]) -> str:
    """``alert_fingerprint`` of an alert read back from ``alerts`` (ALERT_COLUMNS order)."""
    t = [_text(v) for v in row]
    doc = {
        "alert_id": t[0],
        "rule": t[1],
        "severity": t[2],
        "score": float(row[3]),
        "actor_id": t[4],
        "patient_ref": t[5] or None,
        "patient_refs": json.loads(t[6]),
        "event_ids": json.loads(t[7]),
        "evidence": json.loads(t[8]),
        "explanations_searched": json.loads(t[9]),
        "first_at": t[10],
        "last_at": t[11],
        "schema": "careledger.alert/1",
        "source": "auditor",
    }
    return hashlib.sha256(dumps(doc).encode()).hexdigest()


def status_entry_hash(prev_hash: str, entry: dict[str, Any]) -> str:
    """Hash link of one status change: SHA-256 over the previous entry's hash and the
    canonical JSON of this one (so a deleted or edited change breaks the links)."""
    data = b"careledger-alert-status/1\x00" + prev_hash.encode() + b"\x00" + dumps(entry).encode()
    return hashlib.sha256(data).hexdigest()


def status_history_intact(entries: Sequence[Mapping[str, Any]]) -> bool:
    """True if an alert's status changes (``seq`` order) are complete and their hash links
    hold: none edited, deleted or inserted without recomputing every later link."""
    prev = ""
    for seq, e in enumerate(entries):
        body = {k: e[k] for k in STATUS_COLUMNS if k != "entry_hash"}
        body["seq"] = int(body["seq"])
        if (
            e["seq"] != seq
            or e["prev_hash"] != prev
            or status_entry_hash(prev, body) != e["entry_hash"]
        ):
            return False
        prev = e["entry_hash"]
    return True


def status_histories(rows: Iterable[Sequence[Any]]) -> dict[str, list[dict[str, Any]]]:
    """``alert_status`` rows (``STATUS_COLUMNS`` order, sorted by alert id and seq) ->
    each alert's changes as dicts (``seq`` an int, the rest text)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        entry: dict[str, Any] = dict(zip(STATUS_COLUMNS, (_text(v) for v in r), strict=True))
        entry["seq"] = int(r[1])
        out.setdefault(entry["alert_id"], []).append(entry)
    return out


def closed_alert_ids(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """The alerts with a final status change (resolved or false-positive)."""
    return sorted(a for a, h in histories.items() if any(e["status"] in CLOSED_STATUSES for e in h))


@dataclass(frozen=True, slots=True)
class ReviewedAlert:
    """What the reviews need of a stored alert."""

    actor_id: str
    last_at: str
    #: the flagged events (the accesses the alert is about; related events left out)
    flagged: tuple[str, ...]


def reviewed_alert(row: Sequence[Any]) -> tuple[str, ReviewedAlert]:
    """(alert_id, actor_id, last_at, event_ids, evidence) of ``alerts`` -> its review view."""
    alert, actor, last, event_ids, evidence = (_text(v) for v in row)
    ids = [str(e) for e in json.loads(event_ids)]
    n = json.loads(evidence).get("flagged_events")
    flagged = ids[-n:] if isinstance(n, int) and 0 < n <= len(ids) else ids
    return alert, ReviewedAlert(actor, last, tuple(flagged))


@dataclass(frozen=True, slots=True)
class ConfirmedCase:
    """One confirmed violation: resolved alerts of one actor about the same accesses
    (e.g. an access's NO_EXPLANATION and REPEAT_OFFENDER alerts) count once."""

    actor_id: str
    #: 1 µs after the case's last event: the accesses after it weigh more
    at: str
    alert_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Reviews:
    """What the reviewers decided, as the auditor uses it."""

    #: closed alerts (resolved or false-positive, by id): they take no more flags
    closed: Mapping[str, ClosedAlert] = field(default_factory=dict)
    #: confirmed violations (REPEAT_OFFENDER), by time
    confirmed: tuple[ConfirmedCase, ...] = ()
    #: alerts whose status history is broken (hash links do not hold): not counted
    broken: tuple[str, ...] = ()

    def violations(self) -> list[tuple[str, str]]:
        """(actor id, time) of each confirmed violation, by time."""
        return [(c.actor_id, c.at) for c in self.confirmed]


def review_alerts(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    alerts: Mapping[str, ReviewedAlert],
) -> Reviews:
    """The reviews of ``histories`` (``status_histories``) over the stored ``alerts``.

    * closed: every alert with a final status, closed at its first final change (also
      when its history is broken: keeping an alert from growing is the safe side) and
      cut at its stored last event;
    * confirmed: alerts whose history is intact and ends ``resolved``, merged per actor
      into cases of alerts sharing a flagged event, each counted once, just after the
      case's last event (on the event-time axis the history uses, so a replay after the
      review sees the same); a history whose hash links do not hold does not count and is
      listed in ``broken``."""
    closed: dict[str, ClosedAlert] = {}
    broken: list[str] = []
    resolved: list[str] = []
    for aid in sorted(histories):
        h = histories[aid]
        final = next((e for e in h if e["status"] in CLOSED_STATUSES), None)
        if final is not None:
            stored = alerts.get(aid)
            closed[aid] = ClosedAlert(final["changed_at"], stored.last_at if stored else None)
        if not status_history_intact(h):
            broken.append(aid)
        elif h and h[-1]["status"] == "resolved" and aid in alerts:
            resolved.append(aid)
    # union-find over the flagged events of one actor's resolved alerts
    parent = {aid: aid for aid in resolved}

    def root(aid: str) -> str:
        while parent[aid] != aid:
            parent[aid] = parent[parent[aid]]
            aid = parent[aid]
        return aid

    owner: dict[tuple[str, str], str] = {}
    for aid in resolved:
        a = alerts[aid]
        for event_id in a.flagged:
            other = owner.setdefault((a.actor_id, event_id), aid)
            if other != aid:
                parent[root(aid)] = root(other)
    cases: dict[str, list[str]] = {}
    for aid in resolved:
        cases.setdefault(root(aid), []).append(aid)
    confirmed = [
        ConfirmedCase(
            alerts[ids[0]].actor_id,
            us_to_ts(max(ts_to_us(alerts[i].last_at) for i in ids) + 1),
            tuple(sorted(ids)),
        )
        for ids in cases.values()
    ]
    confirmed.sort(key=lambda c: (c.at, c.actor_id, c.alert_ids))
    return Reviews(closed, tuple(confirmed), tuple(broken))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# --------------------------------------------------------------------------- salt


def load_salt(settings: Any) -> str:
    """The pseudonym salt: ``Settings.audit_salt``, else ``<run_dir>/keys/audit-salt``
    (created with 32 random bytes, mode 0600, on first use)."""
    if settings.audit_salt:
        return str(settings.audit_salt)
    path = Path(settings.keys_dir) / SALT_FILE
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path.read_text(encoding="utf-8").strip()


# --------------------------------------------------------------------------- store


#: Source registry records (ADR 0010) are reference records too, but no rule uses
#: them: leaving them out keeps heartbeats from moving the auditor's knowledge time.
_SOURCE_KINDS = "('source-key', 'source-heartbeat')"


class AuditStore:
    """The auditor's reads and writes in one ClickHouse database."""

    def __init__(
        self, backend: SqlBackend, database: str, reference_topics: frozenset[str] = frozenset()
    ) -> None:
        self.backend = backend
        self.db = check_identifier(database)
        self.reference_topics = reference_topics

    def is_reference(self, chain_id: str) -> bool:
        return topic_of(chain_id) in self.reference_topics

    def _committed(self, chain: bool = False) -> str:
        """Rows of blocks whose header is stored; ``chain``: only the blocks of
        ``%(c)s`` with ``%(a)s < height <= %(u)s`` (a small subquery for polling)."""
        where = " WHERE chain_id = %(c)s AND height > %(a)s AND height <= %(u)s" if chain else ""
        return (
            "(chain_id, height, block_hash) IN "
            f"(SELECT chain_id, height, block_hash FROM {self.db}.blocks{where})"
        )

    # -- reference data
    def reference_records(self) -> list[LedgeredReference]:
        """Every committed reference record in ledger order (chain, height, idx), with
        its block's signed ``created_at`` (the column verify checks against the header)."""
        rows = self.backend.execute(
            f"SELECT chain_id, height, block_hash, canonical FROM {self.db}.reference_records "
            f"WHERE {self._committed()} AND kind NOT IN {_SOURCE_KINDS} "
            "ORDER BY chain_id, height, idx"
        )
        # read after the records: every block they are committed in is there
        times = self.backend.execute(
            f"SELECT chain_id, height, block_hash, created_at FROM {self.db}.blocks "
            "WHERE (chain_id, height, block_hash) IN "
            f"(SELECT chain_id, height, block_hash FROM {self.db}.reference_records "
            f"WHERE kind NOT IN {_SOURCE_KINDS})"
        )
        return _decode_references(rows, times)

    def reference_records_of_chain(
        self, chain_id: str, above: int, upto: int
    ) -> list[LedgeredReference]:
        p = {"c": chain_id, "a": above, "u": upto}
        rows = self.backend.execute(
            f"SELECT chain_id, height, block_hash, canonical FROM {self.db}.reference_records "
            "WHERE chain_id = %(c)s AND height > %(a)s AND height <= %(u)s "
            f"AND {self._committed(chain=True)} ORDER BY height, idx",
            p,
        )
        times = self.backend.execute(
            f"SELECT chain_id, height, block_hash, created_at FROM {self.db}.blocks "
            "WHERE chain_id = %(c)s AND height > %(a)s AND height <= %(u)s",
            p,
        )
        return _decode_references(rows, times)

    # -- access events
    def horizon(self) -> str | None:
        """The latest committed access event time (None: no events)."""
        rows = self.backend.execute(
            f"SELECT max(occurred_at), count() FROM {self.db}.access_events "
            f"WHERE {self._committed()}"
        )
        if not rows or int(rows[0][1]) == 0:
            return None
        return _text(rows[0][0])

    def events_between(self, lo: str, hi: str, page_size: int = 20_000) -> Iterator[LedgeredEvent]:
        """Committed access events with ``lo <= occurred_at < hi`` in
        (occurred_at, chain_id, height, idx) order, page by page."""
        cursor = lo
        skip = 0
        while True:
            rows = self.backend.execute(
                "SELECT occurred_at, chain_id, height, idx, canonical "
                f"FROM {self.db}.access_events "
                f"WHERE occurred_at >= %(lo)s AND occurred_at < %(hi)s AND {self._committed()} "
                f"ORDER BY occurred_at, chain_id, height, idx LIMIT {int(skip)}, {int(page_size)}",
                {"lo": cursor, "hi": hi},
            )
            for r in rows:
                le = _ledgered(r)
                if le is not None:
                    yield le
            if len(rows) < page_size:
                return
            last = _text(rows[-1][0])
            same = sum(1 for r in rows if _text(r[0]) == last)
            skip = skip + same if last == cursor else same
            cursor = last

    def heads(self) -> dict[str, int]:
        rows = self.backend.execute(
            f"SELECT chain_id, max(height) FROM {self.db}.blocks GROUP BY chain_id"
        )
        return {_text(c): int(h) for c, h in rows}

    def events_of_chain(self, chain_id: str, above: int, upto: int) -> list[LedgeredEvent]:
        rows = self.backend.execute(
            f"SELECT occurred_at, chain_id, height, idx, canonical FROM {self.db}.access_events "
            "WHERE chain_id = %(c)s AND height > %(a)s AND height <= %(u)s "
            f"AND {self._committed(chain=True)} ORDER BY height, idx",
            {"c": chain_id, "a": above, "u": upto},
        )
        return [le for r in rows if (le := _ledgered(r)) is not None]

    def last_decided_time(self) -> str | None:
        rows = self.backend.execute(
            f"SELECT max(occurred_at), count() FROM {self.db}.access_decisions"
        )
        if not rows or int(rows[0][1]) == 0:
            return None
        return _text(rows[0][0])

    def decision_cutoffs(self, lo: str, hi: str) -> list[tuple[str, str, str]]:
        """(event id, occurred_at, knowledge cutoff) of the stored decisions with
        ``lo <= occurred_at < hi`` (the latest per event; rows written before the cutoff
        was stored are left out)."""
        rows = self.backend.execute(
            "SELECT event_id, any(occurred_at), argMax(reference_known_at, decided_at) "
            f"FROM {self.db}.access_decisions "
            "WHERE occurred_at >= %(lo)s AND occurred_at < %(hi)s AND amends = 0 "
            "AND reference_known_at != '' GROUP BY event_id",
            {"lo": lo, "hi": hi},
        )
        interned: dict[str, str] = {}  # a few distinct cutoffs for many events
        out: list[tuple[str, str, str]] = []
        for event_id, occurred_at, known_at in rows:
            k = _text(known_at)
            out.append((_text(event_id), _text(occurred_at), interned.setdefault(k, k)))
        return out

    def undecided_count(self, from_ts: str, to_ts: str) -> int:
        """Committed access events of ``[from_ts, to_ts)`` with no stored cutoff."""
        p = {"lo": from_ts, "hi": to_ts}
        rows = self.backend.execute(
            f"SELECT count() FROM {self.db}.access_events "
            f"WHERE occurred_at >= %(lo)s AND occurred_at < %(hi)s AND {self._committed()} "
            f"AND event_id NOT IN (SELECT event_id FROM {self.db}.access_decisions "
            "WHERE occurred_at >= %(lo)s AND occurred_at < %(hi)s AND amends = 0 "
            "AND reference_known_at != '')",
            p,
        )
        return int(rows[0][0]) if rows else 0

    def decided_heights(self) -> dict[str, int]:
        rows = self.backend.execute(
            f"SELECT chain_id, max(height) FROM {self.db}.access_decisions GROUP BY chain_id"
        )
        return {_text(c): int(h) for c, h in rows}

    def reviews(self) -> Reviews:
        """The reviewers' decisions (``review_alerts``): every status history, and the
        stored alerts that were closed."""
        rows = self.backend.execute(
            f"SELECT {', '.join(STATUS_COLUMNS)} FROM {self.db}.alert_status ORDER BY alert_id, seq"
        )
        histories = status_histories(rows)
        ids = closed_alert_ids(histories)
        alerts: dict[str, ReviewedAlert] = {}
        if ids:
            found = self.backend.execute(
                "SELECT alert_id, actor_id, last_at, event_ids, evidence "
                f"FROM {self.db}.alerts FINAL WHERE alert_id IN %(ids)s",
                {"ids": tuple(ids)},
            )
            alerts = dict(reviewed_alert(r) for r in found)
        return review_alerts(histories, alerts)

    def confirmed_violations(self) -> list[tuple[str, str]]:
        """(actor id, time) of each confirmed violation (``Reviews.violations``)."""
        return self.reviews().violations()

    def status_changes(self) -> int:
        """How many alert status changes are stored (append-only: grows with each review)."""
        rows = self.backend.execute(f"SELECT count() FROM {self.db}.alert_status")
        return int(rows[0][0]) if rows else 0

    # -- writes
    def wait_mutations(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self.backend.execute(
                "SELECT count() FROM system.mutations WHERE database = %(db)s AND is_done = 0",
                {"db": self.db},
            )
            if not rows or int(rows[0][0]) == 0:
                return
            time.sleep(0.05)
        raise StorageError(f"mutations in {self.db} did not finish in {timeout_s}s")

    def delete_range(self, from_ts: str, to_ts: str) -> None:
        """Remove the decisions and alerts of ``[from_ts, to_ts)`` (before a replay)."""
        p = {"lo": from_ts, "hi": to_ts}
        for table, column in (("access_decisions", "occurred_at"), ("alerts", "first_at")):
            n = self.backend.execute(
                f"SELECT count() FROM {self.db}.{table} "
                f"WHERE {column} >= %(lo)s AND {column} < %(hi)s",
                p,
            )
            if n and int(n[0][0]):
                self.backend.execute(
                    f"ALTER TABLE {self.db}.{table} DELETE "
                    f"WHERE {column} >= %(lo)s AND {column} < %(hi)s",
                    p,
                )
        self.wait_mutations()

    def insert_decisions(self, rows: Sequence[tuple[Any, ...]]) -> None:
        for i in range(0, len(rows), INSERT_BATCH):
            self.backend.insert(
                f"{self.db}.access_decisions", DECISION_COLUMNS, rows[i : i + INSERT_BATCH]
            )

    def insert_alerts(self, rows: Sequence[tuple[Any, ...]]) -> None:
        for i in range(0, len(rows), INSERT_BATCH):
            self.backend.insert(f"{self.db}.alerts", ALERT_COLUMNS, rows[i : i + INSERT_BATCH])

    def alert_fingerprints(self, from_ts: str, to_ts: str) -> dict[str, str]:
        rows = self.backend.execute(
            f"SELECT {', '.join(ALERT_COLUMNS)} FROM {self.db}.alerts FINAL "
            "WHERE first_at >= %(lo)s AND first_at < %(hi)s",
            {"lo": from_ts, "hi": to_ts},
        )
        return {_text(r[0]): stored_alert_fingerprint(r) for r in rows}


def _decode_references(
    rows: Iterable[Sequence[Any]], times: Iterable[Sequence[Any]]
) -> list[LedgeredReference]:
    """(chain_id, height, block_hash, canonical) rows and (chain_id, height, block_hash,
    created_at) block rows -> ledgered records (rows of a block not found are skipped)."""
    block_time = {(_text(c), int(h), _text(b)): _text(t) for c, h, b, t in times}
    records: list[LedgeredReference] = []
    bad = 0
    for chain, height, block, canonical in rows:
        key = (_text(chain), int(height), _text(block))
        when = block_time.get(key)
        if when is None:  # not committed when the blocks were read
            continue
        try:
            # stored bytes are canonical (verify checks it): validate the record without
            # re-canonicalising it, which would double the cost of loading the ledger
            doc = json.loads(bytes(canonical))
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            records.append(LedgeredReference(reference_from_dict(doc), key[0], key[1], when))
        except Exception:  # a row verify would report as tampered
            bad += 1
    if bad:
        log.warning("%d stored reference records could not be decoded (run verify)", bad)
    return records


def _ledgered(row: Sequence[Any]) -> LedgeredEvent | None:
    _occ, chain, height, idx, canonical = row
    try:
        event = decode_event(bytes(canonical))
    except Exception:  # tampered row: verify reports it; the auditor skips it
        log.warning("undecodable access event at %s/%s/%s skipped", _text(chain), height, idx)
        return None
    return LedgeredEvent(Position(_text(chain), int(height), int(idx)), event)


# --------------------------------------------------------------------------- alerts out


class AlertPublisher(Protocol):
    def publish(self, alert_id: str, document: dict[str, Any]) -> None: ...

    def flush(self, timeout: float) -> int: ...


class KafkaAlertPublisher:
    """JSON alerts to ``Settings.topic_alerts``, key = alert id (idempotent producer)."""

    def __init__(self, settings: Any, topic: str | None = None) -> None:
        from confluent_kafka import Producer

        self.topic = topic or settings.topic_alerts
        self.failed = 0
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "client.id": "careledger-auditor",
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 60_000,
            }
        )

    def publish(self, alert_id: str, document: dict[str, Any]) -> None:
        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                self.failed += 1
                log.error("alert %s not delivered to %s: %s", alert_id, self.topic, err)

        payload = dumps(document).encode("utf-8")
        while True:
            try:
                self._producer.produce(
                    self.topic, key=alert_id.encode(), value=payload, on_delivery=delivered
                )
                break
            except BufferError:
                self._producer.poll(0.5)
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> int:
        return int(self._producer.flush(timeout))


# --------------------------------------------------------------------------- range


@dataclass
class RangeResult:
    from_ts: str
    to_ts: str
    audit_run: str
    events_read: int = 0
    decisions: int = 0
    explained: int = 0
    flagged: int = 0
    alerts: int = 0
    published: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    #: what is known now: the newest ledger time of a reference record
    reference_known_at: str = NOTHING_KNOWN
    reconsider: bool = False
    #: decisions made again with the knowledge cutoff of their stored decision
    kept_knowledge: int = 0
    #: confirmed violations that weighed the range (REPEAT_OFFENDER)
    confirmed_violations: int = 0
    #: alerts whose status history is broken: their status was not used as confirmed
    broken_status_histories: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.from_ts,
            "to": self.to_ts,
            "audit_run": self.audit_run,
            "events_read": self.events_read,
            "decisions": self.decisions,
            "reference_known_at": self.reference_known_at,
            "reconsider": self.reconsider,
            "decisions_with_stored_knowledge": self.kept_knowledge,
            "confirmed_violations": self.confirmed_violations,
            "status_histories_broken": list(self.broken_status_histories),
            "explained": self.explained,
            "flagged": self.flagged,
            "alerts": self.alerts,
            "alerts_published": self.published,
            "alerts_by_rule": dict(sorted(self.by_rule.items())),
            "elapsed_s": round(self.elapsed_s, 3),
        }


def report_broken_histories(broken: Sequence[str]) -> None:
    """Say which alerts have a status history whose hash links do not hold (an edited,
    deleted or forged change): their status is not used as a confirmed violation."""
    if broken:
        shown = ", ".join(broken[:10]) + (
            f" and {len(broken) - 10} more" if len(broken) > 10 else ""
        )
        log.error(
            "the status history of %d alert(s) is broken (hash links do not hold), so "
            "their status is not counted as a confirmed violation: %s "
            "(see careledger alerts show ID)",
            len(broken),
            shown,
        )


def range_run_id(from_ts: str, to_ts: str) -> str:
    return f"range:{from_ts}..{to_ts}"


def audit_range(
    store: AuditStore,
    from_ts: str,
    to_ts: str,
    *,
    salt: str,
    config: AuditConfig = DEFAULT_CONFIG,
    publisher: AlertPublisher | None = None,
    now: Callable[[], str] = utc_now_ts,
    republish: bool = False,
    reconsider: bool = False,
) -> RangeResult:
    """Audit ``[from_ts, to_ts)`` and replace its decisions and alerts in the store.

    An event already decided is decided with the knowledge cutoff its stored decision
    used (reference versions ledgered after it are ignored), so the replay reproduces
    it; new events, or all of them with ``reconsider``, with everything known now.
    Publishes the alerts that were not stored before with the same content (all of them
    with ``republish``, e.g. after a run whose delivery to Kafka failed)."""
    started = time.perf_counter()
    run = range_run_id(from_ts, to_ts)
    result = RangeResult(from_ts, to_ts, run, reconsider=reconsider)
    state = ReferenceState()
    state.apply_ledgered(ledger_times(store.reference_records(), {}))
    lo, hi = read_bounds(from_ts, to_ts, config)
    knowledge = plan_knowledge(
        state.latest_known_at,
        store.decision_cutoffs(lo, hi),
        from_ts,
        to_ts,
        reconsider=reconsider,
        undecided=0 if reconsider else store.undecided_count(from_ts, to_ts),
    )
    result.reference_known_at = knowledge.current
    reviews = store.reviews()
    result.confirmed_violations = len(reviews.confirmed)
    result.broken_status_histories = list(reviews.broken)
    report_broken_histories(reviews.broken)
    counted: list[int] = [0]

    def counting(events: Iterable[LedgeredEvent]) -> Iterator[LedgeredEvent]:
        for le in events:
            counted[0] += 1
            yield le

    placed = sort_decisions(
        decide_range(
            state,
            counting(store.events_between(lo, hi)),
            from_ts,
            to_ts,
            horizon_ts=store.horizon(),
            config=config,
            confirmed=reviews.violations(),
            knowledge=knowledge,
        )
    )
    result.events_read = counted[0]
    if not reconsider:
        result.kept_knowledge = sum(
            1 for p in placed if not p.decision.amends and p.decision.event_id in knowledge.stored
        )
    decided_at = now()
    rows = [decision_row(p, salt=salt, decided_at=decided_at, audit_run=run) for p in placed]
    alerts = group_alerts(
        [p.decision for p in placed],
        salt=salt,
        closed=reviews.closed,
        late_flag_delay_us=config.btg_stop_window_us,
    )
    before = store.alert_fingerprints(from_ts, to_ts)
    store.delete_range(from_ts, to_ts)
    store.insert_decisions(rows)
    version = time.time_ns()
    store.insert_alerts(
        [alert_row(a, created_at=decided_at, audit_run=run, version=version) for a in alerts]
    )
    result.decisions = len(placed)
    result.explained = sum(1 for p in placed if p.decision.explained)
    result.flagged = sum(1 for p in placed if p.decision.flagged)
    result.alerts = len(alerts)
    for a in alerts:
        result.by_rule[str(a.rule)] = result.by_rule.get(str(a.rule), 0) + 1
    if publisher is not None:
        for a in alerts:
            if republish or before.get(a.alert_id) != alert_fingerprint(a):
                publisher.publish(a.alert_id, alert_document(a))
                result.published += 1
        if result.published and publisher.flush(30.0):
            raise StorageError("alerts could not all be delivered to Kafka")
    result.elapsed_s = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- follow


#: flagged decisions kept in memory for regrouping: the grouping window plus max span
_REGROUP_US: Final = 25 * 3600 * 1_000_000


def _near(times: Sequence[int], t_us: int, span_us: int) -> bool:
    """``t_us`` is within ``span_us`` of one of ``times`` (sorted)."""
    i = bisect.bisect_left(times, t_us - span_us)
    return i < len(times) and times[i] <= t_us + span_us


class Follower:
    """Audit newly committed blocks continuously (see the module docstring)."""

    def __init__(
        self,
        store: AuditStore,
        *,
        salt: str,
        config: AuditConfig = DEFAULT_CONFIG,
        publisher: AlertPublisher | None = None,
        from_ts: str | None = None,
        now: Callable[[], str] = utc_now_ts,
        warmup: bool = True,
    ) -> None:
        self.store = store
        self.salt = salt
        self.warmup = warmup
        self._warm_until: str | None = None
        self.warmed = 0
        self.config = config
        self.publisher = publisher
        self.from_ts = from_ts
        self.now = now
        self.run_id = f"follow:{secrets.token_hex(8)}"
        self.state = ReferenceState()
        self.auditor = Auditor(self.state, config=config, consent_evaluator=core_consent_evaluator)
        self.cursors: dict[str, int] = {}
        #: the latest ledger time seen per reference chain (see ``ledger_times``)
        self.ledger_latest: dict[str, tuple[int, str]] = {}
        #: the knowledge cutoff of the last decisions made (None: none yet)
        self.known_at: str | None = None
        #: reference records that arrived ledgered no later than a cutoff already used
        #: (another processor's block committed late): a replay of the decisions made
        #: with that cutoff would see them
        self.late_records = 0
        self.btg_positions: dict[str, tuple[Position, int, str]] = {}
        self.recent: dict[str, list[AccessDecision]] = {}  # flagged, by actor
        self._latest_us = 0
        self.published: dict[str, str] = {}  # alert id -> fingerprint
        self._pending_rows: list[tuple[Any, ...]] = []
        self._pending_flagged: list[AccessDecision] = []
        self._pending_at = ""
        self.started = False
        self.cycles = 0
        self.decided = 0
        self.alerts_sent = 0
        #: the alerts of the confirmed violations fed to the history, and the count of
        #: status changes the last read of the reviews reflects
        self._fed: set[str] = set()
        self._reviews = -1
        #: closed alerts (they take no more flags) and broken status histories reported
        self.closed: Mapping[str, ClosedAlert] = {}
        self.broken: set[str] = set()

    def _start(self) -> None:
        # resume after what earlier runs decided (every event of a block is decided
        # together), or from the beginning
        self.cursors = self.store.decided_heights()
        if self.warmup and self.cursors:
            # the first cycle replays the last warm-up window of what was decided (not
            # deciding it again), so windows are as if the follower had never stopped
            self._warm_until = self.store.last_decided_time()
        self.started = True

    def _read_reviews(self, *, again: bool = False) -> None:
        """Read the reviews if a status changed since the last read (or ``again``): the
        closed alerts (they take no more flags) and the confirmed violations, fed to the
        history once per case, so an alert resolved while following weighs the actor's
        next accesses (REPEAT_OFFENDER) as in a range run. A broken status history is
        reported once and not counted."""
        changes = self.store.status_changes()
        if changes == self._reviews and not again:
            return
        reviews = self.store.reviews()
        for case in reviews.confirmed:
            # by alert id, not time: an alert read again (a range replay rewriting it) or
            # a second alert about the same accesses is not fed twice
            if self._fed.isdisjoint(case.alert_ids):
                self.auditor.history.record_confirmed_violation(case.actor_id, case.at)
            self._fed.update(case.alert_ids)
        broken = [a for a in reviews.broken if a not in self.broken]
        report_broken_histories(broken)
        counted = sorted(self._fed.intersection(broken))
        if counted:
            log.error(
                "alerts %s were counted as confirmed violations before their status history "
                "broke; a range replay does not count them",
                ", ".join(counted),
            )
        self.broken.update(broken)
        self.closed = reviews.closed
        self._reviews = changes

    def _warmup_events(self) -> tuple[list[LedgeredEvent], dict[str, str]]:
        """The events to replay into the windows and the cutoffs they were decided with."""
        if self._warm_until is None:
            return [], {}
        until_us = ts_to_us(self._warm_until)
        lo = us_to_ts(until_us - warmup_us(self.config))
        hi = us_to_ts(until_us + 1)
        events = [
            le
            for le in self.store.events_between(lo, hi)
            if le.position.height <= self.cursors.get(le.position.chain_id, -1)
        ]
        cutoffs = {event_id: known for event_id, _t, known in self.store.decision_cutoffs(lo, hi)}
        return events, cutoffs

    def _apply_references(self, records: list[LedgeredReference]) -> None:
        late = 0
        used = self.known_at
        ledgered: list[tuple[ReferenceRecord, str]] = []
        for rec, t in ledger_times(records, self.ledger_latest):
            if used is not None and t <= used:
                late += 1
            ledgered.append((rec, t))
        self.state.apply_ledgered(ledgered)
        if late:
            self.late_records += late
            log.warning(
                "%d reference records were committed after decisions whose knowledge cutoff "
                "%s is not before their ledger time: a replay of those decisions may differ",
                late,
                used,
            )

    def cycle(self) -> int:
        """One poll; returns the number of new decisions."""
        if not self.started:
            self._start()
        self.cycles += 1
        # what an earlier cycle decided but could not store goes first (its events are
        # in the history already: they must not be evaluated again)
        self._store_pending()
        self._read_reviews(again=self.cycles % 200 == 0)
        heads = self.store.heads()
        records: list[LedgeredReference] = []
        new: list[LedgeredEvent] = []
        cursors: dict[str, int] = {}
        for chain, head in sorted(heads.items()):
            above = self.cursors.get(chain, -1)
            if head <= above:
                continue
            if self.store.is_reference(chain):
                records.extend(self.store.reference_records_of_chain(chain, above, head))
            else:
                new.extend(self.store.events_of_chain(chain, above, head))
            cursors[chain] = head
        warm, warm_cutoffs = self._warmup_events()
        # every read succeeded: from here on nothing is read twice
        self.cursors.update(cursors)
        # the reference data committed so far first, then the events
        self._apply_references(records)
        # decide with what is known now: the newest ledger time applied
        cutoff = self.state.latest_known_at or NOTHING_KNOWN
        state = self.state
        try:
            if self._warm_until is not None:
                for le in warm:
                    # as it was decided (the same history as a range replay builds)
                    state.known_at = warm_cutoffs.get(le.event.event_id, cutoff)
                    if is_btg_start(le.event):
                        self.btg_positions[le.event.event_id] = (
                            le.position,
                            ts_to_us(le.event.occurred_at),
                            state.known_at,
                        )
                    for d in self.auditor.process(le.event):
                        if d.amends:  # due before the restart: decided then
                            self.btg_positions.pop(d.event_id, None)
                self.warmed = len(warm)
                self._warm_until = None
            if not new:
                return 0
            new.sort(key=lambda le: le.sort_key)
            batch = {le.event.event_id: le.position for le in new}
            placed: list[PlacedDecision] = []
            state.known_at = cutoff
            for le in new:
                if is_btg_start(le.event):
                    self.btg_positions[le.event.event_id] = (
                        le.position,
                        ts_to_us(le.event.occurred_at),
                        cutoff,
                    )
                for d in self.auditor.process(le.event):
                    pos = batch.get(d.event_id)
                    known_at = cutoff
                    if d.amends:
                        entry = self.btg_positions.pop(d.event_id, None)
                        pos, known_at = (None, cutoff) if entry is None else (entry[0], entry[2])
                    if pos is None:
                        continue
                    if self.from_ts is not None and d.occurred_at < self.from_ts:
                        continue
                    placed.append(PlacedDecision(d, pos, known_at))
        finally:
            state.known_at = None
        self.known_at = cutoff
        # bounded memory: a start's position is needed until its stop window is over
        latest = ts_to_us(new[-1].event.occurred_at)
        keep_us = 2 * self.config.btg_stop_window_us
        for eid, (_pos, t_us, _known) in list(self.btg_positions.items()):
            if latest - t_us > keep_us:
                del self.btg_positions[eid]
        decided_at = self.now()
        self._pending_rows = [
            decision_row(p, salt=self.salt, decided_at=decided_at, audit_run=self.run_id)
            for p in sort_decisions(placed)
        ]
        self._pending_flagged = [p.decision for p in placed if p.decision.flagged]
        self._pending_at = decided_at
        self.decided += len(placed)
        self._store_pending()
        return len(placed)

    def _store_pending(self) -> None:
        """Store the last evaluated decisions, then their alerts (raises StorageError;
        the next cycle retries what is left)."""
        if self._pending_rows:
            self.store.insert_decisions(self._pending_rows)
            self._pending_rows = []
        if self._pending_flagged:
            self._alerts(self._pending_flagged, self._pending_at)
            self._pending_flagged = []

    def _alerts(self, flagged: list[AccessDecision], decided_at: str) -> None:
        # a review made during this cycle: an alert closed now must not take these flags
        self._read_reviews()
        latest = max(self._latest_us, max(ts_to_us(d.occurred_at) for d in flagged))
        by_actor: dict[str, list[AccessDecision]] = {}
        for d in flagged:
            by_actor.setdefault(d.actor_id, []).append(d)
        # alerts group one actor's flags: only the actors flagged now are regrouped, with
        # their flags around the times of the new ones (an event committed after events
        # that occurred much later, e.g. a back-filled batch, is grouped at its own time)
        regroup: list[AccessDecision] = []
        keep: dict[str, list[AccessDecision]] = {}
        for actor, new in by_actor.items():
            times = sorted({ts_to_us(d.occurred_at) for d in new})
            known = [*self.recent.get(actor, ()), *new]
            near = [d for d in known if _near(times, ts_to_us(d.occurred_at), _REGROUP_US)]
            regroup.extend(near)
            near_ids = {id(d) for d in near}
            keep[actor] = [
                d
                for d in known
                if id(d) in near_ids or latest - ts_to_us(d.occurred_at) <= _REGROUP_US
            ]
        touched = {d.event_id for d in flagged}
        changed: list[Alert] = []
        for a in group_alerts(
            regroup,
            salt=self.salt,
            closed=self.closed,
            late_flag_delay_us=self.config.btg_stop_window_us,
        ):
            if touched.isdisjoint(a.event_ids):
                continue
            if self.published.get(a.alert_id) != alert_fingerprint(a):
                changed.append(a)
        if changed:
            self.store.insert_alerts(
                [
                    alert_row(
                        a, created_at=decided_at, audit_run=self.run_id, version=time.time_ns()
                    )
                    for a in changed
                ]
            )
        self.recent.update(keep)
        self._latest_us = latest
        if self.cycles % 1000 == 0:  # forget the flags of actors quiet for a day
            self.recent = {
                actor: kept
                for actor, decisions in self.recent.items()
                if (
                    kept := [
                        d for d in decisions if latest - ts_to_us(d.occurred_at) <= _REGROUP_US
                    ]
                )
            }
        for a in changed:
            self.published[a.alert_id] = alert_fingerprint(a)
        if self.publisher is not None and changed:
            for a in changed:
                self.publisher.publish(a.alert_id, alert_document(a))
            if self.publisher.flush(10.0):
                log.error("some alerts are not yet delivered to Kafka")
        self.alerts_sent += len(changed)
        if len(self.published) > 200_000:
            for key in list(self.published)[:100_000]:
                del self.published[key]
