"""The access-audit rules: explain first, then flag (pure: no I/O, no clock).

``evaluate(event, view, history)`` decides one access event against the reference state
as of the event's time (``view = state.as_of(event.occurred_at)``) and the actor's
recent activity (``history``, read only). The same inputs always give the same decision.
``Auditor`` is the small driver that feeds a stream: it expires break-the-glass
overrides, evaluates, then lets the history observe the event.

The explanation search (consent, relationship, team, department, group, role) is in
``explanations``; the value types (``AccessDecision``, ``Flag``, ``AlertSeverity``, ...)
in ``decisions``.

Flags (``RuleCode``; stable, never renamed) — see ``RULE_REFERENCE_DATA`` for what each
needs. The placeholder patient ``"-"`` (login/logout) is skipped by patient rules.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final

from careledger_core.event import AccessEvent
from careledger_core.reference import Address, PatientBody, Shift, StaffBody
from careledger_core.rule_codes import RuleCode

from ._time import US_PER_SECOND, ts_to_us, weekday_hour
from .config import DEFAULT_CONFIG, AuditConfig
from .consent import PolicyTable
from .decisions import (
    _CRITICAL,
    _HIGH,
    _LOW,
    _MEDIUM,
    AccessDecision,
    AlertSeverity,
    ConsentEvaluator,
    ConsentVerdict,
    Explanation,
    ExplanationKind,
    Flag,
)
from .explanations import _explain, core_consent_evaluator, read_policy_table
from .history import (
    EMERGENCY_PURPOSES,
    NO_PATIENT_ID,
    AccessHistory,
    OpenOverride,
    btg_reason_given,
    is_btg_start,
    is_btg_stop,
)
from .state import ReferenceState, ReferenceView

__all__ = [
    "EMERGENCY_PURPOSES",
    "RULE_REFERENCE_DATA",
    "AccessDecision",
    "AlertSeverity",
    "Auditor",
    "ConsentEvaluator",
    "ConsentVerdict",
    "Explanation",
    "ExplanationKind",
    "Flag",
    "RuleCode",
    "core_consent_evaluator",
    "evaluate",
    "missing_stop_decision",
]

DCM_EXPORT: Final = "110106"
#: event subtype codes that mark an export or disclosure (ISO 21089 lifecycle, BALP)
DISCLOSURE_SUBTYPES: Final = frozenset({"disclose", "export", "extract", "transmit"})
_MODIFYING_ACTIONS: Final = frozenset({"C", "U", "D"})
_RESTRICTED: Final = frozenset({"R", "V"})
#: cap on event ids carried as evidence of one flag (bursts, spikes)
MAX_RELATED_EVENT_IDS: Final = 500


#: What each rule reads from the reference state (and from the history).
RULE_REFERENCE_DATA: Final[Mapping[RuleCode, str]] = MappingProxyType(
    {
        RuleCode.CONSENT_DENIED: "active consents of the patient + consent evaluator; staff roles",
        RuleCode.NO_EXPLANATION: "care relationships of the patient; staff department, "
        "teams, roles; colleagues' staff records; consents",
        RuleCode.BREAK_THE_GLASS: "event only (purpose, subtype, outcome_desc); history: "
        "override starts and stops",
        RuleCode.SELF_ACCESS: "staff.patient_id or patient.employee_user_id",
        RuleCode.FAMILY: "staff and patient names, addresses, phones; patient emergency contacts",
        RuleCode.CO_WORKER: "employee link of the patient; both staff records: department, "
        "teams, manager_id",
        RuleCode.VIP_OR_SENSITIVE_UNEXPLAINED: "patient vip, confidentiality, "
        "sensitivity_labels; event sensitivity; explanations",
        RuleCode.INACTIVE_USER: "staff status, start_date, end_date",
        RuleCode.VOLUME_SPIKE: "staff role (peer group); history: distinct patients per "
        "hour, own and peer baselines",
        RuleCode.AFTER_HOURS: "staff shifts",
        RuleCode.SHARED_CREDENTIALS: "event client; history: recent client addresses",
        RuleCode.DENIED_BURST: "event outcome; history: recent outcome 4/8 events",
        RuleCode.DISCLOSURE_WITHOUT_PURPOSE: "event only (type, subtype, action, purpose)",
        RuleCode.REPEAT_OFFENDER: "history: confirmed violations of the actor",
    }
)


# --------------------------------------------------------------------------- helpers


@lru_cache(maxsize=1 << 16)
def _fold(text: str) -> str:
    """Case-, accent- and punctuation-insensitive form of a name or address line."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if c.isalnum()).casefold()


@lru_cache(maxsize=1 << 16)
def _phone(text: str | None) -> str | None:
    if text is None:
        return None
    digits = "".join(c for c in text if c.isdigit())
    return digits[-9:] if len(digits) >= 7 else None


def _address(a: Address | None) -> tuple[str, str] | None:
    if a is None:
        return None
    return (_fold(a.postcode), _fold(a.line))


def _family_matches(staff: StaffBody, patient: PatientBody, actor_id: str) -> list[str]:
    matches: list[str] = []
    surname = _fold(staff.family_name)
    if surname and surname == _fold(patient.family_name):
        matches.append("surname")
    addr = _address(staff.address)
    if addr is not None and addr == _address(patient.address):
        matches.append("address")
    phone = _phone(staff.phone)
    if phone is not None and phone == _phone(patient.phone):
        matches.append("phone")
    given = _fold(staff.given_name)
    for contact in patient.emergency_contacts:
        if (
            contact.user_id == actor_id
            or (phone is not None and phone == _phone(contact.phone))
            or (
                contact.given_name is not None
                and _fold(contact.given_name) == given
                and _fold(contact.family_name) == surname
            )
        ):
            matches.append("emergency-contact")
            break
    return matches


def _on_shift(shifts: Sequence[Shift], t_us: int, cfg: AuditConfig) -> bool:
    for moment in (
        t_us,
        t_us - cfg.after_hours_grace_after_us,
        t_us + cfg.after_hours_grace_before_us,
    ):
        weekday, hour = weekday_hour(moment)
        if any(s.covers(weekday, hour) for s in shifts):
            return True
    return False


def _is_disclosure(event: AccessEvent) -> bool:
    if event.action != "E":
        return False
    if event.event_type.code == DCM_EXPORT:
        return True
    return any(c.code in DISCLOSURE_SUBTYPES for c in event.event_subtype)


def _role(staff: StaffBody | None, event: AccessEvent) -> str | None:
    if staff is not None and staff.roles:
        return staff.roles[0]
    return event.actor.roles[0] if event.actor.roles else None


def _seconds(us: int) -> float:
    return round(us / US_PER_SECOND, 6)


def _max_severity(flags: Iterable[Flag]) -> AlertSeverity | None:
    best: AlertSeverity | None = None
    for f in flags:
        if best is None or f.severity.rank > best.rank:
            best = f.severity
    return best


# --------------------------------------------------------------------------- evaluate


def evaluate(
    event: AccessEvent,
    view: ReferenceView,
    history: AccessHistory,
    *,
    config: AuditConfig = DEFAULT_CONFIG,
    consent_evaluator: ConsentEvaluator | None = None,
    policy_table: PolicyTable | None = None,
) -> AccessDecision:
    """Decide one access event. ``view`` must be the state as of ``event.occurred_at``;
    ``history`` must have observed the actor's earlier events (it is not changed).
    ``policy_table``: the consent policy table ``core_consent_evaluator`` uses (None:
    the configured one, read now)."""
    cfg = config
    t_us = ts_to_us(event.occurred_at)
    aid = event.actor.id
    pid = event.patient.id
    staff = view.staff(aid)
    flags: list[Flag] = []
    explanation: Explanation | None = None
    searched: tuple[str, ...] = ()
    succeeded = event.outcome == 0
    purposes = set(event.purpose_of_use)

    if pid != NO_PATIENT_ID:
        patient = view.patient(pid)
        search = _explain(event, view, staff, cfg, consent_evaluator, policy_table)
        explanation = search.explanation
        searched = tuple(str(k) for k in search.searched)
        explained = explanation is not None

        # consent denied: violated if the access went through, honoured if refused
        v = search.verdict
        if v is not None and v.decision == "deny":
            flags.append(
                Flag(
                    RuleCode.CONSENT_DENIED,
                    _CRITICAL if succeeded else _LOW,
                    _clean(
                        {
                            "consent_id": v.consent_id,
                            "consent_record": v.consent_record,
                            "consent_version": v.consent_version,
                            "provision_path": list(v.provision_path),
                            "detail": v.detail,
                            "outcome": event.outcome,
                            "enforced": not succeeded,
                        }
                    ),
                )
            )

        # break-the-glass: always reviewed. An override that states a reason is a
        # routine review item (low); one without a reason, an emergency access with
        # no override, and (later, ``missing_stop_decision``) an override that never
        # stopped are the worse cases (high).
        btg_start, btg_stop = is_btg_start(event), is_btg_stop(event)
        emergency = bool(purposes & EMERGENCY_PURPOSES)
        btg = btg_start or btg_stop or emergency
        if btg_start:
            reason = btg_reason_given(event)
            flags.append(
                Flag(
                    RuleCode.BREAK_THE_GLASS,
                    _LOW if reason else _HIGH,
                    {"phase": "start", "reason_given": reason, "explained": explained},
                    routine=reason,
                )
            )
        elif emergency and not btg_stop:
            o = history.open_override(aid, pid, t_us)
            routine = o is not None and o.reason_given
            flags.append(
                Flag(
                    RuleCode.BREAK_THE_GLASS,
                    _LOW if routine else _HIGH,
                    _clean(
                        {
                            "phase": "access",
                            "override_event_id": None if o is None else o.event_id,
                            "override_started": o is not None,
                            "override_reason_given": None if o is None else o.reason_given,
                            "purpose": sorted(purposes & EMERGENCY_PURPOSES),
                            "explained": explained,
                        }
                    ),
                    routine=routine,
                )
            )

        # self access
        self_access = (staff is not None and staff.patient_id == pid) or (
            patient is not None and patient.employee_user_id == aid
        )
        if self_access:
            flags.append(
                Flag(
                    RuleCode.SELF_ACCESS,
                    _HIGH if event.action in _MODIFYING_ACTIONS else _MEDIUM,
                    {"action": event.action},
                )
            )

        # family: strong links always; a shared surname alone only when unexplained
        if not self_access and staff is not None and patient is not None:
            matches = _family_matches(staff, patient, aid)
            strong = [m for m in matches if m != "surname"]
            if strong or (matches and not explained):
                flags.append(
                    Flag(
                        RuleCode.FAMILY,
                        _MEDIUM if explained or not strong else _HIGH,
                        {"matched": matches, "explained": explained},
                    )
                )

        # co-worker: the patient is an employee close to the actor
        if not self_access and staff is not None:
            links: list[dict[str, Any]] = []
            for employee in view.staff_for_patient(pid):
                if employee.user_id == aid:
                    continue
                how = []
                if employee.department == staff.department:
                    how.append("same-department")
                if not set(employee.teams).isdisjoint(staff.teams):
                    how.append("same-team")
                if staff.manager_id == employee.user_id:
                    how.append("manager")
                if employee.manager_id == aid:
                    how.append("direct-report")
                if how:
                    links.append({"employee_user_id": employee.user_id, "relation": how})
            if links:
                flags.append(
                    Flag(
                        RuleCode.CO_WORKER,
                        _LOW if explained else _HIGH,
                        {"colleagues": links, "explained": explained},
                    )
                )

        # VIP or restricted/sensitive data without an explanation
        if not explained and not btg:
            why: list[str] = []
            if patient is not None:
                if patient.vip:
                    why.append("vip")
                if patient.confidentiality in _RESTRICTED:
                    why.append(f"confidentiality:{patient.confidentiality}")
                why.extend(f"label:{x}" for x in patient.sensitivity_labels)
            if event.sensitivity is not None:
                if event.sensitivity.confidentiality in _RESTRICTED:
                    why.append(f"confidentiality:{event.sensitivity.confidentiality}")
                why.extend(f"label:{x}" for x in event.sensitivity.labels)
            if why:
                flags.append(
                    Flag(
                        RuleCode.VIP_OR_SENSITIVE_UNEXPLAINED,
                        _HIGH,
                        {"why": sorted(set(why)), "searched": list(searched)},
                    )
                )

        # no explanation (break-the-glass is reviewed under its own code)
        if not explained and not btg:
            flags.append(
                Flag(
                    RuleCode.NO_EXPLANATION,
                    _MEDIUM if succeeded else _LOW,
                    {
                        "searched": list(searched),
                        "relationships_in_window": search.in_window,
                        "relationships_ever": view.all_relationships(pid),
                        "active_consents": search.consents,
                        "actor_in_directory": staff is not None,
                    },
                )
            )

        # volume spike: distinct patients in the window vs own and peer baselines
        distinct = history.distinct_patients(aid, t_us, pid)
        if distinct > cfg.volume_min_distinct:
            threshold, own_p95, peer_p95 = _volume_threshold(history, aid, _role(staff, event), cfg)
            if distinct > threshold:
                evidence: dict[str, Any] = {
                    "distinct_patients": distinct,
                    "threshold": threshold,
                    "own_p95": own_p95,
                    "peer_p95": peer_p95,
                    "window_s": _seconds(cfg.volume_window_us),
                }
                if history.previous_distinct(aid) <= threshold:
                    # first access over the threshold: the alert gets the whole window
                    evidence["related_event_ids"] = history.window_event_ids(
                        aid, t_us, MAX_RELATED_EVENT_IDS
                    )
                # Without a baseline (a new actor in a new role) only the floor
                # applies: "far above" is unproven, so the flag is less certain.
                baselined = own_p95 is not None or peer_p95 is not None
                flags.append(Flag(RuleCode.VOLUME_SPIKE, _HIGH if baselined else _MEDIUM, evidence))

        # export or disclosure without a permitted purpose
        if _is_disclosure(event):
            not_permitted = sorted(
                p for p in purposes if p not in cfg.permitted_disclosure_purposes
            )
            if not purposes or not_permitted:
                flags.append(
                    Flag(
                        RuleCode.DISCLOSURE_WITHOUT_PURPOSE,
                        _HIGH,
                        {"purpose": sorted(purposes), "not_permitted": not_permitted},
                    )
                )
    else:
        explained = False

    # -- rules about the actor (every event, logins included)
    status = view.staff_status(aid)
    if status is None and cfg.unknown_user_is_inactive:
        flags.append(Flag(RuleCode.INACTIVE_USER, _MEDIUM, {"status": "not-in-directory"}))
    elif status in ("suspended", "terminated"):
        severity = _CRITICAL if succeeded and status == "terminated" else _HIGH
        assert staff is not None
        flags.append(
            Flag(
                RuleCode.INACTIVE_USER,
                severity,
                _clean(
                    {
                        "status": status,
                        "directory_status": staff.status,
                        "end_date": staff.end_date,
                        "outcome": event.outcome,
                    }
                ),
            )
        )

    if staff is not None and staff.shifts and not _on_shift(staff.shifts, t_us, cfg):
        weekday, hour = weekday_hour(t_us)
        flags.append(
            Flag(
                RuleCode.AFTER_HOURS,
                _LOW if explained or pid == NO_PATIENT_ID else _MEDIUM,
                {"weekday": weekday, "hour_utc": hour, "explained": explained},
            )
        )

    if event.client is not None:
        here = event.client.address
        for seen in history.places_within(aid, t_us, cfg.shared_credentials_window_us):
            if seen.address != here:
                flags.append(
                    Flag(
                        RuleCode.SHARED_CREDENTIALS,
                        _HIGH,
                        _clean(
                            {
                                "address": here,
                                "workstation": event.client.workstation,
                                "other_address": seen.address,
                                "other_workstation": seen.workstation,
                                "other_event_id": seen.event_id,
                                "seconds_apart": _seconds(t_us - seen.t_us),
                                "related_event_ids": [seen.event_id],
                            }
                        ),
                    )
                )
                break

    if event.outcome in (4, 8):
        earlier = history.denials_within(aid, t_us, cfg.denied_burst_window_us)
        n = len(earlier) + 1
        if n >= cfg.denied_burst_count:
            flags.append(
                Flag(
                    RuleCode.DENIED_BURST,
                    _HIGH if n >= 2 * cfg.denied_burst_count else _MEDIUM,
                    {
                        "denied_in_window": n,
                        "window_s": _seconds(cfg.denied_burst_window_us),
                        "related_event_ids": earlier[-MAX_RELATED_EVENT_IDS:],
                    },
                )
            )

    multiplier = 1.0
    violations = history.confirmed_violations(aid, t_us)
    if violations:
        top = _max_severity(flags)
        if top is not None and top.rank >= _MEDIUM.rank:
            multiplier = min(
                1.0 + cfg.repeat_weight_per_violation * violations, cfg.repeat_max_multiplier
            )
            flags.append(
                Flag(
                    RuleCode.REPEAT_OFFENDER,
                    top.raised(),
                    {"confirmed_violations": violations, "multiplier": multiplier},
                )
            )

    return AccessDecision(
        event_id=event.event_id,
        occurred_at=event.occurred_at,
        actor_id=aid,
        patient_id=pid,
        explanation=explanation,
        searched=searched,
        flags=tuple(flags),
        multiplier=multiplier,
    )


def _volume_threshold(
    history: AccessHistory, actor_id: str, role: str | None, cfg: AuditConfig
) -> tuple[float, int | None, int | None]:
    threshold = float(cfg.volume_min_distinct)
    own_p95: int | None = None
    peer_p95: int | None = None
    own = history.own_baseline(actor_id)
    if own is not None and len(own) >= cfg.volume_min_baseline_hours:
        own_p95 = own.p95()
        threshold = max(threshold, cfg.volume_own_factor * own_p95)
    peers = history.peer_baseline(role) if role is not None else None
    if peers is not None and len(peers) >= cfg.volume_min_baseline_hours:
        peer_p95 = peers.p95()
        threshold = max(threshold, cfg.volume_peer_factor * peer_p95)
    return threshold, own_p95, peer_p95


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def missing_stop_decision(o: OpenOverride, config: AuditConfig = DEFAULT_CONFIG) -> AccessDecision:
    """The late flag for a break-the-glass start whose stop never came in the window."""
    return AccessDecision(
        event_id=o.event_id,
        occurred_at=o.occurred_at,
        actor_id=o.actor_id,
        patient_id=o.patient_id,
        explanation=None,
        searched=(),
        flags=(
            Flag(
                RuleCode.BREAK_THE_GLASS,
                _HIGH,
                {
                    "phase": "no-stop",
                    "window_s": _seconds(config.btg_stop_window_us),
                    # the accesses made under the override belong to this alert
                    "related_event_ids": o.access_ids[-MAX_RELATED_EVENT_IDS:],
                },
            ),
        ),
        amends=True,
    )


# --------------------------------------------------------------------------- driver


class Auditor:
    """Feeds a time-ordered event stream through ``evaluate`` with one history.

    ``process(event)`` returns the late decisions that became due (break-the-glass
    starts without a stop) followed by the event's own decision. ``finish()`` returns
    the overrides still waiting at the end of the input (a replay of a time range
    should feed events up to ``to + btg_stop_window`` before finishing).
    """

    def __init__(
        self,
        state: ReferenceState,
        *,
        config: AuditConfig = DEFAULT_CONFIG,
        consent_evaluator: ConsentEvaluator | None = None,
        history: AccessHistory | None = None,
    ) -> None:
        self.state = state
        self.config = config
        self.consent_evaluator = consent_evaluator
        self.history = history if history is not None else AccessHistory(config)
        #: the consent policy table, read by the driver once per run or cycle
        #: (``read_policy_table``); None: read for each access
        self.policy_table: PolicyTable | None = None

    def process(self, event: AccessEvent) -> list[AccessDecision]:
        now = ts_to_us(event.occurred_at)
        out = [missing_stop_decision(o, self.config) for o in self.history.expire(now)]
        view = self.state.as_of(event.occurred_at)
        out.append(
            evaluate(
                event,
                view,
                self.history,
                config=self.config,
                consent_evaluator=self.consent_evaluator,
                policy_table=self.policy_table,
            )
        )
        self.history.observe(event, role=_role(view.staff(event.actor.id), event))
        return out

    def run(self, events: Iterable[AccessEvent]) -> list[AccessDecision]:
        """Decide every event, then ``finish``; the policy table is read once for the
        run (unless one is set)."""
        out: list[AccessDecision] = []
        before = self.policy_table
        if before is None:
            self.policy_table = read_policy_table()
        try:
            for event in events:
                out.extend(self.process(event))
        finally:
            self.policy_table = before
        out.extend(self.finish())
        return out

    def finish(self) -> list[AccessDecision]:
        return [missing_stop_decision(o, self.config) for o in self.history.flush()]
