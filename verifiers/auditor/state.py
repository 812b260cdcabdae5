"""The reference state behind audit decisions, rebuilt from ledgered reference records.

``ReferenceState`` is built by applying :class:`~careledger_core.reference.ReferenceRecord`
s in ledger order; ``state.as_of(t)`` is a cheap view answering the auditor's questions
about instant ``t`` (an event's ``occurred_at``).

Versioning is bitemporal (order-independent, hence replayable). Each version has its
*effective* time (``effective_at``: from when it applies) and its *knowledge* time: when
careledger learnt it, which the runner takes from the ledger (``apply(rec, ledgered_at)``
with the signed ``created_at`` of the block that chained it, never decreasing along a
chain; see ADR 0008). Without a ledger time (states built by hand) the envelope's
``recorded_at`` stands in.

* the version of a record (kind, record_id) *in force at t, as known at k* is the
  highest version whose ``effective_at <= t`` and whose knowledge time ``<= k``;
  ``k = None`` means "everything applied";
* if that version is ``retracted`` the record does not exist at t;
* the same (kind, record_id, version) applied twice is ignored when identical (it is
  known from the earlier of its two knowledge times); a *different* record under the
  same version is a conflict: the first one applied (in ledger order) wins and the
  conflict is kept in ``state.conflicts``.

``state.as_of(t)`` uses ``state.known_at`` as the cutoff unless one is given: the
driver of the auditor sets it to the cutoff each event is decided with (the auditor
itself only calls ``as_of(t)``). ``state.latest_known_at`` is the newest knowledge time
applied: "what is known now".

Care relationships are looked up with a lead: a relationship whose record is in force at
``t + lead`` counts, so an encounter registered a little after the first access (the
emergency department) or an appointment booked for tomorrow still explains it.

Indexes: relationships and consents by patient; relationships by practitioner;
staff by linked patient id; patients by employee user id. Every query is a few dict
lookups plus a short scan of one record's versions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from careledger_core.errors import CareledgerError
from careledger_core.reference import (
    CareRelationshipBody,
    ConsentBody,
    PatientBody,
    ReferenceKind,
    ReferenceRecord,
    StaffBody,
    canonical_reference_bytes,
)

from ._time import date_to_us, ts_to_us
from .consent import Policy, parse_consent

__all__ = [
    "ACTIVE_CONSENT_STATUSES",
    "ActiveRelationship",
    "ReferenceState",
    "ReferenceView",
    "VersionConflict",
]

#: Consent statuses that are in force (R4 and R5 both use "active"; "inactive",
#: "rejected", "entered-in-error", "draft", "proposed", "not-done" are not).
ACTIVE_CONSENT_STATUSES: Final = frozenset({"active"})

_Key = tuple[str, str]  # (kind, record_id)


@dataclass(frozen=True, slots=True)
class ActiveRelationship:
    """A care relationship in force around the queried instant."""

    record_id: str
    version: int
    body: CareRelationshipBody
    start_us: int
    end_us: int | None  # None: open-ended


@dataclass(frozen=True, slots=True)
class VersionConflict:
    kind: str
    record_id: str
    version: int
    kept: str  # canonical JSON of the record applied first (it stays in force)
    rejected: str  # canonical JSON of the conflicting record


class _Versions:
    """The versions of one record, ascending by version number, with the time each
    became known (``known[i]`` belongs to ``recs[i]``)."""

    __slots__ = ("eff_us", "known", "recs")

    def __init__(self) -> None:
        self.recs: list[ReferenceRecord] = []
        self.known: list[str] = []
        #: ``effective_at`` of each version in µs (``at_us`` compares integers)
        self.eff_us: list[int] = []

    def add(self, rec: ReferenceRecord, known: str) -> ReferenceRecord | None:
        """Insert; returns the already present record of the same version, if any (an
        identical one then counts as known from the earlier of the two times)."""
        recs = self.recs
        i = len(recs)
        while i > 0 and recs[i - 1].version > rec.version:
            i -= 1
        if i > 0 and recs[i - 1].version == rec.version:
            present = recs[i - 1]
            if present == rec and known < self.known[i - 1]:
                self.known[i - 1] = known
            return present
        recs.insert(i, rec)
        self.known.insert(i, known)
        self.eff_us.insert(i, ts_to_us(rec.effective_at))
        return None

    def at(self, t: str, known_at: str | None) -> ReferenceRecord | None:
        recs, known = self.recs, self.known
        for i in range(len(recs) - 1, -1, -1):
            rec = recs[i]
            if rec.effective_at <= t and (known_at is None or known[i] <= known_at):
                return None if rec.retracted else rec
        return None

    def at_us(self, t_us: int, known_at: str | None) -> ReferenceRecord | None:
        """``at`` for the instant ``t_us`` (µs): the same version, as timestamps in the
        event format order as their µs values do."""
        recs, known, eff = self.recs, self.known, self.eff_us
        for i in range(len(recs) - 1, -1, -1):
            if eff[i] <= t_us and (known_at is None or known[i] <= known_at):
                rec = recs[i]
                return None if rec.retracted else rec
        return None

    def known_by(self, known_at: str | None) -> bool:
        """Whether any version was known at ``known_at`` (None: any version at all)."""
        return known_at is None or any(k <= known_at for k in self.known)


class ReferenceState:
    """All reference records applied so far, indexed for the auditor's queries."""

    def __init__(self, records: Iterable[ReferenceRecord] = ()) -> None:
        self._versions: dict[_Key, _Versions] = {}
        self._rel_by_patient: dict[str, set[str]] = {}
        self._rel_by_practitioner: dict[str, set[str]] = {}
        self._consent_by_patient: dict[str, set[str]] = {}
        self._staff_by_patient: dict[str, set[str]] = {}
        self._patients_by_employee: dict[str, set[str]] = {}
        #: each care relationship version as the rules see it: (record id, version) ->
        #: ``ActiveRelationship`` (immutable, shared by every query)
        self._rel_active: dict[tuple[str, int], ActiveRelationship] = {}
        #: a patient's relationship record ids sorted (dropped when one is added)
        self._rel_sorted: dict[str, tuple[str, ...]] = {}
        self.conflicts: list[VersionConflict] = []
        #: each consent version parsed once: (kind, id, version) -> (record, policy or
        #: why it cannot be evaluated); a version never changes once applied (a second
        #: record under it is a conflict and is not applied), and the record is kept to
        #: check that
        self._policies: dict[tuple[str, int], tuple[ReferenceRecord, Policy | CareledgerError]] = {}
        self.applied = 0
        #: counts every ``apply`` (a duplicate may move a version's knowledge time):
        #: views look records up again when it moved
        self.generation = 0
        self.duplicates = 0
        #: the knowledge cutoff ``as_of`` applies when given none (None: everything)
        self.known_at: str | None = None
        #: the newest knowledge time applied (None: nothing applied yet)
        self.latest_known_at: str | None = None
        self.apply_all(records)

    # -- building ---------------------------------------------------------------
    def apply(self, rec: ReferenceRecord, ledgered_at: str | None = None) -> bool:
        """Apply one record (ledger order). ``ledgered_at``: when the ledger learnt it
        (its block's signed time); default: the envelope's ``recorded_at``. Returns
        False for a duplicate or conflict."""
        self.generation += 1
        known = rec.recorded_at if ledgered_at is None else ledgered_at
        if self.latest_known_at is None or known > self.latest_known_at:
            self.latest_known_at = known
        key = (rec.kind, rec.record_id)
        versions = self._versions.get(key)
        if versions is None:
            versions = self._versions[key] = _Versions()
        present = versions.add(rec, known)
        if present is not None:
            if present == rec:
                self.duplicates += 1
            else:
                self.conflicts.append(
                    VersionConflict(
                        kind=rec.kind,
                        record_id=rec.record_id,
                        version=rec.version,
                        kept=canonical_reference_bytes(present).decode(),
                        rejected=canonical_reference_bytes(rec).decode(),
                    )
                )
            return False
        self.applied += 1
        body = rec.parsed
        rid = rec.record_id
        if isinstance(body, CareRelationshipBody):
            _index(self._rel_by_patient, body.patient_id, rid)
            self._rel_sorted.pop(body.patient_id, None)
            if body.practitioner_id is not None:
                _index(self._rel_by_practitioner, body.practitioner_id, rid)
            self._rel_active[(rid, rec.version)] = ActiveRelationship(
                rid,
                rec.version,
                body,
                ts_to_us(body.start),
                ts_to_us(body.end) if body.end is not None else None,
            )
        elif isinstance(body, ConsentBody):
            _index(self._consent_by_patient, body.patient_id, rid)
        elif isinstance(body, StaffBody):
            if body.patient_id is not None:
                _index(self._staff_by_patient, body.patient_id, rid)
        elif isinstance(body, PatientBody) and body.employee_user_id is not None:
            _index(self._patients_by_employee, body.employee_user_id, rid)
        return True

    def apply_all(self, records: Iterable[ReferenceRecord]) -> int:
        return sum(1 for rec in records if self.apply(rec))

    def apply_ledgered(self, records: Iterable[tuple[ReferenceRecord, str]]) -> int:
        """Apply (record, ledger time) pairs in ledger order."""
        return sum(1 for rec, ledgered_at in records if self.apply(rec, ledgered_at))

    # -- querying ---------------------------------------------------------------
    def as_of(self, t: str, *, known_at: str | None = None) -> ReferenceView:
        """The state at instant ``t`` (``YYYY-MM-DDTHH:MM:SS.ffffffZ``) as known at
        ``known_at``: versions that became known later are ignored ("what did we know
        then"). Default: ``self.known_at`` (None: every version applied)."""
        return ReferenceView(self, t, self.known_at if known_at is None else known_at)

    def consent_policy(self, rec: ReferenceRecord) -> Policy | CareledgerError:
        """The consent record ``rec`` parsed for evaluation (``parse_consent`` of its
        body), or the error that makes it unusable; parsed once per version."""
        key = (rec.record_id, rec.version)
        cached = self._policies.get(key)
        if cached is not None and cached[0] is rec:
            return cached[1]
        parsed: Policy | CareledgerError
        try:
            parsed = parse_consent(rec.body)
        except CareledgerError as exc:
            parsed = exc
        self._policies[key] = (rec, parsed)
        return parsed

    def record_at(
        self, kind: ReferenceKind, record_id: str, t: str, known_at: str | None = None
    ) -> ReferenceRecord | None:
        versions = self._versions.get((kind, record_id))
        return None if versions is None else versions.at(t, known_at)

    def known_since(self, kind: ReferenceKind, record_id: str, version: int) -> str | None:
        """When version ``version`` of the record became known (None: not applied)."""
        v = self._versions.get((kind, record_id))
        if v is None:
            return None
        for rec, known in zip(v.recs, v.known, strict=True):
            if rec.version == version:
                return known
        return None

    def versions(self, kind: ReferenceKind, record_id: str) -> tuple[ReferenceRecord, ...]:
        v = self._versions.get((kind, record_id))
        return () if v is None else tuple(v.recs)

    def __len__(self) -> int:
        return self.applied

    def stats(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for kind, _rid in self._versions:
            kinds[kind] = kinds.get(kind, 0) + 1
        return {
            "records": len(self._versions),
            "versions": self.applied,
            "duplicates": self.duplicates,
            "conflicts": len(self.conflicts),
            **{f"records.{k}": v for k, v in sorted(kinds.items())},
        }


def _index(index: dict[str, set[str]], key: str, rid: str) -> None:
    ids = index.get(key)
    if ids is None:
        index[key] = {rid}
    else:
        ids.add(rid)


class ReferenceView:
    """The reference state as of one instant. Cheap to create (one per event)."""

    __slots__ = ("_generation", "_known_at", "_memo", "_state", "t", "t_us")

    def __init__(self, state: ReferenceState, t: str, known_at: str | None = None) -> None:
        self._state = state
        self._known_at = known_at
        self.t = t
        self.t_us = ts_to_us(t)
        #: records in force at t already looked up (the rules ask for the actor's and
        #: the patient's several times), valid while nothing more is applied
        self._memo: dict[tuple[str, str], Any] = {}
        self._generation = state.generation

    @property
    def known_at(self) -> str | None:
        """The knowledge cutoff of this view (None: every version applied)."""
        return self._known_at

    def _at(self, kind: ReferenceKind, record_id: str, t: str | None = None) -> Any:
        key = (kind, record_id)
        if t is None:
            memo = self._memo
            if self._generation != self._state.generation:  # applied since: look again
                memo.clear()
                self._generation = self._state.generation
            elif key in memo:
                return memo[key]
            versions = self._state._versions.get(key)
            rec = None if versions is None else versions.at(self.t, self._known_at)
            memo[key] = rec
            return rec
        versions = self._state._versions.get(key)
        if versions is None:
            return None
        return versions.at(t, self._known_at)

    # -- workforce directory -------------------------------------------------------
    def staff_record(self, user_id: str) -> ReferenceRecord | None:
        rec: ReferenceRecord | None = self._at("staff", user_id)
        return rec

    def staff(self, user_id: str) -> StaffBody | None:
        """The directory entry of ``user_id`` in force at t (None: unknown or retracted)."""
        rec = self.staff_record(user_id)
        return None if rec is None else rec.parsed  # type: ignore[return-value]

    def staff_status(self, user_id: str) -> str | None:
        """``active``/``suspended``/``terminated`` at t, with employment dates applied:
        before ``start_date`` or after ``end_date`` (inclusive) is ``terminated``;
        None for a user not in the directory."""
        staff = self.staff(user_id)
        if staff is None:
            return None
        if staff.status != "active":
            return staff.status
        if self.t_us < date_to_us(staff.start_date):
            return "terminated"
        if staff.end_date is not None and self.t_us >= date_to_us(staff.end_date) + 86_400_000_000:
            return "terminated"
        return "active"

    def staff_for_patient(self, patient_id: str) -> tuple[StaffBody, ...]:
        """Employees whose own patient record is ``patient_id`` (both link directions)."""
        found: dict[str, StaffBody] = {}
        for uid in sorted(self._state._staff_by_patient.get(patient_id, ())):
            staff = self.staff(uid)
            if staff is not None and staff.patient_id == patient_id:
                found[uid] = staff
        patient = self.patient(patient_id)
        if patient is not None and patient.employee_user_id is not None:
            staff = self.staff(patient.employee_user_id)
            if staff is not None:
                found.setdefault(staff.user_id, staff)
        return tuple(found[k] for k in sorted(found))

    # -- patients -------------------------------------------------------------------
    def patient_record(self, patient_id: str) -> ReferenceRecord | None:
        rec: ReferenceRecord | None = self._at("patient", patient_id)
        return rec

    def patient(self, patient_id: str) -> PatientBody | None:
        rec = self.patient_record(patient_id)
        return None if rec is None else rec.parsed  # type: ignore[return-value]

    def patients_of_employee(self, user_id: str) -> tuple[PatientBody, ...]:
        out: list[PatientBody] = []
        for pid in sorted(self._state._patients_by_employee.get(user_id, ())):
            p = self.patient(pid)
            if p is not None and p.employee_user_id == user_id:
                out.append(p)
        return tuple(out)

    # -- care relationships -----------------------------------------------------------
    def relationships(
        self, patient_id: str, lead_us: int = 0, lag_us: int = 0
    ) -> tuple[ActiveRelationship, ...]:
        """Care relationships of ``patient_id`` active around t, sorted by record id.

        A relationship [start, end] counts when ``start - lead <= t <= end + lag`` (no
        end: open-ended), using the version in force at ``t + lead``.
        """
        state = self._state
        ordered = state._rel_sorted.get(patient_id)
        if ordered is None:
            ids = state._rel_by_patient.get(patient_id)
            if not ids:
                return ()
            ordered = state._rel_sorted[patient_id] = tuple(sorted(ids))
        t_us = self.t_us
        lookup_us = t_us + lead_us
        known_at = self._known_at
        versions = state._versions
        active = state._rel_active
        out: list[ActiveRelationship] = []
        for rid in ordered:
            v = versions.get(("care-relationship", rid))
            rec = None if v is None else v.at_us(lookup_us, known_at)
            if rec is None:
                continue
            r = active[(rid, rec.version)]
            if r.body.patient_id != patient_id:
                continue
            if r.start_us - lead_us > t_us:
                continue
            if r.end_us is not None and r.end_us + lag_us < t_us:
                continue
            out.append(r)
        return tuple(out)

    def all_relationships(self, patient_id: str) -> int:
        """How many care relationships the patient has ever had (for evidence), counting
        only those known at the view's cutoff."""
        ids = self._state._rel_by_patient.get(patient_id, ())
        if self._known_at is None:
            return len(ids)
        versions = self._state._versions
        return sum(
            1
            for rid in ids
            if (v := versions.get(("care-relationship", rid))) is not None
            and v.known_by(self._known_at)
        )

    # -- consents ---------------------------------------------------------------------
    def consent_records(self, patient_id: str) -> tuple[ReferenceRecord, ...]:
        """Consent records of the patient in force at t with an active status, by id."""
        out: list[ReferenceRecord] = []
        for rid in sorted(self._state._consent_by_patient.get(patient_id, ())):
            rec: ReferenceRecord | None = self._at("consent", rid)
            if rec is None:
                continue
            body: ConsentBody = rec.parsed  # type: ignore[assignment]
            if body.patient_id == patient_id and body.status in ACTIVE_CONSENT_STATUSES:
                out.append(rec)
        return tuple(out)

    def consent_policy(self, rec: ReferenceRecord) -> Policy | CareledgerError:
        """``ReferenceState.consent_policy``: a consent record parsed (once per version)."""
        return self._state.consent_policy(rec)

    def consents(self, patient_id: str) -> list[dict[str, Any]]:
        """The FHIR Consent resources (JSON, read-only) of those records, as for
        ``verifiers.auditor.consent.evaluate_consent``. Their own ``period``/provisions are
        left to the consent evaluator."""
        return [_as_dict(rec.body) for rec in self.consent_records(patient_id)]


def _as_dict(body: Mapping[str, Any]) -> dict[str, Any]:
    assert isinstance(body, dict)
    return body
