"""Bounded per-actor memory of recent activity, fed events in time order.

The rules read it (``evaluate`` never changes it); the driver calls ``observe(event)``
after evaluating each event and ``expire(now)`` before, which returns the break-the-glass
overrides whose stop never came. Everything derives from event times, so feeding the
same events in the same order always gives the same answers, and memory stays bounded:
every window is pruned by time and capped in length, baselines are fixed-size deques
with a histogram for percentiles.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from careledger_core.event import AccessEvent

from ._time import US_PER_HOUR, ts_to_us
from .config import DEFAULT_CONFIG, AuditConfig

__all__ = [
    "NO_PATIENT_ID",
    "AccessHistory",
    "Baseline",
    "OpenOverride",
    "PlaceSeen",
    "has_code",
    "is_btg_start",
    "is_btg_stop",
]

#: Placeholder patient of events that concern no patient (login/logout).
NO_PATIENT_ID: Final = "-"
DCM_BTG_START: Final = "110127"
DCM_BTG_STOP: Final = "110138"


#: the codes of the last event asked about (each step that decides an event asks)
_last_codes: tuple[AccessEvent | None, frozenset[str]] = (None, frozenset())


def has_code(event: AccessEvent, code: str) -> bool:
    """True if the event type or one of its subtypes has ``code``."""
    global _last_codes
    last, codes = _last_codes
    if last is not event:  # events are immutable: the same object has the same codes
        codes = frozenset((event.event_type.code, *(c.code for c in event.event_subtype)))
        _last_codes = (event, codes)
    return code in codes


def is_btg_start(event: AccessEvent) -> bool:
    return has_code(event, DCM_BTG_START)


def is_btg_stop(event: AccessEvent) -> bool:
    return has_code(event, DCM_BTG_STOP)


#: purposes of use that invoke emergency access (HL7 v3 ActReason)
EMERGENCY_PURPOSES: Final = frozenset({"ETREAT", "BTG"})


def btg_reason_given(event: AccessEvent) -> bool:
    """An override start states why: free text, or a purpose of use."""
    return bool(event.outcome_desc) or bool(event.purpose_of_use)


class Baseline:
    """The last ``size`` hourly counts and their histogram (for cheap percentiles)."""

    __slots__ = ("_hist", "_p95", "counts")

    def __init__(self, size: int) -> None:
        self.counts: deque[int] = deque(maxlen=size)
        self._hist: dict[int, int] = {}
        self._p95: int | None = None

    def push(self, value: int) -> None:
        counts = self.counts
        if counts.maxlen is not None and len(counts) == counts.maxlen:
            old = counts[0]
            left = self._hist[old] - 1
            if left:
                self._hist[old] = left
            else:
                del self._hist[old]
        counts.append(value)
        self._hist[value] = self._hist.get(value, 0) + 1
        self._p95 = None

    def __len__(self) -> int:
        return len(self.counts)

    def p95(self) -> int:
        if self._p95 is None:
            n = len(self.counts)
            if n == 0:
                self._p95 = 0
            else:
                rank = -(-95 * n // 100)  # ceil(0.95 n): nearest-rank percentile
                seen = 0
                for value in sorted(self._hist):
                    seen += self._hist[value]
                    if seen >= rank:
                        self._p95 = value
                        break
        assert self._p95 is not None
        return self._p95


@dataclass(slots=True)
class OpenOverride:
    """A break-the-glass override (110127) not yet stopped (110138)."""

    event_id: str
    occurred_at: str
    actor_id: str
    patient_id: str
    start_us: int
    stopped: bool = False
    #: the start stated a reason (outcome description or purpose of use)
    reason_given: bool = True
    #: accesses made under this override (emergency purpose, same actor and patient)
    access_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PlaceSeen:
    t_us: int
    address: str
    workstation: str | None
    session_ref: str | None
    event_id: str


@dataclass(slots=True)
class _Actor:
    role: str | None = None
    # volume: (t_us, patient, event id) within the volume window, counts per patient
    recent: deque[tuple[int, str, str]] = field(default_factory=deque)
    recent_counts: dict[str, int] = field(default_factory=dict)
    last_distinct: int = 0  # distinct patients in the window after the last access
    hour: int = -1
    hour_patients: set[str] = field(default_factory=set)
    baseline: Baseline | None = None
    places: deque[PlaceSeen] = field(default_factory=deque)
    denials: deque[tuple[int, str]] = field(default_factory=deque)
    overrides: dict[str, OpenOverride] = field(default_factory=dict)  # by patient
    confirmed: deque[int] = field(default_factory=deque)


class AccessHistory:
    """Per-actor sliding windows over the events seen so far (bounded, replayable)."""

    def __init__(self, config: AuditConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        self._actors: dict[str, _Actor] = {}
        self._peers: dict[str, Baseline] = {}
        self._override_queue: deque[OpenOverride] = deque()
        self.last_us: int | None = None
        self.observed = 0

    def _actor(self, actor_id: str) -> _Actor:
        a = self._actors.get(actor_id)
        if a is None:
            a = self._actors[actor_id] = _Actor()
            a.baseline = Baseline(self.config.volume_own_hours)
        return a

    # -- reading (used by the rules) ----------------------------------------------------
    def distinct_patients(self, actor_id: str, now_us: int, patient_id: str) -> int:
        """Distinct patients of the actor in the volume window ending now, counting
        ``patient_id`` (the access being evaluated)."""
        a = self._actors.get(actor_id)
        if a is None:
            return 1
        cutoff = now_us - self.config.volume_window_us
        counts = dict(a.recent_counts) if a.recent and a.recent[0][0] <= cutoff else None
        if counts is not None:  # do not mutate while reading: count what is still inside
            for t, p, _ in a.recent:
                if t > cutoff:
                    break
                left = counts[p] - 1
                if left:
                    counts[p] = left
                else:
                    del counts[p]
            distinct = len(counts)
            return distinct + (patient_id not in counts)
        return len(a.recent_counts) + (patient_id not in a.recent_counts)

    def previous_distinct(self, actor_id: str) -> int:
        """Distinct patients in the actor's volume window right after their last access."""
        a = self._actors.get(actor_id)
        return 0 if a is None else a.last_distinct

    def window_event_ids(self, actor_id: str, now_us: int, limit: int) -> list[str]:
        """Event ids of the actor's patient accesses in the volume window (last ``limit``)."""
        a = self._actors.get(actor_id)
        if a is None:
            return []
        cutoff = now_us - self.config.volume_window_us
        ids = [eid for t, _, eid in a.recent if t > cutoff]
        return ids[-limit:]

    def own_baseline(self, actor_id: str) -> Baseline | None:
        a = self._actors.get(actor_id)
        return None if a is None else a.baseline

    def peer_baseline(self, role: str) -> Baseline | None:
        return self._peers.get(role)

    def places_within(self, actor_id: str, now_us: int, window_us: int) -> Iterator[PlaceSeen]:
        a = self._actors.get(actor_id)
        if a is None:
            return
        cutoff = now_us - window_us
        for seen in reversed(a.places):
            if seen.t_us < cutoff:
                break
            yield seen

    def denials_within(self, actor_id: str, now_us: int, window_us: int) -> list[str]:
        """Event ids of the actor's outcome 4/8 events in the window (oldest first)."""
        a = self._actors.get(actor_id)
        if a is None:
            return []
        cutoff = now_us - window_us
        return [eid for t, eid in a.denials if t >= cutoff]

    def open_override(self, actor_id: str, patient_id: str, now_us: int) -> OpenOverride | None:
        """The actor's override for the patient started within the episode window."""
        a = self._actors.get(actor_id)
        if a is None:
            return None
        o = a.overrides.get(patient_id)
        if o is None or now_us - o.start_us > self.config.btg_episode_us:
            return None
        return o

    def confirmed_violations(self, actor_id: str, now_us: int) -> int:
        a = self._actors.get(actor_id)
        if a is None:
            return 0
        cutoff = now_us - self.config.repeat_window_us
        return sum(1 for t in a.confirmed if cutoff <= t <= now_us)

    # -- feeding ------------------------------------------------------------------------
    def record_confirmed_violation(self, actor_id: str, at: str) -> None:
        """A human confirmed an alert about ``actor_id`` (status resolved, not a false
        positive) at ``at``; feed these in time order with the events."""
        a = self._actor(actor_id)
        a.confirmed.append(ts_to_us(at))
        while len(a.confirmed) > self.config.max_window_entries:
            a.confirmed.popleft()

    def expire(self, now_us: int) -> list[OpenOverride]:
        """Overrides started more than the stop window before ``now`` and never stopped
        (each returned once, oldest first)."""
        out: list[OpenOverride] = []
        q = self._override_queue
        limit = self.config.btg_stop_window_us
        while q and now_us - q[0].start_us > limit:
            o = q.popleft()
            if not o.stopped:
                out.append(o)
            a = self._actors.get(o.actor_id)
            if a is not None and a.overrides.get(o.patient_id) is o:
                del a.overrides[o.patient_id]
        return out

    def flush(self) -> list[OpenOverride]:
        """End of input: every override still waiting for its stop (oldest first)."""
        out = [o for o in self._override_queue if not o.stopped]
        self._override_queue.clear()
        for a in self._actors.values():
            a.overrides.clear()
        return out

    def observe(self, event: AccessEvent, role: str | None = None) -> None:
        """Remember ``event`` (call after evaluating it). ``role``: the actor's role for
        the peer baseline (directory role; defaults to the event's first role)."""
        cfg = self.config
        now = ts_to_us(event.occurred_at)
        self.last_us = now if self.last_us is None else max(self.last_us, now)
        self.observed += 1
        a = self._actor(event.actor.id)
        if role is None and event.actor.roles:
            role = event.actor.roles[0]
        if role is not None:
            a.role = role
        cap = cfg.max_window_entries
        patient = event.patient.id

        # volume window and hourly baselines
        if patient != NO_PATIENT_ID:
            hour = now // US_PER_HOUR
            if hour > a.hour:
                self._close_hour(a)
                a.hour = hour
            a.hour_patients.add(patient)
            a.recent.append((now, patient, event.event_id))
            a.recent_counts[patient] = a.recent_counts.get(patient, 0) + 1
        cutoff = now - cfg.volume_window_us
        recent, counts = a.recent, a.recent_counts
        while recent and (recent[0][0] <= cutoff or len(recent) > cap):
            _, p, _ = recent.popleft()
            left = counts[p] - 1
            if left:
                counts[p] = left
            else:
                del counts[p]
        if patient != NO_PATIENT_ID:
            a.last_distinct = len(counts)

        # places (shared credentials)
        if event.client is not None:
            a.places.append(
                PlaceSeen(
                    now,
                    event.client.address,
                    event.client.workstation,
                    event.session_ref,
                    event.event_id,
                )
            )
        places_cutoff = now - cfg.shared_credentials_window_us
        while a.places and (a.places[0].t_us < places_cutoff or len(a.places) > cap):
            a.places.popleft()

        # denials
        if event.outcome in (4, 8):
            a.denials.append((now, event.event_id))
        denial_cutoff = now - cfg.denied_burst_window_us
        while a.denials and (a.denials[0][0] < denial_cutoff or len(a.denials) > cap):
            a.denials.popleft()

        # break-the-glass overrides
        if patient != NO_PATIENT_ID:
            if is_btg_start(event):
                # a new start before the previous one stopped: the previous one stays in
                # the queue and is reported if no stop ever matches it
                o = OpenOverride(
                    event.event_id,
                    event.occurred_at,
                    event.actor.id,
                    patient,
                    now,
                    reason_given=btg_reason_given(event),
                )
                a.overrides[patient] = o
                self._override_queue.append(o)
            elif is_btg_stop(event):
                o2 = a.overrides.get(patient)
                if o2 is not None:
                    o2.stopped = True
            elif EMERGENCY_PURPOSES.intersection(event.purpose_of_use):
                o3 = a.overrides.get(patient)
                if (
                    o3 is not None
                    and now - o3.start_us <= cfg.btg_episode_us
                    and len(o3.access_ids) < cap
                ):
                    o3.access_ids.append(event.event_id)

    def _close_hour(self, a: _Actor) -> None:
        if a.hour < 0 or not a.hour_patients:
            return
        n = len(a.hour_patients)
        a.hour_patients = set()
        assert a.baseline is not None
        a.baseline.push(n)
        if a.role is not None:
            peers = self._peers.get(a.role)
            if peers is None:
                peers = self._peers[a.role] = Baseline(self.config.volume_peer_hours)
            peers.push(n)

    def stats(self) -> dict[str, int]:
        return {
            "actors": len(self._actors),
            "observed": self.observed,
            "open_overrides": sum(1 for o in self._override_queue if not o.stopped),
            "window_entries": sum(
                len(a.recent) + len(a.places) + len(a.denials) for a in self._actors.values()
            ),
        }
