"""``careledger erase`` and ``careledger legal-hold``: crypto-shredding on a sealed ledger
(ADR 0037), under the retention policies and legal holds.

* ``erase --patient ID [--system S] --reason CODE --policy NAME [--policy NAME ...]
  [--requested-by WHO] [--json]``: decide with the policy table (the strictest policy
  wins; a standing legal hold refuses), ledger the signed erasure record (or the
  refusal), destroy the patient's data keys on every ClickHouse server. Exit 0 erased;
  1 refused, nothing to erase, or a server that did not confirm; 2 infrastructure.
* ``expire --policy NAME [...] [--now T] [--dry-run] [--json]``: the retention expiry
  job (``careledger.expiry``), after an intact ``verify``.
* ``legal-hold place --patient ID [--system S] --reason TEXT [--placed-by WHO]`` and
  ``legal-hold lift HOLD_ID --patient ID [--system S] [--placed-by WHO]``: ledger a
  registrar-signed hold, or lift it (a new version).

Patient identifiers are read from the command line and used for the key store's lookup
only: nothing printed or ledgered names the patient (the records name the pseudonym).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from careledger.config import Settings
from careledger.kafka.producer import AccessEventProducer, DeliveryError
from careledger.keys import KeyFileError, load_public_keys
from careledger.keystore import KeyStoreError, open_keystore
from careledger.retention import PolicyError, load_policies
from careledger.storage.backend import ClickHouseBackend, StorageError
from careledger_core.errors import CareledgerError
from careledger_core.reference import ReferenceRecord, canonical_reference_bytes

NO_PATIENT_SYSTEM = ""


def _patient_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patient", required=True, help="the patient's id")
    parser.add_argument(
        "--system", default=NO_PATIENT_SYSTEM, help="the id's system (as in the events)"
    )


def configure_erase(parser: argparse.ArgumentParser) -> None:
    _patient_args(parser)
    parser.add_argument("--reason", required=True, help="a reason code, e.g. gdpr-art17")
    parser.add_argument(
        "--policy",
        action="append",
        required=True,
        help="a retention policy the records fall under (repeat for several)",
    )
    parser.add_argument("--requested-by", default=None, help="who asks (default: you)")
    parser.add_argument("--json", action="store_true", help="one JSON object")


def configure_legal_hold(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="hold_command", metavar="SUBCOMMAND", required=True)
    place = sub.add_parser("place", help="place a legal hold on a patient's records")
    _patient_args(place)
    place.add_argument("--reason", required=True, help="why (a case, an order)")
    place.add_argument("--placed-by", default=None, help="who (default: you)")
    lift = sub.add_parser("lift", help="lift a legal hold")
    lift.add_argument("hold_id")
    _patient_args(lift)
    lift.add_argument("--placed-by", default=None, help="who lifts it (default: you)")


def _publisher(settings: Settings) -> Any:
    def publish(record: ReferenceRecord) -> None:
        with AccessEventProducer(settings, topic=settings.topic_patients, sign=False) as p:
            p.send_raw(canonical_reference_bytes(record), record.subject_id.encode())
            p.flush(30.0)

    return publish


def _refuse(command: str, message: str) -> int:
    print(f"careledger {command}: {message}", file=sys.stderr)
    return 2


def command_erase(args: argparse.Namespace, settings: Settings) -> int:
    from careledger.erasure import erase

    if not settings.seal_events:
        return _refuse("erase", "this ledger is not sealed (seal_events is off): no key to destroy")
    try:
        table = load_policies(settings.retention_policy_file)
        policies = [table[name] for name in args.policy]
    except KeyError as exc:
        return _refuse("erase", f"no retention policy {exc.args[0]!r} (known: {', '.join(table)})")
    except PolicyError as exc:
        return _refuse("erase", str(exc))
    backend = ClickHouseBackend.from_settings(settings)
    try:
        with open_keystore(settings) as keystore:
            result = erase(
                settings,
                keystore,
                backend,
                system=args.system,
                patient_id=args.patient,
                reason=args.reason,
                policies=policies,
                requested_by=args.requested_by or getpass.getuser(),
                publish=_publisher(settings),
            )
    except (KeyStoreError, KeyFileError, StorageError, DeliveryError) as exc:
        return _refuse("erase", exc.message)
    except CareledgerError as exc:
        return _refuse("erase", exc.message)
    finally:
        backend.close()
    d = result.destruction
    if args.json:
        print(
            json.dumps(
                {
                    "outcome": result.outcome,
                    "decision": result.decision,
                    "record_id": result.record_id,
                    "patient_ref": result.patient_ref,
                    "key_ids": list(result.key_ids),
                    "confirmed_on": [] if d is None else list(d.confirmed),
                    "still_held_on": [] if d is None else list(d.still_held),
                    "ignored_holds": result.ignored_holds,
                },
                sort_keys=True,
            )
        )
    else:
        print(f"{result.outcome}: {result.decision}")
        if result.record_id:
            print(f"  ledgered as {result.record_id} (patient_ref {result.patient_ref})")
        if d is not None:
            print(f"  {len(result.key_ids)} data key(s) destroyed on {', '.join(d.confirmed)}")
            for server in d.still_held:
                print(f"  NOT CONFIRMED on {server}: it still holds the keys (down?)")
        for hold in result.ignored_holds:
            print(f"  legal hold record {hold} ignored: no trusted registrar signature")
    if result.outcome != "erased" or (d is not None and not d.complete):
        return 1
    return 0


def command_legal_hold(args: argparse.Namespace, settings: Settings) -> int:
    from careledger.erasure import legal_holds, place_hold

    if not settings.seal_events:
        return _refuse("legal-hold", "this ledger is not sealed (seal_events is off)")
    backend = ClickHouseBackend.from_settings(settings)
    try:
        with open_keystore(settings) as keystore:
            version, hold_id = 1, None
            if args.hold_command == "lift":
                from careledger_core.sealing import patient_ref

                lookup = keystore.lookup(args.system, args.patient)
                refs = [patient_ref(k.key) for k in keystore.data_keys(lookup, "legal-hold")]
                registrars = load_public_keys(settings.trusted_registrar_keys)
                holds, _ = legal_holds(backend, settings.clickhouse_database, refs, registrars)
                if args.hold_id not in {h.id for h in holds}:
                    return _refuse("legal-hold", f"no hold {args.hold_id} on this patient")
                version, hold_id = 2, args.hold_id
            record = place_hold(
                settings,
                keystore,
                system=args.system,
                patient_id=args.patient,
                reason=getattr(args, "reason", None) or "lifted",
                placed_by=args.placed_by or getpass.getuser(),
                publish=_publisher(settings),
                hold_id=hold_id,
                lift=args.hold_command == "lift",
                version=version,
            )
    except CareledgerError as exc:
        return _refuse("legal-hold", exc.message)
    finally:
        backend.close()
    action = "lifted" if args.hold_command == "lift" else "placed"
    print(f"legal hold {record.record_id} {action} (ledgered, version {record.version})")
    return 0


def configure_expire(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        action="append",
        required=True,
        help="the retention policies the records fall under (repeat for several)",
    )
    parser.add_argument("--requested-by", default=None, help="who runs it (default: you)")
    parser.add_argument(
        "--now", default=None, help="decide as of this UTC time (default: now), e.g. a test"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="say what has expired; ledger and destroy nothing"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object")


def command_expire(args: argparse.Namespace, settings: Settings) -> int:
    """The retention expiry job (``careledger.expiry``), after an intact ``verify``: the
    job decides from the ledger's tables, so a table an insider edited (a patient's newest
    rows deleted to make them look expired) must not drive a signed erasure. Exit 0 done
    (whatever expired), 1 a server did not confirm a destruction, 2 refused or
    infrastructure."""
    import datetime as dt

    from careledger.expiry import expire
    from careledger.processes import run_cli

    if not settings.seal_events:
        return _refuse(
            "expire", "this ledger is not sealed (seal_events is off): no key to destroy"
        )
    try:
        table = load_policies(settings.retention_policy_file)
        policies = [table[name] for name in args.policy]
        now = (
            None
            if args.now is None
            else dt.datetime.fromisoformat(args.now.replace("Z", "+00:00")).astimezone(dt.UTC)
        )
    except KeyError as exc:
        return _refuse("expire", f"no retention policy {exc.args[0]!r} (known: {', '.join(table)})")
    except (PolicyError, ValueError) as exc:
        return _refuse("expire", str(exc))
    checked = run_cli(settings, "verify", "--json", timeout=3600)
    try:
        result = json.loads(checked.stdout).get("result") if checked.returncode in (0, 1) else None
    except ValueError:
        result = None
    if result != "intact":
        why = checked.stderr.strip().splitlines()[-1:] or [f"result {result!r}"]
        return _refuse("expire", f"the ledger does not verify intact, nothing expired: {why[0]}")
    backend = ClickHouseBackend.from_settings(settings)
    try:
        with open_keystore(settings) as keystore:
            run = expire(
                settings,
                keystore,
                backend,
                policies=policies,
                requested_by=args.requested_by or getpass.getuser(),
                publish=_publisher(settings),
                now=now,
                dry_run=args.dry_run,
            )
    except (KeyStoreError, KeyFileError, StorageError, DeliveryError) as exc:
        return _refuse("expire", exc.message)
    except CareledgerError as exc:
        return _refuse("expire", exc.message)
    finally:
        backend.close()
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, **run.summary()}, sort_keys=True))
    else:
        verb = "would expire" if args.dry_run else "expired"
        print(
            f"{verb}: {run.expired} of {run.examined} subjects ({run.not_yet} not yet, "
            f"{run.held} under a legal hold, {run.unused} with no record yet)"
        )
        for e in run.erasures:
            if "record_id" in e:
                print(f"  ledgered as {e['record_id']}: {e['decision']}")
        for record_id in run.incomplete:
            print(f"  {record_id}: NOT CONFIRMED on every server (down?): it drops them when back")
    return 1 if run.incomplete else 0
