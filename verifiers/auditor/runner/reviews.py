"""What the reviewers decided, as the auditor uses it (pure, but for logging).

Closed alerts take no more flags (``group_alerts(closed=...)``); resolved alerts whose
status history is intact are confirmed violations, one per case (alerts sharing a
flagged event); a broken history is reported, never counted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._time import ts_to_us, us_to_ts
from ..alerts import CLOSED_STATUSES, ClosedAlert
from .rows import _text, status_history_intact

log = logging.getLogger("careledger.auditor")


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
    *,
    intact: Callable[[Sequence[Mapping[str, Any]]], bool] = status_history_intact,
) -> Reviews:
    """The reviews of ``histories`` (``status_histories``) over the stored ``alerts``.

    * closed: every alert with a final status, closed at its first final change (also
      when its history is broken: keeping an alert from growing is the safe side) and
      cut at its stored last event;
    * confirmed: alerts whose history is intact and ends ``resolved``, merged per actor
      into cases of alerts sharing a flagged event, each counted once, just after the
      case's last event (on the event-time axis the history uses, so a replay after the
      review sees the same); a history whose hash links do not hold does not count and is
      listed in ``broken``. ``intact`` decides that (``verify`` passes histories read
      from the ledger, which hold by construction)."""
    closed: dict[str, ClosedAlert] = {}
    broken: list[str] = []
    resolved: list[str] = []
    for aid in sorted(histories):
        h = histories[aid]
        final = next((e for e in h if e["status"] in CLOSED_STATUSES), None)
        if final is not None:
            stored = alerts.get(aid)
            closed[aid] = ClosedAlert(final["changed_at"], stored.last_at if stored else None)
        if not intact(h):
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
