"""``careledger verify``: the integrity checks and the checks of the auditor's rows, one
verdict (ADR 0016).

The integrity checks (``verifiers.integrity.cli``: chains, checkpoints, sources) run
exactly as on their own. On a one-shot run over the whole ledger (no ``--chain``,
``--from-height`` or ``--follow``) the auditor's rows are then checked against the ledger
(``verifiers.auditor.verify``): decisions and alerts recomputed by replaying the audit
runs that wrote them, alert status rows against the ledgered status changes. Their
findings join the run's: in ``--json`` under ``findings`` (and the totals), with an
``audit`` section; in the human report before the result line.

The two jobs do not import each other (ADR 0011); this command, one floor up, composes
them. Exit status: 1 if either found tampering, else 2 if either could not tell (a
missing setting is named), else the integrity checks' status (0 intact).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from typing import Any

from careledger.config import Settings
from careledger.progress import Progress
from careledger.storage.backend import ClickHouseBackend, StorageError
from careledger.storage.kinds import reference_topics
from verifiers.auditor.decision_point.store import consent_chains
from verifiers.auditor.verify import SETTLE_US, AuditVerification, read_salt, verify_audit
from verifiers.integrity import cli as integrity
from verifiers.integrity.run import format_finding

__all__ = ["command_verify", "configure_verify", "merge_json"]

EXIT_INTACT, EXIT_TAMPERED, EXIT_ERROR = 0, 1, 2


def configure_verify(parser: argparse.ArgumentParser) -> None:
    integrity.configure_verify(parser)
    parser.add_argument(
        "--no-audit",
        action="store_true",
        help="do not check the auditor's decisions, alerts and alert status changes "
        "against the ledger (checked on one-shot runs over the whole ledger)",
    )
    parser.add_argument(
        "--audit-settle",
        type=float,
        default=SETTLE_US / 1e6,
        metavar="SECONDS",
        help="auditor's rows written in the last SECONDS are left for the next run: their "
        f"audit run may still be writing (default {SETTLE_US // 1_000_000})",
    )


def _audit_checked(args: argparse.Namespace) -> bool:
    return not (getattr(args, "no_audit", False) or args.follow or args.chain or args.from_height)


def command_verify(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "audit_settle", 0) < 0:
        print("careledger verify: --audit-settle must be >= 0", file=sys.stderr)
        return EXIT_ERROR
    if not _audit_checked(args):
        return int(integrity.command_verify(args, settings))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = int(integrity.command_verify(args, settings))
    text = out.getvalue()
    if not text.strip():  # a usage, configuration or infrastructure error: said on stderr
        sys.stdout.write(text)
        return code
    audit = check_audit(args, settings)
    if args.json:
        try:
            doc = json.loads(text)
        except ValueError:
            sys.stdout.write(text)
            return combine(code, audit)
        print(json.dumps(merge_json(doc, audit), sort_keys=False))
    else:
        print_human(text, audit)
    if audit.cannot_tell:
        print(f"careledger verify: auditor's rows: {audit.cannot_tell}", file=sys.stderr)
    sys.stdout.flush()
    return combine(code, audit)


def check_audit(args: argparse.Namespace, settings: Settings) -> AuditVerification:
    """The checks of the auditor's rows; a store that fails is 'cannot tell'."""
    if args.database:
        settings = settings.replace(clickhouse_database=args.database)
    chains = consent_chains(settings)
    sealed = None
    status_sealed = None
    if settings.seal_events:  # ADR 0037: the decision point's records are sealed
        from careledger.keys import KeyFileError
        from careledger.keystore import KeyStoreError, open_keystore
        from verifiers.auditor.decision_point.sealed import SealedReader
        from verifiers.auditor.runner.sealed_store import sealed_status

        try:
            sealed = SealedReader(open_keystore(settings), settings.reference_patient_system)
            status_sealed = sealed_status(sealed.keystore, "verify")
        except (KeyStoreError, KeyFileError):
            # not checked (``consent_decisions`` is null), as sealed parts; the alert
            # status records are checked by their public part (each row's hash)
            chains = []
    backend = ClickHouseBackend.from_settings(settings, "reader")
    # the replays take about as long as auditing did: say how far they are (a terminal,
    # or --progress), as the chain checks do
    progress = Progress("verify", enabled=True if getattr(args, "progress", False) else None)
    seen = [0]

    def told(n: int) -> None:
        seen[0] = max(seen[0], n)
        progress.update(f"audit runs replayed over {seen[0]:,} accesses")

    try:
        return verify_audit(
            backend,
            settings.clickhouse_database,
            reference_topics=reference_topics(settings) - {settings.topic_sources},
            salt=read_salt(settings),
            settle_us=int(getattr(args, "audit_settle", SETTLE_US / 1e6) * 1e6),
            consent_chains=chains,
            consent_sealed=sealed,
            status_sealed=status_sealed,
            progress=told,
        )
    except StorageError as exc:
        return AuditVerification(
            cannot_tell=f"cannot read the auditor's rows from ClickHouse database "
            f"{settings.clickhouse_database!r}: {exc.message}"
        )
    except (ValueError, TypeError) as exc:  # a store whose columns no longer hold
        return AuditVerification(cannot_tell=f"cannot check the auditor's rows: {exc}")
    finally:
        progress.done()
        backend.close()
        if sealed is not None:
            sealed.keystore.close()


def combine(code: int, audit: AuditVerification) -> int:
    """Tampering anywhere wins; then the integrity checks' own status; then 'cannot
    tell' from the auditor's rows."""
    if audit.failures or code == EXIT_TAMPERED:
        return EXIT_TAMPERED
    if code != EXIT_INTACT:
        return code
    return EXIT_ERROR if audit.cannot_tell else EXIT_INTACT


def merge_json(doc: dict[str, Any], audit: AuditVerification) -> dict[str, Any]:
    """The integrity run's document with the auditor's rows' findings and summary."""
    section = audit.to_json()
    findings = section.pop("findings")
    doc["audit"] = section
    doc.setdefault("findings", []).extend(findings)
    totals = doc.setdefault("totals", {})
    totals["findings"] = int(totals.get("findings", 0)) + audit.findings_total
    totals["failures"] = int(totals.get("failures", 0)) + audit.failures
    by_code = dict(totals.get("findings_by_code", {}))
    for code, n in audit.summary.get("findings_by_code", {}).items():
        by_code[code] = int(by_code.get(code, 0)) + int(n)
    totals["findings_by_code"] = dict(sorted(by_code.items()))
    if audit.failures:
        doc["result"] = "tampered"
    return doc


def describe(audit: AuditVerification) -> str:
    s = audit.summary
    if not s:
        return f"auditor's rows: CANNOT TELL ({audit.cannot_tell})"
    runs, status = s["runs"], s["status_changes"]
    return (
        f"auditor's rows: {s['decisions']} decisions replayed from {runs['range']} range and "
        f"{runs['follow']} follow run(s), {s['alerts']} alerts, {status['rows']} status "
        f"change rows against {status['ledgered']} ledgered ({status['pending']} pending)"
        + _consent_decisions(s.get("consent_decisions"))
        + f": {audit.result}"
    )


def _consent_decisions(c: Any) -> str:
    if not c:
        return ""
    return f", {c['records']} consent decisions ({c['identical']} replayed identically)"


def print_human(text: str, audit: AuditVerification) -> None:
    """The integrity report, the auditor's rows before its result line, and the result
    line saying TAMPERED if only the auditor's rows are."""
    lines = text.rstrip("\n").split("\n")
    result = lines.pop() if lines and lines[-1].startswith("result: ") else None
    for line in lines:
        print(line)
    print(f"  {describe(audit)}")
    if audit.findings:
        print(f"findings in the auditor's rows ({audit.findings_total}):")
        for f in audit.findings:
            print(format_finding(f))
        if audit.findings_total > len(audit.findings):
            print(f"... and {audit.findings_total - len(audit.findings)} more (see --json)")
    if result is None:
        if audit.failures:
            print(f"result: TAMPERED: {audit.failures} failure(s) in the auditor's rows")
        return
    if audit.failures:
        if result.startswith("result: INTACT"):
            result = "result: TAMPERED" + result[len("result: INTACT") :]
        result += f"; {audit.failures} failure(s) in the auditor's rows"
    print(result)
