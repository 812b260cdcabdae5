"""``careledger replica`` and ``careledger restore`` (ADR 0017).

``careledger replica [follow]``   keep the replica database up to date from the blocks
                                  topic, verifying every block (runs until stopped)
``careledger replica catch-up``   the same, once, up to the end of the topic; exit 1 if
                                  a record was refused or a block waits for a gap
``careledger replica compare``    primary vs replica, row by row; exit 1 if they differ
``careledger replica refused``    what the replica refused: where, code, reason, hash
                                  (never the bytes); exit 1 if anything
``careledger restore``            re-create the primary's tampered or deleted blocks from
                                  the replica (``--dry-run``: say what, touch nothing)

The replica's database is ``replica_clickhouse_*`` (its own server, or another database
on the primary's server); the primary is ``clickhouse_*``. Trusted processor keys come
from ``trusted_keys``, witnesses from ``witnesses_file``. Exit codes: 0 done / same /
intact, 1 something refused or different or not restorable, 2 configuration or
infrastructure (one line naming the setting or the service).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import signal
import sys
import time
import uuid
from typing import Any

from careledger.config import Settings
from careledger.keys import load_trusted_keys
from careledger.service_health import ServiceHealth
from careledger.storage.backend import ClickHouseBackend, StorageError
from careledger.storage.compare import Comparison, compare
from careledger.storage.migrations import check_identifier, migrate_backend
from careledger.storage.store import ChainStore, SealedBlock
from careledger_core.errors import CareledgerError, InfrastructureError

__all__ = ["command_replica", "command_restore", "configure_replica", "configure_restore"]

log = logging.getLogger("careledger.replica")


class RestoreNotLedgered(InfrastructureError):
    """The restore events could not be sent: nothing was restored."""

    code = "RESTORE_NOT_LEDGERED"


def configure_replica(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        nargs="?",
        default="follow",
        choices=("follow", "catch-up", "compare", "refused"),
        help="follow (default), catch-up (once), compare (primary vs replica), refused",
    )
    parser.add_argument("--chain", action="append", help="compare: only this chain (repeat)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def configure_restore(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="say what, restore nothing")
    parser.add_argument("--chain", action="append", help="only this chain (repeat)")
    parser.add_argument("--by", help="who restores (the ledgered actor; default: the login name)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _fail(command: str, message: str) -> int:
    print(f"careledger {command}: {message}", file=sys.stderr)
    return 2


def _quiet_driver(args: argparse.Namespace) -> None:
    """The ClickHouse driver logs a traceback per failed connection; the one line
    ``_fail`` prints says it (``--verbose`` shows them)."""
    if not getattr(args, "verbose", False):
        logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)


_BOTH = "the primary is CARELEDGER_CLICKHOUSE_*, the replica CARELEDGER_REPLICA_CLICKHOUSE_*"


def _where(settings: Settings, *, replica: bool) -> str:
    if replica:
        return (
            f"the replica database {settings.replica_clickhouse_database} at "
            f"{settings.replica_clickhouse_host}:{settings.replica_clickhouse_port} "
            "(CARELEDGER_REPLICA_CLICKHOUSE_*)"
        )
    return (
        f"the primary database {settings.clickhouse_database} at "
        f"{settings.clickhouse_host}:{settings.clickhouse_port} (CARELEDGER_CLICKHOUSE_*)"
    )


def _store(settings: Settings, *, replica: bool) -> ChainStore:
    if replica:
        return ChainStore.replica_for_settings(settings)
    return ChainStore.for_settings(ClickHouseBackend.from_settings(settings), settings)


def _check_databases(settings: Settings) -> str | None:
    for name, value in (
        ("CARELEDGER_CLICKHOUSE_DATABASE", settings.clickhouse_database),
        ("CARELEDGER_REPLICA_CLICKHOUSE_DATABASE", settings.replica_clickhouse_database),
    ):
        try:
            check_identifier(value)
        except ValueError:
            return f"{name} is not a valid database name: {value!r}"
    same_server = (settings.clickhouse_host, settings.clickhouse_port) == (
        settings.replica_clickhouse_host,
        settings.replica_clickhouse_port,
    )
    if same_server and settings.clickhouse_database == settings.replica_clickhouse_database:
        return (
            "the replica is the primary: set CARELEDGER_REPLICA_CLICKHOUSE_DATABASE (or "
            "_HOST) to the replica's own database"
        )
    return None


# --------------------------------------------------------------------------- replica


def command_replica(args: argparse.Namespace, settings: Settings) -> int:
    _quiet_driver(args)
    problem = _check_databases(settings)
    if problem:
        return _fail("replica", problem)
    if args.action == "compare":
        return _compare(args, settings)
    if args.action == "refused":
        return _refused(args, settings)
    return _replicate(args, settings)


def _replicate(args: argparse.Namespace, settings: Settings) -> int:
    from replica.follow import Replicator

    once = args.action == "catch-up"
    try:
        keys = load_trusted_keys(settings)
    except CareledgerError as exc:
        return _fail("replica", f"{exc} (CARELEDGER_TRUSTED_KEYS)")
    stopping: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    if not once:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    backoff = 1.0
    state: dict[str, Any] = {"replicator": None, "error": None}

    def snapshot() -> dict[str, Any]:
        r = state["replicator"]
        if r is None:
            return {"following": False}
        return {
            **r.stats.to_json(),
            "held": r.held,
            "seconds_since_loop": round(time.monotonic() - r.last_loop_at, 1),
        }

    def healthy() -> tuple[bool, str]:
        r = state["replicator"]
        if state["error"] is not None:
            return False, str(state["error"])
        if r is None:
            return False, "not following yet"
        idle = time.monotonic() - r.last_loop_at
        if idle > 60.0:
            return False, f"no read of the blocks topic for {idle:.0f} s"
        return True, f"{r.stats.stored} blocks stored"

    health = None if once else ServiceHealth.for_settings(settings, "replica", snapshot, healthy)
    while True:
        store = _store(settings, replica=True)
        try:
            migrate_backend(store.backend, store.db)
            replicator = Replicator(settings, store, keys)
            state["replicator"], state["error"] = replicator, None
            stats = replicator.run(once=once, should_stop=lambda: bool(stopping))
            held = replicator.held
            break
        except CareledgerError as exc:  # the replica's database or Kafka: "cannot tell"
            state["error"] = str(exc)
            where = f"{_where(settings, replica=True)}: " if isinstance(exc, StorageError) else ""
            if once:
                return _fail("replica", f"{where}{exc}")
            log.error("replica: %s%s; retrying in %.0f s", where, exc, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            if stopping:
                return 0
        finally:
            store.backend.close()
    if health is not None:
        health.stop()
    doc = {"replica": settings.replica_clickhouse_database, **stats.to_json(), "held": held}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        lag = (
            f", lag p50 {doc['lag_p50_s']} s p99 {doc['lag_p99_s']} s"
            if doc["lag_p50_s"] is not None
            else ""
        )
        print(
            f"replica {doc['replica']}: {stats.stored} blocks stored ({stats.stored_events} "
            f"records), {stats.duplicates} duplicates, {stats.refused} refused, "
            f"{held} held for a gap{lag}"
        )
        if stats.log_start:
            print(f"  the blocks topic lost records: log start offsets {stats.log_start}")
    return 1 if stats.refused or held or stats.log_start else 0


def _compare(args: argparse.Namespace, settings: Settings) -> int:
    primary, replica = _store(settings, replica=False), _store(settings, replica=True)
    try:
        result = compare(primary, replica, args.chain)
    except StorageError as exc:
        return _fail("replica compare", f"{exc} ({_BOTH})")
    finally:
        primary.backend.close()
        replica.backend.close()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        _print_comparison(result)
    return 0 if result.total == 0 else 1


def _print_comparison(result: Comparison) -> None:
    for chain in result.chains:
        ahead = f", primary {chain.primary_ahead} ahead" if chain.primary_ahead > 0 else ""
        print(
            f"{chain.chain_id}: primary head {chain.primary_height}, replica head "
            f"{chain.replica_height}{ahead}: {chain.differences} differences"
        )
    for d in result.differences:
        print(f"  {d.describe()}")
    if result.total > len(result.differences):
        print(f"  ... {result.total - len(result.differences)} more")
    print("same" if result.total == 0 else f"different: {result.total} differences")


def _refused(args: argparse.Namespace, settings: Settings) -> int:
    from replica.follow import refused_records

    store = _store(settings, replica=True)
    try:
        docs = refused_records(store)
    except StorageError as exc:
        return _fail("replica refused", f"{_where(settings, replica=True)}: {exc}")
    finally:
        store.backend.close()
    if args.json:
        print(json.dumps(docs, indent=2))
    else:
        for d in docs:
            print(
                f"{d['refused_at']} {d['topic']}/{d['partition']}@{d['offset']} "
                f"{d['chain_id'] or '-'} height {d['height']}: {d['code']} {d['reason']}"
            )
        print(f"{len(docs)} refused records")
    return 1 if docs else 0


# --------------------------------------------------------------------------- restore


def _ledger(settings: Settings, by: str, run_id: str) -> Any:
    from replica.restore import restore_event

    def send(blocks: list[SealedBlock]) -> None:
        from careledger.kafka.producer import AccessEventProducer
        from careledger.kafka.security import ADMIN
        from careledger.keys import load_source_key

        if settings.require_source_signatures and load_source_key(settings) is None:
            raise RestoreNotLedgered(
                "no source key to sign the restore events: set CARELEDGER_SOURCE_KEY to a "
                "key registered with `careledger source register`"
            )
        try:
            with AccessEventProducer(settings, principal=ADMIN) as producer:
                for block in blocks:
                    producer.send(restore_event(block, by, run_id))
                producer.flush(30.0)
        except CareledgerError as exc:
            raise RestoreNotLedgered(f"the restore events were not delivered: {exc}") from exc

    return send


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (a container without a passwd entry)
        return ""


def command_restore(args: argparse.Namespace, settings: Settings) -> int:
    from careledger.witnesses import load_witnesses
    from replica.checkpoints import read_checkpoints
    from replica.restore import apply_restore, plan_restore

    _quiet_driver(args)
    problem = _check_databases(settings)
    if problem:
        return _fail("restore", problem)
    try:
        keys = load_trusted_keys(settings)
    except CareledgerError as exc:
        return _fail("restore", f"{exc} (CARELEDGER_TRUSTED_KEYS)")
    try:
        witnesses = load_witnesses(settings)
    except CareledgerError as exc:
        return _fail("restore", str(exc))
    by = args.by or _login() or "careledger-restore"
    run_id = str(uuid.uuid4())
    primary, replica = _store(settings, replica=False), _store(settings, replica=True)
    try:
        checkpoints = read_checkpoints(
            settings, list(keys.values()), None if witnesses is None else witnesses.policy
        )
        plan = plan_restore(primary, replica, keys, checkpoints, args.chain)
        restored: list[tuple[str, int]] = []
        if not args.dry_run:
            restored = apply_restore(plan, primary, _ledger(settings, by, run_id))
    except StorageError as exc:
        return _fail("restore", f"{exc} ({_BOTH})")
    except CareledgerError as exc:
        return _fail("restore", str(exc))
    finally:
        primary.backend.close()
        replica.backend.close()
    wanted = len(plan.blocks)
    doc = {
        "run_id": run_id,
        "dry_run": args.dry_run,
        "witnessed": witnesses is not None,
        **plan.to_json(),
        "restored": [{"chain_id": c, "height": h} for c, h in restored],
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_plan(doc, checkpoints.witnessed)
    if not args.dry_run and len(restored) != wanted:
        return _fail("restore", f"{wanted - len(restored)} blocks were not restored exactly")
    return 0 if plan.complete else 1


def _print_plan(doc: dict[str, Any], witnessed: bool) -> None:
    cp = doc["checkpoints"]
    trust = "cosigned by a witness quorum" if witnessed else "signed by the processor key"
    print(f"checkpoints: {cp['kept']} {trust} ({cp['notes']} notes read)")
    for c in doc["chains"]:
        if c["refused"]:
            print(f"{c['chain_id']}: REFUSED {c['code']}: {c['refused']}")
            continue
        what = (
            f"restore heights {c['restore_heights']}" if c["restore_heights"] else "nothing to do"
        )
        print(
            f"{c['chain_id']}: replica {c['replica_size']} blocks, {c['covered']} covered by "
            f"signed checkpoints: {what}"
        )
        if c["replica_rows_altered"]:
            print(f"  the replica's own rows are altered at {c['replica_rows_altered']}")
        if c["not_covered"]:
            print(f"  differences above the signed checkpoints, not restored: {c['not_covered']}")
    verb = "would restore" if doc["dry_run"] else "restored"
    count = doc["blocks_to_restore"] if doc["dry_run"] else len(doc["restored"])
    print(f"{verb} {count} blocks (run {doc['run_id']})")
