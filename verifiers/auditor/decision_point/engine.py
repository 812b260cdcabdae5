"""Deciding a question against the ledgered consents (pure: no I/O, no clock).

:class:`ConsentLedger` holds the consent records applied so far (in ledger order, with
their block's signed time and their place), indexed by patient through
:class:`~verifiers.auditor.state.ReferenceState`, the parsed policies (each version
parsed once) and the chain heads it has read up to. :func:`answer` decides one
question at one instant with the consent evaluation the auditor uses
(:func:`verifiers.auditor.consent.evaluate_consent`); :func:`build_record` makes the
decision record (:mod:`.model`); :func:`replay_answer` rebuilds the ledger exactly as
a record says it read it (``as_of.chains``) and decides the question again.

What the answer says:

* ``outcome``: ``permit``, ``deny`` or ``no-consent`` (no consent of the patient in
  force at that instant: nothing on file; the organisation's policy applies);
* ``consent``: the deciding consent version and its ledger place; ``provision_path``
  and ``reason`` from the evaluator;
* ``fallback``: what decided when no provision did: ``consent-base`` (the consent's
  own base rule: R4 ``policyRule`` / R5 ``decision``), ``policy-table:<policy>`` (a
  consent whose rules are only a policy reference, decided by the configured policy
  table), ``no-policy-rule:<policy>`` (such a consent, but the table has no rule for
  its policy: ``no-consent``), ``no-consent-on-file``, ``consent-unevaluable`` (a
  consent in force cannot be evaluated: the decision point fails closed and denies,
  naming it); ``null`` when a provision decided;
* ``consents_in_force``: every consent version in force for the patient then, with
  its place in the ledger; ``evaluation``: the evaluator's own answer as it gave it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from careledger_core.errors import CareledgerError
from careledger_core.jcs import canonicalize
from careledger_core.reference import ReferenceRecord, thaw

from ..consent import Policy, evaluate_consent, parse_consent
from ..consent.policy_table import PolicyTable, configured_policy_table
from ..state import ReferenceState
from .model import DECISION_SCHEMA, Question, Requester, question_from_dict

__all__ = [
    "ConsentLedger",
    "LedgeredConsent",
    "answer",
    "build_record",
    "replay_answer",
]

#: ``ConsentDecision.decided_by`` values that name a fallback (with its ``policy``)
_FALLBACKS: Final = frozenset({"policy-table", "no-policy-rule"})


def policy_table_sha256(table: PolicyTable) -> str:
    """The SHA-256 of a policy table's rules (canonical JSON): which table decided."""
    rules = {
        uri: {
            "decision": r.decision,
            "purposes": list(r.purposes),
            "actions": list(r.actions),
            "otherwise": r.otherwise,
        }
        for uri, r in table.rules.items()
    }
    return hashlib.sha256(canonicalize(rules)).hexdigest()


@dataclass(frozen=True, slots=True)
class LedgeredConsent:
    """A committed consent record, its place and its block's signed time."""

    record: ReferenceRecord
    chain_id: str
    height: int
    idx: int
    block_time: str

    @property
    def position(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "height": self.height, "idx": self.idx}


class ConsentLedger:
    """The consent records read so far and how far each consent chain was read."""

    def __init__(self, policy_table: PolicyTable | None = None) -> None:
        #: decides consents whose rules are only a policy reference (part of the
        #: decision's input: its hash is in ``as_of``)
        self.policy_table = configured_policy_table() if policy_table is None else policy_table
        self.policy_table_sha256 = policy_table_sha256(self.policy_table)
        self.state = ReferenceState()
        self.heads: dict[str, int] = {}
        self._places: dict[tuple[str, int], LedgeredConsent] = {}
        self._policies: dict[tuple[str, int], Policy | CareledgerError] = {}

    def apply(self, records: Iterable[LedgeredConsent], heads: Mapping[str, int]) -> int:
        """Apply committed records (ledger order) read up to ``heads`` (chain ->
        height read up to, records or not). Returns how many versions were new."""
        applied = 0
        for lc in records:
            rec = lc.record
            if rec.kind != "consent":
                continue
            if self.state.apply(rec, lc.block_time):
                applied += 1
                self._places[(rec.record_id, rec.version)] = lc
        for chain, height in heads.items():
            if height > self.heads.get(chain, -1):
                self.heads[chain] = height
        return applied

    def as_of(self) -> dict[str, Any]:
        """Where in the ledger this state stands: the consent chains' heights read up
        to, the newest ledger time applied, and the policy table used."""
        return {
            "chains": {c: self.heads[c] for c in sorted(self.heads)},
            "known_at": self.state.latest_known_at,
            "policy_table_sha256": self.policy_table_sha256,
        }

    def place(self, record_id: str, version: int) -> LedgeredConsent | None:
        return self._places.get((record_id, version))

    def policy(self, rec: ReferenceRecord) -> Policy | CareledgerError:
        """The record's parsed policy (parsed once per version), or why it cannot be."""
        key = (rec.record_id, rec.version)
        got = self._policies.get(key)
        if got is None:
            try:
                got = parse_consent(thaw(rec.body))
            except CareledgerError as exc:
                got = exc
            self._policies[key] = got
        return got

    def records_up_to(self) -> list[LedgeredConsent]:
        return sorted(self._places.values(), key=lambda lc: (lc.chain_id, lc.height, lc.idx))


def _version_line(rec: ReferenceRecord, lc: LedgeredConsent | None) -> dict[str, Any]:
    line: dict[str, Any] = {"record_id": rec.record_id, "version": rec.version}
    if lc is not None:
        line.update(lc.position)
        line["ledgered_at"] = lc.block_time
    return line


def answer(ledger: ConsentLedger, question: Question, at: str) -> dict[str, Any]:
    """The answer to ``question`` at instant ``at`` with what ``ledger`` holds."""
    view = ledger.state.as_of(at, known_at=None)
    records = view.consent_records(question.patient_id)
    in_force = [_version_line(r, ledger.place(r.record_id, r.version)) for r in records]
    policies: list[Policy] = []
    for rec in records:
        got = ledger.policy(rec)
        if isinstance(got, CareledgerError):
            return {
                "outcome": "deny",
                "consent": _version_line(rec, ledger.place(rec.record_id, rec.version)),
                "provision_path": [],
                "reason": f"consent {rec.record_id} v{rec.version} cannot be evaluated "
                f"({got.message}): the decision point fails closed",
                "fallback": "consent-unevaluable",
                "consents_in_force": in_force,
                "evaluation": None,
            }
        policies.append(got)
    decision = evaluate_consent(policies, question.request(at), policy_table=ledger.policy_table)
    evaluation = decision.to_dict()
    deciding: dict[str, Any] | None = None
    if decision.consent_id is not None:
        for rec, line in zip(records, in_force, strict=True):
            pol = ledger.policy(rec)
            if isinstance(pol, Policy) and pol.consent_id == decision.consent_id:
                deciding = line
                break
    fallback: str | None = None
    decided_by = evaluation.get("decided_by")
    if isinstance(decided_by, str) and decided_by in _FALLBACKS:
        policy = evaluation.get("policy")
        fallback = f"{decided_by}:{policy}" if isinstance(policy, str) else decided_by
    elif decision.outcome == "no-consent":
        fallback = "no-consent-on-file"
    elif not decision.provision_path:
        fallback = "consent-base"
    return {
        "outcome": decision.outcome,
        "consent": deciding,
        "provision_path": list(decision.provision_path),
        "reason": decision.reason,
        "fallback": fallback,
        "consents_in_force": in_force,
        "evaluation": evaluation,
    }


def build_record(
    ledger: ConsentLedger,
    question: Question,
    *,
    at: str,
    decision_id: str,
    requester: Requester,
) -> dict[str, Any]:
    """The decision record (JSON object, see :mod:`.model`) for ``question`` at ``at``."""
    return {
        "schema": DECISION_SCHEMA,
        "decision_id": decision_id,
        "decided_at": at,
        "question": question.to_dict(),
        "requester": requester.to_dict(),
        "as_of": ledger.as_of(),
        "answer": answer(ledger, question, at),
    }


def replay_answer(
    record: Mapping[str, Any],
    consents: Iterable[LedgeredConsent],
    policy_table: PolicyTable | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Decide a recorded question again over exactly the ledger it says it read:
    the committed consent records of ``as_of.chains`` up to those heights. Returns
    (answer, as_of) as the replay finds them. Raises ``QuestionError``/``KeyError``/
    ``TypeError`` for a record that does not hold a question and a position."""
    chains = record["as_of"]["chains"]
    if not isinstance(chains, Mapping):
        raise TypeError("as_of.chains is not an object")
    heads = {str(c): int(h) for c, h in chains.items()}
    ledger = ConsentLedger(policy_table)
    ledger.apply(
        (lc for lc in consents if lc.chain_id in heads and lc.height <= heads[lc.chain_id]),
        heads,
    )
    question = question_from_dict(record["question"])
    return answer(ledger, question, str(record["decided_at"])), ledger.as_of()
