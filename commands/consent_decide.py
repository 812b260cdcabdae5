"""``careledger consent decide | serve | replay``: the consent decision point (ADR 0024).

* ``decide --patient P --actor A [--role R ...] [--organization O] [--purpose X ...]
  --action R [--data-class C] [--label L ...] [--json]``: answer "may A access P now?"
  from the ledgered consents, ledger the decision (raw record + signed event, waiting
  for Kafka) and print it. Exit 0 answered (whatever the outcome), 2 not answered
  (ClickHouse or Kafka unreachable: a decision that cannot be ledgered is not given).
* ``serve [--host H] [--port N]``: the HTTP endpoint ``POST /consent/decide`` for other
  institutions (requests signed with their key registered in the source registry).
* ``replay DECISION_ID | --all [--json]``: decide the question again against the ledger
  as of the position its record states, and check the record against its signed
  event. Exit 0 identical, 1 a difference or tampering, 2 cannot tell.

Each is a ``configure_*`` / ``run_*`` pair listed in :data:`SUBCOMMANDS`, which
``commands.consent`` adds to its group.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from careledger.config import Settings

__all__ = ["SUBCOMMANDS"]

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace, Settings], int]
log = logging.getLogger("careledger.decision_point")


def configure_decide(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patient", required=True, help="the patient's id")
    parser.add_argument("--actor", required=True, help="the actor's id")
    parser.add_argument("--role", action="append", default=[], help="an actor role (repeat)")
    parser.add_argument("--organization", help="the actor's organization")
    parser.add_argument("--purpose", action="append", default=[], help="purpose of use (repeat)")
    parser.add_argument("--action", required=True, choices=["C", "R", "U", "D", "E"])
    parser.add_argument("--data-class", help="the data's resource type (e.g. Observation)")
    parser.add_argument("--label", action="append", default=[], help="security label (repeat)")
    parser.add_argument("--json", action="store_true", help="print the decision record as JSON")


def _error(message: str, code: int = 2) -> int:
    print(f"careledger consent: {message}", file=sys.stderr)
    return code


def _sealed_reader(settings: Settings) -> Any:
    """A sealed ledger's reader (ADR 0037), its key store open; None in clear. Raises
    ``KeyStoreError`` / ``KeyFileError`` (a ``CareledgerError``) when the token cannot
    be used."""
    if not settings.seal_events:
        return None
    from careledger.keystore import open_keystore
    from verifiers.auditor.decision_point.sealed import SealedReader

    return SealedReader(open_keystore(settings), settings.reference_patient_system)


def _close(sealed: Any) -> None:
    if sealed is not None:
        sealed.keystore.close()


def run_decide(args: argparse.Namespace, settings: Settings) -> int:
    from careledger.storage.backend import ClickHouseBackend
    from careledger_core.errors import CareledgerError
    from verifiers.auditor.decision_point import DecisionPoint, NotLedgered, Requester
    from verifiers.auditor.decision_point.ledger import KafkaDecisionLedger
    from verifiers.auditor.decision_point.model import QuestionError, question_from_dict
    from verifiers.auditor.decision_point.store import consent_chains

    try:
        question = question_from_dict(
            {
                "patient_id": args.patient,
                "actor_id": args.actor,
                "actor_roles": args.role,
                "actor_organization": args.organization,
                "purposes": args.purpose,
                "action": args.action,
                "data_class": args.data_class,
                "security_labels": args.label,
            }
        )
    except QuestionError as exc:
        return _error(exc.message)
    try:
        sealed = _sealed_reader(settings)
    except CareledgerError as exc:
        return _error(f"a sealed ledger needs its key store: {exc.message}")
    backend = ClickHouseBackend.from_settings(settings)
    sink: KafkaDecisionLedger | None = None
    try:
        point = DecisionPoint(
            KafkaDecisionLedger(settings),
            backend=backend,
            database=settings.clickhouse_database,
            chains=consent_chains(settings),
            sealed=sealed,
        )
        sink = point.sink  # type: ignore[assignment]
        point.refresh()
        record, sha = point.decide(question, Requester(settings.source_id, "local"))
    except NotLedgered as exc:
        return _error(exc.message)
    except CareledgerError as exc:
        return _error(f"cannot decide: {exc.message}")
    finally:
        if sink is not None:
            sink.close()
        backend.close()
        _close(sealed)
    _print_decision(record, sha, args.json)
    return 0


def _print_decision(record: dict[str, Any], sha: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"decision": record, "decision_sha256": sha}, sort_keys=True))
        return
    a = record["answer"]
    consent = a["consent"]
    print(f"decision {record['decision_id']}: {a['outcome'].upper()} at {record['decided_at']}")
    if consent is not None:
        print(
            f"  decided by consent {consent['record_id']} v{consent['version']}, provision "
            f"{a['provision_path'] or '(base)'} (ledgered at {consent.get('chain_id')} height "
            f"{consent.get('height')})"
        )
    print(f"  reason: {a['reason']}")
    print(f"  fallback: {a['fallback'] or 'none (a provision decided)'}")
    chains = ", ".join(f"{c}@{h}" for c, h in record["as_of"]["chains"].items()) or "(none)"
    print(f"  as of: {chains}; known at {record['as_of']['known_at']}")
    print(f"  ledgered: record sha256 {sha}")


def configure_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument(
        "--refresh-s", type=float, default=0.5, help="how often to read new consent blocks"
    )
    parser.add_argument(
        "--registry-refresh-s",
        type=float,
        default=10.0,
        help="how often to re-read the source registry (revocations take effect then)",
    )
    parser.add_argument("--max-skew-s", type=int, default=60)


def _every(interval: float, stop: threading.Event, work: Callable[[], object], what: str) -> None:
    from careledger_core.errors import CareledgerError

    while not stop.wait(interval):
        try:
            work()
        except CareledgerError as exc:
            log.warning("cannot refresh %s: %s", what, exc.message)


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from careledger.kafka.security import PRODUCER
    from careledger.sources import load_registrar_keys, read_registry
    from careledger.storage.backend import ClickHouseBackend
    from careledger_core.errors import CareledgerError
    from verifiers.auditor.decision_point import DecisionPoint, RequestAuthenticator
    from verifiers.auditor.decision_point.http import build_app
    from verifiers.auditor.decision_point.ledger import KafkaDecisionLedger
    from verifiers.auditor.decision_point.store import consent_chains

    registrars = load_registrar_keys(settings)
    if not registrars:
        return _error("no trusted registrar key (trusted_registrar_keys): cannot read the registry")
    try:
        registry, problems = read_registry(settings, registrars, principal=PRODUCER)
    except CareledgerError as exc:
        return _error(f"cannot read the source registry: {exc.message}")
    for p in problems:
        log.warning("source registry: %s", p)
    current = {"registry": registry}

    def reload_registry() -> None:
        current["registry"] = read_registry(settings, registrars, principal=PRODUCER)[0]

    try:
        sealed = _sealed_reader(settings)
    except CareledgerError as exc:
        return _error(f"a sealed ledger needs its key store: {exc.message}")
    backend = ClickHouseBackend.from_settings(settings)
    sink = KafkaDecisionLedger(settings)
    point = DecisionPoint(
        sink,
        backend=backend,
        database=settings.clickhouse_database,
        chains=consent_chains(settings),
        sealed=sealed,
    )
    auth = RequestAuthenticator(lambda: current["registry"], max_skew_s=args.max_skew_s)
    stop = threading.Event()
    try:
        point.refresh()
        for interval, work, what in (
            (args.refresh_s, point.refresh, "consents"),
            (args.registry_refresh_s, reload_registry, "source registry"),
            (float(args.max_skew_s), auth.forget_expired, "nonces"),
        ):
            threading.Thread(target=_every, args=(interval, stop, work, what), daemon=True).start()
        print(
            f"careledger consent serve: POST http://{args.host}:{args.port}/consent/decide "
            f"(as of {point.ledger.as_of()['chains']})",
            flush=True,
        )
        uvicorn.run(build_app(point, auth), host=args.host, port=args.port, log_level="warning")
    except CareledgerError as exc:
        return _error(exc.message)
    finally:
        stop.set()
        sink.close()
        backend.close()
        _close(sealed)
    return 0


def configure_replay(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("decision_id", nargs="?", help="the decision to replay")
    parser.add_argument("--all", action="store_true", help="replay every ledgered decision")
    parser.add_argument("--json", action="store_true")


def run_replay(args: argparse.Namespace, settings: Settings) -> int:
    from careledger.storage.backend import ClickHouseBackend
    from careledger_core.errors import CareledgerError
    from verifiers.auditor.decision_point.replay import check_decisions
    from verifiers.auditor.decision_point.store import consent_chains

    if bool(args.all) == bool(args.decision_id):
        return _error("give a decision id or --all")
    try:
        sealed = _sealed_reader(settings)
    except CareledgerError as exc:
        return _error(f"a sealed ledger needs its key store: {exc.message}")
    backend = ClickHouseBackend.from_settings(settings)
    try:
        check = check_decisions(
            backend,
            settings.clickhouse_database,
            consent_chains(settings),
            now_us=int(time.time() * 1_000_000),
            decision_id=args.decision_id,
            sealed=sealed,
        )
    except CareledgerError as exc:
        return _error(f"cannot tell: {exc.message}")
    finally:
        backend.close()
        _close(sealed)
    if args.decision_id and not check.decisions and not check.problems:
        return _error(f"no decision {args.decision_id} in the ledger", 1)
    if args.json:
        doc = check.to_dict()
        if args.decision_id:
            doc["replayed_answer"] = check.replays.get(args.decision_id)
        print(json.dumps(doc, sort_keys=True))
    else:
        for p in check.problems:
            print(f"{p.code}  {p.decision_id}  {p.message}  {json.dumps(dict(p.where))}")
        print(
            f"consent decisions: {check.decisions} stored, {check.replayed} replayed, "
            f"{check.identical} identical, "
            + ("intact" if check.intact else f"{len(check.problems)} problem(s)")
        )
    return 0 if check.intact else 1


#: name -> (help, configure, run), for ``commands.consent``
SUBCOMMANDS: dict[str, tuple[str, Configure, Run]] = {
    "decide": (
        "may this actor access this patient now? decided from the ledgered consents, "
        "ledgered, with the deciding consent version and provision",
        configure_decide,
        run_decide,
    ),
    "serve": (
        "serve the decision point over HTTP for other institutions (signed requests)",
        configure_serve,
        run_serve,
    ),
    "replay": (
        "replay a ledgered decision (or --all) against the ledger as of its position",
        configure_replay,
        run_replay,
    ),
}
