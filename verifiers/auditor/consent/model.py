"""The consent model: a Consent normalised for evaluation (``Policy``, ``Provision``,
``ActorRule``, ``Period``), the access to evaluate (``ConsentRequest``) and the answer
(``ConsentDecision``). Pure; the semantics are in the package docstring.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from careledger_core.errors import ValidationError
from careledger_core.event import AccessEvent, is_valid_timestamp

from .._time import ts_to_us
from .fhir_time import _BadTime, _format_us, _instant

Effect: TypeAlias = Literal["permit", "deny"]
Outcome: TypeAlias = Literal["permit", "deny", "no-consent"]
Action: TypeAlias = Literal["C", "R", "U", "D", "E"]
FhirVersion: TypeAlias = Literal["R4", "R5"]
RoleKind: TypeAlias = Literal["none", "recipient", "provenance", "workforce"]
TargetKind: TypeAlias = Literal["none", "person", "organization", "unresolvable"]

#: consent-action codes each access action needs; each inner tuple is one requirement
#: met by any of its codes, and every requirement must be permitted.
ACTION_REQUIREMENTS: Final[Mapping[str, tuple[tuple[str, ...], ...]]] = {
    "C": (("collect",),),
    "R": (("access", "use"),),
    "U": (("access", "use"), ("correct",)),
    "D": (("correct",),),
    "E": (("access", "use"), ("disclose",)),
}
#: v3 Confidentiality codes, lowest to highest.
CONFIDENTIALITY_ORDER: Final = ("U", "L", "M", "N", "R", "V")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Period:
    """A validity interval ``[start_us, end_us)`` in UTC microseconds; None = unbounded."""

    start_us: int | None = None
    end_us: int | None = None

    def covers(self, instant_us: int) -> bool:
        if self.start_us is not None and instant_us < self.start_us:
            return False
        return self.end_us is None or instant_us < self.end_us

    def describe(self) -> str:
        start = "-inf" if self.start_us is None else _format_us(self.start_us)
        end = "+inf" if self.end_us is None else _format_us(self.end_us)
        return f"[{start}, {end})"


@dataclass(frozen=True, slots=True)
class ActorRule:
    """One ``provision.actor`` entry, normalised.

    ``role_kind``: ``none`` (no role), ``recipient`` (qualifies the reference),
    ``provenance`` (about the data's origin: always matches), ``workforce`` (must be one
    of the actor's roles). ``target``: what the reference names; ``target_id`` its id.
    """

    roles: tuple[str, ...]
    role_kind: RoleKind
    target: TargetKind
    target_id: str | None = None

    def matches(self, request: ConsentRequest) -> bool:
        if self.role_kind == "provenance":
            return True
        if self.role_kind == "workforce" and not set(self.roles) & set(request.actor_roles):
            return False
        if self.target == "none":
            return True
        if self.target == "person":
            return self.target_id == request.actor_id
        if self.target == "organization":
            return request.actor_organization is not None and (
                self.target_id == request.actor_organization
            )
        return False


@dataclass(frozen=True, slots=True)
class Provision:
    """One provision (rule) with its effective decision and nested exceptions.

    Criteria tuples are sorted and de-duplicated; an empty tuple states no criterion.
    ``typed`` tells whether ``effect`` was written (``type``) or derived (flip/container).
    """

    effect: Effect
    typed: bool
    period: Period | None = None
    actors: tuple[ActorRule, ...] = ()
    actions: tuple[str, ...] = ()
    purposes: tuple[str, ...] = ()
    security_labels: tuple[str, ...] = ()
    data_classes: tuple[str, ...] = ()
    #: ``data`` entries as (meaning, ``Type/id``); see :meth:`data_matches`
    data: tuple[tuple[str, str], ...] = ()
    unevaluable: tuple[str, ...] = ()
    provisions: tuple[Provision, ...] = ()

    @property
    def has_criteria(self) -> bool:
        return bool(
            self.period
            or self.actors
            or self.actions
            or self.purposes
            or self.security_labels
            or self.data_classes
            or self.data
            or self.unevaluable
        )

    @property
    def only_provenance(self) -> bool:
        """States actors, all of them about where the data comes from (custodian,
        author, ...), and no other criterion: it names no one who would receive data."""
        return (
            bool(self.actors)
            and all(a.role_kind == "provenance" for a in self.actors)
            and not (
                self.period
                or self.actions
                or self.purposes
                or self.security_labels
                or self.data_classes
                or self.data
                or self.unevaluable
            )
        )

    def data_matches(self, references: tuple[str, ...]) -> bool:
        """``instance``, ``related`` and ``dependents`` all cover the referenced
        instance itself (FHIR ConsentDataMeaning); what refers to it, or what it refers
        to, cannot be seen in an access event, nor can ``authoredby``."""
        return any(
            meaning in ("instance", "related", "dependents") and ref in references
            for meaning, ref in self.data
        )


@dataclass(frozen=True, slots=True)
class Policy:
    """A Consent resource normalised for evaluation (see the module docstring).

    ``base`` is None only for consents that do not govern access to data
    (``governs_access`` False). ``period`` is the consent's validity. ``grantees`` (R5)
    are kept for reporting; access is decided by provision actors.
    """

    consent_id: str
    fhir_version: FhirVersion
    status: str
    patient_id: str
    governs_access: bool
    base: Effect | None
    base_source: str
    period: Period | None = None
    provisions: tuple[Provision, ...] = ()
    grantees: tuple[str, ...] = ()
    #: policies the consent refers to (R4 ``policy.uri`` and ``policyRule`` codes, R5
    #: ``policyBasis`` and ``regulatoryBasis``), as URIs or ``system|code``, in order
    policy_refs: tuple[str, ...] = ()
    #: when ``base`` is None: the base inferred from a typed top-level provision (used
    #: when the policy table does not know the consent's policy) and the provisions
    #: resolved under each possible base, ``(under permit, under deny)``
    inferred_base: Effect | None = None
    inferred_source: str = ""
    alternatives: tuple[tuple[Provision, ...], tuple[Provision, ...]] = ((), ())
    #: how the parser read shapes the specification leaves open (ADR 0021)
    notes: tuple[str, ...] = ()

    def applies_to(self, request: ConsentRequest) -> bool:
        """Counts for ``request``: governs access, active, same patient, period covers.
        (A consent without a base of its own still counts: the policy table decides.)"""
        return (
            self.governs_access
            and self.status == "active"
            and self.patient_id == request.patient_id
            and (self.period is None or self.period.covers(request.at_us))
        )


def _request_error(name: str, reason: str) -> ValidationError:
    return ValidationError(
        f"invalid consent request at {name}: {reason}",
        details={"field": name, "reason": reason},
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsentRequest:
    """One access to evaluate. ``at`` is a FHIR instant, normally the event's
    ``occurred_at`` (``YYYY-MM-DDTHH:MM:SS.ffffffZ``); ``security_labels`` mixes the
    confidentiality code and sensitivity labels; ``data_class`` is a resource type.
    Raises :class:`~careledger_core.errors.ValidationError` for a malformed request."""

    patient_id: str
    at: str
    actor_id: str
    actor_roles: tuple[str, ...] = ()
    actor_organization: str | None = None
    purposes: tuple[str, ...] = ()
    action: Action
    security_labels: tuple[str, ...] = ()
    data_class: str | None = None
    #: the data touched, as ``Type/id`` (matched by ``provision.data``)
    data_references: tuple[str, ...] = ()
    at_us: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("patient_id", "actor_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise _request_error(name, "must be a non-empty string")
        for name in ("actor_organization", "data_class"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise _request_error(name, "must be a non-empty string or None")
        for name in ("actor_roles", "purposes", "security_labels", "data_references"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise _request_error(name, "must be a tuple of strings")
            items = tuple(value)
            if not all(isinstance(item, str) for item in items):
                raise _request_error(name, "must be a tuple of strings")
            object.__setattr__(self, name, items)
        if self.action not in ACTION_REQUIREMENTS:
            raise _request_error("action", "must be one of C, R, U, D, E")
        at = self.at
        if isinstance(at, str) and at[:4] != "0000" and is_valid_timestamp(at):
            # an event time (``YYYY-MM-DDTHH:MM:SS.ffffffZ``, a real instant): the value
            # ``_instant`` gives, without its general FHIR parse
            object.__setattr__(self, "at_us", ts_to_us(at))
            return
        try:
            object.__setattr__(self, "at_us", _instant(at))
        except _BadTime as exc:
            raise _request_error("at", str(exc)) from None

    @classmethod
    def from_event(cls, event: AccessEvent, *, roles_first: Sequence[str] = ()) -> ConsentRequest:
        """The request an access event makes: who, for whom, when, why, what and how.
        ``roles_first``: the actor's roles from elsewhere (the directory), put before the
        event's own (duplicates dropped) when there are any."""
        roles = tuple(event.actor.roles)
        if roles_first:
            roles = tuple(dict.fromkeys((*roles_first, *roles)))
        labels: tuple[str, ...] = ()
        if event.sensitivity is not None:
            labels = (event.sensitivity.confidentiality, *event.sensitivity.labels)
        return cls(
            patient_id=event.patient.id,
            at=event.occurred_at,
            actor_id=event.actor.id,
            actor_roles=roles,
            actor_organization=event.actor.organization,
            purposes=tuple(event.purpose_of_use),
            action=event.action,
            security_labels=labels,
            data_class=event.object.type if event.object is not None else None,
            data_references=(
                (f"{event.object.type}/{event.object.id}",)
                if event.object is not None and event.object.id
                else ()
            ),
        )


DecidedBy: TypeAlias = Literal["consent", "policy-table", "no-policy-rule", "none"]


@dataclass(frozen=True, slots=True)
class ConsentDecision:
    """The outcome, the deciding consent (None for ``no-consent``), the deciding
    provision (indices from ``Consent.provision``; empty = the base decision) and why.

    ``decided_by``: ``consent`` (its provisions or its own base), ``policy-table`` (the
    base came from the configured policy table, entry ``policy``), ``no-policy-rule``
    (``no-consent`` because the consents in force name only policies the table does not
    know: ``policy`` is the first of them), ``none`` (no consent in force)."""

    outcome: Outcome
    consent_id: str | None
    provision_path: tuple[int, ...]
    reason: str
    decided_by: DecidedBy = "consent"
    policy: str | None = None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "outcome": self.outcome,
            "consent_id": self.consent_id,
            "provision_path": list(self.provision_path),
            "reason": self.reason,
            "decided_by": self.decided_by,
        }
        if self.decided_by == "policy-table":
            out["fallback"] = "policy-table"
        if self.policy is not None:
            out["policy"] = self.policy
        return out
