"""``verify`` for the auditor's rows (ADR 0016): decisions, alerts and alert status
changes checked against the ledger, as ``Finding``s in the integrity checks' shape.

* **Status changes** (``status_records.reconcile``): every ``alert_status`` row against
  the ledgered status records, both ways.
* **Decisions**: every audit run named by the rows is replayed with the auditor's own
  code over the ledger as that run read it (``replay``), and its rows compared with the
  replay's (``check``): a rewritten, deleted or forged decision is a finding at the
  event's place in the ledger.
* **Alerts**: every stored alert against the alert the replayed run raised at that time
  (or regrouped from its accesses' current decisions), and every raised alert that is gone.
* **Consent decisions** (ADR 0024, given ``consent_chains``): every answer of the consent
  decision point against the signed event that ledgers its hash, and replayed over the
  consents as of the position it names (``decision_point.replay``):
  ``CONSENT_DECISION_*`` findings.

``verify_audit(backend, database, ...)`` returns an ``AuditVerification``: findings,
a summary, and, when it cannot tell (no pseudonym salt to recompute patient references,
status changes not chained while the processor chained nothing since), why.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from careledger.storage.backend import SqlBackend
from careledger.storage.migrations import check_identifier
from careledger_core.findings import Finding, FindingCode, Severity

from .._time import US_PER_MINUTE, ts_to_us, us_to_ts
from ..config import DEFAULT_CONFIG, AuditConfig
from ..decision_point.replay import DecisionCheck, check_decisions
from ..decision_point.sealed import SealedReader
from ..runner.decide import PlacedDecision
from ..runner.rows import DECISION_COLUMNS, parse_run_id, utc_now_ts
from ..runner.store import SALT_FILE, configured_salt, read_salt_file
from ..status_records import SealedStatus
from .check import AlertCheck, Decided, unexpected_rows
from .ledger import DecisionGroup, LedgerView
from .merge import DecisionMerge, Key, missing_findings
from .replay import Replay, replay_follow, replay_range

__all__ = [
    "SALT_SETTING",
    "SETTLE_US",
    "AuditVerification",
    "consent_decision_findings",
    "read_salt",
    "verify_audit",
]

log = logging.getLogger("careledger.verify.audit")

SALT_SETTING: Final = "audit_salt (CARELEDGER_AUDIT_SALT)"
#: findings listed (all are counted)
DEFAULT_MAX_FINDINGS: Final = 1000
#: rows younger than this are left for the next run (their run may still be writing)
SETTLE_US: Final = 2 * US_PER_MINUTE
#: a row dated this far after the verifier's clock was written by no run: checked now
FUTURE_SKEW_US: Final = 5 * US_PER_MINUTE

EXIT_INTACT, EXIT_TAMPERED, EXIT_ERROR = 0, 1, 2


def read_salt(settings: Any) -> str | None:
    """The pseudonym salt the auditor used (``audit_salt``, else the file
    ``<run_dir>/keys/audit-salt``), or None when there is none: never created here.
    Raises ``SaltError`` (a ``ValueError``, one line) for an empty or short salt or a
    file readable by group or others, as the auditor refuses them (ADR 0026)."""
    configured = configured_salt(settings)
    if configured is not None:
        return configured
    return read_salt_file(Path(settings.keys_dir) / SALT_FILE)


@dataclass
class AuditVerification:
    """What the checks of the auditor's rows found."""

    findings: list[Finding] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    #: why the checks could not tell (a configuration or infrastructure problem)
    cannot_tell: str | None = None
    findings_total: int = 0
    elapsed_s: float = 0.0

    @property
    def failures(self) -> int:
        return int(self.summary.get("failures", 0))

    @property
    def result(self) -> str:
        if self.failures:
            return "tampered"
        return "cannot tell" if self.cannot_tell else "intact"

    @property
    def exit_code(self) -> int:
        if self.failures:
            return EXIT_TAMPERED
        return EXIT_ERROR if self.cannot_tell else EXIT_INTACT

    def to_json(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "cannot_tell": self.cannot_tell,
            **self.summary,
            "elapsed_s": round(self.elapsed_s, 3),
            "findings": [f.to_dict() for f in self.findings],
        }


_CHANGED: Final = (
    "the auditor changed its older rows while verify read them (a range audit "
    "replacing a range?): run verify again when it is done"
)


def _decisions_fingerprint(backend: SqlBackend, database: str, settled: str) -> tuple[Any, ...]:
    """What changes if the auditor writes older decisions while verify reads them (its
    rows are read as each run is checked, ADR 0045): the count of the settled ones, and
    of their unfinished mutations (``_fingerprint``'s first two)."""
    db = check_identifier(database)
    return (
        *backend.execute(
            f"SELECT count() FROM {db}.access_decisions WHERE decided_at <= %(t)s", {"t": settled}
        ),
        *backend.execute(
            "SELECT count() FROM system.mutations WHERE database = %(db)s AND is_done = 0 "
            "AND table = 'access_decisions'",
            {"db": db},
        ),
    )


def _fingerprint(backend: SqlBackend, database: str, settled: str) -> tuple[Any, ...]:
    """What changes if the auditor writes older rows while verify reads (a range run
    replacing its range): counts of its settled rows and of its unfinished mutations
    (the decisions' first: ``_decisions_fingerprint``)."""
    db = check_identifier(database)
    return (
        *_decisions_fingerprint(backend, database, settled),
        *backend.execute(
            f"SELECT count() FROM {db}.alerts WHERE created_at <= %(t)s", {"t": settled}
        ),
        *backend.execute(f"SELECT count() FROM {db}.alert_status"),
        *backend.execute(
            "SELECT count() FROM system.mutations WHERE database = %(db)s AND is_done = 0 "
            "AND table IN ('alerts', 'alert_status')",
            {"db": db},
        ),
    )


def verify_audit(
    backend: SqlBackend,
    database: str,
    *,
    reference_topics: frozenset[str],
    salt: str | None,
    now: str | None = None,
    config: AuditConfig = DEFAULT_CONFIG,
    max_findings: int = DEFAULT_MAX_FINDINGS,
    settle_us: int = SETTLE_US,
    consent_chains: Sequence[str] = (),
    consent_sealed: SealedReader | None = None,
    status_sealed: SealedStatus | None = None,
    progress: Callable[[int], None] | None = None,
) -> AuditVerification:
    """Check the auditor's rows of ``database`` against the ledger. Raises
    ``StorageError`` when ClickHouse fails. ``reference_topics``: the topics whose
    chains the auditor reads as reference data (not the source registry). Rows written
    in the last ``settle_us`` are left for the next run (their run may still write).
    ``consent_chains``: the consents topic's chains, to replay the consent decision
    point's answers over (none: those answers are not checked); ``consent_sealed``: a
    sealed ledger's reader (ADR 0037), which opens its records, events and consents;
    ``status_sealed``: how its alert status records open (without it, they are checked
    by their public part). ``progress`` is told, now and then, how many accesses the
    replays have read or decided so far (all runs together)."""
    started = time.perf_counter()
    out = AuditVerification()
    now = now or utc_now_ts()
    now_us = ts_to_us(now)
    settled = us_to_ts(now_us - settle_us)
    future = us_to_ts(now_us + FUTURE_SKEW_US)
    view = None
    for _attempt in range(3):
        fingerprint = _fingerprint(backend, database, settled)
        view = LedgerView.read(
            backend,
            database,
            reference_topics,
            now_us=now_us,
            settled=settled,
            future=future,
            sealed=status_sealed,
        )
        if _fingerprint(backend, database, settled) == fingerprint:
            break
    else:
        out.cannot_tell = _CHANGED
    assert view is not None
    findings: list[Finding] = list(view.status.findings)
    if view.status.stalled:
        out.cannot_tell = (
            f"{view.status.stalled} alert status change(s) older than the grace are not "
            "chained and the processor has chained nothing since: is it running?"
        )
    runs: dict[str, list[DecisionGroup]] = {}
    for g in view.groups:
        if not g.recent:
            runs.setdefault(g.run, []).append(g)
    replays: list[Replay] = []
    if (view.decisions or view.alerts) and salt is None:
        out.cannot_tell = (
            "the auditor's decisions and alerts name patients by pseudonyms: set "
            f"{SALT_SETTING} to the auditor's salt (or give the verifier its "
            f"keys/{SALT_FILE}) to check them"
        )
    elif view.decisions or view.alerts:
        assert salt is not None
        # only an alert written by no run replayed here is regrouped from the current
        # decisions of its accesses (``check_alerts``): only theirs are kept. (An alert
        # of a run whose rows cannot be replayed is regrouped too: from the decisions
        # of the other runs about its accesses, which are kept only if an alert of no
        # replayed run names them as well.)
        replayed = {(g.run, g.decided_at) for g in view.groups if not g.recent}
        decided = Decided(
            frozenset(
                e
                for a in view.alerts
                if (a.audit_run, a.created_at) not in replayed
                for e in a.flagged() or ()
            )
        )
        left: list[tuple[str, list[tuple[tuple[str, int], tuple[Any, ...]]]]] = []
        alerts = AlertCheck(view.alerts)
        done = 0
        for run_text, groups in sorted(runs.items()):

            def told(n: int, before: int = done) -> None:
                if progress is not None:
                    progress(before + n)

            found, unmatched = _replay_run(
                view, run_text, groups, salt, config, decided, alerts, replays, told
            )
            findings += found
            left.append((run_text, unmatched))
            done = sum(rp.count for rp in replays)
            if progress is not None:
                progress(done)
        # a replayed decision without its row is missing unless a later run decided it
        latest = view.latest_decided(k for _run, keys in left for k, _row in keys)
        for run_text, unmatched in left:
            findings += missing_findings(run_text, unmatched, latest)
        findings += alerts.findings(
            view,
            replays,
            decided,
            salt=salt,
            config=config,
            recent={a.alert_id for a in view.recent_alerts},
        )
        if _decisions_fingerprint(backend, database, settled) != fingerprint[:2]:
            # the rows changed under the replays: what they found is not about one state
            out.cannot_tell = _CHANGED
            findings = list(view.status.findings)
    consent_check = None
    if consent_chains:
        consent_check = check_decisions(
            backend, database, consent_chains, now_us=now_us, sealed=consent_sealed
        )
        findings += consent_decision_findings(consent_check)
    counts = Counter(str(f.code) for f in findings)
    failures = sum(1 for f in findings if f.severity != Severity.INFO)
    out.findings_total = len(findings)
    out.findings = findings[:max_findings]
    kinds = Counter(rp.kind for rp in replays)
    out.summary = {
        "decisions": view.decisions,
        "alerts": len(view.alerts),
        "status_changes": {
            "rows": view.status.rows,
            "ledgered": view.status.records,
            "pending": sum(a.pending for a in view.status.alerts.values()),
        },
        "runs": {
            "range": kinds.get("range", 0),
            "follow": kinds.get("follow", 0),
            "unknown": sum(1 for r in runs if parse_run_id(r) is None),
        },
        "replayed_decisions": sum(rp.count for rp in replays),
        "consent_decisions": (
            None
            if consent_check is None
            else {
                "records": consent_check.decisions,
                "replayed": consent_check.replayed,
                "identical": consent_check.identical,
            }
        ),
        # written in the last minutes: their run may still be writing; checked next time
        "recent_rows_not_checked": view.recent_decisions + len(view.recent_alerts),
        "findings_total": len(findings),
        "failures": failures,
        "findings_by_code": dict(sorted(counts.items())),
    }
    out.elapsed_s = time.perf_counter() - started
    return out


def consent_decision_findings(check: DecisionCheck) -> list[Finding]:
    """The decision point's problems as findings at their place in the ledger."""
    out = []
    for p in check.problems:
        code = FindingCode(f"CONSENT_{p.code}")
        where = dict(p.where)
        event = where.get("event")
        out.append(
            Finding(
                code=code,
                severity=code.default_severity,
                chain_id=str(where.get("chain_id", "")),
                height=where.get("height") if type(where.get("height")) is int else None,
                event_index=where.get("idx") if type(where.get("idx")) is int else None,
                message=f"consent decision {p.decision_id}: {p.message}",
                details={
                    "decision_id": p.decision_id,
                    "table": where.get("table"),
                    **({"event": event} if event is not None else {}),
                    **({"differs": where["differs"]} if "differs" in where else {}),
                },
            )
        )
    return out


Unmatched = list[tuple[tuple[str, int], tuple[Any, ...]]]
_DECIDED_AT: Final = DECISION_COLUMNS.index("decided_at")


def _replay_run(
    view: LedgerView,
    run_text: str,
    groups: Sequence[DecisionGroup],
    salt: str,
    config: AuditConfig,
    decided: Decided,
    alerts: AlertCheck,
    replays: list[Replay],
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Finding], Unmatched]:
    """One run's rows (``groups``) against its replay: the findings, and the replayed
    decisions without a row (missing, unless a later run decided them again). Its alert
    upserts go to ``alerts`` as the replay writes them; the run is added to ``replays``
    once it replayed whole."""
    run = parse_run_id(run_text)
    if run is None:
        why = f"no audit run writes audit_run {run_text[:100]!r}"
        return unexpected_rows(view.decisions_of(groups), why), []
    # a second decision of one access comes at its event time; a stored row of a key
    # already compared comes later only if its time was moved (named then as "did not
    # decide it" rather than "a second row": DECISION_UNEXPECTED either way)
    margin = US_PER_MINUTE
    out: list[Finding] = []
    unmatched: Unmatched = []
    mine: list[Replay] = []
    # the decisions the alerts may be regrouped from: kept once the whole run replays
    current: list[tuple[tuple[str, int], str, PlacedDecision]] = []

    def raised(at: str, alert_id: str, row: tuple[Any, ...]) -> None:
        alerts.written(run.text, at, alert_id, row)

    try:
        if run.kind == "range":
            by_time: dict[str, list[DecisionGroup]] = {}
            for g in groups:
                by_time.setdefault(g.decided_at, []).append(g)
            for decided_at, of_time in sorted(by_time.items()):
                merge = DecisionMerge(run.text, view.decisions_of(of_time), margin_us=margin)

                def sink(p: PlacedDecision, row: tuple[Any, ...], m: DecisionMerge = merge) -> None:
                    key = (p.decision.event_id, int(p.decision.amends))
                    m.replayed(key, row)
                    if decided.wants(key):
                        current.append((key, str(row[_DECIDED_AT]), p))

                mine.append(
                    replay_range(
                        view,
                        run,
                        decided_at,
                        of_time,
                        sink,
                        raised,
                        salt=salt,
                        config=config,
                        progress=progress,
                    )
                )
                unmatched += merge.finish()
                out += merge.findings
        else:
            # the rows are read twice: once for the cycles, then merged as the replay
            # writes (a follow run can span weeks: neither side is held, ADR 0045)
            merge = DecisionMerge(run.text, view.decisions_of(groups), margin_us=margin)
            first_at: dict[Key, str] = {}  # of the decisions the alerts may need
            placed: dict[Key, PlacedDecision] = {}

            def written(key: Key, row: tuple[Any, ...], m: DecisionMerge = merge) -> None:
                m.replayed(key, row)
                if decided.wants(key):
                    first_at.setdefault(key, str(row[_DECIDED_AT]))

            def made(p: PlacedDecision) -> None:
                key = (p.decision.event_id, int(p.decision.amends))
                if decided.wants(key):
                    placed.setdefault(key, p)

            rp = replay_follow(
                view,
                run,
                view.decisions_of(groups),
                written,
                made,
                raised,
                salt=salt,
                config=config,
                progress=progress,
            )
            current += [(key, first_at.get(key, ""), p) for key, p in placed.items()]
            mine.append(rp)
            unmatched += merge.finish()
            out += merge.findings
    except (ValueError, TypeError, KeyError, IndexError, ArithmeticError) as exc:
        # the rows feed the replay its times and cutoffs: ones it cannot use are hostile
        log.warning("audit run %s could not be replayed: %s", run_text[:100], exc)
        return unexpected_rows(
            view.decisions_of(groups),
            f"run {run_text[:100]} cannot be replayed from its rows: {exc}",
        ), []
    replays += mine
    for key, at, p in current:
        decided.add(key, at, p)
    return out, unmatched
