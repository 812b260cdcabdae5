"""The explanation search: why an access may be allowed (pure: no I/O, no clock).

Explanations, searched in this order (the first found is stored; the list of what was
searched is stored either way):

1. ``consent``    an active consent permits the access (needs a consent evaluator)
2. ``relationship`` an encounter, appointment, care-team, referral or order links the
   actor (``practitioner_id``) to the patient within [start - lead, end + lag]
3. ``team``       such a relationship names one of the actor's teams
4. ``department`` such a relationship names the actor's department
5. ``group``      a colleague (same department or a shared team) is the practitioner of
   such a relationship
6. ``role``       the actor's role is explained by any relationship of the patient in a
   role window (registration, billing, records management)

``core_consent_evaluator`` is the ``ConsentEvaluator`` backed by
``verifiers.auditor.consent``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from careledger_core.errors import CareledgerError
from careledger_core.event import AccessEvent
from careledger_core.reference import StaffBody

from .config import AuditConfig
from .consent import ConsentRequest, Policy, PolicyTable, configured_policy_table, evaluate_consent
from .decisions import ConsentEvaluator, ConsentVerdict, Explanation, ExplanationKind
from .state import ActiveRelationship, ReferenceView, _as_dict

__all__ = ["core_consent_evaluator", "read_policy_table"]


def read_policy_table() -> PolicyTable | None:
    """The configured policy table, read once for many accesses (a run, a follower's
    cycle); None when it cannot be read, so each evaluation fails as it would alone."""
    try:
        return configured_policy_table()
    except CareledgerError:
        return None


def core_consent_evaluator(
    consents: list[dict[str, Any]], event: AccessEvent, actor: StaffBody | None
) -> ConsentVerdict | None:
    """A :class:`ConsentEvaluator` backed by ``verifiers.auditor.consent.evaluate_consent``.

    The actor's roles are the directory's (plus the event's). A permit explains the access
    only when a provision decided it (not a blanket base OPTIN/``decision``); no consent
    in force, or a consent that cannot be evaluated, gives None.
    """
    return _core_verdict(consents, event, actor)


def _core_verdict(
    consents: Sequence[Mapping[str, Any] | Policy | CareledgerError],
    event: AccessEvent,
    actor: StaffBody | None,
    policy_table: PolicyTable | None = None,
) -> ConsentVerdict | None:
    """``core_consent_evaluator`` over resources or already parsed consents (an error in
    their place: a consent that could not be parsed, which makes the evaluation fail as
    parsing it again would). ``policy_table``: the configured one, read once by the
    caller for many accesses (None: read now)."""
    request = ConsentRequest.from_event(event, roles_first=actor.roles if actor is not None else ())
    try:
        for c in consents:
            if isinstance(c, CareledgerError):
                raise c
        decision = evaluate_consent(consents, request, policy_table)  # type: ignore[arg-type]
    except CareledgerError:
        return None
    if decision.outcome == "no-consent":
        return None
    return ConsentVerdict(
        decision="permit" if decision.outcome == "permit" else "deny",
        consent_id=decision.consent_id,
        detail=decision.reason,
        explains=bool(decision.provision_path),
        provision_path=decision.provision_path,
    )


# --------------------------------------------------------------------------- explanation


@dataclass(slots=True)
class _Search:
    explanation: Explanation | None = None
    searched: list[str] = field(default_factory=list)
    verdict: ConsentVerdict | None = None
    consents: int = 0
    in_window: int = 0


def _explain(
    event: AccessEvent,
    view: ReferenceView,
    staff: StaffBody | None,
    cfg: AuditConfig,
    consent_evaluator: ConsentEvaluator | None,
    policy_table: PolicyTable | None = None,
) -> _Search:
    s = _Search()
    pid = event.patient.id
    aid = event.actor.id
    if consent_evaluator is not None:
        s.searched.append(ExplanationKind.CONSENT)
        records = view.consent_records(pid)
        s.consents = len(records)
        if records:
            if consent_evaluator is core_consent_evaluator:
                # the same evaluation, each consent version parsed once (not per access)
                v = _core_verdict(
                    [view.consent_policy(r) for r in records], event, staff, policy_table
                )
            else:
                v = consent_evaluator([_as_dict(r.body) for r in records], event, staff)
            if v is not None and v.consent_id:
                # the ledgered record and version of the deciding resource, as the
                # decision point names them (a resource id alone is the sender's)
                rec = next((r for r in records if r.body.get("id") == v.consent_id), None)
                if rec is not None:
                    v = dataclasses.replace(
                        v, consent_record=rec.record_id, consent_version=rec.version
                    )
            s.verdict = v
            if v is not None and v.decision == "permit" and v.explains:
                s.explanation = Explanation(
                    ExplanationKind.CONSENT,
                    record_id=v.consent_record or v.consent_id or records[0].record_id,
                    via=v.detail,
                )
                return s
    rels = view.relationships(pid, cfg.relationship_lead_us, cfg.relationship_lag_us)
    s.in_window = len(rels)
    s.searched.append(ExplanationKind.RELATIONSHIP)
    for r in rels:
        if r.body.practitioner_id == aid:
            s.explanation = _rel(ExplanationKind.RELATIONSHIP, r, aid)
            return s
    if staff is None:
        return s
    if staff.teams:
        s.searched.append(ExplanationKind.TEAM)
        teams = set(staff.teams)
        for r in rels:
            if r.body.team_id is not None and r.body.team_id in teams:
                s.explanation = _rel(ExplanationKind.TEAM, r, r.body.team_id)
                return s
    s.searched.append(ExplanationKind.DEPARTMENT)
    for r in rels:
        if r.body.department is not None and r.body.department == staff.department:
            s.explanation = _rel(ExplanationKind.DEPARTMENT, r, staff.department)
            return s
    if cfg.group_explanations:
        s.searched.append(ExplanationKind.GROUP)
        for r in rels:
            colleague_id = r.body.practitioner_id
            if colleague_id is None or colleague_id == aid:
                continue
            colleague = view.staff(colleague_id)
            if colleague is not None and (
                colleague.department == staff.department
                or not set(colleague.teams).isdisjoint(staff.teams)
            ):
                s.explanation = _rel(ExplanationKind.GROUP, r, colleague_id)
                return s
    for role in staff.roles:
        window = cfg.role_windows.get(role)
        if window is None:
            continue
        if ExplanationKind.ROLE not in s.searched:
            s.searched.append(ExplanationKind.ROLE)
        role_rels = view.relationships(pid, window.lead_us, window.lag_us)
        if role_rels:
            s.explanation = _rel(ExplanationKind.ROLE, role_rels[0], role)
            return s
    return s


def _rel(kind: ExplanationKind, r: ActiveRelationship, via: str) -> Explanation:
    return Explanation(kind, record_id=r.record_id, relationship_kind=r.body.kind, via=via)
