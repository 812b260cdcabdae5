"""Evaluating an access (``ConsentRequest``) against a patient's consents (pure):
which provision matches, which rule decides, which is reported and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from .model import (
    ACTION_REQUIREMENTS,
    CONFIDENTIALITY_ORDER,
    ActorRule,
    ConsentDecision,
    ConsentRequest,
    Effect,
    Policy,
    Provision,
)
from .parsing import parse_consent
from .policy_table import PolicyRule, PolicyTable, configured_policy_table

_CONF_RANK: Final = {code: rank for rank, code in enumerate(CONFIDENTIALITY_ORDER)}
#: request purpose -> further purposes it counts as.
_PURPOSE_IMPLIES: Final[Mapping[str, tuple[str, ...]]] = {"BTG": ("ETREAT",)}


# --------------------------------------------------------------------------- evaluation


def _labels_match(wanted: tuple[str, ...], have: tuple[str, ...], effect: Effect) -> bool:
    """A confidentiality code in a permit is a clearance (data at that level or below);
    in a deny it withholds data at that level or above (IHE PCF not-restricted: "permit
    N, deny R" must not deny N data). Other labels match when the data carries them."""
    have_ranks = [_CONF_RANK[label] for label in have if label in _CONF_RANK]
    for code in wanted:
        if code in _CONF_RANK:
            level = _CONF_RANK[code]
            if any(rank <= level if effect == "permit" else rank >= level for rank in have_ranks):
                return True
        elif code in have:
            return True
    return False


def _actors_match(rules: tuple[ActorRule, ...], request: ConsentRequest) -> bool:
    groups: dict[tuple[str, ...], bool] = {}
    for rule in rules:
        groups[rule.roles] = groups.get(rule.roles, False) or rule.matches(request)
    return all(groups.values())


@dataclass(frozen=True, slots=True)
class _Ask:
    """One consent-action requirement of a request, with the request's derived sets."""

    request: ConsentRequest
    actions: frozenset[str]
    purposes: frozenset[str]


def _matches(p: Provision, ask: _Ask) -> bool:
    req = ask.request
    if p.unevaluable:
        return False
    if p.period is not None and not p.period.covers(req.at_us):
        return False
    if p.actions and ask.actions.isdisjoint(p.actions):
        return False
    if p.purposes and ask.purposes.isdisjoint(p.purposes):
        return False
    if p.data_classes and req.data_class not in p.data_classes:
        return False
    if p.data and not p.data_matches(req.data_references):
        return False
    if p.security_labels and not _labels_match(p.security_labels, req.security_labels, p.effect):
        return False
    return not p.actors or _actors_match(p.actors, req)


_NAMES_PERSON: Final = 3
_NAMES_ORGANIZATION: Final = 2
_NAMES_ROLE: Final = 1


def _names(rule: ActorRule) -> int:
    """Whom a matching actor entry singles out (see "Which consent ... reported")."""
    if rule.role_kind == "provenance":
        return 0  # about the data's origin: matches any actor
    if rule.target == "person":
        return _NAMES_PERSON
    if rule.target == "organization":
        return _NAMES_ORGANIZATION
    return _NAMES_ROLE if rule.role_kind == "workforce" else 0


def _specificity(
    policy: Policy, path: tuple[int, ...], request: ConsentRequest
) -> tuple[int, int, int]:
    """(whom it names, kinds of criteria, depth) of the rule at ``path``, over the
    provision and its ancestors (which all match when it does); greater is more
    specific. The base decision (empty path) is (0, 0, 0)."""
    names = 0
    kinds: set[str] = set()
    provisions = policy.provisions
    for index in path:
        p = provisions[index]
        for rule in p.actors:
            if rule.matches(request):
                names = max(names, _names(rule))
        for kind, stated in (
            ("period", p.period is not None),
            ("action", p.actions),
            ("purpose", p.purposes),
            ("securityLabel", p.security_labels),
            ("class", p.data_classes),
            ("data", p.data),
        ):
            if stated:
                kinds.add(kind)
        provisions = p.provisions
    return names, len(kinds), len(path)


def _walk(
    provisions: tuple[Provision, ...],
    prefix: tuple[int, ...],
    ask: _Ask,
    found: list[tuple[Effect, tuple[int, ...]]],
) -> bool:
    """Record in ``found`` the deepest matches below; True if anything was recorded. (A
    module function, not a closure: a recursive closure is a reference cycle per call,
    left to the garbage collector.)"""
    recorded = False
    for i, p in enumerate(provisions):
        if not _matches(p, ask):
            continue
        path = (*prefix, i)
        if _walk(p.provisions, path, ask, found):
            recorded = True
        elif p.typed or p.has_criteria:  # an untyped container decides nothing itself
            found.append((p.effect, path))
            recorded = True
    return recorded


def _decide(policy: Policy, ask: _Ask) -> tuple[Effect, tuple[int, ...]]:
    """The deepest matching provision's effect (deny first among equals) and path (the
    most specific of those, then the smallest path); the base decision with the empty
    path if none matches. An untyped provision without criteria is a container: it
    never decides by itself."""
    found: list[tuple[Effect, tuple[int, ...]]] = []
    _walk(policy.provisions, (), ask, found)
    if not found:
        assert policy.base is not None  # applies_to() admits only governing policies
        return policy.base, ()

    def rank(f: tuple[Effect, tuple[int, ...]]) -> tuple[int, bool, int, int, tuple[int, ...]]:
        names, kinds, depth = _specificity(policy, f[1], ask.request)
        return -depth, f[0] != "deny", -names, -kinds, f[1]

    return min(found, key=rank)


def _where(policy: Policy, path: tuple[int, ...]) -> str:
    if not path:
        return f"base decision ({policy.base_source})"
    steps = []
    for depth, index in enumerate(path):
        if depth == 0 and policy.fhir_version == "R4" and len(policy.provisions) == 1:
            steps.append("provision")
        else:
            steps.append(f"provision[{index}]")
    return ".".join(steps)


@dataclass(frozen=True, slots=True)
class _Verdict:
    effect: Effect
    policy: Policy
    path: tuple[int, ...]
    requirement: int
    #: ``_specificity`` of the deciding rule
    specificity: tuple[int, int, int]

    @property
    def key(self) -> tuple[int, int, int, str, tuple[int, ...], int]:
        """Sort key: the most specific rule first, then consent id, path, requirement."""
        names, kinds, depth = self.specificity
        return -names, -kinds, -depth, self.policy.consent_id, self.path, self.requirement


def _no_consent(policies: list[Policy], request: ConsentRequest) -> ConsentDecision:
    own = sorted(
        (p for p in policies if p.patient_id == request.patient_id), key=lambda p: p.consent_id
    )
    notes = []
    for p in own:
        if not p.governs_access:
            notes.append(f"Consent/{p.consent_id} does not govern data access")
        elif p.status != "active":
            notes.append(f"Consent/{p.consent_id} is {p.status}")
        else:
            period = p.period.describe() if p.period is not None else ""
            notes.append(f"Consent/{p.consent_id} is valid {period} only")
    why = f": {'; '.join(notes)}" if notes else ""
    reason = f"no active consent of patient {request.patient_id} covers {request.at}{why}"
    return ConsentDecision("no-consent", None, (), reason)


_VERB: Final[Mapping[str, str]] = {"permit": "permits", "deny": "denies"}


def _ask_text(request: ConsentRequest, requirement: tuple[str, ...]) -> str:
    return f"action {request.action} ({'/'.join(requirement)})"


@dataclass(frozen=True, slots=True)
class _Based:
    """A consent with the base it is decided under for this request."""

    policy: Policy
    table_rule: PolicyRule | None  # the policy-table entry that gave the base, if any


def _with_base(
    policy: Policy, request: ConsentRequest, purposes: frozenset[str], table: PolicyTable
) -> _Based | str:
    """The consent ready to decide ``request``, or why it cannot (the policy URI)."""
    if policy.base is not None:
        return _Based(policy, None)
    rule = table.lookup(policy.policy_refs)
    if rule is not None:
        said = rule.decide(request, purposes)
        # A consent whose typed root permits with criteria (or denies everything) grants
        # no more than that root: the table may narrow it, never widen it (IHE PCF's
        # advanced/intermediate/expired examples; ADR 0021).
        if said == "permit" and policy.inferred_base == "deny":
            said = "undecided"
        if said != "undecided":
            provisions = policy.alternatives[0 if said == "permit" else 1]
            source = f"policy table {table.source}: {rule.uri} -> {said}"
            based = replace(policy, base=said, base_source=source, provisions=provisions)
            return _Based(based, rule)
    if policy.inferred_base is not None:
        provisions = policy.alternatives[0 if policy.inferred_base == "permit" else 1]
        based = replace(
            policy,
            base=policy.inferred_base,
            base_source=policy.inferred_source,
            provisions=provisions,
        )
        return _Based(based, None)
    if policy.policy_refs:
        return policy.policy_refs[0]
    return ""


def _undecided(
    request: ConsentRequest, table: PolicyTable, skipped: list[tuple[Policy, str]]
) -> ConsentDecision:
    parts = []
    for policy, uri in skipped:
        if uri:
            parts.append(f"Consent/{policy.consent_id}: no rule for policy {uri}")
        else:
            parts.append(f"Consent/{policy.consent_id}: no decision and no policy basis")
    reason = (
        f"no consent of patient {request.patient_id} decides this access "
        f"({'; '.join(parts)}; policy table {table.source})"
    )
    first = next((uri for _, uri in skipped if uri), None)
    return ConsentDecision("no-consent", None, (), reason, "no-policy-rule", first)


def evaluate_consent(
    consents: Sequence[Mapping[str, Any] | Policy],
    request: ConsentRequest,
    policy_table: PolicyTable | None = None,
) -> ConsentDecision:
    """Decide ``request`` against the patient's consents (resources or parsed policies).

    Every resource is parsed first, so a malformed one raises ``ConsentFormatError``
    whatever the request. Deterministic and independent of the order of ``consents``;
    see the module docstring for the semantics. ``policy_table`` decides consents whose
    rules are only a policy reference; None means the deployment's configured table
    (:func:`~.policy_table.configured_policy_table`).
    """
    policies = [c if isinstance(c, Policy) else parse_consent(c) for c in consents]
    table = configured_policy_table() if policy_table is None else policy_table
    in_force = [p for p in policies if p.applies_to(request)]
    if len({p.consent_id for p in in_force}) == len(in_force):
        in_force.sort(key=lambda p: p.consent_id)  # the same order, without the reprs
    else:
        in_force.sort(key=lambda p: (p.consent_id, repr(p)))
    if not in_force:
        return _no_consent(policies, request)
    purposes = set(request.purposes)
    for purpose in request.purposes:
        purposes.update(_PURPOSE_IMPLIES.get(purpose, ()))
    frozen_purposes = frozenset(purposes)
    applicable: list[_Based] = []
    skipped: list[tuple[Policy, str]] = []
    for policy in in_force:
        got = _with_base(policy, request, frozen_purposes, table)
        if isinstance(got, str):
            skipped.append((policy, got))
        else:
            applicable.append(got)
    if not applicable:
        return _undecided(request, table, skipped)
    requirements = ACTION_REQUIREMENTS[request.action]
    verdicts = []
    rules: dict[str, PolicyRule | None] = {b.policy.consent_id: b.table_rule for b in applicable}
    for index, requirement in enumerate(requirements):
        ask = _Ask(request, frozenset(requirement), frozen_purposes)
        for based in applicable:
            effect, path = _decide(based.policy, ask)
            verdicts.append(
                _Verdict(
                    effect, based.policy, path, index, _specificity(based.policy, path, request)
                )
            )
    denies = [v for v in verdicts if v.effect == "deny"]
    winner = min(denies or verdicts, key=lambda v: v.key)
    policy = winner.policy
    what = _ask_text(request, requirements[winner.requirement])
    reason = (
        f"Consent/{policy.consent_id} ({policy.fhir_version}) {_VERB[winner.effect]} {what}: "
        f"{_where(policy, winner.path)}"
    )
    if winner.effect == "deny":
        permitting = sorted({v.policy.consent_id for v in verdicts if v.effect == "permit"})
        others = [cid for cid in permitting if cid != policy.consent_id]
        if others:
            reason += "; deny wins over the permit of " + ", ".join(
                f"Consent/{cid}" for cid in others
            )
    if skipped:
        reason += "; not deciding: " + "; ".join(
            f"Consent/{p.consent_id} (no rule for policy {uri or '-'})" for p, uri in skipped
        )
    rule = rules[policy.consent_id]
    if rule is not None and not winner.path:
        return ConsentDecision(
            winner.effect, policy.consent_id, winner.path, reason, "policy-table", rule.uri
        )
    return ConsentDecision(winner.effect, policy.consent_id, winner.path, reason)
