"""The audit benchmark counts what it claims (no speed or quality is asserted here)."""

from __future__ import annotations

from commands.benchmarks.audit import run
from verifiers.auditor import RuleCode


def test_every_rule_is_scored_against_labelled_accesses() -> None:
    figures = run(events=4_000, seed=3, rate=0.02)
    assert set(figures["rules"]) == {str(c) for c in RuleCode}
    for code, r in figures["rules"].items():
        assert r["labelled"] > 0, f"{code} has no labelled access to score"
        assert r["caught"] + r["missed"] == r["labelled"]
        assert 0 <= r["false_positives"] <= r["flagged"]
    assert 0.0 < figures["legitimate_explained"] <= 1.0
    assert (
        figures["legitimate_patient_accesses"] + figures["inappropriate_labelled"]
        <= figures["events"]
    )


def test_the_warm_up_is_not_scored_and_routine_reviews_are_not_detections() -> None:
    figures = run(events=12_000, seed=3, rate=0.02, warmup_events=3_000)
    assert figures["warmup_events"] == 3_000
    assert abs(figures["events"] - 12_000) <= 10
    btg = figures["rules"]["BREAK_THE_GLASS"]
    # every override that states its reason is reviewed, but is not a detection
    assert btg["routine_reviews"] > 0
