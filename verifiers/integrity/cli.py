"""``careledger verify``: verify every chain (or some) and report findings.

Exit status: 0 every verified chain is intact, 1 at least one finding that is not
info (tampering, loss, inconsistency), 2 a usage or infrastructure problem
(ClickHouse unreachable, no trusted key configured, unreadable verifier state).

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
import datetime as dt
import json
import logging
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from careledger.config import Settings
from careledger.keys import load_public_keys, load_trusted_keys
from careledger.storage.backend import ClickHouseBackend, StorageError
from careledger.storage.store import ChainStore
from careledger_core.errors import CareledgerError
from careledger_core.findings import Finding
from careledger_core.signing import TrustedKeys
from verifiers.integrity.checkpoints import (
    CheckpointSnapshot,
    kafka_log,
    merge_known,
    read_checkpoints,
    skipped_snapshot,
)
from verifiers.integrity.fsck import (
    DEFAULT_MAX_FINDINGS,
    ChainReport,
    VerifiedHead,
    VerifyCancelled,
    is_failure,
    verify_chain,
)
from verifiers.integrity.state import StateError, VerifierState, state_for

EXIT_INTACT = 0
EXIT_TAMPERED = 1
EXIT_ERROR = 2

#: Cap on the ``summary`` JSON stored per run (ClickHouse String, but keep rows small).
_SUMMARY_MAX_CHARS = 64_000


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class VerificationRun:
    """One verifier run over some chains: what was checked and what was found."""

    mode: str  # "full", "range", "follow-full", "follow-incremental"
    database: str
    scope: dict[str, Any]
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: dt.datetime = field(default_factory=_utcnow)
    finished_at: dt.datetime | None = None
    reports: list[ChainReport] = field(default_factory=list)
    elapsed_s: float = 0.0
    #: Findings about the checkpoints themselves (forged or forked notes, a checkpoint
    #: that contradicts the verifier state): not about one chain's rows in the store.
    checkpoint_findings: list[Finding] = field(default_factory=list)
    checkpoints: CheckpointSnapshot | None = None
    #: who emitted the access events (ADR 0010): signatures, keys, sequence gaps
    source_findings: list[Finding] = field(default_factory=list)
    sources: dict[str, Any] | None = None

    @property
    def blocks(self) -> int:
        return sum(r.blocks for r in self.reports)

    @property
    def events(self) -> int:
        return sum(r.events for r in self.reports)

    @property
    def failures(self) -> int:
        return (
            sum(r.failures for r in self.reports)
            + sum(1 for f in self.checkpoint_findings if is_failure(f))
            + sum(1 for f in self.source_findings if is_failure(f))
        )

    @property
    def findings_total(self) -> int:
        return (
            sum(r.findings_total for r in self.reports)
            + len(self.checkpoint_findings)
            + len(self.source_findings)
        )

    @property
    def result(self) -> str:
        return "tampered" if self.failures else "intact"

    @property
    def exit_code(self) -> int:
        return EXIT_TAMPERED if self.failures else EXIT_INTACT

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def findings(self) -> Iterable[Finding]:
        yield from self.checkpoint_findings
        for r in self.reports:
            yield from r.findings
        yield from self.source_findings

    def counts(self) -> Counter[str]:
        total: Counter[str] = Counter(
            str(f.code) for f in (*self.checkpoint_findings, *self.source_findings)
        )
        for r in self.reports:
            total.update(r.counts)
        return total

    def checkpoints_json(self) -> dict[str, Any] | None:
        return None if self.checkpoints is None else self.checkpoints.to_json()

    def to_json(self) -> dict[str, Any]:
        finished = self.finished_at or _utcnow()
        return {
            "result": self.result,
            "run_id": self.run_id,
            "mode": self.mode,
            "database": self.database,
            "scope": self.scope,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(finished),
            "elapsed_s": round(self.elapsed_s, 3),
            "totals": {
                "chains": len(self.reports),
                "blocks": self.blocks,
                "events": self.events,
                "findings": self.findings_total,
                "failures": self.failures,
                "events_per_s": round(self.events_per_s, 1),
                "findings_by_code": dict(sorted(self.counts().items())),
            },
            "checkpoints": self.checkpoints_json(),
            "sources": self.sources,
            "chains": [r.summary() for r in self.reports],
            "findings": [f.to_dict() for f in self.findings()],
        }

    def to_row(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "database": self.database,
            "scope": self.scope,
            "elapsed_s": round(self.elapsed_s, 3),
            "findings_by_code": dict(sorted(self.counts().items())),
            "checkpoints": self.checkpoints_json(),
            "chains": [r.summary() for r in self.reports],
        }
        text = json.dumps(summary, sort_keys=True)
        if len(text) > _SUMMARY_MAX_CHARS:
            summary["chains"] = [r.summary() for r in self.reports if r.tampered][:100]
            summary["chains_truncated"] = True
            text = json.dumps(summary, sort_keys=True)[:_SUMMARY_MAX_CHARS]
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "scope": json.dumps(self.scope, sort_keys=True),
            "started_at": self.started_at,
            "finished_at": self.finished_at or _utcnow(),
            "chains": len(self.reports),
            "blocks": self.blocks,
            "events": self.events,
            "findings": self.findings_total,
            "result": self.result,
            "summary": text,
        }


def chains_to_verify(
    store: ChainStore, requested: list[str] | None, known: Mapping[str, VerifiedHead]
) -> list[str]:
    """The requested chains, or every chain in the store plus every chain the
    verifier has verified before (a chain deleted entirely is a truncation)."""
    if requested:
        return list(dict.fromkeys(requested))
    return sorted(set(store.chain_ids()) | set(known))


def run_verification(
    store: ChainStore,
    keys: TrustedKeys,
    *,
    mode: str,
    database: str,
    chains: list[str],
    from_heights: Mapping[str, int] | None = None,
    known: Mapping[str, VerifiedHead] | None = None,
    scope: dict[str, Any] | None = None,
    max_findings: int = DEFAULT_MAX_FINDINGS,
    on_finding: Callable[[Finding], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    checkpoints: CheckpointSnapshot | None = None,
    checkpoint_findings: Iterable[Finding] = (),
) -> VerificationRun:
    """Verify ``chains`` one after the other. Raises ``StorageError`` if the store fails
    and ``VerifyCancelled`` if ``cancel()`` becomes true.

    ``known`` is the head each chain is compared with (see ``checkpoint_heads``);
    ``checkpoint_findings`` are reported with the run (and passed to ``on_finding``)."""
    run = VerificationRun(mode=mode, database=database, scope=scope or {"chains": "all"})
    run.checkpoints = checkpoints
    run.checkpoint_findings = list(checkpoint_findings)
    if on_finding is not None:
        for f in run.checkpoint_findings:
            on_finding(f)
    known = known or {}
    from_heights = from_heights or {}
    started = time.perf_counter()
    for chain in chains:
        if cancel is not None and cancel():
            raise VerifyCancelled()
        report = verify_chain(
            store,
            chain,
            keys,
            from_height=from_heights.get(chain, 0),
            known_head=known.get(chain),
            max_findings=max_findings,
            on_finding=on_finding,
            cancel=cancel,
            kind=store.kind_of(chain),
        )
        run.reports.append(report)
    run.elapsed_s = time.perf_counter() - started
    run.finished_at = _utcnow()
    return run


def checkpoint_heads(
    state_heads: Mapping[str, VerifiedHead],
    snapshot: CheckpointSnapshot,
    requested: list[str] | None,
    *,
    report_disagreement: bool = True,
) -> tuple[dict[str, VerifiedHead], list[Finding]]:
    """The head each chain is compared with (state and checkpoints merged, the higher
    wins) and the findings about the checkpoints, limited to the ``requested`` chains."""
    known, disagreements = merge_known(
        state_heads, snapshot.heads, report_disagreement=report_disagreement
    )
    findings = [*snapshot.findings, *disagreements]
    if requested:
        wanted = set(requested)
        findings = [f for f in findings if f.chain_id in wanted]
    return known, findings


def clean_heads(run: VerificationRun) -> dict[str, VerifiedHead]:
    """Heads of the chains that verified clean: what the state may remember."""
    return {r.chain_id: r.head for r in run.reports if not r.tampered and r.head is not None}


def record_run(store: ChainStore, run: VerificationRun) -> None:
    store.record_verification_run(run.to_row())


# --------------------------------------------------------------------------- output


def format_finding(f: Finding) -> str:
    def show(v: object) -> str:
        return "-" if v is None else str(v)

    return (
        f"{f.code} chain={f.chain_id} height={show(f.height)} index={show(f.event_index)} "
        f"event_id={show(f.event_id)} {f.message}"
    )


def print_human(run: VerificationRun, out: TextIO, *, findings: bool = True) -> None:
    print(
        f"careledger verify: database {run.database}, {len(run.reports)} chain(s), "
        f"run {run.run_id} ({run.mode})",
        file=out,
    )
    if run.checkpoints is not None:
        print(f"  {describe_checkpoints(run.checkpoints)}", file=out)
    if run.sources is not None:
        src = run.sources
        print(
            f"  sources: {src['signed_events']} signed events from {len(src['sources'])} "
            f"source(s), {src['unsigned_events']} unsigned ({src['legacy_unsigned_events']} "
            "chained before the first source key was registered)",
            file=out,
        )
    for r in run.reports:
        head = "-" if r.head is None else str(r.head.height)
        extra = f", {r.uncommitted_events} uncommitted" if r.uncommitted_events else ""
        print(
            f"  {r.chain_id}: {r.blocks} blocks, {r.events} events, head height {head}{extra}: "
            f"{r.result}",
            file=out,
        )
    if findings and run.findings_total:
        print(f"findings ({run.findings_total}):", file=out)
        for f in run.findings():
            print(format_finding(f), file=out)
        dropped = sum(r.findings_dropped for r in run.reports)
        if dropped:
            print(f"... and {dropped} more findings (see --json / --max-findings)", file=out)
    print(
        f"result: {run.result.upper()}: {run.blocks} blocks, {run.events} events, "
        f"{run.failures} failure(s) in {run.elapsed_s:.2f}s ({run.events_per_s:,.0f} events/s)",
        file=out,
    )


# --------------------------------------------------------------------------- command


def describe_checkpoints(cp: CheckpointSnapshot) -> str:
    if cp.status == "skipped":
        return "checkpoints: not read (--no-checkpoints)"
    if cp.status != "ok":
        return f"checkpoints: UNAVAILABLE ({cp.error}); compared with the verifier state only"
    n = cp.counts
    ignored = n.get("untrusted", 0) + n.get("malformed", 0)
    return (
        f"checkpoints: {n.get('notes', 0)} notes in {cp.topic}, {n.get('verified', 0)} "
        f"verified, {ignored} ignored (not signed by a trusted key or malformed), "
        f"{n.get('invalid', 0)} with a bad signature; heads of {n.get('chains', 0)} chain(s)"
    )


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
    parser.add_argument("--max-cycles", type=int, metavar="N", help="--follow: stop after N cycles")
    parser.add_argument(
        "--stop-after", type=float, metavar="SECONDS", help="--follow: stop after this long"
    )


def check_run_sources(run: VerificationRun, store: ChainStore, settings: Settings) -> None:
    """Add the source checks (ADR 0010) over the whole ledger to ``run``."""
    from verifiers.integrity.sources import build_registry, check_sources, read_source_rows

    registrars = {k.key_id: k for k in load_public_keys(settings.trusted_registrar_keys)}
    events, key_events, heartbeats = read_source_rows(store)
    registry, problems = build_registry(key_events, registrars)
    # Events chained before the first source key was registered could not be signed:
    # legacy history, counted but not reported (the registry is ledgered and the block
    # times are signed, so neither can be moved to hide an unsigned event).
    since = settings.source_signatures_since or registry.first_registered_at()
    report = check_sources(
        events,
        registry,
        heartbeats,
        require_signatures=settings.require_source_signatures,
        required_since=since,
    )
    run.source_findings = report.findings
    run.sources = {**report.summary(), "key_event_problems": problems[:50]}


def _error(message: str) -> int:
    print(f"careledger verify: {message}", file=sys.stderr)
    return EXIT_ERROR


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
        state = state_for(settings)
        known = state.load()
    except (StateError, OSError) as exc:
        return _error(str(exc))
    except CareledgerError as exc:
        return _error(exc.message)
    store = ChainStore.for_settings(ClickHouseBackend.from_settings(settings), settings)
    try:
        if args.follow:
            from verifiers.integrity.follow import Follower

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
            )
            return follower.run(max_cycles=args.max_cycles, stop_after_s=args.stop_after)
        return _verify_once(args, settings, store, keys, state, known)
    finally:
        store.backend.close()


def _verify_once(
    args: argparse.Namespace,
    settings: Settings,
    store: ChainStore,
    keys: TrustedKeys,
    state: VerifierState,
    known: dict[str, VerifiedHead],
) -> int:
    db = settings.clickhouse_database
    # Checkpoints first: each names a block that was stored before it was published,
    # so reading the store afterwards can never race ahead of them.
    if args.no_checkpoints:
        snapshot = skipped_snapshot(settings.topic_checkpoints)
    else:
        snapshot = read_checkpoints(settings, keys.values())
        if not snapshot.available:
            print(
                f"careledger verify: warning: checkpoints unavailable ({snapshot.error}); "
                "verifying against the verifier state only",
                file=sys.stderr,
            )
    compare_with, cp_findings = checkpoint_heads(known, snapshot, args.chain)
    try:
        chains = chains_to_verify(store, args.chain, compare_with)
        scope: dict[str, Any] = {"chains": args.chain or "all", "from_height": args.from_height}
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
        )
        if not args.chain and not args.from_height and not args.no_sources:
            check_run_sources(run, store, settings)
    except StorageError as exc:
        return _error(f"cannot read the chains from ClickHouse database {db!r}: {exc.message}")
    code = run.exit_code
    if not args.no_record:
        try:
            record_run(store, run)
        except StorageError as exc:
            print(f"careledger verify: could not record the run: {exc.message}", file=sys.stderr)
            code = max(code, EXIT_TAMPERED if run.failures else EXIT_ERROR)
    try:
        state.save(clean_heads(run))
    except StateError as exc:
        print(f"careledger verify: {exc.message}", file=sys.stderr)
        code = max(code, EXIT_TAMPERED if run.failures else EXIT_ERROR)
    if args.json:
        json.dump(run.to_json(), sys.stdout, sort_keys=False)
        sys.stdout.write("\n")
    else:
        print_human(run, sys.stdout)
    sys.stdout.flush()
    return code
