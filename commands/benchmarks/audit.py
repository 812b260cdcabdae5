"""`careledger benchmark-audit`: detection quality of the access auditor, with figures.

Generates a seeded hospital scenario (reference data + access traffic with a
labelled share of inappropriate accesses of every rule type, see
``producers.simulator.scenarios``), runs the auditor over it in one process and prints,
per rule: labelled events, true positives, false negatives, false positives,
recall and precision; plus the share of legitimate patient accesses that were
explained, and the auditor's throughput. A benchmark, not a test: it asserts
nothing and prints what it measured.

Counting: routine review items (flags the policy requires whatever the
circumstances, e.g. every break-the-glass override that states its reason) get
their own column; every other flag is a detection. An event counts as caught
for a rule when a detection of that rule flagged it or groups it (a burst
lists its related events). Precision is over the events the rule flagged
itself. A warm-up of legitimate traffic (``--warmup-events``, not scored)
comes first: baselines need history, as a running auditor has.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from typing import Any

from careledger.config import Settings


def run(events: int, seed: int, rate: float, warmup_events: int = 0) -> dict[str, Any]:
    from producers.simulator import DEFAULT_START, HospitalModel
    from producers.simulator.scenarios import simulate_audit_scenario
    from verifiers.auditor import Auditor, ReferenceState, RuleCode
    from verifiers.auditor.rules import core_consent_evaluator
    from verifiers.auditor.runner.follow import tune_gc

    started = time.perf_counter()
    scenario = simulate_audit_scenario(
        HospitalModel(seed=seed), events, seed, DEFAULT_START, rate, warmup_events=warmup_events
    )
    generated = time.perf_counter() - started

    tune_gc()  # as ``audit --follow`` runs
    started = time.perf_counter()
    auditor = Auditor(
        ReferenceState(scenario.reference_records), consent_evaluator=core_consent_evaluator
    )
    for actor_id, at in scenario.confirmed_violations:
        auditor.history.record_confirmed_violation(actor_id, at)
    decisions = auditor.run(scenario.events)
    audit_s = time.perf_counter() - started

    # The warm-up only builds history (baselines); nothing in it is scored.
    scored_from = scenario.scored_from or ""
    scored_ids = {e.event_id for e in scenario.events if e.occurred_at >= scored_from}
    truth = {g.event_id: g for g in scenario.all_truth() if g.event_id in scored_ids}
    decisions = [d for d in decisions if d.event_id in scored_ids]
    own = [d for d in decisions if not d.amends]
    legit = [d for d in own if d.event_id not in truth and d.patient_id != "-"]
    explained = sum(d.explained for d in legit) / max(len(legit), 1)

    # Routine review items (``Flag.routine``: every break-the-glass override that
    # states its reason) are counted on their own, not as detections.
    covered: dict[Any, set[str]] = defaultdict(set)
    flagged: dict[Any, set[str]] = defaultdict(set)
    routine: dict[Any, set[str]] = defaultdict(set)
    for d in decisions:
        for f in d.flags:
            if f.routine:
                routine[f.code].add(d.event_id)
                continue
            flagged[f.code].add(d.event_id)
            covered[f.code].add(d.event_id)
            covered[f.code].update(f.evidence.get("related_event_ids", ()))
    rules: dict[str, dict[str, Any]] = {}
    total_labelled = total_found = total_flagged = total_tp = 0
    for code in RuleCode:
        labelled = {eid for eid, g in truth.items() if code in g.rules}
        found = len(labelled & covered[code])
        tp = len(flagged[code] & labelled)
        fp = len(flagged[code]) - tp
        rules[str(code)] = {
            "labelled": len(labelled),
            "caught": found,
            "missed": len(labelled) - found,
            "flagged": len(flagged[code]),
            "false_positives": fp,
            "routine_reviews": len(routine[code] - flagged[code]),
            "recall": found / len(labelled) if labelled else None,
            "precision": tp / len(flagged[code]) if flagged[code] else None,
        }
        total_labelled += len(labelled)
        total_found += found
        total_flagged += len(flagged[code])
        total_tp += tp
    return {
        "machine": {"cores": os.cpu_count()},
        "events": len(scored_ids),
        "warmup_events": len(scenario.events) - len(scored_ids),
        "reference_records": len(scenario.reference_records),
        "inappropriate_labelled": len(truth),
        "legitimate_patient_accesses": len(legit),
        "legitimate_explained": explained,
        "recall_overall": total_found / max(total_labelled, 1),
        "precision_overall": total_tp / max(total_flagged, 1),
        "rules": rules,
        "scenario_seconds": generated,
        "audit_seconds": audit_s,
        "audit_events_per_s": len(scenario.events) / audit_s if audit_s else None,
    }


def configure_benchmark_audit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--inappropriate-rate", type=float, default=0.01)
    parser.add_argument(
        "--warmup-events",
        type=int,
        default=50_000,
        help="legitimate traffic before the measured period, not scored: the history "
        "(per-actor and per-role baselines) a running auditor has",
    )
    parser.add_argument("--json", action="store_true")


def _f(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:6.3f}"


def command_benchmark_audit(args: argparse.Namespace, settings: Settings) -> int:
    figures = run(args.events, args.seed, args.inappropriate_rate, args.warmup_events)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(
        f"careledger audit benchmark on {figures['machine']['cores']} cores: "
        f"{figures['events']:,} accesses, {figures['inappropriate_labelled']:,} labelled "
        f"inappropriate, {figures['reference_records']:,} reference records "
        f"(after {figures['warmup_events']:,} warm-up accesses, not scored)"
    )
    print("routine: review items the policy requires (not detections, not in precision)")
    print(
        f"{'rule':32} {'labelled':>8} {'caught':>7} {'missed':>7} {'flagged':>8} "
        f"{'false+':>7} {'routine':>7} {'recall':>7} {'precision':>9}"
    )
    for code, r in figures["rules"].items():
        print(
            f"{code:32} {r['labelled']:8} {r['caught']:7} {r['missed']:7} {r['flagged']:8} "
            f"{r['false_positives']:7} {r['routine_reviews']:7} {_f(r['recall']):>7} "
            f"{_f(r['precision']):>9}"
        )
    print(
        f"{'overall':32} recall {figures['recall_overall']:.3f}  "
        f"precision {figures['precision_overall']:.3f}"
    )
    print(
        f"legitimate patient accesses explained: {figures['legitimate_explained']:.4f} "
        f"of {figures['legitimate_patient_accesses']:,}"
    )
    print(
        f"auditor: {figures['audit_events_per_s']:,.0f} accesses/s in one process "
        f"(scenario generated in {figures['scenario_seconds']:.1f} s)"
    )
    return 0
