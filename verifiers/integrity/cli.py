"""``careledger verify``: verify every chain (or some) and report findings.

Exit status: 0 every verified chain is intact, 1 at least one finding that is not
info (tampering, loss, inconsistency), 2 a usage, configuration or infrastructure
problem: ClickHouse unreachable, no trusted key configured, unreadable verifier state,
a ``--chain`` the store, the state and the checkpoints do not know, or source checks
(ADR 0010) without a trusted registrar key that verifies the ledgered key registrations
(the message names ``trusted_registrar_keys`` / ``CARELEDGER_TRUSTED_REGISTRAR_KEYS`` and
``--no-sources``): a configuration problem is never reported as tampering.

Trusted public keys come from the verifier's configuration (``CARELEDGER_TRUSTED_KEYS``
or ``--trusted-key``), never from the store. Each run is recorded in the
``verification_runs`` table (unless ``--no-record``); the verifier's state
directory remembers the head of each chain that verified clean, so a later run
notices a truncated or rewritten chain. Before reading the store the verifier reads
the signed checkpoints the processor published to Kafka (``verifiers.integrity.checkpoints``),
so even a first run with an empty state directory notices a chain that is shorter
than, or differs from, a published head. ``--no-checkpoints`` skips Kafka (offline
verification); if Kafka cannot be reached the run goes on without checkpoints, warns
on stderr and says ``"checkpoints": {"status": "unavailable", ...}`` in ``--json``.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import logging
import sys
from collections.abc import Collection
from typing import Any

from careledger.config import Settings
from careledger.keys import KeyFileError, load_public_keys, load_trusted_keys
from careledger.progress import Progress
from careledger.storage.backend import ClickHouseBackend, StorageError
from careledger.storage.compare import compare
from careledger.storage.store import ChainStore
from careledger.witnesses import WitnessesConfigError, WitnessSet, load_witnesses
from careledger_core.errors import CareledgerError
from careledger_core.findings import Finding, FindingCode
from careledger_core.signing import TrustedKeys
from verifiers.integrity.checkpoints import (
    kafka_log,
    read_checkpoints,
    skipped_snapshot,
)
from verifiers.integrity.duplicates import check_duplicate_events
from verifiers.integrity.follow import Follower
from verifiers.integrity.fsck import (
    DEFAULT_MAX_FINDINGS,
    VerifiedHead,
)
from verifiers.integrity.parallel import default_processes
from verifiers.integrity.run import (
    EXIT_ERROR,
    EXIT_TAMPERED,
    VerificationRun,
    assess_run,
    chains_to_verify,
    check_run_sealed,
    check_run_sources,
    checkpoint_heads,
    clean_heads,
    print_human,
    record_run,
    run_verification,
)
from verifiers.integrity.sources import (
    REGISTRAR_SETTING,
    RegistrarConfigError,
    has_source_records,
    missing_registrar_message,
)
from verifiers.integrity.state import StateError, VerifierState, state_for


def configure_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chain",
        action="append",
        metavar="CHAIN",
        help="verify only this chain id (repeatable; default: every chain)",
    )
    parser.add_argument(
        "--from-height",
        type=int,
        default=0,
        metavar="N",
        help="start at block N (linked to block N-1; default 0)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="one JSON document on stdout (run summary, chains, findings); "
        "with --follow one document per cycle, one per line",
    )
    parser.add_argument(
        "--progress",
        action="store_true",
        help="a progress line on stderr even when it is not a terminal (on a terminal: always)",
    )
    parser.add_argument(
        "--follow",
        action="store_true",
        help="keep verifying new blocks as they land, re-verify all history periodically, "
        "publish findings to the alerts topic",
    )
    parser.add_argument(
        "--no-record", action="store_true", help="do not write to the verification_runs table"
    )
    parser.add_argument(
        "--no-checkpoints",
        action="store_true",
        help="do not read the signed checkpoints from Kafka (offline verification: a "
        "truncation is then only noticed against the verifier state)",
    )
    parser.add_argument("--database", help="ClickHouse database (default: settings)")
    parser.add_argument(
        "--trusted-key",
        action="append",
        metavar="KEY",
        help="trusted public key: 'ed25519:<base64>' or a key file (repeatable; "
        "replaces CARELEDGER_TRUSTED_KEYS)",
    )
    parser.add_argument(
        "--max-findings",
        type=int,
        default=DEFAULT_MAX_FINDINGS,
        metavar="N",
        help=f"findings listed per chain (all are counted; default {DEFAULT_MAX_FINDINGS})",
    )
    parser.add_argument(
        "--no-sources",
        action="store_true",
        help="skip the source checks (signatures, keys, sequence gaps; ADR 0010)",
    )
    parser.add_argument(
        "--replica",
        action="store_true",
        help="also compare the primary with the replica database (replica_clickhouse_*, "
        "ADR 0017): every row that differs or is missing is a REPLICA_MISMATCH finding",
    )
    parser.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="verify the chains in N worker processes, each with its own ClickHouse "
        "connection (default: one per chain, at most one per core; --follow: 1)",
    )
    parser.add_argument("--max-cycles", type=int, metavar="N", help="--follow: stop after N cycles")
    parser.add_argument(
        "--stop-after", type=float, metavar="SECONDS", help="--follow: stop after this long"
    )


def _error(message: str) -> int:
    print(f"careledger verify: {message}", file=sys.stderr)
    return EXIT_ERROR


def _source_checks(args: argparse.Namespace) -> bool:
    """The source checks run on one-shot runs over the whole ledger."""
    return not (args.no_sources or args.chain or args.from_height or args.follow)


def unknown_chain_error(
    requested: list[str] | None, present: Collection[str], database: str
) -> str | None:
    """The one-line error for a ``--chain`` that names no chain of the store, the
    verifier state or the checkpoints (a typo must not verify "intact"), else None."""
    for chain in requested or ():
        if chain in present:
            continue
        close = difflib.get_close_matches(chain, sorted(present), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return (
            f"unknown chain {chain!r}: no block, record, verified head or checkpoint of "
            f"database {database!r} names it ({len(present)} chain(s) there){hint}"
        )
    return None


def load_keys(args: argparse.Namespace, settings: Settings) -> TrustedKeys:
    if args.trusted_key:
        keys = load_public_keys(args.trusted_key)
        if not keys:
            raise _NoKeys("--trusted-key names no key")
        return TrustedKeys(keys)
    return load_trusted_keys(settings)


class _NoKeys(CareledgerError):
    code = "KEY_FILE"


def command_verify(args: argparse.Namespace, settings: Settings) -> int:
    if not getattr(args, "verbose", False):
        # clickhouse-driver logs each failed connection attempt with a traceback; the
        # error we print says it once, plainly.
        logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
        kafka_log.setLevel(logging.CRITICAL)
    if args.from_height < 0:
        return _error("--from-height must be >= 0")
    if args.max_findings < 0:
        return _error("--max-findings must be >= 0")
    if getattr(args, "processes", None) is not None and args.processes < 1:
        return _error("--processes must be >= 1")
    if args.follow and args.from_height:
        return _error("--from-height cannot be combined with --follow")
    if (args.max_cycles is not None or args.stop_after is not None) and not args.follow:
        return _error("--max-cycles and --stop-after only apply to --follow")
    if args.database:
        settings = settings.replace(clickhouse_database=args.database)
    try:
        keys = load_keys(args, settings)
    except CareledgerError as exc:
        return _error(f"no usable trusted key: {exc.message}")
    try:
        witnesses = load_witnesses(settings)
    except WitnessesConfigError as exc:
        return _error(exc.message)
    registrars = 0
    if _source_checks(args):
        try:
            registrars = len(load_public_keys(settings.trusted_registrar_keys))
        except CareledgerError as exc:
            return _error(f"{REGISTRAR_SETTING}: {exc.message}")
        if not registrars and settings.require_source_signatures:
            return _error(missing_registrar_message())
    try:
        state = state_for(settings)
        known = state.load()
    except (StateError, OSError) as exc:
        return _error(str(exc))
    except CareledgerError as exc:
        return _error(exc.message)
    store = ChainStore.for_settings(ClickHouseBackend.from_settings(settings, "reader"), settings)
    try:
        if args.follow and args.chain:
            # as for one run: the store, the state and the signed checkpoints (a chain
            # wiped from the store is a truncation, not an unknown chain)
            heads = dict(known)
            if not args.no_checkpoints:
                try:
                    snapshot = read_checkpoints(settings, keys.values(), witnesses=witnesses)
                except StateError as exc:
                    return _error(exc.message)
                heads = checkpoint_heads(known, snapshot, args.chain)[0]
            try:
                present = set(store.chain_ids()) | set(heads)
            except StorageError as exc:
                return _error(
                    f"cannot read ClickHouse database {settings.clickhouse_database!r}: "
                    f"{exc.message}"
                )
            unknown = unknown_chain_error(args.chain, present, settings.clickhouse_database)
            if unknown:
                return _error(unknown)
        if args.follow:
            recorder = (
                None
                if args.no_record
                else ChainStore.for_settings(ClickHouseBackend.from_settings(settings), settings)
            )
            follower = Follower(
                settings,
                store,
                keys,
                state,
                chains=args.chain,
                record=not args.no_record,
                json_output=args.json,
                max_findings=args.max_findings,
                checkpoints=not args.no_checkpoints,
                witnesses=witnesses,
                recorder=recorder,
            )
            try:
                return follower.run(max_cycles=args.max_cycles, stop_after_s=args.stop_after)
            finally:
                if recorder is not None:
                    recorder.backend.close()
        return _verify_once(args, settings, store, keys, state, known, registrars, witnesses)
    finally:
        store.backend.close()


def open_chain_store(settings: Settings) -> ChainStore:
    """A store of its own (a worker process's connection) on ``settings``' database."""
    return ChainStore.for_settings(ClickHouseBackend.from_settings(settings, "reader"), settings)


def replica_findings(
    store: ChainStore, settings: Settings, chains: list[str] | None
) -> list[Finding]:
    """The primary against the replica database (``careledger.storage.compare``): each
    difference is a finding at its place. Which side is right is ``careledger restore``'s
    question (it checks the replica against the signed checkpoints); verify says where
    they part."""
    replica = ChainStore.replica_for_settings(settings)
    try:
        result = compare(store, replica, chains)
    finally:
        replica.backend.close()
    return [
        Finding.of(
            FindingCode.REPLICA_MISMATCH,
            d.chain_id,
            f"{d.describe()} (replica {settings.replica_clickhouse_database}); "
            "careledger restore repairs the primary if the replica matches the checkpoints",
            height=d.height,
            event_index=d.idx,
            details={"replica": settings.replica_clickhouse_database, **d.to_json()},
        )
        for d in result.differences
    ]


def _verify_once(
    args: argparse.Namespace,
    settings: Settings,
    store: ChainStore,
    keys: TrustedKeys,
    state: VerifierState,
    known: dict[str, VerifiedHead],
    registrars: int = 0,
    witnesses: WitnessSet | None = None,
) -> int:
    db = settings.clickhouse_database
    sources = _source_checks(args)
    # Checkpoints first: each names a block that was stored before it was published,
    # so reading the store afterwards can never race ahead of them.
    if args.no_checkpoints:
        snapshot = skipped_snapshot(settings.topic_checkpoints)
    else:
        try:
            snapshot = read_checkpoints(settings, keys.values(), witnesses=witnesses)
        except StateError as exc:
            return _error(exc.message)
        if not snapshot.available:
            print(
                f"careledger verify: warning: checkpoints unavailable ({snapshot.error}); "
                "verifying against the verifier state only",
                file=sys.stderr,
            )
    compare_with, cp_findings = checkpoint_heads(known, snapshot, args.chain)
    try:
        if args.chain:
            present = set(store.chain_ids()) | set(compare_with)
            unknown = unknown_chain_error(args.chain, present, db)
            if unknown:
                return _error(unknown)
        if sources and not registrars and has_source_records(store):
            # legacy mode (signatures not required), yet signed events or key
            # registrations to check: without a registrar key they would all look forged
            return _error(missing_registrar_message())
        chains = chains_to_verify(store, args.chain, compare_with)
        scope: dict[str, Any] = {"chains": args.chain or "all", "from_height": args.from_height}
        source_error: list[RegistrarConfigError | KeyFileError] = []

        def source_checks(run: VerificationRun) -> None:
            if settings.seal_events:  # ADR 0037: open the sealed parts with the key store
                check_run_sealed(run, store, settings, chains)
            if not sources:
                return
            try:
                check_run_sources(run, store, settings)
            except (RegistrarConfigError, KeyFileError) as exc:
                source_error.append(exc)
            # ADR 0023: the same record chained twice is reported (info, not tampering)
            run.source_findings.extend(check_duplicate_events(store))

        processes = getattr(args, "processes", None)
        progress = Progress("verify", enabled=True if getattr(args, "progress", False) else None)
        done_chains: list[int] = [0, 0]  # chains, events

        def on_chain(report: Any) -> None:
            done_chains[0] += 1
            done_chains[1] += report.events
            progress.update(
                f"{done_chains[0]}/{len(chains)} chains, {done_chains[1]:,} events verified",
                force=done_chains[0] == len(chains),
            )

        run = run_verification(
            store,
            keys,
            mode="range" if args.from_height else "full",
            database=db,
            chains=chains,
            from_heights=dict.fromkeys(chains, args.from_height),
            known=compare_with,
            scope=scope,
            max_findings=args.max_findings,
            checkpoints=snapshot,
            checkpoint_findings=cp_findings,
            census=not args.chain,
            processes=default_processes(len(chains)) if processes is None else processes,
            open_store=functools.partial(open_chain_store, settings),
            alongside=source_checks,
            on_chain=on_chain,
        )
        progress.done()
        for problem in source_error:
            if not run.failures:
                return _error(problem.message)
            # the store is tampered with whatever the registrar: say so (exit 1)
            print(f"careledger verify: source checks not run: {problem.message}", file=sys.stderr)
        assess_run(run, store, witnesses)
    except StorageError as exc:
        return _error(f"cannot read the chains from ClickHouse database {db!r}: {exc.message}")
    if getattr(args, "replica", False):
        try:
            run.store_findings.extend(replica_findings(store, settings, args.chain or None))
        except StorageError as exc:
            return _error(
                f"cannot read the replica database {settings.replica_clickhouse_database!r} at "
                f"{settings.replica_clickhouse_host}:{settings.replica_clickhouse_port} "
                f"(replica_clickhouse_*): {exc.message}"
            )
    code = run.exit_code
    if not args.no_record:
        # the ledger is read as the read-only reader; the run's record is the one write
        # (``verification_runs``), made as the writer (ADR 0032; --no-record without it)
        recorder = ChainStore.for_settings(ClickHouseBackend.from_settings(settings), settings)
        try:
            record_run(recorder, run)
        except StorageError as exc:
            print(f"careledger verify: could not record the run: {exc.message}", file=sys.stderr)
            code = EXIT_TAMPERED if run.failures else EXIT_ERROR
        finally:
            recorder.backend.close()
    try:
        state.save(clean_heads(run))
    except StateError as exc:
        print(f"careledger verify: {exc.message}", file=sys.stderr)
        code = EXIT_TAMPERED if run.failures else EXIT_ERROR
    if args.json:
        json.dump(run.to_json(), sys.stdout, sort_keys=False)
        sys.stdout.write("\n")
    else:
        print_human(run, sys.stdout)
    sys.stdout.flush()
    return code
