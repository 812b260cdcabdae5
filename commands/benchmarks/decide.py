"""`careledger benchmark-decide`: latency of the consent decision point, per decision.

A benchmark, not a test: it prints p50 / p95 / p99 (milliseconds) and asserts nothing.
A synthetic consent ledger (``--patients`` patients, each with one to three consent
versions of the shapes the decision point meets: overall deny with exceptions for a
practitioner and an organisation, opt-outs, time-limited withholdings) is loaded in
memory, then ``--decisions`` questions (random actors, purposes, actions, classes;
about a third about patients without a consent) are asked one after the other:

* **decide**: evaluate, build the decision record, canonical JSON, SHA-256 (what the
  decision point does under its lock for every question);
* **authenticate + decide**: the same, after checking an institution's Ed25519-signed
  request (parse headers, registry lookup, signature, nonce) and parsing the question;
* **decide + ledgered** (unless ``--no-kafka`` or Kafka is down): the same as the
  endpoint answers, after Kafka acknowledged the decision's raw record and its signed
  event (topics of its own, deleted afterwards), sequential questions
  (``--ledgered-decisions`` of them).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from careledger.config import Settings

__all__ = ["command_benchmark_decide", "configure_benchmark_decide"]

CHAIN = "bench/careledger.consents/0"
T0 = "2026-01-01T00:00:00.000000Z"
PURPOSES = ("TREAT", "ETREAT", "HPAYMT", "HRESCH", "HMARKT")
CLASSES = ("Observation", "Condition", "MedicationRequest", "DocumentReference", "Encounter")


def configure_benchmark_decide(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patients", type=int, default=20_000)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--ledgered-decisions", type=int, default=500)
    parser.add_argument("--no-kafka", action="store_true", help="skip the ledgered figures")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")


def _consent(pid: str, n: int, rng: random.Random) -> dict[str, Any]:
    shape = rng.randrange(3)
    base: dict[str, Any] = {
        "resourceType": "Consent",
        "id": f"c-{pid}-{n}",
        "status": "active",
        "subject": {"reference": f"Patient/{pid}"},
    }
    if shape == 0:  # overall deny, except a practitioner for treatment and an org
        return {
            **base,
            "decision": "deny",
            "provision": [
                {
                    "actor": [{"reference": {"reference": f"Practitioner/dr-{rng.randrange(50)}"}}],
                    "purpose": [{"code": "TREAT"}],
                },
                {"actor": [{"reference": {"reference": "Organization/org-1"}}]},
            ],
        }
    if shape == 1:  # opt-out of marketing and research
        return {
            **base,
            "decision": "permit",
            "provision": [{"purpose": [{"code": "HMARKT"}, {"code": "HRESCH"}]}],
        }
    return {  # withholding mental health notes for a period
        **base,
        "decision": "permit",
        "provision": [
            {
                "period": {"start": "2026-01-01", "end": "2027-12-31"},
                "securityLabel": [{"code": "PSY"}],
            }
        ],
    }


def build_ledger(patients: int, seed: int) -> tuple[Any, list[str]]:
    from careledger_core.reference import REFERENCE_SCHEMA, reference_from_dict
    from verifiers.auditor.consent.policy_table import PolicyTable
    from verifiers.auditor.decision_point import ConsentLedger, LedgeredConsent

    rng = random.Random(seed)
    records = []
    height = 0
    for i in range(patients):
        pid = f"p-{i}"
        for n in range(rng.randrange(1, 4)):
            height += 1
            rec = reference_from_dict(
                {
                    "schema": REFERENCE_SCHEMA,
                    "kind": "consent",
                    "record_id": f"c-{pid}-{n}",
                    "version": 1,
                    "recorded_at": T0,
                    "effective_at": T0,
                    "body": _consent(pid, n, rng),
                }
            )
            records.append(LedgeredConsent(rec, CHAIN, height, 0, T0))
    ledger = ConsentLedger(PolicyTable())
    ledger.apply(records, {CHAIN: height})
    return ledger, [f"p-{i}" for i in range(int(patients * 1.5))]


def questions(patient_ids: list[str], n: int, seed: int) -> list[Any]:
    from verifiers.auditor.decision_point import Question

    rng = random.Random(seed + 1)
    out = []
    for _ in range(n):
        labels: tuple[str, ...] = ("N", "PSY") if rng.random() < 0.2 else ("N",)
        out.append(
            Question(
                patient_id=rng.choice(patient_ids),
                actor_id=f"dr-{rng.randrange(60)}",
                action=rng.choice(("R", "R", "R", "U", "E")),
                actor_roles=("doctor",),
                actor_organization=rng.choice(("org-1", "org-2")),
                purposes=(rng.choice(PURPOSES),),
                data_class=rng.choice(CLASSES),
                security_labels=labels,
            )
        )
    return out


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000.0 for s in samples_s)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {
        "n": len(ms),
        "p50_ms": round(q[49], 3),
        "p95_ms": round(q[94], 3),
        "p99_ms": round(q[98], 3),
        "max_ms": round(ms[-1], 3),
    }


def _time_each(items: list[Any], work: Callable[[Any], object]) -> list[float]:
    out = []
    for item in items:
        t = time.perf_counter()
        work(item)
        out.append(time.perf_counter() - t)
    return out


def _signed_stage(point: Any, qs: list[Any]) -> list[float]:
    import base64

    from careledger_core.signing import SigningKey
    from careledger_core.source import KeyEventStatement, SourceRegistry, timestamp_of
    from verifiers.auditor.decision_point import (
        RequestAuthenticator,
        parse_question,
        signed_request_headers,
    )

    key = SigningKey.from_seed(os.urandom(32))
    registry = SourceRegistry(
        [
            KeyEventStatement(
                source_id="org-1",
                key_id=key.key_id,
                public_key=base64.b64encode(key.public_key.raw).decode(),
                status="active",
                valid_from=timestamp_of(time.time() - 3600),
                registrar_key_id="0" * 16,
            )
        ]
    )
    auth = RequestAuthenticator(lambda: registry)
    requests = []
    for i, q in enumerate(qs):
        body = json.dumps(
            {
                "patient_id": q.patient_id,
                "actor": {"id": q.actor_id, "roles": list(q.actor_roles), "organization": "org-1"},
                "purposes": list(q.purposes),
                "action": q.action,
                "data_class": q.data_class,
                "security_labels": list(q.security_labels),
            }
        ).encode()
        h = signed_request_headers(
            "org-1", key, "POST", "/consent/decide", body, nonce=f"n{i:020d}"
        )
        requests.append((h, body))

    def one(item: tuple[dict[str, str], bytes]) -> None:
        h, body = item
        requester = auth.authenticate(h, "POST", "/consent/decide", body)
        point.answer_only(parse_question(body), requester)

    return _time_each(requests, one)


def _ledgered_stage(settings: Settings, ledger: Any, qs: list[Any]) -> dict[str, Any] | str:
    from careledger import stack
    from careledger_core.errors import CareledgerError
    from careledger_core.signing import SigningKey
    from verifiers.auditor.decision_point import DecisionPoint, Requester
    from verifiers.auditor.decision_point.ledger import KafkaDecisionLedger

    s = settings.with_topic_suffix(f"-bench-decide-{uuid.uuid4().hex[:8]}").replace(
        source_heartbeat_interval_s=3600.0
    )
    own = {s.topic_raw: 1, s.topic_events: 1, s.topic_sources: 1}
    if not stack.kafka_ready(s):
        return "skipped: Kafka is not up (careledger up)"
    try:
        stack.ensure_topics(s, own)
    except CareledgerError as exc:
        return f"skipped: {exc}"
    sink = KafkaDecisionLedger(
        s, source_key=SigningKey.from_seed(os.urandom(32)), source_id="bench"
    )
    try:
        point = DecisionPoint(sink)
        point.ledger = ledger
        point.decide(qs[0], Requester("bench"))  # connect, warm up
        return _percentiles(_time_each(qs, lambda q: point.decide(q, Requester("bench"))))
    finally:
        sink.close()
        stack.delete_topics(s, list(own))


def command_benchmark_decide(args: argparse.Namespace, settings: Settings) -> int:
    from verifiers.auditor.decision_point import DecisionPoint, Requester
    from verifiers.auditor.decision_point.ledger import MemoryDecisionLedger

    started = time.perf_counter()
    ledger, patient_ids = build_ledger(args.patients, args.seed)
    load_s = time.perf_counter() - started
    qs = questions(patient_ids, args.decisions, args.seed)
    point = DecisionPoint(MemoryDecisionLedger())
    point.ledger = ledger
    for q in qs[:500]:  # warm the parsed-policy cache the way a running server has it
        point.answer_only(q, Requester("bench"))
    requester = Requester("bench")
    result: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "load_at_start": os.getloadavg()},
        "patients": args.patients,
        "consent_versions": len(ledger.records_up_to()),
        "load_s": round(load_s, 2),
        "decide": _percentiles(_time_each(qs, lambda q: point.answer_only(q, requester))),
        "authenticate_and_decide": _percentiles(_signed_stage(point, qs)),
    }
    outcomes: dict[str, int] = {}
    for q in qs[:2000]:
        o = point.answer_only(q, requester)[0]["answer"]["outcome"]
        outcomes[o] = outcomes.get(o, 0) + 1
    result["outcomes_of_first_2000"] = outcomes
    if not args.no_kafka:
        result["decide_and_ledgered"] = _ledgered_stage(
            settings, ledger, qs[: args.ledgered_decisions]
        )
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    print(
        f"consent decision point: {result['patients']} patients, "
        f"{result['consent_versions']} consent versions (loaded in {result['load_s']} s), "
        f"{os.cpu_count()} cores, load {result['machine']['load_at_start'][0]:.2f}"
    )
    for name in ("decide", "authenticate_and_decide", "decide_and_ledgered"):
        r = result.get(name)
        if r is None:
            continue
        if isinstance(r, str):
            print(f"  {name:<26} {r}")
            continue
        print(
            f"  {name:<26} n={r['n']:<6} p50 {r['p50_ms']:.3f} ms  p95 {r['p95_ms']:.3f} ms  "
            f"p99 {r['p99_ms']:.3f} ms  max {r['max_ms']:.3f} ms"
        )
    print(f"  outcomes (first 2000): {outcomes}")
    return 0
