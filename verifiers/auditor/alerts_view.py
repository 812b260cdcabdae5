"""How ``careledger alerts`` reads to a person: the risk order and a case that reads
like a story (issue 13). The JSON (``--json``) stays the exact record.

Everything written here that came from a source or the store (actor ids, notes,
evidence values) goes through ``display``: control characters shown escaped (ADR 0026).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from careledger.safe_text import display
from careledger_core.rule_codes import RuleCode
from verifiers.auditor.decisions import AlertSeverity

#: What each rule means, for the reader of an alert (the rule's inputs are in
#: verifiers.auditor.rules).
RULE_MEANINGS: Final[Mapping[str, str]] = {
    RuleCode.CONSENT_DENIED: "the patient's consent does not permit this access",
    RuleCode.NO_EXPLANATION: (
        "no care relationship, team, department or consent explains the access"
    ),
    RuleCode.BREAK_THE_GLASS: "emergency access outside the usual permissions: review it",
    RuleCode.SELF_ACCESS: "the user opened their own record",
    RuleCode.FAMILY: "the user and the patient appear to be family or share a household",
    RuleCode.CO_WORKER: "the patient is a co-worker of the user",
    RuleCode.VIP_OR_SENSITIVE_UNEXPLAINED: (
        "a VIP or restricted record was opened without an explanation"
    ),
    RuleCode.INACTIVE_USER: "the account was used while the user was not employed",
    RuleCode.VOLUME_SPIKE: "far more patients than the user's peers open in the same time",
    RuleCode.AFTER_HOURS: "access outside the user's shifts",
    RuleCode.SHARED_CREDENTIALS: "one login used from places at once: shared credentials",
    RuleCode.DENIED_BURST: "many refused attempts in a short time",
    RuleCode.DISCLOSURE_WITHOUT_PURPOSE: "data disclosed without a stated purpose",
    RuleCode.REPEAT_OFFENDER: "the user has confirmed violations before",
}
_SEVERITY_RANK: Final = {str(s): s.rank for s in AlertSeverity}
#: the orders ``alerts list --sort`` offers
SORTS: Final = ("risk", "newest", "oldest")
#: samples a readable ``alerts show`` prints (all are in ``--json``)
SHOWN_SAMPLES: Final = 5
#: evidence keys a sample line does not repeat (they have columns of their own)
_SAMPLE_COLUMNS: Final = frozenset({"event_id", "occurred_at", "patient_ref", "severity"})


def sort_alerts(alerts: Sequence[dict[str, Any]], order: str = "risk") -> list[dict[str, Any]]:
    """``risk``: the highest score first, then the worse severity, then the newest;
    ``newest`` / ``oldest``: by the first flagged event's time. Ties by alert id, so
    that the order is the same on every run."""
    if order not in SORTS:
        raise ValueError(f"unknown order {order!r}: one of {', '.join(SORTS)}")
    by_id = sorted(alerts, key=lambda a: str(a["alert_id"]))
    if order == "oldest":
        return sorted(by_id, key=lambda a: str(a["first_at"]))
    newest = sorted(by_id, key=lambda a: str(a["first_at"]), reverse=True)
    if order == "newest":
        return newest
    return sorted(
        newest,
        key=lambda a: (-float(a["score"]), -_SEVERITY_RANK.get(str(a["severity"]), -1)),
    )


def truncation_note(shown: int, matching: int, order: str) -> str | None:
    """What a list cut by ``--limit`` must say, or None when nothing was cut."""
    if shown >= matching:
        return None
    first = {"risk": "highest risk", "newest": "newest", "oldest": "oldest"}[order]
    return (
        f"showing {shown:,} of {matching:,} matching alerts ({first} first): "
        "--limit N to see more, or filter (--rule, --status, --actor, --from, --to)"
    )


def _value(v: Any) -> str:
    if isinstance(v, list | tuple):
        return ",".join(display(x) for x in v)
    return display(v)


def render_alert(alert: Mapping[str, Any]) -> list[str]:
    """A case as lines: what fired and why, who, which patient (pseudonym), when, what
    was searched to explain it, samples of the events, and the status history with
    where each change is ledgered."""
    d = display
    evidence: Mapping[str, Any] = alert.get("evidence") or {}
    rule = str(alert["rule"])
    refs: Sequence[str] = alert.get("patient_refs") or ()
    patient = (
        d(alert["patient_ref"])
        if alert.get("patient_ref")
        else f"{len(refs)} patients" + (f" ({d(', '.join(refs[:3]))}, ...)" if refs else "")
    )
    status = d(alert["status"])
    if alert.get("status_by"):
        status += f" by {d(alert['status_by'])} at {d(alert['status_at'])}"
    if alert.get("status_pending"):
        status += " (pending: not chained yet)"
    lines = [
        f"alert {d(alert['alert_id'])}",
        f"  rule       {d(rule)}: {RULE_MEANINGS.get(rule, 'see the rule catalogue')}",
        f"  risk       severity {d(alert['severity'])}, score {float(alert['score']):.1f}"
        + ("  (a routine review the policy requires)" if evidence.get("routine") else ""),
        f"  actor      {d(alert['actor_id'])}",
        f"  patient    {patient} (pseudonym; re-identification is a separate, ledgered step)",
        f"  when       {d(alert['first_at'])} .. {d(alert['last_at'])}",
        f"  events     {evidence.get('flagged_events', '?')} flagged, "
        f"{evidence.get('related_events', 0)} related, "
        f"{evidence.get('distinct_patients', len(refs))} patient(s)",
        f"  status     {status}",
    ]
    searched = alert.get("explanations_searched") or ()
    if searched:
        lines.append(f"  searched   {d(', '.join(searched))}: none explains the access")
    if not alert.get("status_history_intact", True):
        lines.append("  WARNING    the status history is broken (edited, deleted or forged):")
        lines += [f"             {d(p)}" for p in alert.get("status_problems") or ()]
    samples: Sequence[Mapping[str, Any]] = evidence.get("samples") or ()
    if samples:
        total = len(samples) + int(evidence.get("samples_truncated") or 0)
        lines.append(f"  samples    {min(len(samples), SHOWN_SAMPLES)} of {total} flagged:")
        for s in samples[:SHOWN_SAMPLES]:
            extra = "  ".join(
                f"{d(k)}={_value(v)}" for k, v in sorted(s.items()) if k not in _SAMPLE_COLUMNS
            )
            lines.append(
                f"    {d(s.get('occurred_at'))}  event {d(s.get('event_id'))}  "
                f"patient {d(s.get('patient_ref', '-'))}  {d(s.get('severity', ''))}"
                + (f"  {extra}" if extra else "")
            )
    history: Sequence[Mapping[str, Any]] = alert.get("status_history") or ()
    lines.append("  history" + ("    (none: open since it was raised)" if not history else ""))
    for change in history:
        where = change.get("ledgered")
        place = (
            f"ledgered at {d(where.get('chain_id'))} height {d(where.get('height'))}"
            if isinstance(where, Mapping)
            else "not ledgered yet"
        )
        note = f'  "{d(change.get("note"))}"' if change.get("note") else ""
        who = d(change.get("changed_by"))
        if change.get("sealed"):  # a sealed ledger's change not opened (ADR 0037)
            who = f"pseudonym {who[:16]}…"
            note = "  (name and note sealed: shown once chained, gone once its day's key is)"
        when, status = d(change.get("changed_at")), d(change.get("status"))
        lines.append(f"    {when}  {status} by {who}{note}  ({place})")
    lines.append("  (--json: the whole record, with every event id)")
    return lines
