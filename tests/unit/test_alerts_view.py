"""``careledger alerts`` as a person reads it (issue 13).

Before: ``alerts list`` printed the oldest first and stopped at 1,000 of 2,631 alerts
without a word; ``alerts show`` printed 420 lines of raw JSON with the reason buried.
Now the list is in risk order and says when it was cut; ``show`` reads as a case, and
anything a source or the store wrote is shown with control characters escaped.
"""

from __future__ import annotations

from typing import Any

import pytest

from careledger_core.rule_codes import RuleCode
from verifiers.auditor.alerts_view import (
    RULE_MEANINGS,
    SHOWN_SAMPLES,
    render_alert,
    sort_alerts,
    truncation_note,
)


def _alert(
    alert_id: str, score: float, severity: str, first_at: str, **extra: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "alert_id": alert_id,
        "rule": "NO_EXPLANATION",
        "severity": severity,
        "score": score,
        "actor_id": "E1",
        "patient_ref": "3f2a9c",
        "patient_refs": ["3f2a9c"],
        "event_ids": ["e1"],
        "first_at": first_at,
        "last_at": first_at,
        "evidence": {"flagged_events": 1, "related_events": 0, "distinct_patients": 1},
        "explanations_searched": ["consent", "care_relationship"],
        "status": "open",
        "status_by": None,
        "status_at": None,
        "status_pending": False,
        "status_history_intact": True,
        "status_problems": [],
        "status_history": [],
    }
    doc.update(extra)
    return doc


ALERTS = [
    _alert("a-old-high", 5.0, "high", "2026-11-01T08:00:00.000000Z"),
    _alert("b-new-low", 1.0, "low", "2026-11-03T08:00:00.000000Z"),
    _alert("c-mid-crit", 5.0, "critical", "2026-11-02T08:00:00.000000Z"),
    _alert("d-top", 9.5, "medium", "2026-11-02T09:00:00.000000Z"),
    _alert("e-tie-newer", 5.0, "high", "2026-11-02T10:00:00.000000Z"),
]


def test_risk_order_is_score_then_severity_then_newest() -> None:
    got = [a["alert_id"] for a in sort_alerts(ALERTS)]
    assert got == ["d-top", "c-mid-crit", "e-tie-newer", "a-old-high", "b-new-low"]


def test_time_orders_and_determinism() -> None:
    assert sort_alerts(ALERTS, "oldest")[0]["alert_id"] == "a-old-high"
    assert sort_alerts(ALERTS, "newest")[0]["alert_id"] == "b-new-low"
    assert sort_alerts(list(reversed(ALERTS))) == sort_alerts(ALERTS)
    with pytest.raises(ValueError):
        sort_alerts(ALERTS, "random")


def test_a_cut_list_says_how_many_matched() -> None:
    assert truncation_note(100, 100, "risk") is None
    note = truncation_note(1000, 2631, "risk")
    assert note is not None
    assert "1,000 of 2,631" in note and "highest risk first" in note and "--limit" in note


def test_every_rule_has_a_meaning() -> None:
    assert set(RULE_MEANINGS) == {str(r) for r in RuleCode}


def test_a_case_reads_as_a_story_and_escapes_what_sources_wrote() -> None:
    samples = [
        {
            "event_id": f"ev{n}",
            "occurred_at": f"2026-11-02T08:0{n}:00Z",
            "patient_ref": "3f2a9c",
            "severity": "high",
            "department": "cardio\x1b[2J",
        }
        for n in range(8)
    ]
    alert = _alert(
        "x1",
        7.25,
        "high",
        "2026-11-02T08:00:00.000000Z",
        actor_id="E9\r\n=HYPERLINK(1)",
        evidence={
            "flagged_events": 8,
            "related_events": 2,
            "distinct_patients": 1,
            "samples": samples,
            "samples_truncated": 0,
        },
        status="acknowledged",
        status_by="privacy-officer",
        status_at="2026-11-03T10:00:00Z",
        status_history=[
            {
                "status": "acknowledged",
                "changed_by": "privacy-officer",
                "changed_at": "2026-11-03T10:00:00Z",
                "note": "asked the ward\x07",
                "ledgered": {"chain_id": "org/events/1", "height": 4},
            }
        ],
    )
    text = "\n".join(render_alert(alert))
    assert RULE_MEANINGS["NO_EXPLANATION"] in text
    assert "severity high, score 7.2" in text  # 7.25 rounds half to even
    assert "8 flagged, 2 related, 1 patient(s)" in text
    assert "searched   consent, care_relationship: none explains the access" in text
    assert f"{SHOWN_SAMPLES} of 8 flagged" in text
    assert text.count("  event ev") == SHOWN_SAMPLES
    assert "acknowledged by privacy-officer" in text
    assert "ledgered at org/events/1 height 4" in text
    for raw in ("\x1b", "\r", "\x07"):
        assert raw not in text, repr(raw)
    assert "E9" in text


def test_a_broken_history_is_said_first_not_hidden() -> None:
    alert = _alert(
        "x2",
        3.0,
        "medium",
        "2026-11-02T08:00:00.000000Z",
        patient_ref=None,
        patient_refs=["p1", "p2", "p3", "p4"],
        status_history_intact=False,
        status_problems=["change 2 is not ledgered"],
    )
    text = "\n".join(render_alert(alert))
    assert "WARNING    the status history is broken" in text
    assert "change 2 is not ledgered" in text
    assert "4 patients (p1, p2, p3, ...)" in text
    assert "(none: open since it was raised)" in text
