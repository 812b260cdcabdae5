"""The stored decisions and alerts against their replays (ADR 0016).

Decisions, per run: a stored row and the replay's row for the same (event, amends) must
be equal column for column (``DECISION_MISMATCH``); a row no replay wrote is
``DECISION_UNEXPECTED`` (forged, duplicated, or naming no run); a replayed decision
without a row is ``DECISION_MISSING`` unless a later run decided that event again.

Alerts: a stored alert written by a replayed run at one of its times must be the alert
the replay wrote then (``ALERT_MISMATCH``), and not an older version of one the runs
changed since; an alert no replayed run wrote at that time is ``ALERT_UNEXPECTED``; an
alert the runs wrote that is gone is ``ALERT_MISSING`` unless a later range run replaced
its range. An alert of a run that left no decision rows (a later range run re-decided
them all) is regrouped from its own flagged accesses' current decisions: if it no longer
matches because those were decided again after it was written, it is ``ALERT_STALE``
(info), else ``ALERT_MISMATCH``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from careledger_core.findings import Finding, FindingCode

from ..alerts import group_alerts
from ..config import DEFAULT_CONFIG, AuditConfig
from ..runner.decide import PlacedDecision
from ..runner.rows import ALERT_COLUMNS, alert_row
from .ledger import LedgerView
from .replay import Replay
from .stored import StoredAlert, StoredDecision, compact_alert, shown

__all__ = [
    "AlertCheck",
    "Decided",
    "decision_finding",
    "differences",
    "unexpected_rows",
]

_DECISIONS: Final = "access_decisions"
_ALERTS: Final = "alerts"
#: alert columns about the write, not the alert (compared only where the run is known)
_WRITE_COLUMNS: Final = frozenset({"created_at", "audit_run", "version"})


def differences(
    columns: Sequence[str], stored: Sequence[Any], expected: Sequence[Any], skip: Iterable[str]
) -> dict[str, dict[str, Any]]:
    skipped = set(skip)
    return {
        c: {"stored": shown(s), "recomputed": shown(e)}
        for c, s, e in zip(columns, stored, expected, strict=True)
        if c not in skipped and s != e
    }


# --------------------------------------------------------------------------- decisions


@dataclass
class Decided:
    """For the accesses the stored alerts name: the replayed decision that is current
    for each (event, amends), from the replay of the run whose row is the latest."""

    #: event ids whose decisions are kept
    wanted: frozenset[str]
    current: dict[tuple[str, int], tuple[str, PlacedDecision]] = field(default_factory=dict)

    def wants(self, key: tuple[str, int]) -> bool:
        return key[0] in self.wanted

    def add(self, key: tuple[str, int], at: str, placed: PlacedDecision) -> None:
        """Replayed decision ``placed`` of ``key``, written at ``at``."""
        if not self.wants(key):
            return
        seen = self.current.get(key)
        if seen is None or at > seen[0]:
            self.current[key] = (at, placed)


def _where(key: tuple[str, int], row: Sequence[Any] | None, stored: StoredDecision | None) -> Any:
    if row is not None:
        return str(row[1]), int(row[2]), int(row[3])
    if stored is not None and stored.position is not None:
        return stored.position
    return _DECISIONS, None, None


def decision_finding(
    code: FindingCode,
    key: tuple[str, int],
    message: str,
    *,
    row: Sequence[Any] | None = None,
    stored: StoredDecision | None = None,
    **details: Any,
) -> Finding:
    chain, height, idx = _where(key, row, stored)
    return Finding.of(
        code,
        chain,
        message,
        height=height,
        event_index=idx,
        event_id=key[0] or None,
        details={"table": _DECISIONS, "amends": key[1], **details},
    )


def unexpected_rows(rows: Iterable[StoredDecision], why: str) -> list[Finding]:
    """Rows that no run of the auditor can have written (``why``)."""
    return [
        decision_finding(
            FindingCode.DECISION_UNEXPECTED,
            r.key,
            f"decision row of event {r.key[0] or '?'}: {why}",
            stored=r,
            audit_run=shown(r.get("audit_run")),
            decided_at=shown(r.get("decided_at")),
        )
        for r in rows
    ]


# --------------------------------------------------------------------------- alerts


def _content(row: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(v for c, v in zip(ALERT_COLUMNS, row, strict=True) if c not in _WRITE_COLUMNS)


def _alert_finding(code: FindingCode, alert_id: str, message: str, **details: Any) -> Finding:
    return Finding.of(
        code, _ALERTS, message, details={"table": _ALERTS, "alert_id": alert_id, **details}
    )


_FIRST_AT: Final = ALERT_COLUMNS.index("first_at")


@dataclass(frozen=True, slots=True)
class _Later:
    """A run's latest upsert of a stored alert after the stored version, with other
    content: what the stored row should have become."""

    at: str
    seq: int
    columns: dict[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class _Gone:
    """A run's latest upsert of an alert that has no stored row: what its finding says."""

    at: str
    seq: int
    rule: Any
    actor: Any
    first_at: str


class AlertCheck:
    """The stored alerts against the replays' upserts, compared as the replays write
    them (``written``; ADR 0047): no upsert row is held, only per stored alert whether
    the run that wrote it wrote it so (and how not), per run the latest later version
    that differs, and per alert without a row the latest upsert's summary. A run's
    upserts count only if its whole replay is handed to ``findings`` (one that fails
    half-way is left out, as if never replayed)."""

    def __init__(self, stored: Iterable[StoredAlert]) -> None:
        self._stored: dict[str, StoredAlert] = {}
        self._extra: list[StoredAlert] = []
        for a in stored:
            if a.alert_id in self._stored:
                self._extra.append(a)
            else:
                self._stored[a.alert_id] = a
        #: stored alerts whose own write was replayed: its differences (empty: equal)
        self._exact: dict[str, dict[str, dict[str, Any]]] = {}
        self._later: dict[tuple[str, str], _Later] = {}
        self._gone: dict[tuple[str, str], _Gone] = {}
        self._seq = 0

    def written(self, run: str, at: str, alert_id: str, row: tuple[Any, ...]) -> None:
        """Run ``run`` wrote alert ``alert_id`` at ``at`` as ``row`` (``compact_alert``)."""
        self._seq += 1
        alert = self._stored.get(alert_id)
        if alert is None:
            gone = self._gone.get((alert_id, run))
            if gone is None or at >= gone.at:
                self._gone[(alert_id, run)] = _Gone(
                    at, self._seq, row[1], row[4], str(row[_FIRST_AT])
                )
            return
        alert_id = alert.alert_id  # one string per alert, the stored one's
        if run == alert.audit_run and at == alert.created_at:
            self._exact[alert_id] = differences(ALERT_COLUMNS, alert.values, row, skip=("version",))
        elif at > alert.created_at and _content(row) != _content(alert.values):
            later = self._later.get((alert_id, run))
            if later is None or at >= later.at:
                diffs = differences(ALERT_COLUMNS, alert.values, row, _WRITE_COLUMNS)
                self._later[(alert_id, run)] = _Later(at, self._seq, diffs)

    def findings(
        self,
        view: LedgerView,
        replays: Sequence[Replay],
        decided: Decided,
        *,
        salt: str,
        config: AuditConfig = DEFAULT_CONFIG,
        recent: frozenset[str] | set[str] = frozenset(),
    ) -> list[Finding]:
        """What the stored alerts and the upserts of ``replays`` (the runs replayed
        whole) show (``recent``: ids of alerts whose stored row is too recent to check
        now; they are not missing)."""
        runs = {rp.run for rp in replays}
        times: dict[str, set[str]] = {}
        for rp in replays:
            times.setdefault(rp.run, set()).update(rp.times)
        later: dict[str, tuple[str, _Later]] = {}
        for (alert_id, run), lt in self._later.items():
            seen = later.get(alert_id)
            if run in runs and (seen is None or (lt.at, lt.seq) > (seen[1].at, seen[1].seq)):
                later[alert_id] = (run, lt)
        out: list[Finding] = []
        extra: dict[str, list[StoredAlert]] = {}
        for x in self._extra:
            extra.setdefault(x.alert_id, []).append(x)
        for alert_id, alert in sorted(self._stored.items()):
            for x in extra.get(alert_id, ()):
                out.append(
                    _alert_finding(
                        FindingCode.ALERT_UNEXPECTED,
                        alert_id,
                        f"a second row of alert {alert_id} (first event at {x.first_at})",
                        first_at=shown(x.get("first_at")),
                    )
                )
            exact = self._exact.get(alert_id) if alert.audit_run in runs else None
            out += _check_stored_alert(
                view, alert, exact, later.get(alert_id), times, decided, salt, config
            )
        gone: dict[str, tuple[str, _Gone]] = {}
        for (alert_id, run), g in self._gone.items():
            last = gone.get(alert_id)
            if run in runs and (last is None or (g.at, g.seq) > (last[1].at, last[1].seq)):
                gone[alert_id] = (run, g)
        for alert_id, (run, g) in sorted(gone.items()):
            if alert_id in recent or _replaced(replays, g.first_at, g.at):
                continue
            out.append(
                _alert_finding(
                    FindingCode.ALERT_MISSING,
                    alert_id,
                    f"run {run} raised alert {alert_id} ({g.rule}, actor "
                    f"{g.actor}, first event at {g.first_at}) at {g.at} but its row is gone",
                    audit_run=run,
                    created_at=g.at,
                )
            )
        return out


def _replaced(replays: Sequence[Replay], first_at: str, at: str) -> bool:
    """A range run after ``at`` replaced the alerts whose first event is ``first_at``."""
    return any(
        rp.bounds is not None
        and rp.bounds[0] <= first_at < rp.bounds[1]
        and any(t > at for t in rp.times)
        for rp in replays
    )


def _check_stored_alert(
    view: LedgerView,
    alert: StoredAlert,
    exact: dict[str, dict[str, Any]] | None,
    later: tuple[str, _Later] | None,
    times: Mapping[str, set[str]],
    decided: Decided,
    salt: str,
    config: AuditConfig,
) -> list[Finding]:
    """``exact``: the differences from what its run wrote at its time (None: no such
    write); ``later``: a later, different version a run wrote (its run and what)."""
    alert_id, run, at = alert.alert_id, alert.audit_run, alert.created_at
    if exact is not None:
        if exact:
            return [
                _alert_finding(
                    FindingCode.ALERT_MISMATCH,
                    alert_id,
                    f"alert {alert_id} differs from the alert run {run} raised at {at} over "
                    f"the ledger: {', '.join(sorted(exact))}",
                    audit_run=run,
                    created_at=at,
                    columns=exact,
                )
            ]
        if later is not None:
            by, u = later
            return [
                _alert_finding(
                    FindingCode.ALERT_MISMATCH,
                    alert_id,
                    f"alert {alert_id} is the version run {run} wrote at {at}, not the one "
                    f"run {by} wrote at {u.at}: " + ", ".join(sorted(u.columns)),
                    audit_run=run,
                    created_at=at,
                    columns=u.columns,
                )
            ]
        return []
    if at in times.get(run, ()):
        return [
            _alert_finding(
                FindingCode.ALERT_UNEXPECTED,
                alert_id,
                f"run {run} did not raise alert {alert_id} at {at} (replayed over the ledger)",
                audit_run=shown(run),
                created_at=shown(at),
            )
        ]
    return _regrouped(view, alert, decided, salt, config)


def _regrouped(
    view: LedgerView, alert: StoredAlert, decided: Decided, salt: str, config: AuditConfig
) -> list[Finding]:
    """An alert of a run that cannot be replayed at its time: regroup its own flagged
    accesses from their current decisions."""
    alert_id, at = alert.alert_id, alert.created_at
    # not kept: its run was to be replayed at its time but could not be (its rows are
    # findings), and no decision about its accesses was kept either
    flagged = alert.flagged() if alert.flagged_kept else None
    members: list[PlacedDecision] = []
    newer = False
    for event_id in flagged or ():
        for amends in (0, 1):
            cur = decided.current.get((event_id, amends))
            if cur is not None:
                members.append(cur[1])
                newer = newer or cur[0] > at
    if not members:
        return [
            _alert_finding(
                FindingCode.ALERT_UNEXPECTED,
                alert_id,
                f"alert {alert_id} (run {alert.audit_run or '?'}, written at {at or '?'}) is "
                "about accesses no audit run decided",
                audit_run=shown(alert.get("audit_run")),
                created_at=shown(alert.get("created_at")),
            )
        ]
    regrouped = {
        a.alert_id: a
        for a in group_alerts(
            [p.decision for p in members],
            salt=salt,
            closed=view.reviews_at(at).closed,
            late_flag_delay_us=config.btg_stop_window_us,
        )
    }
    again = regrouped.get(alert_id)
    expected = (
        None
        if again is None
        else compact_alert(alert_row(again, created_at=at, audit_run=alert.audit_run, version=0))
    )
    diffs = (
        {"alert_id": {"stored": alert_id, "recomputed": None}}
        if expected is None
        else differences(ALERT_COLUMNS, alert.values, expected, skip=_WRITE_COLUMNS)
    )
    if not diffs:
        return []
    code = FindingCode.ALERT_STALE if newer else FindingCode.ALERT_MISMATCH
    why = (
        "its accesses were decided again since (a later audit run)"
        if newer
        else "it is not the alert its flagged accesses' decisions give"
    )
    return [
        _alert_finding(
            code,
            alert_id,
            f"alert {alert_id} (run {alert.audit_run or '?'}, written at {at or '?'}): {why}: "
            f"{', '.join(sorted(diffs))}",
            audit_run=shown(alert.get("audit_run")),
            created_at=shown(alert.get("created_at")),
            columns=diffs,
        )
    ]
