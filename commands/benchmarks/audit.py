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
import sys
import time
from collections import defaultdict
from typing import Any

from careledger.config import Settings


def _decide(records: Any, events: Any, confirmed: Any) -> tuple[list[Any], float]:
    from verifiers.auditor import Auditor, ReferenceState
    from verifiers.auditor.rules import core_consent_evaluator

    started = time.perf_counter()
    auditor = Auditor(ReferenceState(records), consent_evaluator=core_consent_evaluator)
    for actor_id, at in confirmed:
        auditor.history.record_confirmed_violation(actor_id, at)
    decisions = auditor.run(events)
    return decisions, time.perf_counter() - started


def _outcome(d: Any) -> tuple[Any, ...]:
    flags = tuple(sorted((str(f.code), str(f.severity), f.routine) for f in d.flags))
    return (d.event_id, d.amends, flags, None if d.explanation is None else str(d.explanation.kind))


def _on_pseudonyms(scenario: Any) -> tuple[Any, Any, Any, float]:
    """The scenario as the auditor sees a sealed ledger (ADR 0037): every identifier
    replaced by a pseudonym of a real SoftHSM2 token's keys (a token of its own, in a
    temporary directory, its key rows in a file), each patient with a data key."""
    import tempfile
    from pathlib import Path

    from careledger.keystore import KeyStore, local_token
    from producers.simulator.vocabulary import MRN_SYSTEM
    from verifiers.auditor.pseudonyms import pseudonymous_inputs
    from verifiers.auditor.runner.sealed_store import KeystorePseudonyms

    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as tmp,
        KeyStore(local_token(Path(tmp), "benchmark-audit"), create=True) as keystore,
    ):
        refs = KeystorePseudonyms(keystore, MRN_SYSTEM)
        patients = {e.patient.id for e in scenario.events if e.patient.id != "-"}
        patients |= {r.subject_id for r in scenario.reference_records if r.kind != "staff"}
        keystore.data_keys_for([keystore.lookup(MRN_SYSTEM, p) for p in patients], "benchmark")
        records, events, confirmed = pseudonymous_inputs(
            scenario.reference_records, scenario.events, scenario.confirmed_violations, refs
        )
    return records, events, confirmed, time.perf_counter() - started


def run(
    events: int, seed: int, rate: float, warmup_events: int = 0, *, sealed: bool = False
) -> dict[str, Any]:
    from producers.simulator import DEFAULT_START, HospitalModel
    from producers.simulator.scenarios import simulate_audit_scenario
    from verifiers.auditor import RuleCode
    from verifiers.auditor.runner.follow import tune_gc

    started = time.perf_counter()
    scenario = simulate_audit_scenario(
        HospitalModel(seed=seed), events, seed, DEFAULT_START, rate, warmup_events=warmup_events
    )
    generated = time.perf_counter() - started

    tune_gc()  # as ``audit --follow`` runs
    inputs = (scenario.reference_records, scenario.events, scenario.confirmed_violations)
    sealed_figures: dict[str, Any] | None = None
    if sealed:
        *inputs, pseudonymize_s = _on_pseudonyms(scenario)  # type: ignore[assignment]
        clear, _ = _decide(
            scenario.reference_records, scenario.events, scenario.confirmed_violations
        )
        sealed_figures = {"pseudonymize_seconds": pseudonymize_s}
    decisions, audit_s = _decide(*inputs)
    if sealed_figures is not None:
        differ = {_outcome(d) for d in decisions} ^ {_outcome(d) for d in clear}
        sealed_figures["decisions"] = len(decisions)
        sealed_figures["decisions_differing_from_clear"] = len({o[0] for o in differ})

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
        "sealed": sealed_figures,
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
    parser.add_argument(
        "--sealed",
        action="store_true",
        help="decide on pseudonyms, as on a sealed ledger (ADR 0037; a SoftHSM2 token of "
        "its own), and count the decisions that differ from the auditor in clear",
    )
    parser.add_argument("--json", action="store_true")


def _f(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:6.3f}"


def command_benchmark_audit(args: argparse.Namespace, settings: Settings) -> int:
    from careledger.keystore import KeyStoreError

    try:
        figures = run(
            args.events, args.seed, args.inappropriate_rate, args.warmup_events, sealed=args.sealed
        )
    except KeyStoreError as exc:
        print(
            f"careledger benchmark-audit: --sealed needs a SoftHSM2 token: {exc}", file=sys.stderr
        )
        return 2
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
    sealed = figures["sealed"]
    if sealed is not None:
        print(
            f"on pseudonyms (a sealed ledger): {sealed['decisions']:,} decisions, "
            f"{sealed['decisions_differing_from_clear']:,} differing from the auditor in "
            f"clear; pseudonymized in {sealed['pseudonymize_seconds']:.1f} s"
        )
    return 0
