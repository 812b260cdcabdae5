"""The injections of an audit scenario: labelled inappropriate accesses of every audit
rule type, placed into the legitimate traffic.

``_Injector`` holds one method per rule type (consent denied, snooping, break the
glass, self access, family, co-worker, VIP or sensitive records, inactive accounts,
volume spikes, after hours, shared credentials, denied bursts, disclosures without
purpose, repeat offenders); each returns events with the :class:`RuleCode` s expected
to flag them (None: an event of the unit that no rule should flag).

Timing choices mirror the auditor's defaults where a rule depends on time (shift grace
1 h before / 2 h after, shared-credentials window 2 min, denied-burst window 10 min):
injected events are placed so that only the intended rules apply.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Sequence
from random import Random
from typing import Any, Final, Literal

from careledger_core.event import (
    EVENT_SCHEMA,
    AccessEvent,
    Action,
    Client,
    Coding,
    ObjectRef,
    Outcome,
)
from careledger_core.rule_codes import RuleCode

from .model import HospitalModel
from .plan import (
    _CLINICAL,
    _US_DAY,
    _US_HOUR,
    _US_MIN,
    _fmt,
    _plan,
    _surname,
    _unrelated,
    _us,
    _weekday_hour,
)
from .reference import Departure
from .vocabulary import (
    DCM_EMERGENCY_OVERRIDE_STARTED,
    DCM_EMERGENCY_OVERRIDE_STOPPED,
    DCM_EXPORT,
    DCM_LOGIN,
    DCM_SECURITY_ALERT,
    DCM_USER_AUTHENTICATION,
    LIFECYCLE_DISCLOSE,
    NO_PATIENT,
    REST_READ,
    ROLE_DOMAIN_RESOURCE,
    ROLE_PATIENT,
    ROLE_REPORT,
    TYPE_REST,
    SimPatient,
    StaffMember,
    _uuid4,
)

# Mirrors of the auditor's defaults (verifiers.auditor.config.AuditConfig)
_GRACE_BEFORE_US: Final = 1 * _US_HOUR
_GRACE_AFTER_US: Final = 2 * _US_HOUR
_SHARED_WINDOW_US: Final = 2 * _US_MIN
_DENIED_WINDOW_US: Final = 10 * _US_MIN

_R = RuleCode
_Unit = list[tuple[AccessEvent, tuple[RuleCode, ...] | None, str | None]]


class _Injector:
    def __init__(
        self,
        model: HospitalModel,
        legit: list[AccessEvent],
        rng: Random,
        t_lo: int,
        t_hi: int,
    ) -> None:
        self.model = model
        self.plan = _plan(model)
        self.rng = rng
        self.t_lo, self.t_hi = t_lo, t_hi
        self.by_id = {m.id: m for m in model.staff}
        self.times: dict[str, list[int]] = {}
        self.last_event: dict[str, AccessEvent] = {}
        for e in legit:
            self.times.setdefault(e.actor.id, []).append(_us(e.occurred_at))
        self.legit = legit
        self.used: set[int] = set()
        self.departures: list[Departure] = []
        self.confirmed: list[tuple[str, str]] = []
        self.offenders: list[StaffMember] = []
        self.touched: set[str] = set()  # actors of injected events
        #: actors who break the glass in the legitimate traffic (always reviewed: as
        #: repeat offenders those reviews would be weighted too)
        self.overriders = {e.actor.id for e in legit if "ETREAT" in e.purpose_of_use}
        self.groups = 0
        p = self.plan
        self.clean_patients = [
            q
            for q in model.patients
            if q.sensitivity is None
            and q.index not in p.employee_of_patient
            and q.index not in p.family
            and q.index not in p.opt_out
            and q.index not in p.deny_practitioner
        ]
        self.sensitive_patients = [
            q
            for q in model.patients
            if q.sensitivity is not None
            and q.index not in p.employee_of_patient
            and q.index not in p.opt_out
            and q.index not in p.deny_practitioner
        ]
        # reserve the people the reference data links, so their other injections do not mix
        self.used.update(p.employee_of_patient.values())
        self.used.update(s for s, _ in p.family.values())

    def observe(self, events: Iterable[AccessEvent]) -> None:
        """Count injected events as activity, so later injections keep clear of them."""
        for e in events:
            insort(self.times.setdefault(e.actor.id, []), _us(e.occurred_at))
            self.touched.add(e.actor.id)

    # -- time and people ---------------------------------------------------------------
    def on_duty(self, m: StaffMember, us: int) -> bool:
        return self.model.on_duty(m, *_weekday_hour(us))

    def on_shift_with_grace(self, m: StaffMember, us: int) -> bool:
        return any(self.on_duty(m, t) for t in (us, us - _GRACE_AFTER_US, us + _GRACE_BEFORE_US))

    def idle(self, m: StaffMember, a: int, b: int) -> bool:
        ts = self.times.get(m.id, [])
        return bisect_left(ts, a) == bisect_right(ts, b)

    def slot(
        self,
        pool: Sequence[StaffMember],
        before: int = 3 * _US_MIN,
        after: int = 3 * _US_MIN,
        span: int = 0,
        tries: int = 400,
        reserved: bool = False,
    ) -> tuple[StaffMember, int] | None:
        """A member of ``pool`` on duty and idle around a random instant (``reserved``:
        the pool names people the reference data links to a patient on purpose)."""
        rng = self.rng
        if not reserved:
            pool = [m for m in pool if m.index not in self.used]
        if not pool:
            return None
        for _ in range(tries):
            t = self.t_lo + rng.randrange(max(1, self.t_hi - self.t_lo - span))
            m = pool[rng.randrange(len(pool))]
            if (
                self.on_duty(m, t)
                and self.on_duty(m, t + span)
                and self.idle(m, t - before, t + span + after)
            ):
                return m, t
        return None

    def clinicians(self) -> list[StaffMember]:
        return [m for m in self.model.staff if m.role in _CLINICAL]

    def stranger(self, m: StaffMember, pool: Sequence[SimPatient]) -> SimPatient | None:
        """A patient of ``pool`` nothing links to ``m`` (no relationship, no family,
        different surname)."""
        rng = self.rng
        surname = _surname(m.name)
        for _ in range(200):
            p = pool[rng.randrange(len(pool))]
            if _unrelated(self.model, m, p) and self.plan.patient_name[p.index][1] != surname:
                return p
        return None

    def unexplained(self, p: SimPatient) -> tuple[RuleCode, ...]:
        if p.sensitivity is not None:
            return (_R.NO_EXPLANATION, _R.VIP_OR_SENSITIVE_UNEXPLAINED)
        return (_R.NO_EXPLANATION,)

    # -- events -------------------------------------------------------------------------
    def client(self, m: StaffMember) -> Client:
        ws = self.model.workstations[m.department]
        return ws[self.rng.randrange(len(ws))]

    def vpn(self) -> Client:
        v = self.model.vpn_clients
        return v[self.rng.randrange(len(v))]

    def event(
        self,
        t: int,
        m: StaffMember,
        p: SimPatient | None,
        *,
        client: Client,
        session: str,
        action: Action = "R",
        purpose: tuple[str, ...] = ("TREAT",),
        outcome: Outcome = 0,
        desc: str | None = None,
        event_type: Coding = TYPE_REST,
        subtype: tuple[Coding, ...] = (REST_READ,),
        object_type: str = "Observation",
    ) -> AccessEvent:
        rng = self.rng
        source = self.model.sources["ehr", m.campus]
        if p is None:
            return AccessEvent(
                schema=EVENT_SCHEMA,
                event_id=_uuid4(rng.getrandbits(128)),
                occurred_at=_fmt(t),
                recorded_at=_fmt(t + 40_000),
                event_type=DCM_USER_AUTHENTICATION,
                event_subtype=(DCM_LOGIN,),
                action="E",
                outcome=outcome,
                outcome_desc=desc,
                actor=m.actor,
                client=client,
                session_ref=session if outcome == 0 else None,
                source=self.model.sources["sso", m.campus],
                patient=NO_PATIENT,
            )
        if object_type == "Patient":
            obj = ObjectRef(type="Patient", id=f"Patient/{p.mrn}", role=ROLE_PATIENT)
        else:
            role = ROLE_REPORT if object_type == "DocumentReference" else ROLE_DOMAIN_RESOURCE
            obj = ObjectRef(type=object_type, id=f"{object_type}/{rng.getrandbits(28)}", role=role)
        return AccessEvent(
            schema=EVENT_SCHEMA,
            event_id=_uuid4(rng.getrandbits(128)),
            occurred_at=_fmt(t),
            recorded_at=_fmt(t + 120_000),
            event_type=event_type,
            event_subtype=subtype,
            action=action,
            outcome=outcome,
            outcome_desc=desc,
            purpose_of_use=purpose,
            actor=m.actor,
            client=client,
            session_ref=session,
            source=source,
            patient=p.patient,
            object=obj,
            sensitivity=p.sensitivity,
            correlation_id=f"{rng.getrandbits(64):016x}",
        )

    def session(self) -> str:
        return f"{self.rng.getrandbits(64):016x}"

    def group(self, name: str) -> str:
        self.groups += 1
        return f"{name}-{self.groups}"

    def read(self, t: int, m: StaffMember, p: SimPatient, **kw: Any) -> AccessEvent:
        kw.setdefault("client", self.client(m))
        kw.setdefault("session", self.session())
        return self.event(t, m, p, **kw)

    # -- one injection per rule type (each returns events with labels; None: unlabelled)
    def consent_denied(self, k: int) -> _Unit | None:
        plan, model = self.plan, self.model
        if k % 2 == 0 and plan.deny_practitioner:
            denied = sorted(plan.deny_practitioner)
            p = model.patients[denied[self.rng.randrange(len(denied))]]
            m = model.staff[plan.deny_practitioner[p.index]]
            found = None if m.index in self.used else self.slot([m], tries=300, reserved=True)
            if found is not None:
                return [(self.read(found[1], m, p), (_R.CONSENT_DENIED, _R.NO_EXPLANATION), None)]
        if not plan.opt_out:
            return None
        found = self.slot(self.clinicians())
        if found is None:
            return None
        actor, t = found
        pats = [model.patients[i] for i in sorted(plan.opt_out)]
        target = self.stranger(actor, pats)
        if target is None:
            return None
        rules = (_R.CONSENT_DENIED, *self.unexplained(target))
        return [(self.read(t, actor, target), rules, None)]

    def snoop(self, k: int) -> _Unit | None:
        found = self.slot(self.clinicians())
        if found is None:
            return None
        m, t = found
        p = self.stranger(m, self.clean_patients)
        if p is None:
            return None
        return [(self.read(t, m, p, object_type="Patient"), (_R.NO_EXPLANATION,), None)]

    def break_the_glass(self, k: int) -> _Unit | None:
        found = self.slot(self.clinicians(), span=20 * _US_MIN)
        if found is None:
            return None
        m, t = found
        p = self.stranger(m, self.clean_patients)
        if p is None:
            return None
        client, session = self.client(m), self.session()
        no_reason = k % 2 == 0
        start = self.event(
            t,
            m,
            p,
            client=client,
            session=session,
            action="E",
            purpose=() if no_reason else ("ETREAT",),
            event_type=DCM_SECURITY_ALERT,
            subtype=(DCM_EMERGENCY_OVERRIDE_STARTED,),
            object_type="Patient",
        )
        out: _Unit = [(start, (_R.BREAK_THE_GLASS,), None)]
        t += 20_000_000
        for _ in range(1 + self.rng.randrange(2)):
            t += 5_000_000 + self.rng.randrange(60_000_000)
            out.append(
                (
                    self.event(t, m, p, client=client, session=session, purpose=("ETREAT",)),
                    (_R.BREAK_THE_GLASS,),
                    None,
                )
            )
        if no_reason:  # stopped properly: only the missing reason is wrong
            t += 30_000_000
            stop = self.event(
                t,
                m,
                p,
                client=client,
                session=session,
                action="E",
                purpose=("ETREAT",),
                event_type=DCM_SECURITY_ALERT,
                subtype=(DCM_EMERGENCY_OVERRIDE_STOPPED,),
                object_type="Patient",
            )
            out.append((stop, None, None))
        return out

    def self_access(self, k: int) -> _Unit | None:
        items = sorted(self.plan.patient_of_employee.items())
        if not items:
            return None
        for j in range(len(items)):
            s, pi = items[(k + j) % len(items)]
            m, p = self.model.staff[s], self.model.patients[pi]
            found = self.slot([m], tries=300, reserved=True)
            if found is None:
                continue
            action: Action = "U" if k % 3 == 2 else "R"
            e = self.read(found[1], m, p, action=action, object_type="Patient")
            return [(e, (_R.SELF_ACCESS, *self.unexplained(p)), None)]
        return None

    def family(self, k: int) -> _Unit | None:
        items = sorted(self.plan.family.items())
        if k % 4 == 3 or not items:  # a shared surname only, unexplained
            found = self.slot(self.clinicians())
            if found is None:
                return None
            m, t = found
            surname = _surname(m.name)
            pool = [
                q
                for q in self.clean_patients
                if self.plan.patient_name[q.index][1] == surname and _unrelated(self.model, m, q)
            ]
            if not pool:
                return None
            p = pool[self.rng.randrange(len(pool))]
            return [(self.read(t, m, p), (_R.FAMILY, _R.NO_EXPLANATION), None)]
        for j in range(len(items)):
            pi, (s, _kind) = items[(k + j) % len(items)]
            m, p = self.model.staff[s], self.model.patients[pi]
            found = self.slot([m], tries=300, reserved=True)
            if found is not None:
                return [(self.read(found[1], m, p), (_R.FAMILY, _R.NO_EXPLANATION), None)]
        return None

    def co_worker(self, k: int) -> _Unit | None:
        items = sorted(self.plan.patient_of_employee.items())
        if not items:
            return None
        s, pi = items[k % len(items)]
        emp, p = self.model.staff[s], self.model.patients[pi]
        surname = self.plan.patient_name[pi][1]
        pool = [
            m
            for m in self.model.staff
            if m.role in _CLINICAL
            and m.index != s
            and m.department == emp.department
            and _unrelated(self.model, m, p)
            and _surname(m.name) != surname
        ]
        found = self.slot(pool)
        if found is None:
            return None
        m, t = found
        return [(self.read(t, m, p), (_R.CO_WORKER, *self.unexplained(p)), None)]

    def vip(self, k: int) -> _Unit | None:
        if not self.sensitive_patients:
            return None
        found = self.slot(self.clinicians())
        if found is None:
            return None
        m, t = found
        p = self.stranger(m, self.sensitive_patients)
        if p is None:
            return None
        return [(self.read(t, m, p), self.unexplained(p), None)]

    def inactive(self, k: int) -> _Unit | None:
        rng = self.rng
        cap = max(3, len(self.model.staff) // 40)
        if len(self.departures) >= cap:  # the same people come back again
            for _ in range(50):
                d = self.departures[rng.randrange(len(self.departures))]
                m = self.model.staff[d.staff_index]
                earliest = max(d.at_us + 30 * _US_MIN, self.t_lo)
                t = earliest + rng.randrange(max(1, self.t_hi - earliest))
                if t < self.t_hi and self.idle(m, t - 3 * _US_MIN, t + 3 * _US_MIN):
                    return self._comeback(m, t)
            return None
        pool = [
            m
            for m in self.clinicians()
            if m.index not in self.used
            and m.panel
            and self.times.get(m.id)
            and self.times[m.id][-1] < self.t_hi - 2 * _US_HOUR
        ]
        if not pool:
            return None
        m = pool[rng.randrange(len(pool))]
        self.used.add(m.index)
        left = self.times[m.id][-1] + 20 * _US_MIN
        status: Literal["terminated", "suspended"] = "terminated" if k % 3 else "suspended"
        self.departures.append(Departure(m.index, status, left))
        earliest = max(left + 30 * _US_MIN, self.t_lo)  # inside the measured period
        t = earliest + rng.randrange(max(1, self.t_hi - earliest))
        return self._comeback(m, t)

    def _comeback(self, m: StaffMember, t: int) -> _Unit:
        """A login and a read by a departed account, remotely."""
        rng = self.rng
        client, session = self.vpn(), self.session()
        p = self.model.patients[m.panel[rng.randrange(len(m.panel))]]
        login = self.event(t, m, None, client=client, session=session)
        read = self.read(t + 20_000_000, m, p, client=client, session=session)
        return [
            (login, self._inactive_rules(m, t), None),
            (read, self._inactive_rules(m, t + 20_000_000), None),
        ]

    def _inactive_rules(self, m: StaffMember, t: int) -> tuple[RuleCode, ...]:
        if self.on_shift_with_grace(m, t):
            return (_R.INACTIVE_USER,)
        return (_R.INACTIVE_USER, _R.AFTER_HOURS)

    def volume(self, size: int) -> _Unit | None:
        roles = ("him-specialist", "registration-clerk", "billing-specialist")
        pool = [m for m in self.model.staff if m.role in roles and m.index not in self.used]
        if not pool:
            return None
        rng = self.rng
        span = size * 6_000_000
        rules: tuple[RuleCode, ...] = (_R.VOLUME_SPIKE,)
        chosen: tuple[StaffMember, int] | None = None
        for _ in range(3000):
            m = pool[rng.randrange(len(pool))]
            t = self.t_lo + rng.randrange(max(1, self.t_hi - self.t_lo - span))
            if (
                self.on_shift_with_grace(m, t)
                and self.on_shift_with_grace(m, t + span)
                and self.idle(m, t, t + span + 65 * _US_MIN)
            ):
                chosen = m, t
                break
        if chosen is None:  # after hours then (an off-duty scrape)
            found = None
            for _ in range(3000):
                m = pool[rng.randrange(len(pool))]
                t = self.t_lo + rng.randrange(max(1, self.t_hi - self.t_lo - span))
                if self.idle(m, t - 65 * _US_MIN, t + span + 65 * _US_MIN):
                    found = m, t
                    break
            if found is None:
                return None
            chosen = found
            rules += (_R.AFTER_HOURS,)
        m, t = chosen
        self.used.add(m.index)
        purpose = {"him-specialist": "PATRQT", "registration-clerk": "HOPERAT"}.get(
            m.role, "HPAYMT"
        )
        skip = set(self.plan.employee_of_patient) | set(self.plan.family)
        candidates = [q for q in self.model.patients if q.index not in skip]
        patients = rng.sample(candidates, min(size, len(candidates)))
        client, session, g = self.client(m), self.session(), self.group("burst")
        out: _Unit = []
        for p in patients:
            t += 2_000_000 + rng.randrange(6_000_000)
            e = self.event(
                t, m, p, client=client, session=session, purpose=(purpose,), object_type="Patient"
            )
            out.append((e, rules, g))
        return out

    def after_hours(self, k: int) -> _Unit | None:
        rng = self.rng
        pool = [m for m in self.clinicians() if m.index not in self.used and m.panel]
        if not pool:
            return None
        for _ in range(2000):
            m = pool[rng.randrange(len(pool))]
            t = self.t_lo + rng.randrange(self.t_hi - self.t_lo)
            if not self.on_shift_with_grace(m, t) and self.idle(
                m, t - 3 * _US_HOUR, t + 3 * _US_HOUR
            ):
                p = self.model.patients[m.panel[rng.randrange(len(m.panel))]]
                return [(self.read(t, m, p, client=self.vpn()), (_R.AFTER_HOURS,), None)]
        return None

    def shared_credentials(self, k: int) -> _Unit | None:
        rng = self.rng
        legit = self.legit
        for _ in range(3000):
            e = legit[rng.randrange(len(legit))]
            m = self.by_id.get(e.actor.id)
            if m is None or m.index in self.used or not m.panel or m.role not in _CLINICAL:
                continue
            te = _us(e.occurred_at)
            if te < self.t_lo:  # keep injections inside the measured period
                continue
            t = te + 10_000_000 + rng.randrange(50_000_000)
            if not self.idle(m, te + 1, t + _SHARED_WINDOW_US + 30_000_000):
                continue
            if e.client is None:
                continue
            client = self.vpn()
            if client.address == e.client.address:
                continue
            p = self.model.patients[m.panel[rng.randrange(len(m.panel))]]
            return [(self.read(t, m, p, client=client), (_R.SHARED_CREDENTIALS,), None)]
        return None

    def denied_burst(self, k: int) -> _Unit | None:
        found = self.slot(
            [m for m in self.model.staff if m.role in _CLINICAL],
            before=_DENIED_WINDOW_US + _US_MIN,
            after=_DENIED_WINDOW_US + _US_MIN,
            span=5 * _US_MIN,
        )
        if found is None:
            return None
        m, t = found
        client, g = self.client(m), self.group("denied")
        out: _Unit = []
        logins = k % 2 == 0
        for _ in range(6):
            t += 10_000_000 + self.rng.randrange(30_000_000)
            if logins:
                e = self.event(
                    t, m, None, client=client, session="", outcome=4, desc="invalid credentials"
                )
                out.append((e, (_R.DENIED_BURST,), g))
            else:
                p = self.stranger(m, self.clean_patients)
                if p is None:
                    return None
                e = self.read(
                    t,
                    m,
                    p,
                    client=client,
                    outcome=4,
                    desc="access denied: not authorized for this patient",
                )
                out.append((e, (_R.DENIED_BURST, _R.NO_EXPLANATION), g))
        return out

    def disclosure(self, k: int) -> _Unit | None:
        pool = [m for m in self.model.staff if m.role == "him-specialist" or m.role in _CLINICAL]
        pool = [m for m in pool if m.role == "him-specialist" or m.panel]
        found = self.slot(pool)
        if found is None:
            return None
        m, t = found
        if m.panel:
            p = self.model.patients[m.panel[self.rng.randrange(len(m.panel))]]
        else:
            p = self.clean_patients[self.rng.randrange(len(self.clean_patients))]
        purpose: tuple[str, ...] = ("HMARKT",) if k % 2 == 0 else ()
        e = self.read(
            t,
            m,
            p,
            action="E",
            purpose=purpose,
            event_type=DCM_EXPORT,
            subtype=(LIFECYCLE_DISCLOSE,),
            object_type="DocumentReference",
        )
        rules: tuple[RuleCode, ...] = (_R.DISCLOSURE_WITHOUT_PURPOSE,)
        if p.index in self.plan.opt_out:  # an opt-out refuses marketing and unstated uses
            rules += (_R.CONSENT_DENIED,)
        return [(e, rules, None)]

    def repeat_offender(self, k: int) -> _Unit | None:
        cap = max(3, len(self.model.staff) // 40)
        if len(self.offenders) >= cap:  # known offenders offend again
            found = self.slot(self.offenders, reserved=True)
        else:  # not from the emergency departments: their routine overrides would be
            # weighted too (any flag of medium severity or more)
            pool = [
                m
                for m in self.clinicians()
                if m.department not in ("ED", "ICU")
                and m.id not in self.touched
                and m.id not in self.overriders
            ]
            found = self.slot(pool)
        if found is None:
            return None
        m, t = found
        p = self.stranger(m, self.clean_patients)
        if p is None:
            return None
        if m not in self.offenders:
            self.used.add(m.index)
            self.offenders.append(m)
            at = self.t_lo - (60 + self.rng.randrange(200)) * _US_DAY
            self.confirmed.append((m.id, _fmt(at)))
        return [(self.read(t, m, p), (_R.NO_EXPLANATION, _R.REPEAT_OFFENDER), None)]
