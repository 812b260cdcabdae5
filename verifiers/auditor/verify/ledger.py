"""What ``verify`` reads once: the ledger the auditor's runs decided from, and the rows
they wrote (``LedgerView``).

The ledger part is trusted as far as the integrity checks vouch for it (committed
blocks, signed times, canonical bytes); the auditor's rows are not trusted at all: they
only say which runs to replay and with which knowledge cutoffs (ADR 0016).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from careledger.storage.backend import SqlBackend
from careledger.storage.migrations import check_identifier

from .._time import ts_to_us
from ..runner.decide import LedgeredEvent, LedgeredReference, ledger_times
from ..runner.reviews import ReviewedAlert, Reviews, review_alerts
from ..runner.rows import ALERT_COLUMNS, DECISION_COLUMNS
from ..runner.store import AuditStore
from ..status_records import (
    SealedStatus,
    StatusReconciliation,
    read_ledgered_status,
    read_status_rows,
    reconcile,
)
from .stored import StoredAlert, StoredDecision, parse_alerts, parse_decisions

__all__ = ["LedgerView"]

log = logging.getLogger("careledger.verify.audit")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


@dataclass
class LedgerView:
    """The ledger and the auditor's rows of one database, read once."""

    store: AuditStore
    #: (chain, height) -> the block's signed created_at (the earliest if several)
    block_times: dict[tuple[str, int], str]
    references: list[LedgeredReference]
    status: StatusReconciliation
    decisions: list[StoredDecision]
    alerts: list[StoredAlert]
    #: rows written after ``settled`` (the auditor may still be writing their run):
    #: left for the next run of verify (decisions for the "decided again" test only)
    recent_decisions: list[StoredDecision] = field(default_factory=list)
    recent_alerts: list[StoredAlert] = field(default_factory=list)
    #: per reference chain, (height, ledger time) in ledger order
    reference_times: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    _reviews: dict[int, Reviews] = field(default_factory=dict)
    _changes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _change_times: list[str] = field(default_factory=list)

    @classmethod
    def read(
        cls,
        backend: SqlBackend,
        database: str,
        reference_topics: frozenset[str],
        *,
        now_us: int,
        settled: str,
        future: str,
        sealed: SealedStatus | None = None,
    ) -> LedgerView:
        """Read everything. Decisions and alerts written after ``settled`` (and not
        after ``future``, which no real run can have written) are kept apart. ``sealed``:
        a sealed ledger's key store, to open its status records (without it they are
        checked by their public part: the hash of each row)."""
        db = check_identifier(database)
        store = AuditStore(backend, db, reference_topics)
        block_times: dict[tuple[str, int], str] = {}
        latest_access: dict[str, str] = {}
        for chain, height, created in backend.execute(
            f"SELECT chain_id, height, created_at FROM {db}.blocks"
        ):
            if not isinstance(height, int):
                continue  # an unreadable header: the integrity checks report it
            key = (_text(chain), height)
            t = _text(created)
            if key not in block_times or t < block_times[key]:
                block_times[key] = t
            if not store.is_reference(key[0]) and t > latest_access.get(key[0], ""):
                latest_access[key[0]] = t
        references = store.reference_records()
        newest = max(latest_access.values(), default="")

        def chained_since(t: str) -> bool:
            # the processor sealed a block well after the change: it was running
            try:
                return ts_to_us(newest) > ts_to_us(t) + 60_000_000
            except ValueError:
                return True

        status = reconcile(
            read_status_rows(backend, db),
            read_ledgered_status(backend, db, sealed=sealed),
            now_us=now_us,
            chained_since=chained_since,
        )
        decisions = parse_decisions(
            backend.execute(f"SELECT {', '.join(DECISION_COLUMNS)} FROM {db}.access_decisions")
        )
        alerts = parse_alerts(
            backend.execute(f"SELECT {', '.join(ALERT_COLUMNS)} FROM {db}.alerts FINAL")
        )
        view = cls(store, block_times, references, status, [], [])
        for d in decisions:
            recent = settled < d.decided_at <= future
            (view.recent_decisions if recent else view.decisions).append(d)
        for a in alerts:
            recent = settled < a.created_at <= future
            (view.recent_alerts if recent else view.alerts).append(a)
        latest: dict[str, tuple[int, str]] = {}
        for (rec, t), ref in zip(ledger_times(references, latest), references, strict=True):
            del rec
            view.reference_times.setdefault(ref.chain_id, []).append((ref.height, t))
        view._changes = view._status_changes()
        view._change_times = [when for when, _c in view._changes]
        return view

    # -- reviews as they were ---------------------------------------------------------
    def _status_changes(self) -> list[tuple[str, dict[str, Any]]]:
        """(changed_at, change) of every ledgered or pending status change, by time."""
        out: list[tuple[str, dict[str, Any]]] = []
        for alert_id, view in self.status.alerts.items():
            for change in view.changes:
                out.append((str(change["changed_at"]), {**change, "alert_id": alert_id}))
        out.sort(key=lambda c: (c[0], c[1]["alert_id"]))
        return out

    def status_changes_at(self, t: str) -> int:
        """How many status changes had been made at ``t``."""
        return bisect.bisect_right(self._change_times, t)

    def reviews_at(self, t: str) -> Reviews:
        """The reviews as a run at ``t`` read them: the ledgered (or pending) status
        changes made by then, over the stored alerts."""
        n = self.status_changes_at(t)
        cached = self._reviews.get(n)
        if cached is not None:
            return cached
        histories: dict[str, list[dict[str, Any]]] = {}
        for _when, change in self._changes[:n]:
            histories.setdefault(change["alert_id"], []).append(change)
        alerts: dict[str, ReviewedAlert] = {}
        for a in [*self.alerts, *self.recent_alerts]:
            flagged = a.flagged()
            if a.alert_id in histories and flagged is not None:
                alerts[a.alert_id] = ReviewedAlert(
                    a.text("actor_id"), a.text("last_at"), tuple(flagged)
                )
        reviews = review_alerts(histories, alerts, intact=lambda _h: True)
        self._reviews[n] = reviews
        return reviews

    # -- the ledger -------------------------------------------------------------------
    def committed_by(self, chain: str, height: int, t: str) -> bool:
        """The block was sealed at or before ``t`` (by its signed time)."""
        created = self.block_times.get((chain, height))
        return created is not None and created <= t

    def horizon_at(self, t: str, also: Sequence[tuple[str, int]] = ()) -> str | None:
        """The latest event time in the blocks sealed by ``t`` (and in ``also``)."""
        db = self.store.db
        rows = self.store.backend.execute(
            f"SELECT chain_id, height, max(occurred_at) FROM {db}.access_events "
            "WHERE (chain_id, height, block_hash) IN "
            f"(SELECT chain_id, height, block_hash FROM {db}.blocks) GROUP BY chain_id, height"
        )
        wanted = set(also)
        best: str | None = None
        for chain, height, latest in rows:
            if type(height) is not int:
                continue
            key = (_text(chain), height)
            if key in wanted or self.committed_by(key[0], key[1], t):
                value = _text(latest)
                if best is None or value > best:
                    best = value
        return best

    def events_between(self, lo: str, hi: str) -> Iterator[LedgeredEvent]:
        return self.store.events_between(lo, hi)

    def reference_head_at(self, chain: str, known_at: str) -> int:
        """The highest block of a reference chain known by ``known_at`` (-1: none)."""
        head = -1
        for height, t in self.reference_times.get(chain, ()):
            if t <= known_at:
                head = max(head, height)
        return head

    def latest_cutoffs(self, before: str) -> Mapping[str, tuple[str, str]]:
        """Per event, (occurred_at, knowledge cutoff) of its latest stored decision
        made before ``before`` (what a run then read as stored cutoffs)."""
        best: dict[str, tuple[str, str, str]] = {}
        for d in self.decisions:
            event_id, amends = d.key
            if amends != 0 or not d.known_at or not event_id or d.decided_at >= before:
                continue
            seen = best.get(event_id)
            if seen is None or d.decided_at > seen[0]:
                best[event_id] = (d.decided_at, d.occurred_at, d.known_at)
        return {e: (occ, known) for e, (_at, occ, known) in best.items()}
