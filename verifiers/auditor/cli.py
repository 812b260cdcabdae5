"""``careledger audit``: evaluate committed access events, store decisions and alerts.

``careledger audit --from X --to Y`` audits ``[X, Y)`` (event times, UTC) and replaces
that range's decisions and alerts in ClickHouse; running it twice gives the same
decisions and alert ids (alerts already stored unchanged are not published again), even
after back-dated reference records arrived: an event already decided is decided with
the reference knowledge its decision had. ``--reconsider`` decides the range with the
reference data known now instead.
``careledger audit --follow`` evaluates newly committed blocks every
``audit_poll_interval_s`` and publishes new or grown alerts at once.

Exit status: 0 done (alerts or not), 2 usage or infrastructure error.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from typing import Any

from careledger.config import Settings
from careledger.progress import Progress
from careledger.service_health import ServiceHealth
from careledger.storage.backend import ClickHouseBackend, StorageError
from careledger.storage.kinds import reference_topics
from careledger_core.errors import CareledgerError

from .runner import (
    AlertPublisher,
    AuditStore,
    Follower,
    KafkaAlertPublisher,
    audit_range,
    load_salt,
    parse_instant,
)
from .runner.follow import MAX_CYCLE_EVENTS, tune_gc
from .runner.pipeline import FollowPipeline
from .runner.store import SaltError

log = logging.getLogger("careledger.auditor")


def configure_audit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="from_ts", metavar="TIME", help="start (inclusive), UTC")
    parser.add_argument("--to", dest="to_ts", metavar="TIME", help="end (exclusive), UTC")
    parser.add_argument(
        "--follow", action="store_true", help="keep auditing newly committed blocks"
    )
    parser.add_argument("--database", help="ClickHouse database (default: settings)")
    parser.add_argument(
        "--no-publish", action="store_true", help="do not publish alerts to the alerts topic"
    )
    parser.add_argument(
        "--republish",
        action="store_true",
        help="publish every alert of the range again (default: only new or changed ones)",
    )
    parser.add_argument(
        "--reconsider",
        action="store_true",
        help="decide the range again with the reference data known now (default: an "
        "event already decided keeps the knowledge cutoff of its decision, so a replay "
        "reproduces it even after back-dated reference records arrived)",
    )
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="--follow: do not replay the last hours already decided into the rules' "
        "windows when resuming",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.add_argument(
        "--progress",
        action="store_true",
        help="a progress line on stderr even when it is not a terminal (on a terminal: always)",
    )
    parser.add_argument("--max-cycles", type=int, metavar="N", help="--follow: stop after N polls")
    parser.add_argument(
        "--stop-after", type=float, metavar="SECONDS", help="--follow: stop after this long"
    )
    parser.add_argument(
        "--max-cycle-events",
        type=int,
        default=MAX_CYCLE_EVENTS,
        metavar="N",
        help="--follow: a poll reads about N events of a backlog at most, the oldest blocks "
        f"first, so that catching up holds a bounded cycle (default {MAX_CYCLE_EVENTS:,}; "
        "0: the whole backlog at once)",
    )


def _error(message: str) -> int:
    print(f"careledger audit: {message}", file=sys.stderr)
    return 2


def command_audit(args: argparse.Namespace, settings: Settings) -> int:
    if not getattr(args, "verbose", False):
        logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
    if args.database:
        settings = settings.replace(clickhouse_database=args.database)
    try:
        from_ts = parse_instant(args.from_ts) if args.from_ts else None
        to_ts = parse_instant(args.to_ts) if args.to_ts else None
    except ValueError as exc:
        return _error(str(exc))
    if not args.follow and (from_ts is None or to_ts is None):
        return _error("give --from and --to (or --follow)")
    if args.follow and to_ts is not None:
        return _error("--to cannot be combined with --follow")
    if args.follow and args.reconsider:
        return _error("--reconsider re-decides a range: give --from and --to, not --follow")
    if args.max_cycle_events < 0:
        return _error("--max-cycle-events is a number of events, 0 or more")
    if from_ts is not None and to_ts is not None and from_ts >= to_ts:
        return _error("--from must be before --to")
    try:
        salt = load_salt(settings)
    except SaltError as exc:  # empty, short or readable by others (ADR 0026)
        return _error(str(exc))
    except OSError as exc:
        return _error(f"cannot read or create the pseudonym salt: {exc}")
    backend = ClickHouseBackend.from_settings(settings)
    # the sources topic carries the source registry, not data the rules use
    audited = reference_topics(settings) - {settings.topic_sources}
    store = AuditStore(backend, settings.clickhouse_database, audited)
    keystore = None
    if settings.seal_events:  # ADR 0037: opened through the key store, decided on pseudonyms
        from careledger.keystore import open_keystore
        from verifiers.auditor.runner.sealed_store import SealedAuditStore

        try:
            keystore = open_keystore(settings)
        except CareledgerError as exc:
            backend.close()
            return _error(f"a sealed ledger needs its key store: {exc}")
        store = SealedAuditStore(
            backend,
            settings.clickhouse_database,
            audited,
            keystore,
            settings.reference_patient_system,
        )
    publisher: AlertPublisher | None = None
    try:
        if not args.no_publish:
            publisher = KafkaAlertPublisher(settings)
        if args.follow:
            return _follow(args, settings, store, salt, publisher, from_ts)
        assert from_ts is not None and to_ts is not None
        try:
            progress = Progress("audit", enabled=True if args.progress else None)
            result = audit_range(
                store,
                from_ts,
                to_ts,
                salt=salt,
                publisher=publisher,
                republish=args.republish,
                reconsider=args.reconsider,
                progress=lambda n: progress.update(f"{n:,} accesses read and decided"),
            )
            progress.done()
        except StorageError as exc:
            return _error(f"{exc.message} (run again; --republish if alerts were not delivered)")
        summary = result.to_json()
        if keystore is not None:  # rows that did not open (erased, or verify's findings)
            summary["sealed_not_opened"] = getattr(store, "unopened", 0)
        if args.json:
            print(json.dumps(summary, sort_keys=True))
        else:
            print(
                f"careledger audit {from_ts} .. {to_ts}: {result.decisions} decisions "
                f"({result.explained} explained, {result.flagged} flagged), "
                f"{result.alerts} alerts ({result.published} published) "
                f"in {result.elapsed_s:.2f}s"
            )
            if result.reconsider:
                print(f"  reference data: as known at {result.reference_known_at} (reconsidered)")
            else:
                print(
                    f"  reference data: {result.kept_knowledge} decisions as their stored "
                    f"decision knew it, the others as known at {result.reference_known_at}"
                )
            for rule, n in sorted(result.by_rule.items()):
                print(f"  {rule}: {n}")
        return 0
    finally:
        backend.close()
        if keystore is not None:
            keystore.close()


def _follow(
    args: argparse.Namespace,
    settings: Settings,
    store: AuditStore,
    salt: str,
    publisher: AlertPublisher | None,
    from_ts: str | None,
) -> int:
    tune_gc()
    follower = Follower(
        store,
        salt=salt,
        publisher=publisher,
        from_ts=from_ts,
        warmup=not args.no_warmup,
        max_cycle_events=args.max_cycle_events or None,
    )
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def handler(signum: int, _frame: Any) -> None:
            stop.set()

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    deadline = None if args.stop_after is None else time.monotonic() + args.stop_after
    # the writer thread inserts over a connection of its own (ADR 0029)
    writer_backend = ClickHouseBackend.from_settings(settings)
    writer = AuditStore(writer_backend, store.db, store.reference_topics)
    interval = settings.audit_poll_interval_s
    pipeline = FollowPipeline(follower, interval_s=interval, writer_store=writer)
    ok = True
    seen: dict[str, Any] = {"at": time.monotonic(), "decisions": 0, "error": None}

    def snapshot() -> dict[str, Any]:
        return {
            "cycles_total": follower.cycles,
            "decisions_total": seen["decisions"],
            "alerts_sent_total": follower.alerts_sent,
            "seconds_since_cycle": round(time.monotonic() - seen["at"], 1),
            "failing": seen["error"] is not None,
        }

    def healthy() -> tuple[bool, str]:
        if seen["error"] is not None:
            return False, str(seen["error"])
        idle = time.monotonic() - seen["at"]
        if idle > max(60.0, 5 * interval):
            return False, f"no audit cycle for {idle:.0f} s"
        return True, f"{follower.cycles} cycles"

    health = ServiceHealth.for_settings(settings, "auditor", snapshot, healthy)
    try:
        while not stop.is_set():
            if not pipeline.started:
                try:
                    pipeline.start()
                except StorageError as exc:
                    ok = False
                    seen["error"] = f"cannot start: {exc.message}"
                    log.error("audit follow cannot start: %s (retrying)", exc.message)
                    stop.wait(interval)
                    continue
            wait = interval
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait = min(wait, left)
            try:
                n = pipeline.step(wait)
                ok = pipeline.read_error is None and pipeline.write_error is None
                seen["error"] = pipeline.read_error or pipeline.write_error
                seen["at"], seen["decisions"] = time.monotonic(), seen["decisions"] + n
            except StorageError as exc:
                ok = False
                seen["error"] = exc.message
                log.error("audit cycle %d failed: %s (retrying)", follower.cycles, exc.message)
                n = 0
                stop.wait(interval)
            if n and args.json:
                print(
                    json.dumps(
                        {"cycle": follower.cycles, "decisions": n, "alerts": follower.alerts_sent}
                    ),
                    flush=True,
                )
            elif n:
                print(
                    f"cycle {follower.cycles}: {n} decisions, {follower.alerts_sent} alerts so far",
                    flush=True,
                )
            if args.max_cycles is not None and follower.cycles >= args.max_cycles:
                break
    finally:
        if health is not None:
            health.stop()
        for s, old in previous.items():
            signal.signal(s, old)
        if not pipeline.close():
            ok = False
            log.error("some decided cycles were not stored: the next run decides them again")
        if publisher is not None:
            publisher.flush(10.0)
        writer_backend.close()
    return 0 if ok else 2
