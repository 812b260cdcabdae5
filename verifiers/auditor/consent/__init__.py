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
* :func:`evaluate_consent` accepts resources or already parsed :class:`Policy` objects,
  and optionally the :class:`PolicyTable` to use (default: the configured one).

Semantics (the decisions this module makes, in one place; why: ADR 0021)
------------------------------------------------------------------------
Which consents count
    Only ``status == "active"`` consents of the request's patient (``Patient/<id>`` in R4
    ``patient`` / R5 ``subject``) whose validity period covers the access time. The
    validity period is R5 ``Consent.period``; R4 has none (its root provision's
    ``period`` is a criterion of that rule, below; R4 ``dateTime`` is when the consent
    was recorded). R4 consents whose ``scope`` is only ``treatment`` or ``adr`` (consent
    to a procedure, advance directive) do not govern access to data and are ignored. If
    no consent counts, the outcome is ``"no-consent"``: the consent ledger has nothing
    to say and other explanations (care relationships, ...) decide.

Base decision (what the consent says when no provision matches)
    R5: ``decision``. R4: ``policyRule`` with the HL7 v3 ActCode definitions —
    OPTIN/OPTINR ("a grantor's assent") permit, OPTOUT/OPTOUTE ("a grantor's dissent")
    deny (a legacy STU3 ``policyRule`` URI ending in ``opt-in``/``opt-out`` likewise).
    Otherwise the consent's policy references (R4 ``policy.uri`` and other
    ``policyRule`` codes as ``system|code``, R5 ``policyBasis`` and ``regulatoryBasis``)
    are looked up in the **policy table** (:mod:`.policy_table`; the decision then has
    ``decided_by="policy-table"`` and names the ``policy``); failing that, a single typed
    top-level provision implies the base: its own type when it states no criteria, the
    opposite otherwise. The table's *permit* is not applied to a consent whose typed
    root permits with criteria (or denies everything): its implied base (deny) holds
    there, so the table never widens what the consent grants (ADR 0021). A consent
    left without a base is not invalid: it does not decide, and if no other consent
    does the outcome is ``"no-consent"`` with
    ``decided_by="no-policy-rule"`` and the reason "no rule for policy X". Only an R4
    consent with neither ``policy`` nor ``policyRule`` nor a typed root (R4's ppc-1) is
    a ``ConsentFormatError``.

Provisions and nesting
    A provision is an exception to its parent (the parent of a top-level provision is the
    base decision). Its effect is its explicit ``type`` when it has one (R4); otherwise it
    reverses its parent's effect (R5; also an untyped R4 provision: R4 defines the root
    as "an exception to the base policy"). Two readings of shapes HL7's R4 examples use:
    an untyped R4 root naming only the data's custodian/author (provenance actors) and
    nothing else withholds that data (``deny``: HL7's Out and notAuthor); and a nested
    provision that narrows nothing (it matches wherever its parent does) and carries the
    effect that already holds outside its parent is ignored (HL7's Emergency and pkb;
    recorded in ``Policy.notes``). One reading of an R5 shape: an R5 provision naming
    only the data's custodian/author, with nested provisions, is a scope that keeps its
    parent's effect, its nested provisions being the exceptions (HL7's R5 Emergency);
    without nested provisions it reverses its parent like any R5 provision (R5 Out,
    notAuthor). An untyped provision that states no criteria is a
    container: it carries its parent's effect and never decides by itself. Paths
    (``ConsentDecision.provision_path``) index ``Consent.provision`` downwards; R4's
    single root provision is index 0. The empty path means the base decision.

Matching a provision
    A provision applies when every criterion it states matches; a criterion with several
    values matches when any value does:

    * ``period``: covers the access time (R4 "the timeframe in this rule is valid", the
      root's included).
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
    * ``securityLabel``: a confidentiality code (U < L < M < N < R < V) in a permit is a
      high-water mark — it matches data labelled at that level or lower; in a deny it
      matches data at that level or higher (IHE PCF not-restricted, ADR 0021); any
      other code (HIV, PSY, ...) must be one of the data's labels.
    * ``class`` (R4) / ``resourceType`` (R5): the data's resource type.
    * ``data``: ``instance``, ``related`` and ``dependents`` match the referenced instance
      itself (``ConsentRequest.data_references``, ``Type/id``); what refers to it or what
      it refers to, and ``authoredby``, cannot be seen in an access event: no match.
    * ``code``, ``dataPeriod``, ``documentType``, ``expression`` describe data content an
      access event does not carry: a provision stating them never matches.

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
a request against the consents; ``policy_table`` what external policies decide (a TOML
file, ``config/consent-policies.toml`` by default). Evaluation is pure given the policy
table; ``evaluate_consent(..., policy_table=None)`` reads the configured one.
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
from .policy_table import (
    EMPTY_POLICY_TABLE,
    PolicyRule,
    PolicyTable,
    configured_policy_table,
    load_policy_table,
    parse_policy_table,
)

__all__ = [
    "ACTION_REQUIREMENTS",
    "CONFIDENTIALITY_ORDER",
    "EMPTY_POLICY_TABLE",
    "ActorRule",
    "ConsentDecision",
    "ConsentRequest",
    "Effect",
    "Period",
    "Policy",
    "PolicyRule",
    "PolicyTable",
    "Provision",
    "configured_policy_table",
    "consent_patient_id",
    "evaluate_consent",
    "is_active",
    "load_policy_table",
    "parse_consent",
    "parse_policy_table",
]
