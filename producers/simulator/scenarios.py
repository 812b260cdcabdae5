"""Audit scenarios: the simulated traffic with labelled inappropriate accesses.

``simulate_audit_scenario(model, count, seed, start, inappropriate_rate)`` returns a
:class:`Scenario`: reference records, ``count`` access events in ``occurred_at`` order
(legitimate traffic from ``simulate`` plus injected inappropriate accesses of every rule
type, see :mod:`producers.simulator.injector`) and the ground truth of the injected
events: their expected :class:`careledger_core.rule_codes.RuleCode` s. Everything is
deterministic from ``(model, count, seed, start, rate)``.

The traffic's own inappropriate accesses (curious looks outside the care team, overrides
that are never stopped) are labelled as well (``Scenario.background_truth``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterable, Sequence
from random import Random
from typing import Any

from careledger_core.event import AccessEvent
from careledger_core.reference import ReferenceRecord
from careledger_core.rule_codes import RuleCode

from .events import simulate
from .injector import _R, _Injector, _Unit
from .model import HospitalModel
from .plan import _US_HOUR, _US_MIN, _fmt, _plan, _surname, _unrelated, _us
from .reference import Departure, build_reference_records
from .vocabulary import (
    DCM_EMERGENCY_OVERRIDE_STARTED,
    DCM_EMERGENCY_OVERRIDE_STOPPED,
    DCM_SECURITY_ALERT,
    DEFAULT_START,
    to_epoch_us,
)

__all__ = ["GroundTruth", "Scenario", "simulate_audit_scenario"]


# --------------------------------------------------------------------------- scenario
@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """One injected inappropriate access and the rules expected to flag it."""

    event_id: str
    rules: tuple[RuleCode, ...]
    actor_id: str
    patient_id: str
    group: str | None = None  # events of one burst share a group
    #: False: an inappropriate access the simulator's own traffic contains (a curious
    #: look outside the care team), not one injected by the scenario
    injected: bool = True

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "event_id": self.event_id,
            "rules": [str(r) for r in self.rules],
            "actor_id": self.actor_id,
            "patient_id": self.patient_id,
        }
        if self.group is not None:
            d["group"] = self.group
        if not self.injected:
            d["injected"] = False
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


@dataclasses.dataclass(frozen=True)
class Scenario:
    reference_records: list[ReferenceRecord]
    events: list[AccessEvent]  # occurred_at order
    ground_truth: list[GroundTruth]
    #: (actor id, when): violations confirmed before the simulated period (case history),
    #: what makes a later flag on that actor a REPEAT_OFFENDER
    confirmed_violations: list[tuple[str, str]]
    departures: list[Departure]
    #: inappropriate accesses already in the legitimate traffic (``simulate``'s rare
    #: curious looks outside the care team that nothing explains), labelled the same way
    background_truth: list[GroundTruth] = dataclasses.field(default_factory=list)
    #: first event time of the measured period (None: no warm-up, all of it)
    scored_from: str | None = None

    @property
    def injected(self) -> int:
        return len(self.ground_truth)

    def all_truth(self) -> list[GroundTruth]:
        return sorted([*self.ground_truth, *self.background_truth], key=lambda g: g.event_id)


def _background_truth(
    model: HospitalModel, legit: Sequence[AccessEvent], offenders: frozenset[str] = frozenset()
) -> list[GroundTruth]:
    """The simulator's curious accesses: a member with a care-team panel opening a chart
    outside it (not in a break-the-glass episode) that no relationship explains.
    ``offenders``: actors with confirmed past violations (REPEAT_OFFENDER)."""
    plan = _plan(model)
    by_id = {m.id: m for m in model.staff}
    by_mrn = {p.mrn: p for p in model.patients}
    panels = {m.id: frozenset(m.panel) for m in model.staff}
    out: list[GroundTruth] = []
    for e in legit:
        m = by_id.get(e.actor.id)
        p = by_mrn.get(e.patient.id)
        if m is None or p is None or not m.panel or p.index in panels[m.id]:
            continue
        if "ETREAT" in e.purpose_of_use or e.event_type.code == DCM_SECURITY_ALERT.code:
            continue
        if not _unrelated(model, m, p):
            continue  # explained by the department or a colleague: not detectable
        rules = [_R.NO_EXPLANATION]
        if p.sensitivity is not None:
            rules.append(_R.VIP_OR_SENSITIVE_UNEXPLAINED)
        if p.index in plan.opt_out or plan.deny_practitioner.get(p.index) == m.index:
            rules.append(_R.CONSENT_DENIED)
        if plan.employee_of_patient.get(p.index) == m.index:
            rules.append(_R.SELF_ACCESS)
        elif plan.patient_name[p.index][1] == _surname(m.name):
            rules.append(_R.FAMILY)
        if m.id in offenders and (e.outcome == 0 or len(rules) > 1):
            rules.append(_R.REPEAT_OFFENDER)  # a flag of medium severity or more, weighted
        out.append(GroundTruth(e.event_id, tuple(rules), m.id, p.mrn, injected=False))
    out.extend(_unstopped_overrides(legit))
    out.sort(key=lambda g: g.event_id)
    return out


def _unstopped_overrides(legit: Iterable[AccessEvent]) -> list[GroundTruth]:
    """Break-the-glass starts of the traffic that no stop follows (about 4 % of the
    simulator's overrides): BREAK_THE_GLASS at its worse severity."""
    starts: dict[tuple[str, str], AccessEvent] = {}
    out: list[GroundTruth] = []
    window = 4 * _US_HOUR  # the auditor's default btg_stop_window
    for e in legit:
        if e.event_type.code != DCM_SECURITY_ALERT.code:
            continue
        key = (e.actor.id, e.patient.id)
        codes = {c.code for c in e.event_subtype}
        if DCM_EMERGENCY_OVERRIDE_STARTED.code in codes:
            old = starts.pop(key, None)
            if old is not None:
                out.append(_unstopped(old))
            starts[key] = e
        elif DCM_EMERGENCY_OVERRIDE_STOPPED.code in codes:
            old = starts.pop(key, None)
            if old is not None and _us(e.occurred_at) - _us(old.occurred_at) > window:
                out.append(_unstopped(old))
    out.extend(_unstopped(e) for e in starts.values())
    return out


def _unstopped(e: AccessEvent) -> GroundTruth:
    rules = (_R.BREAK_THE_GLASS,)
    return GroundTruth(e.event_id, rules, e.actor.id, e.patient.id, injected=False)


def simulate_audit_scenario(
    model: HospitalModel,
    count: int,
    seed: int,
    start: dt.datetime = DEFAULT_START,
    inappropriate_rate: float = 0.01,
    *,
    warmup_events: int = 0,
) -> Scenario:
    """``count`` events (about ``inappropriate_rate`` of them injected), their reference
    data and the ground truth of the injected ones. Deterministic from the inputs.

    ``warmup_events``: legitimate traffic simulated *before* those ``count`` events,
    with nothing injected into it: the history an auditor that has been running for a
    while has (per-actor and per-role baselines). ``Scenario.scored_from`` is where
    the measured period starts."""
    if not 0.0 <= inappropriate_rate < 0.5:
        raise ValueError("inappropriate_rate must be in [0, 0.5)")
    if warmup_events < 0:
        raise ValueError("warmup_events must be >= 0")
    target = round(count * inappropriate_rate)
    legit = list(
        simulate(
            model, max(0, count - target) + warmup_events, seed, start, exclusive_sessions=True
        )
    )
    scored_from = legit[warmup_events].occurred_at if 0 < warmup_events < len(legit) else None
    rng = Random(f"careledger-scenario/{seed}/{_fmt(to_epoch_us(start))}/{inappropriate_rate}")
    injected: _Unit = []
    inj: _Injector | None = None
    if target and legit:
        t_lo = to_epoch_us(start) + 10 * _US_MIN
        if scored_from is not None:
            t_lo = max(t_lo, _us(scored_from) + 10 * _US_MIN)
        t_hi = _us(legit[-1].occurred_at)
        t_hi = max(t_lo + _US_HOUR, t_hi - 5 * _US_MIN)
        inj = _Injector(model, legit, rng, t_lo, t_hi)
        burst = max(60, min(300, target // 5))
        injected.extend(inj.volume(burst) or [])
        inj.observe(e for e, _, _ in injected)
        kinds = (
            inj.consent_denied,
            inj.snoop,
            inj.break_the_glass,
            inj.self_access,
            inj.family,
            inj.co_worker,
            inj.vip,
            inj.inactive,
            inj.after_hours,
            inj.shared_credentials,
            inj.denied_burst,
            inj.disclosure,
            inj.repeat_offender,
        )
        k = 0
        misses = 0
        while misses < 3 * len(kinds) and (
            k < len(kinds) or sum(1 for _, r, _ in injected if r) < target
        ):
            unit = kinds[k % len(kinds)](k // len(kinds))
            k += 1
            if unit:
                injected.extend(unit)
                inj.observe(e for e, _, _ in unit)
                misses = 0
            else:
                misses += 1
    events = legit + [e for e, _, _ in injected]
    events.sort(key=lambda e: e.occurred_at)
    truth = [
        GroundTruth(e.event_id, rules, e.actor.id, e.patient.id, group)
        for e, rules, group in injected
        if rules
    ]
    truth.sort(key=lambda g: g.event_id)
    departures = inj.departures if inj is not None else []
    records = build_reference_records(model, start, departures=departures)
    return Scenario(
        reference_records=records,
        events=events,
        ground_truth=truth,
        confirmed_violations=inj.confirmed if inj is not None else [],
        departures=departures,
        background_truth=_background_truth(
            model, legit, frozenset(a for a, _ in inj.confirmed) if inj is not None else frozenset()
        ),
        scored_from=scored_from,
    )


def ground_truth_lines(truth: Iterable[GroundTruth]) -> Iterable[str]:
    for g in truth:
        yield g.to_json() + "\n"
