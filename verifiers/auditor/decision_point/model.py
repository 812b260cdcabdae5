"""The decision point's values (pure): the question, the decision record and its
ledger event.

A *question* (``careledger.consent-question/1`` on the wire) asks: may this actor (id,
roles, organization), for these purposes, doing this action on this class of data
(with these security labels), access patient P now? It is decoded strictly: unknown
members, ``null``, wrong types, over-long strings and lists are refused with the path
at fault (:class:`QuestionError`), never half-read.

A *decision record* (``careledger.consent-decision/1``) is the whole answer and what
it rests on, as canonical JSON (RFC 8785)::

    schema, decision_id, decided_at,
    question   {patient_id, actor_id, actor_roles, actor_organization, purposes,
                action, data_class, security_labels}
    requester  {institution, auth ("local" | "signed-request"), key_id, nonce,
                timestamp, body_sha256, signature}
    as_of      {chains: {<consent chain id>: <height>}, known_at}
    answer     {outcome, consent, provision_path, reason, fallback,
                consents_in_force, evaluation}

``as_of.chains`` is the exact ledger position the decision read: every consent record
committed on those chains up to those heights, nothing else. Replaying the question
at ``decided_at`` over exactly those records must give the same ``answer``.

The record is ledgered twice over: its bytes as a raw record (``careledger.raw-record/1``,
format :data:`DECISION_FORMAT`, chained by the processor in the raw-record chains) and
an access event signed by the decision point's source key (:func:`decision_event`)
whose ``raw_ref`` carries the record's SHA-256. The event is about no patient (the
patient is in the record only), so the auditor does not take a decision for an access.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

import msgspec

from careledger_core.errors import ValidationError
from careledger_core.event import AccessEvent, event_from_dict
from careledger_core.jcs import canonicalize

from ..consent import ConsentRequest
from ..history import NO_PATIENT_ID

__all__ = [
    "DECISION_FORMAT",
    "DECISION_SCHEMA",
    "DECISION_SOURCE_SYSTEM",
    "QUESTION_SCHEMA",
    "Question",
    "QuestionError",
    "Requester",
    "decision_bytes",
    "decision_event",
    "decision_event_id",
    "decision_sha256",
    "parse_question",
    "question_from_dict",
]

DECISION_SCHEMA: Final = "careledger.consent-decision/1"
DECISION_FORMAT: Final = DECISION_SCHEMA
QUESTION_SCHEMA: Final = "careledger.consent-question/1"
DECISION_SOURCE_SYSTEM: Final = "careledger-decision-point"
DECISION_ACTOR: Final = "careledger-decision-point"
#: the largest question body accepted (bytes)
MAX_QUESTION_BYTES: Final = 16 * 1024

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=r"\A[^\x00-\x1f]+\Z")]
_Code = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"\A[^\x00-\x1f]+\Z")]
_Codes = Annotated[tuple[_Code, ...], msgspec.Meta(max_length=32)]


class _Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class _ActorWire(_Struct, frozen=True, kw_only=True):
    id: _Id
    roles: _Codes = ()
    organization: _Id | None = None


class _QuestionWire(_Struct, frozen=True, kw_only=True):
    schema: Literal["careledger.consent-question/1"] = QUESTION_SCHEMA
    patient_id: _Id
    actor: _ActorWire
    purposes: _Codes = ()
    action: Literal["C", "R", "U", "D", "E"]
    data_class: _Code | None = None
    security_labels: _Codes = ()


_DECODER: Final = msgspec.json.Decoder(_QuestionWire)


class QuestionError(ValidationError):
    """A question that cannot be read (``QUESTION_INVALID``), with the path at fault."""

    code = "QUESTION_INVALID"

    def __init__(self, message: str, path: str = "$") -> None:
        super().__init__(
            f"invalid question at {path}: {message}",
            details={"field": path, "reason": message},
            code=self.code,
        )
        self.path = path


@dataclass(frozen=True, slots=True)
class Question:
    """May ``actor_id`` (roles, organization), for ``purposes``, ``action`` on
    ``data_class`` data labelled ``security_labels``, access ``patient_id``?"""

    patient_id: str
    actor_id: str
    action: Literal["C", "R", "U", "D", "E"]
    actor_roles: tuple[str, ...] = ()
    actor_organization: str | None = None
    purposes: tuple[str, ...] = ()
    data_class: str | None = None
    security_labels: tuple[str, ...] = ()

    def request(self, at: str) -> ConsentRequest:
        """The consent evaluator's request for this question at instant ``at``."""
        return ConsentRequest(
            patient_id=self.patient_id,
            at=at,
            actor_id=self.actor_id,
            actor_roles=self.actor_roles,
            actor_organization=self.actor_organization,
            purposes=self.purposes,
            action=self.action,
            security_labels=self.security_labels,
            data_class=self.data_class,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "patient_id": self.patient_id,
            "actor_id": self.actor_id,
            "actor_roles": list(self.actor_roles),
            "actor_organization": self.actor_organization,
            "purposes": list(self.purposes),
            "action": self.action,
            "data_class": self.data_class,
            "security_labels": list(self.security_labels),
        }


def _sorted_unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(set(items)))


def _from_wire(w: _QuestionWire) -> Question:
    return Question(
        patient_id=w.patient_id,
        actor_id=w.actor.id,
        action=w.action,
        actor_roles=_sorted_unique(w.actor.roles),
        actor_organization=w.actor.organization,
        purposes=_sorted_unique(w.purposes),
        data_class=w.data_class,
        security_labels=_sorted_unique(w.security_labels),
    )


def parse_question(body: bytes) -> Question:
    """A question from its JSON bytes; :class:`QuestionError` for anything else."""
    if len(body) > MAX_QUESTION_BYTES:
        raise QuestionError(f"larger than {MAX_QUESTION_BYTES} bytes")
    try:
        return _from_wire(_DECODER.decode(body))
    except msgspec.ValidationError as exc:
        text = str(exc)
        path = text.rsplit(" - at `", 1)[1].rstrip("`") if " - at `" in text else "$"
        raise QuestionError(text.split(" - at `")[0], path) from None
    except msgspec.DecodeError as exc:
        raise QuestionError(f"not JSON: {exc}") from None


def question_from_dict(doc: Mapping[str, Any]) -> Question:
    """A question from its JSON object form (as stored in a decision record)."""
    try:
        return parse_question(msgspec.json.encode(_wire_of_record(doc)))
    except (TypeError, msgspec.EncodeError) as exc:
        raise QuestionError(str(exc)) from None


def _wire_of_record(doc: Mapping[str, Any]) -> dict[str, Any]:
    actor: dict[str, Any] = {"id": doc.get("actor_id"), "roles": doc.get("actor_roles", [])}
    if doc.get("actor_organization") is not None:
        actor["organization"] = doc["actor_organization"]
    wire: dict[str, Any] = {
        "patient_id": doc.get("patient_id"),
        "actor": actor,
        "purposes": doc.get("purposes", []),
        "action": doc.get("action"),
        "security_labels": doc.get("security_labels", []),
    }
    if doc.get("data_class") is not None:
        wire["data_class"] = doc["data_class"]
    return wire


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asked: ``local`` (an operator on this host) or an institution that signed
    the request with its registered key (kept so the question is attributable)."""

    institution: str
    auth: Literal["local", "signed-request"] = "local"
    key_id: str | None = None
    nonce: str | None = None
    timestamp: str | None = None
    body_sha256: str | None = None
    signature: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"institution": self.institution, "auth": self.auth}
        for name in ("key_id", "nonce", "timestamp", "body_sha256", "signature"):
            value = getattr(self, name)
            if value is not None:
                d[name] = value
        return d


# --------------------------------------------------------------------------- record


def decision_bytes(record: Mapping[str, Any]) -> bytes:
    """The canonical (RFC 8785) bytes of a decision record."""
    return canonicalize(record)


def decision_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decision_event_id(sha256: str) -> str:
    """The id of the access event that ledgers a decision (from the record's hash)."""
    return str(uuid.UUID(hex=sha256[:32], version=4))


def decision_event(record: Mapping[str, Any], sha256: str) -> AccessEvent:
    """The access event that ledgers a decision: about no patient, by the decision
    point, carrying the record's SHA-256 in ``raw_ref`` (format ``DECISION_FORMAT``)."""
    return event_from_dict(
        {
            "schema": "careledger.access-event/1",
            "event_id": decision_event_id(sha256),
            "occurred_at": record["decided_at"],
            "recorded_at": record["decided_at"],
            "event_type": {
                "system": "urn:careledger:event-type",
                "code": "consent-decision",
                "display": "Consent decision",
            },
            "action": "R",
            "outcome": 0,
            "outcome_desc": f"consent decision {record['answer']['outcome']}",
            "actor": {"id": DECISION_ACTOR, "roles": [], "is_requestor": False},
            "source": {"system": DECISION_SOURCE_SYSTEM, "type": 4},
            "patient": {"id": NO_PATIENT_ID},
            "object": {"type": "consent-decision", "id": record["decision_id"]},
            "correlation_id": record["decision_id"],
            "raw_ref": {"format": DECISION_FORMAT, "sha256": sha256},
        }
    )


def ledgered_decision_hash(event: AccessEvent) -> tuple[str, str] | None:
    """(decision id, record SHA-256) if ``event`` ledgers a decision, else None (also
    for one that does not hold together: its id is not derived from its hash)."""
    ref, obj = event.raw_ref, event.object
    if (
        ref is None
        or ref.format != DECISION_FORMAT
        or event.source.system != DECISION_SOURCE_SYSTEM
        or obj is None
        or obj.type != "consent-decision"
        or not obj.id
    ):
        return None
    if decision_event_id(ref.sha256) != event.event_id:
        return None
    return str(obj.id), ref.sha256
