"""The case actions of ``verifiers.auditor.casework``: which status each leaves, who an
alert is assigned to, and what a reopened alert means to the auditor's reviews."""

from __future__ import annotations

from typing import Any

import pytest

from verifiers.auditor.alerts import ALERT_STATUSES
from verifiers.auditor.casework import ACTIONS, NotAllowed, assignee, next_status
from verifiers.auditor.runner.reviews import ReviewedAlert, review_alerts

EXPECTED = {
    # (action, current) -> status after, for every allowed pair; every other pair refused
    ("ack", "open"): "acknowledged",
    ("assign", "open"): "assigned",
    ("assign", "acknowledged"): "assigned",
    ("assign", "assigned"): "assigned",
    ("resolve", "open"): "resolved",
    ("resolve", "acknowledged"): "resolved",
    ("resolve", "assigned"): "resolved",
    ("dismiss", "open"): "false-positive",
    ("dismiss", "acknowledged"): "false-positive",
    ("dismiss", "assigned"): "false-positive",
    ("reopen", "resolved"): "open",
    ("reopen", "false-positive"): "open",
    **{("comment", s): s for s in ALERT_STATUSES},
}


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("current", ALERT_STATUSES)
def test_every_action_from_every_status(action: str, current: str) -> None:
    expected = EXPECTED.get((action, current))
    if expected is None:
        with pytest.raises(NotAllowed, match=f"is {current}: cannot {action}"):
            next_status(action, current)
    else:
        assert next_status(action, current) == expected


def test_a_closed_alert_cannot_be_closed_again_or_acknowledged() -> None:
    for closed in ("resolved", "false-positive"):
        for action in ("ack", "assign", "resolve", "dismiss"):
            with pytest.raises(NotAllowed):
                next_status(action, closed)


def test_an_unknown_action_is_refused() -> None:
    with pytest.raises(NotAllowed, match="no action"):
        next_status("delete", "open")


def _c(status: str, note: str = "") -> dict[str, Any]:
    return {"status": status, "note": note}


def test_the_assignee_is_the_last_assign_until_closed_or_reopened() -> None:
    assert assignee([]) is None
    h = [_c("acknowledged"), _c("assigned", "assigned to dana: look at it")]
    assert assignee(h) == "dana"
    h.append(_c("assigned", "assigned to lee"))
    assert assignee(h) == "lee"
    h.append(_c("assigned", "a comment keeps the assignee"))
    assert assignee(h) == "lee"
    h.append(_c("resolved", "confirmed"))
    assert assignee(h) is None
    h += [_c("open", "reopened: new facts")]
    assert assignee(h) is None
    # a comment on an open alert assigned before is not a reopen
    assert assignee([_c("assigned", "assigned to kim"), _c("assigned", "note")]) == "kim"


def _entry(seq: int, status: str) -> dict[str, Any]:
    return {"status": status, "changed_at": f"2026-11-02T1{seq}:00:00.000000Z", "seq": seq}


def test_a_reopened_alert_is_no_longer_a_confirmed_violation_but_stays_cut() -> None:
    alerts = {"a1": ReviewedAlert("dr-x", "2026-11-02T09:00:00.000000Z", ("e1",))}
    resolved = {"a1": [_entry(0, "acknowledged"), _entry(1, "resolved")]}
    reviews = review_alerts(resolved, alerts, intact=lambda h: True)
    assert [c.alert_ids for c in reviews.confirmed] == [("a1",)]
    reopened = {"a1": [*resolved["a1"], _entry(2, "open")]}
    reviews = review_alerts(reopened, alerts, intact=lambda h: True)
    assert reviews.confirmed == ()
    assert "a1" in reviews.closed  # still cut where it was first closed
