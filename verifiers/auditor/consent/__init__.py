"""FHIR Consent (R4 and R5) evaluation: is this access permitted by the patient's consents?

Pure and deterministic: no I/O, no clock, no randomness, no dependence on the order of the
consents. The auditor asks :func:`evaluate_consent` about one access (a
:class:`ConsentRequest`, usually built with :meth:`ConsentRequest.from_event`) given the
patient's consent resources as of the event time, and stores the
:class:`ConsentDecision` — outcome, deciding consent, deciding provision and a reason —
so "why was this allowed?" always has an answer.

API
---
* :func:`parse_consent` turns one Consent resource (a JSON-shaped mapping) into a
  normalised :class:`Policy`, or raises :class:`~careledger_core.errors.ConsentFormatError`
  (``CONSENT_INVALID``) naming the FHIR path at fault.
* :func:`consent_patient_id` and :func:`is_active` answer the two questions the consent
  ledger needs without evaluating anything.
* :func:`evaluate_consent` accepts resources or already parsed :class:`Policy` objects.

Semantics (the decisions this module makes, in one place)
---------------------------------------------------------
Which consents count
    Only ``status == "active"`` consents of the request's patient (``Patient/<id>`` in R4
    ``patient`` / R5 ``subject``) whose validity period covers the access time. The
    validity period is R5 ``Consent.period`` and R4 ``Consent.provision.period`` (the root
    provision's period; R4 ``dateTime`` is when the consent was recorded, not a validity
    bound). R4 consents whose ``scope`` is only ``treatment`` or ``adr`` (consent to a
    procedure, advance directive) do not govern access to data and are ignored. If no
    consent counts, the outcome is ``"no-consent"``: the consent ledger has nothing to
    say and other explanations (care relationships, ...) decide.

Base decision (what the consent says when no provision matches)
    R5: ``decision``. R4: ``policyRule``, read with the HL7 v3 ActCode definitions —
    OPTIN/OPTINR ("a grantor's assent to the terms") permit, OPTOUT/OPTOUTE ("a
    grantor's dissent") deny; this is also how HL7's own Consent examples use them (the
    opt-out example withholds data, the emergency-only example is an "overall deny"). A
    legacy STU3 ``policyRule`` URI ending in ``opt-in``/``opt-out`` is read the same way.
    Without a recognised policy (R4) or ``decision`` (R5), the base comes from the single
    top-level provision's explicit ``type``: the type itself when that provision states
    no criteria (it covers everything), the opposite otherwise (it is an exception to an
    unstated base). A governing consent with no base at all is a ``ConsentFormatError``.

Provisions and nesting
    A provision is an exception to its parent (the parent of a top-level provision is the
    base decision). Its effect is its explicit ``type`` when it has one (R4; R5 drafts);
    otherwise it flips its parent's effect (R5 semantics, also applied to an untyped R4
    provision, whose root provision may not carry a type). An untyped provision that
    states no criteria of its own is a mere container (an R4 root provision holding only
    the consent period and nested provisions): it carries its parent's effect and never
    decides by itself — when none of its children match, its parent decides. Paths
    (``ConsentDecision.provision_path``) index ``Consent.provision`` downwards; R4's
    single root provision is index 0. The empty path means the base decision.

Matching a provision
    A provision applies when every criterion it states matches; a criterion with several
    values matches when any value does:

    * ``period`` (of a nested provision): covers the access time.
    * ``actor``: entries are grouped by role; every role group must have a matching
      entry (HL7 writes "custodian X and recipient Y" as two entries). A reference
      matches by id: ``Practitioner``, ``PractitionerRole``, ``Person``,
      ``RelatedPerson``, ``Patient``, ``Device`` ids against the actor id,
      ``Organization`` ids against the actor's organization; an identifier-only reference
      by its value against the actor id. Group, CareTeam, contained or ``urn:``
      references cannot be resolved here and never match (expand them before
      evaluating). Recipient roles (PRCP, IRCP, RCV, REFT, GRANTEE, DELEGATEE) only
      qualify the reference. Data-provenance roles (CST custodian, AUT author, INF, ENT,
      LA, AUTHEN, VRF, TRANS) describe where the data comes from, which an access event
      does not carry; this evaluator runs at the custodian, so such entries always
      match. Any other role code is a workforce role and must be among the actor's
      roles (exact code).
    * ``action`` (consent-action codes): each access needs one or more consent actions,
      and every one of them must be permitted (deny wins): R -> access (or use),
      C -> collect, U -> access (or use) and correct, D -> correct, E (export) -> access
      (or use) and disclose. So a practitioner denied "access" cannot export either, and
      a read-only grant does not allow disclosure.
    * ``purpose`` (v3 ActReason): one of the access's purposes of use. BTG (break the
      glass) also counts as ETREAT. No other subsumption: a deny of TREAT does not
      cover ETREAT (HL7's No-Emergency example lists both).
    * ``securityLabel``: a confidentiality code (U < L < M < N < R < V) is a high-water
      mark — it matches data labelled at that level or lower (FHIR's definition); any
      other code (HIV, PSY, ...) must be one of the data's labels.
    * ``class`` (R4) / ``resourceType`` (R5): the data's resource type.
    * ``code``, ``data``, ``dataPeriod``, ``documentType``, ``expression`` describe data
      content an access event does not carry: a provision stating them never matches.

Choosing the decision
    Within one consent the deepest matching provision wins (the most specific); among
    matches equally deep, deny wins. Across consents, deny wins: one denying consent
    overrides any number of permitting ones (a patient's refusal is never silently
    outvoted by an older or broader permit).

Which consent and provision are reported
    The outcome settled, the reported rule is the most specific one with that outcome
    (among the consents, and among equally deep matches within one consent), so a
    blanket permit does not hide the permit that names this practitioner for this
    purpose. A rule's scope is its provision together with the provisions it is nested
    in (it applies only within them); the base decision has none. Rules compare by, in
    order (greater is more specific):

    1. whom it names, by the actor entries that matched: the actor (a person
       reference) 3, the actor's organization 2, one of the actor's workforce roles 1,
       anyone (no actor criterion, or only recipient-role or data-provenance entries) 0;
    2. how many kinds of criteria it states: ``period``, ``action``, ``purpose``,
       ``securityLabel``, ``class``/``resourceType`` (0 to 5; kinds, not values: a
       provision for TREAT or ETREAT is not narrower than one for TREAT);
    3. its nesting depth (the base decision is 0);

    then, among equally specific rules, the smallest consent id, provision path and
    action requirement (for actions needing several consent actions).

Times
    FHIR ``date`` and ``dateTime`` with any precision (``2015``, ``2015-02``,
    ``2015-02-07``, ``2015-02-07T13:28:17.239+02:00``); a time must carry its zone, as
    FHIR requires. A period's start is the beginning of its value and its end includes
    the whole of its value (``end: 2015-02-01`` covers all of that day), per FHIR
    ``Period``. A date without a time is taken in UTC (the evaluator has no local zone).

Anything FHIR marks as a ``modifierExtension`` cannot be understood here and makes the
resource unusable (``ConsentFormatError``).

Modules
-------
``fhir_time`` FHIR dates and times as UTC bounds; ``model`` the normalised consent, the
request and the decision; ``parsing`` Consent resources into the model; ``evaluation``
a request against the consents.
"""

from __future__ import annotations

from .evaluation import evaluate_consent
from .model import (
    ACTION_REQUIREMENTS,
    CONFIDENTIALITY_ORDER,
    ActorRule,
    ConsentDecision,
    ConsentRequest,
    Effect,
    Period,
    Policy,
    Provision,
)
from .parsing import consent_patient_id, is_active, parse_consent

__all__ = [
    "ACTION_REQUIREMENTS",
    "CONFIDENTIALITY_ORDER",
    "ActorRule",
    "ConsentDecision",
    "ConsentRequest",
    "Effect",
    "Period",
    "Policy",
    "Provision",
    "consent_patient_id",
    "evaluate_consent",
    "is_active",
    "parse_consent",
]
