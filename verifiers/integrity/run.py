"""One verification pass over the chains, its result and how it is shown and recorded.

Shared by the one-shot ``careledger verify`` (:mod:`verifiers.integrity.cli`) and its
follow mode (:mod:`verifiers.integrity.follow`), so that neither imports the other:
``VerificationRun`` (what was checked and found, and the exit code it means),
``run_verification`` (fsck over the chosen chains against the known heads),
``checkpoint_heads`` (the heads to compare with: verifier state merged with the signed
checkpoints), the source checks of ADR 0010 over the whole ledger, recording a run in
``verification_runs`` and the human-readable report.

Exit status: 0 every verified chain is intact (and, with a witness policy, witnessed or
pending), 1 at least one finding that is not info, 2 a usage or infrastructure problem
(with a witness policy: also when no cosignature could be read at all, "cannot tell"),
3 intact as far as the store and the log's signatures go, but a block older than the
policy's ``max_age_s`` is not covered by a quorum-cosigned checkpoint ("not yet
witnessed", ADR 0018). Precedence: tampered, cannot tell, not yet witnessed, intact.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from careledger.config import Settings
from careledger.keys import KeyFileError, load_public_keys
from careledger.storage.kinds import SEALED, SEALED_RAW, SEALED_REFERENCE
from careledger.storage.store import ChainStore
from careledger.witnesses import WitnessSet
from careledger_core.findings import Finding, FindingCode
from careledger_core.signing import TrustedKeys
from verifiers.integrity.checkpoints import (
    CheckpointSnapshot,
    merge_known,
)
from verifiers.integrity.fsck import (
    DEFAULT_MAX_FINDINGS,
    ChainReport,
    VerifiedHead,
    VerifyCancelled,
    is_failure,
    verify_chain,
)
from verifiers.integrity.parallel import ChainPool
from verifiers.integrity.processor_keys import check_processor_keys, read_block_keys
from verifiers.integrity.sources import (
    build_registry,
    check_registrars,
    check_sources,
    read_source_rows,
)
from verifiers.integrity.trees import check_trees
from verifiers.integrity.witnessing import WitnessingReport, assess_witnessing

EXIT_INTACT = 0
EXIT_TAMPERED = 1
EXIT_ERROR = 2
EXIT_NOT_WITNESSED = 3
#: the JSON ``result`` of each exit status
RESULTS = {
    EXIT_INTACT: "intact",
    EXIT_TAMPERED: "tampered",
    EXIT_ERROR: "cannot_tell",
    EXIT_NOT_WITNESSED: "not_witnessed",
}

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
    #: a sealed ledger's events opened with the key store (ADR 0037); None: not sealed
    sealed: dict[str, Any] | None = None
    sealed_findings: list[Finding] = field(default_factory=list)
    #: rows of the store that belong to no chain (a chain id no block can carry)
    store_findings: list[Finding] = field(default_factory=list)
    #: the witness policy's verdict (ADR 0018); None without a policy
    witnessing: WitnessingReport | None = None
    #: why the witness policy could not be applied at all ("cannot tell")
    witnessing_unknown: str | None = None

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
            + sum(1 for f in self.store_findings if is_failure(f))
            + sum(1 for f in self.sealed_findings if is_failure(f))
        )

    @property
    def findings_total(self) -> int:
        return (
            sum(r.findings_total for r in self.reports)
            + len(self.checkpoint_findings)
            + len(self.source_findings)
            + len(self.store_findings)
            + len(self.sealed_findings)
        )

    @property
    def result(self) -> str:
        return RESULTS[self.exit_code]

    @property
    def exit_code(self) -> int:
        if self.failures:
            return EXIT_TAMPERED
        if self.witnessing_unknown is not None:
            return EXIT_ERROR
        if self.witnessing is not None and self.witnessing.not_witnessed:
            return EXIT_NOT_WITNESSED
        return EXIT_INTACT

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def findings(self) -> Iterable[Finding]:
        yield from self.checkpoint_findings
        yield from self.store_findings
        for r in self.reports:
            yield from r.findings
        yield from self.source_findings
        yield from self.sealed_findings

    def counts(self) -> Counter[str]:
        total: Counter[str] = Counter(
            str(f.code)
            for f in (
                *self.checkpoint_findings,
                *self.source_findings,
                *self.store_findings,
                *self.sealed_findings,
            )
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
            "witnessing": self.witnessing_json(),
            "sources": self.sources,
            "sealed": self.sealed,
            "chains": [r.summary() for r in self.reports],
            "findings": [f.to_dict() for f in self.findings()],
        }

    def witnessing_json(self) -> dict[str, Any]:
        if self.witnessing_unknown is not None:
            return {"status": "cannot_tell", "reason": self.witnessing_unknown}
        if self.witnessing is None:
            return {"status": "no_policy"}
        return self.witnessing.to_json()

    def to_row(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "database": self.database,
            "scope": self.scope,
            "elapsed_s": round(self.elapsed_s, 3),
            "findings_by_code": dict(sorted(self.counts().items())),
            "checkpoints": self.checkpoints_json(),
            "witnessing": (
                f"witnesses: CANNOT TELL: {self.witnessing_unknown}"
                if self.witnessing_unknown is not None
                else None
                if self.witnessing is None
                else self.witnessing.describe()
            ),
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


def census_findings(store: ChainStore) -> list[Finding]:
    """Rows under a chain id no block header can carry: they belong to no chain (and a
    reader that decodes the id may take them for another chain's)."""
    out: list[Finding] = []
    for table, raw, rows in store.chain_id_census()[1]:
        header_table = table == "blocks"
        out.append(
            Finding.of(
                FindingCode.BLOCK_HEADER_INVALID if header_table else FindingCode.EVENT_UNEXPECTED,
                raw.decode("utf-8", "backslashreplace")[:300],
                f"{rows} row(s) of {table} under a chain id that no block can carry "
                "(not printable ASCII of 1..256 characters): they belong to no chain",
                details={"table": table, "rows": rows, "chain_id_hex": raw[:300].hex()},
            )
        )
    return out


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
    census: bool = False,
    processes: int = 1,
    on_chain: Callable[[ChainReport], None] | None = None,
    open_store: Callable[[], ChainStore] | None = None,
    alongside: Callable[[VerificationRun], None] | None = None,
) -> VerificationRun:
    """Verify ``chains`` one after the other. Raises ``StorageError`` if the store fails
    and ``VerifyCancelled`` if ``cancel()`` becomes true.

    ``known`` is the head each chain is compared with (see ``checkpoint_heads``);
    ``checkpoint_findings`` are reported with the run (and passed to ``on_finding``).
    ``census``: also report rows stored under a chain id no block can carry (the whole
    store is being verified, not some chains).

    ``processes`` > 1 with ``open_store`` (a picklable opener of the same store):
    the chains are verified in that many worker processes (``parallel``), each with
    its own connection, and the reports kept in chain order (the findings are those of
    the sequential run; ``on_finding`` then sees each chain's kept findings once its
    report is in, and ``cancel`` is not polled: pass ``processes=1`` with either).
    ``alongside(run)`` is called once the chains are under way (in parallel: while the
    workers verify them; else after them), for checks over the whole ledger."""
    run = VerificationRun(mode=mode, database=database, scope=scope or {"chains": "all"})
    run.checkpoints = checkpoints
    run.checkpoint_findings = list(checkpoint_findings)
    if census:
        run.store_findings = census_findings(store)
    if on_finding is not None:
        for f in (*run.checkpoint_findings, *run.store_findings):
            on_finding(f)
    known = known or {}
    from_heights = from_heights or {}
    started = time.perf_counter()
    workers = min(processes, len(chains))
    if workers > 1 and open_store is not None and cancel is None:
        pool = ChainPool(workers, open_store, keys)
        try:
            pool.submit(chains, from_heights, known, max_findings)
            if alongside is not None:
                alongside(run)
            for report in pool.reports():
                run.reports.append(report)
                if on_chain is not None:
                    on_chain(report)
                if on_finding is not None:
                    for f in report.findings:
                        on_finding(f)
        finally:
            pool.close()
        chains_done = True
    else:
        chains_done = False
    for chain in [] if chains_done else chains:
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
        if on_chain is not None:
            on_chain(report)
    if not chains_done and alongside is not None:
        alongside(run)
    if checkpoints is not None and checkpoints.trees:
        # The signed roots against the stored trees (ADR 0012), whole chains only.
        whole = [c for c in chains if not from_heights.get(c)]
        trees = check_trees(store, checkpoints.trees, whole, cancel=cancel)
        checkpoints.tree_summary = trees.summary()
        run.checkpoint_findings.extend(trees.findings)
        if on_finding is not None:
            for f in trees.findings:
                on_finding(f)
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


def assess_run(run: VerificationRun, store: ChainStore, witnesses: WitnessSet | None) -> None:
    """Apply the witness policy to ``run`` (ADR 0018): which chains a quorum-cosigned
    checkpoint covers. "Cannot tell" when no cosignature could be read at all (neither
    the checkpoints topic nor any witness). Raises ``StorageError``."""
    if witnesses is None:
        return
    snapshot = run.checkpoints
    topic_read = snapshot is not None and snapshot.available
    errors = {} if snapshot is None else snapshot.witness_errors
    asked = {w.name for w in witnesses.reachable}
    if not topic_read and not (asked - set(errors)):
        why = "the checkpoints topic was not read" + (
            f" and no witness answered ({', '.join(sorted(errors))})" if asked else ""
        )
        run.witnessing_unknown = f"{why}: no cosigned checkpoint to vouch with"
        return
    sizes = {
        r.chain_id: (r.head.height + 1 if r.head is not None else r.blocks) for r in run.reports
    }
    run.witnessing = assess_witnessing(
        store,
        witnesses,
        sizes,
        {} if snapshot is None else snapshot.witnessed,
        errors=errors,
    )


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
    if run.witnessing_unknown is not None:
        print(f"  witnesses: CANNOT TELL: {run.witnessing_unknown}", file=out)
    elif run.witnessing is not None:
        print(f"  {run.witnessing.describe()}", file=out)
    else:
        print(
            "  witnesses: no policy (witnesses_file unset): not vouched for by witnesses", file=out
        )
    if run.sources is not None:
        src = run.sources
        print(
            f"  sources: {src['signed_events']} signed events from {len(src['sources'])} "
            f"source(s), {src['unsigned_events']} unsigned ({src['legacy_unsigned_events']} "
            "chained before the first source key was registered)",
            file=out,
        )
    if run.sealed is not None:
        sealed = run.sealed
        if "not_opened" in sealed:
            print(
                f"  sealed parts: NOT OPENED ({sealed['not_opened']}): only the signed "
                "documents were checked",
                file=out,
            )
        else:
            print(
                f"  sealed parts: {sealed['opened']} events and "
                f"{sealed['references_opened']} reference records opened with the key "
                f"store; {sealed['erased']} events and {sealed['references_erased']} "
                "reference records erased (their keys destroyed by ledgered erasures)",
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
        f"result: {run.result.upper().replace('_', ' ')}: {run.blocks} blocks, "
        f"{run.events} events, "
        f"{run.failures} failure(s) in {run.elapsed_s:.2f}s ({run.events_per_s:,.0f} events/s)",
        file=out,
    )


# --------------------------------------------------------------------------- command


def describe_checkpoints(cp: CheckpointSnapshot) -> str:
    if cp.status == "skipped":
        return "checkpoints: not read (--no-checkpoints)"
    if cp.status not in ("ok", "incomplete"):
        return f"checkpoints: UNAVAILABLE ({cp.error}); compared with the verifier state only"
    n = cp.counts
    ignored = n.get("untrusted", 0) + n.get("malformed", 0)
    missing = (
        f"INCOMPLETE: {n.get('missing', 0)} sign(s) of deleted records; "
        if cp.status == "incomplete"
        else ""
    )
    return (
        f"checkpoints: {missing}{n.get('notes', 0)} notes in {cp.topic}, "
        f"{n.get('verified', 0)} verified, {ignored} ignored (not signed by a trusted key or "
        f"malformed), {n.get('invalid', 0)} with a bad signature, {n.get('remembered', 0)} "
        f"remembered; heads of {n.get('chains', 0)} chain(s)"
    )


def check_run_sealed(
    run: VerificationRun, store: ChainStore, settings: Settings, chains: list[str]
) -> None:
    """On a sealed ledger (ADR 0037): open every sealed part of ``chains`` with the key
    store. Without a usable key store, the run says what it could not open (a partner's
    verifier checks the signed documents only)."""
    from careledger.erasure import erased_key_ids
    from careledger.keystore import KeyStoreError, open_keystore
    from verifiers.integrity.duplicates import check_duplicate_events
    from verifiers.integrity.sealed import SealedReport, check_sealed, sealed_opener

    sealed_chains = [c for c in chains if store.kind_of(c) is SEALED]
    reference_chains = [c for c in chains if store.kind_of(c) is SEALED_REFERENCE]
    raw_chains = [c for c in chains if store.kind_of(c) is SEALED_RAW]
    try:
        keystore = open_keystore(settings)
    except (KeyStoreError, KeyFileError) as exc:
        run.sealed = SealedReport(not_opened=exc.message).summary()
        return
    registrars = load_public_keys(settings.trusted_registrar_keys)
    erased, not_honoured = erased_key_ids(store.backend, store.db, registrars)
    try:
        with keystore:
            report = check_sealed(
                store,
                keystore,
                sealed_chains,
                erased,
                reference_chains=reference_chains,
                patient_system=settings.reference_patient_system,
                raw_chains=raw_chains,
            )
            # ADR 0023's duplicates, compared opened (their documents differ by salt)
            duplicates = check_duplicate_events(store, open_sealed=sealed_opener(keystore))
    except KeyStoreError as exc:
        run.sealed = SealedReport(not_opened=exc.message).summary()
        return
    run.sealed_findings = report.findings + duplicates
    run.sealed = report.summary()
    if not_honoured:
        # erasure records no trusted registrar signed: their keys count as missing
        run.sealed["erasures_not_honoured"] = not_honoured


def check_run_sources(run: VerificationRun, store: ChainStore, settings: Settings) -> None:
    """Add the source checks (ADR 0010) over the whole ledger to ``run``.

    Raises ``RegistrarConfigError`` (a configuration problem, never a finding) when the
    ledger has source key registrations and no trusted registrar key verifies any of
    them, and ``KeyFileError`` when a registrar key file cannot be read."""
    registrars = {k.key_id: k for k in load_public_keys(settings.trusted_registrar_keys)}
    events, key_events, heartbeats = read_source_rows(store)
    registry, problems = build_registry(key_events, registrars)
    check_registrars(key_events, registry, registrars)
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
        max_skew_s=settings.source_max_skew_s,
    )
    # ADR 0015: blocks signed by a processor key a ledgered rotation had retired
    report.findings += check_processor_keys(read_block_keys(store), registry, settings.origin)
    run.source_findings = report.findings
    run.sources = {**report.summary(), "key_event_problems": problems[:50]}
