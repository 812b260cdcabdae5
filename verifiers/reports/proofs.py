"""The pure check behind ``careledger verify-proof FILE`` (the command is
:mod:`verifiers.reports.verify_proof`): an exported access report, offline.

An access report (``careledger access-report --format json``, schema
``careledger.access-report/1``, see docs/design.md) is a list of lines, each about one
access event, each with a Merkle inclusion proof (audit path) and the signed block
header it is a leaf of. A proof comes in one of two forms (ADR 0009):

* **full** (``proof.form`` = ``"full"``, or absent in older reports): it carries the
  event's canonical bytes. The ``access`` view always uses it; the ``gdpr`` and
  ``hipaa-disclosures`` views only when exported with ``--include-event-bytes``.
* **redacted** (``proof.form`` = ``"redacted"``): it carries the leaf hash, not the
  bytes, so the file discloses nothing of the event beyond the line's displayed fields.
  The default of the ``gdpr`` and ``hipaa-disclosures`` views.

``verify_report`` is the pure core (no I/O). For every line:

1. the header bytes decode strictly (canonical ``careledger.block/1``) and the
   header's Ed25519 signature verifies under one of the **trusted** keys passed in
   (keys found in the file are never used), and the line's ``chain_id``/``height``/
   ``block_hash`` are the header's;
2. full form: the canonical bytes decode to an access event and are canonical, and the
   leaf hash SHA-256(0x00 ‖ bytes) equals the line's ``leaf_hash``; redacted form: the
   ``leaf_hash`` is taken as given;
3. the audit path leads from that leaf, at the line's ``index``, to the header's
   ``merkle_root`` for a tree of ``header.event_count`` leaves (the size always comes
   from the signed header, never from the file);
4. full form — **content verified**: every displayed field the line shows
   (``DISPLAYED_FIELDS``) equals the event's: the patient (also the report's
   ``patient``), event id, time, actor, action, purpose, object, description and
   recipient; the event time lies in the report's ``[from, to)`` range; and in the
   ``hipaa-disclosures`` view the event is a disclosure (``is_disclosure``);
5. redacted form — **inclusion verified**, never content verified: the leaf is in the
   signed block, but offline nothing binds the displayed fields to it (who the event is
   about, its purpose, whether it is a disclosure...): only someone holding the event
   bytes (the privacy office, a regulator) can check them. What the signed header does
   bind is checked: the chain is on the access-events topic (not a reference-data chain
   signed by the same key), the displayed time lies within the block's signed event
   times ``[first_event_time, last_event_time]`` and in the report's range. A redacted
   line in the ``access`` view fails (that view always carries the bytes), and every
   redacted line fails with ``--require-content``.

Every failure carries a stable code (``CODES``), e.g. ``PROOF_INVALID`` for a tampered
leaf hash or audit path, ``BLOCK_HEADER_INVALID``, ``SIGNATURE_INVALID``,
``KEY_UNKNOWN``.

What it cannot show: that the report is **complete**. A line removed from the file
leaves every other line valid; the report lists what the ledger held when it was made
and is complete only up to the ledger (``careledger verify`` checks the ledger itself
against its signed checkpoints). Directory data shown next to an actor (``actor_name``,
``actor_role``) and decisions come from other tables and are informational, not proven
here.

With a witness policy, :mod:`verifiers.reports.witnessed` then checks that each line's
block is in a checkpoint a quorum of witnesses cosigned (ADR 0019), adding its failures
to the same :class:`ProofResult` and its verdict to ``ProofResult.witnessing``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from careledger_core.block import BlockHeader, block_hash, decode_header
from careledger_core.errors import CareledgerError
from careledger_core.event import (
    AccessEvent,
    Coding,
    Party,
    decode_and_canonicalize,
    is_valid_timestamp,
)
from careledger_core.hashing import leaf_hash
from careledger_core.merkle import verify_inclusion
from careledger_core.sealed_event import (
    SealedAccessEvent,
    decode_sealed_document,
    open_with,
    parse_opening,
)
from careledger_core.signing import TrustedKeys

__all__ = [
    "CODES",
    "DISPLAYED_FIELDS",
    "FORMS",
    "FORM_FULL",
    "FORM_REDACTED",
    "REPORT_SCHEMA",
    "VIEWS",
    "ProofResult",
    "ReportFormatError",
    "describe",
    "disclosed_by",
    "is_disclosure",
    "recipient",
    "redact_report",
    "verify_report",
]

REPORT_SCHEMA: Final = "careledger.access-report/1"
VIEWS: Final = ("access", "hipaa-disclosures", "gdpr")
#: A full proof carries the event's canonical bytes; a redacted one only its leaf hash.
FORM_FULL: Final = "full"
FORM_REDACTED: Final = "redacted"
FORMS: Final = (FORM_FULL, FORM_REDACTED)

#: Stable codes of the reasons a line fails (``ProofResult.codes``).
CODES: Final[Mapping[str, str]] = {
    "LINE_MALFORMED": "the line or its proof is missing a member or has one of the wrong "
    "type/encoding (not base64, not hex, unknown proof form, ...)",
    "BLOCK_HEADER_INVALID": "the header bytes are not a canonical careledger.block/1 header",
    "KEY_UNKNOWN": "the header names a key the verifier does not trust",
    "SIGNATURE_INVALID": "the header's signature does not verify under the trusted key",
    "BLOCK_MISMATCH": "the proof's chain_id/height/block_hash are not the signed header's",
    "EVENT_INVALID": "full proof: the bytes are not a canonical access event",
    "LEAF_HASH_MISMATCH": "full proof: leaf_hash is not SHA-256(0x00 || bytes)",
    "PROOF_INVALID": "the audit path does not lead from the leaf hash at index to the "
    "signed Merkle root (a tampered leaf hash, path or index)",
    "FIELD_MISMATCH": "full proof: a displayed field is not the event's",
    "PATIENT_MISMATCH": "full proof: the event is about another patient than the report's",
    "OUT_OF_RANGE": "the event time (full) or the displayed time or the signed block's "
    "event times (redacted) lie outside the report's range",
    "NOT_A_DISCLOSURE": "full proof, HIPAA view: the event is not a disclosure",
    "DUPLICATE_LINE": "the same leaf is listed twice (padding)",
    "NOT_AN_ACCESS_CHAIN": "redacted proof: the signed chain is not on the access-events "
    "topic (e.g. a reference-data chain signed by the same key)",
    "TIME_OUTSIDE_BLOCK": "redacted proof: the displayed time lies outside the signed "
    "block's event times",
    "REDACTION_NOT_ALLOWED": "redacted proof in the access view, which always carries bytes",
    "CONTENT_NOT_PROVEN": "redacted proof while the verifier requires content (--require-content)",
    # with a witness policy (ADR 0019, verifiers.reports.witnessed)
    "CHECKPOINT_INVALID": "the report's checkpoint of the line's chain is not a tree "
    "checkpoint note, is of another chain or size than it says, or is listed twice",
    "CHECKPOINT_SIGNATURE_INVALID": "a trusted key's signature on the checkpoint does not verify",
    "CHECKPOINT_KEY_UNKNOWN": "the checkpoint is signed by no key the verifier trusts",
    "COSIGNATURE_INVALID": "a cosignature line with a policy witness's name and key id "
    "does not verify (a forged cosignature)",
    "BLOCK_PROOF_INVALID": "proof.block_inclusion does not lead from the line's block to "
    "the checkpoint's root (an edited proof, or a checkpoint of another history)",
    "BLOCK_PROOF_MISSING": "the checkpoint covers the line's block but the line has no "
    "proof.block_inclusion",
}

DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
DCM_EXPORT: Final = "110106"
RESTFUL_INTERACTION: Final = "http://hl7.org/fhir/restful-interaction"
AUDIT_EVENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
LIFECYCLE: Final = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"


def _is_export_coding(c: Coding) -> bool:
    if c.system == DCM and c.code == DCM_EXPORT:
        return True
    if c.system == LIFECYCLE and c.code == "disclose":
        return True
    if c.system in (RESTFUL_INTERACTION, AUDIT_EVENT_TYPE):
        # FHIR Bulk Data "$export" (an operation) however the source spells it
        names = {c.code.lower().lstrip("$")}
        if c.display:
            names.add(c.display.lower().lstrip("$"))
        return "export" in names
    return False


DCM_IMPORT: Final = "110107"


def is_disclosure(e: AccessEvent) -> bool:
    """Whether an access event is a *disclosure* for the HIPAA accounting (164.528).

    Precisely: ``outcome == 0`` (it succeeded: a failed export released nothing), the
    event type or one of its subtypes is an export (DICOM ``110106`` Export, ISO 21089
    lifecycle ``disclose``, or a FHIR restful-interaction / audit-event-type coding whose
    code or display is ``export``: ``$export``, bulk data), and either

    * ``action == "E"`` (execute): an ``extract`` exported with action E is counted,
      because the ledger cannot tell whether the copy left the entity and the accounting
      must not under-report; or
    * the event names its ``recipient`` (a Destination role of the record: DICOM 110152
      / 110154) whatever the action — the IHE BALP privacy disclosure and the HL7
      ``example-disclosure`` are recorded with action ``R`` — unless the event type is
      DICOM ``110107`` Import: that is the recipient's record of receiving it, not a
      disclosure by the entity keeping this ledger.

    A print (DICOM 110106 with action ``R`` and no recipient) is a use inside the
    organisation, not a disclosure.
    """
    if e.outcome != 0:
        return False
    if not (_is_export_coding(e.event_type) or any(_is_export_coding(c) for c in e.event_subtype)):
        return False
    if e.action == "E":
        return True
    imported = e.event_type.system == DCM and e.event_type.code == DCM_IMPORT
    return e.recipient is not None and not imported


def describe(e: AccessEvent) -> str:
    """What happened, in words, from the event alone: type/subtypes and the object."""
    kinds = [e.event_type.display or e.event_type.code]
    kinds += [c.display or c.code for c in e.event_subtype]
    what = "patient record"
    if e.object is not None:
        what = e.object.type + (f" {e.object.id}" if e.object.id else "")
    return f"{' / '.join(kinds)}: {what}"


def _party(p: Party) -> str:
    who = f"{p.name} ({p.id})" if p.name else p.id
    if p.organization:
        who = f"{who}, {p.organization}"
    return f"{who} at {p.address}" if p.address and p.address != p.id else who


def recipient(e: AccessEvent) -> str:
    """Who received a disclosure (164.528(b)(2)(ii): name and, if known, address): the
    event's ``recipient`` (the record's Destination role); an event without one (a bulk
    ``$export``) was received by its actor and their organisation."""
    if e.recipient is not None:
        return _party(e.recipient)
    who = f"{e.actor.name} ({e.actor.id})" if e.actor.name else e.actor.id
    return f"{who}, {e.actor.organization}" if e.actor.organization else who


def disclosed_by(e: AccessEvent) -> str | None:
    """Who released the data (the record's Source role), when the event names it."""
    return _party(e.discloser) if e.discloser is not None else None


def _object_type(e: AccessEvent) -> str | None:
    return e.object.type if e.object is not None else None


def _object_id(e: AccessEvent) -> str | None:
    return e.object.id if e.object is not None else None


#: Line fields taken from the event itself, and how to get them: verify-proof compares
#: each one a line shows with its canonical bytes.
DISPLAYED_FIELDS: Final[Mapping[str, Callable[[AccessEvent], Any]]] = {
    "patient_id": lambda e: e.patient.id,
    "event_id": lambda e: e.event_id,
    "occurred_at": lambda e: e.occurred_at,
    "actor_id": lambda e: e.actor.id,
    "organization": lambda e: e.actor.organization,
    "action": lambda e: e.action,
    "outcome": lambda e: e.outcome,
    "purpose": lambda e: list(e.purpose_of_use),
    "object_type": _object_type,
    "object_id": _object_id,
    "description": describe,
    "recipient": recipient,
    "disclosed_by": disclosed_by,
}


class ReportFormatError(CareledgerError):
    """The document is not an access report at all (a usage error, exit 2)."""

    code = "REPORT_INVALID"


@dataclass
class ProofResult:
    """The outcome for one line of a report.

    ``status`` is ``"failed"`` (see ``codes``/``reasons``, one code per reason),
    ``"content-verified"`` (full proof: the event bytes are in the signed block and every
    displayed field is theirs) or ``"inclusion-verified"`` (redacted proof: the leaf hash
    is in the signed block; ``unbound`` names the displayed claims nothing in the file
    binds to it). A redacted line is never content-verified.
    """

    line: int  # 0-based position in ``lines``
    event_id: str | None
    chain_id: str | None
    height: int | None
    index: int | None
    form: str | None = None  # "full" | "redacted" | None (could not tell)
    leaf_hash: str | None = None
    reasons: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    unbound: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: (chain id, height, block hash) of the signed header, once its signature verified
    signed_block: tuple[str, int, bytes] | None = None
    #: with a witness policy: is the line's block in a quorum-cosigned checkpoint
    #: (``verifiers.reports.witnessed``); None without one
    witnessing: dict[str, Any] | None = None

    def fail(self, code: str, reason: str) -> None:
        self.codes.append(code)
        self.reasons.append(reason)

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def status(self) -> str:
        if not self.ok:
            return "failed"
        return "content-verified" if self.form == FORM_FULL else "inclusion-verified"

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "ok": self.ok,
            "status": self.status,
            "form": self.form,
            "event_id": self.event_id,
            "chain_id": self.chain_id,
            "height": self.height,
            "index": self.index,
            "leaf_hash": self.leaf_hash,
            "codes": list(self.codes),
            "reasons": list(self.reasons),
            "unbound": list(self.unbound),
            "notes": list(self.notes),
            "witnessing": self.witnessing,
        }


class _LineFailed(Exception):
    """A failure after which nothing more of the line can be checked."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _malformed(reason: str) -> _LineFailed:
    return _LineFailed("LINE_MALFORMED", reason)


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise _malformed(f"{what} is not a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise _malformed(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != value:
        raise _malformed(f"{what} is not canonical base64")
    return raw


def _hex(value: object, what: str, size: int) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * size or value != value.lower():
        raise _malformed(f"{what} is not {size} bytes of lowercase hex")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise _malformed(f"{what} is not hex") from exc


def _int(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise _malformed(f"{what} is not a non-negative integer")
    return value


class _HeaderCache:
    """Decode and check each distinct (header, signature) once."""

    def __init__(self, trusted: TrustedKeys) -> None:
        self.trusted = trusted
        self._seen: dict[tuple[str, str], BlockHeader | _LineFailed] = {}

    def check(self, header_b64: object, signature_hex: object) -> BlockHeader:
        if not isinstance(header_b64, str) or not isinstance(signature_hex, str):
            raise _malformed("proof.header and proof.signature must be strings")
        key = (header_b64, signature_hex)
        cached = self._seen.get(key)
        if cached is None:
            cached = self._check(header_b64, signature_hex)
            self._seen[key] = cached
        if isinstance(cached, _LineFailed):
            raise _LineFailed(cached.code, cached.reason)
        return cached

    def _check(self, header_b64: str, signature_hex: str) -> BlockHeader | _LineFailed:
        try:
            raw = _b64(header_b64, "proof.header")
            signature = _hex(signature_hex, "proof.signature", 64)
        except _LineFailed as exc:
            return exc
        try:
            header = decode_header(raw)
        except CareledgerError as exc:
            return _LineFailed(exc.code, f"block header does not decode: {exc.message}")
        try:
            self.trusted.verify_header(header, signature)
        except CareledgerError as exc:
            return _LineFailed(exc.code, f"block signature: {exc.code}: {exc.message}")
        return header


def _form(proof: Mapping[str, Any]) -> str:
    """The proof's form; a proof that is neither clearly full nor clearly redacted fails."""
    form = proof.get("form", FORM_FULL)  # reports written before redaction have no form
    if form not in FORMS:
        raise _malformed(f"proof.form must be one of {', '.join(FORMS)}")
    if form == FORM_FULL and "canonical" not in proof:
        raise _malformed("full proof without the event bytes (proof.canonical)")
    if form == FORM_REDACTED and "canonical" in proof:
        raise _malformed("redacted proof carrying event bytes: ambiguous")
    return str(form)


def _topic(chain_id: str) -> str | None:
    parts = chain_id.rsplit("/", 2)  # "<origin>/<topic>/<partition>"
    return parts[1] if len(parts) == 3 else None


@dataclass(frozen=True)
class _Policy:
    events_topic: str | None
    require_content: bool


def _check_line(
    line: Mapping[str, Any],
    doc: Mapping[str, Any],
    headers: _HeaderCache,
    policy: _Policy,
    result: ProofResult,
) -> None:
    proof = line.get("proof")
    if not isinstance(proof, Mapping):
        raise _malformed("no proof")
    form = result.form = _form(proof)
    header = headers.check(proof.get("header"), proof.get("signature"))
    result.signed_block = (header.chain_id, header.height, block_hash(header))
    chain_id = proof.get("chain_id")
    height = _int(proof.get("height"), "proof.height")
    index = _int(proof.get("index"), "proof.index")
    if chain_id != header.chain_id or height != header.height:
        result.fail(
            "BLOCK_MISMATCH",
            f"proof names block {chain_id}@{height}, the signed header is "
            f"{header.chain_id}@{header.height}",
        )
    if "block_hash" in proof and proof["block_hash"] != block_hash(header).hex():
        result.fail("BLOCK_MISMATCH", "proof.block_hash is not the hash of the signed header")

    event: AccessEvent | None = None
    erased: SealedAccessEvent | None = None
    if form == FORM_FULL:
        canonical = _b64(proof.get("canonical"), "proof.canonical")
        if _SEALED_SCHEMA in canonical:  # a sealed ledger's line (ADR 0037)
            event, erased = _open_sealed(line, proof, canonical, result)
        else:
            try:
                event, canon = decode_and_canonicalize(canonical)
            except CareledgerError as exc:
                raise _LineFailed(
                    "EVENT_INVALID", f"canonical bytes are not an access event: {exc.message}"
                ) from exc
            if canon != canonical:
                result.fail("EVENT_INVALID", "event bytes are not in canonical form")
        leaf = leaf_hash(canonical)
        claimed_leaf = proof.get("leaf_hash")
        if not isinstance(claimed_leaf, str) or not hmac.compare_digest(
            claimed_leaf.encode(), leaf.hex().encode()
        ):
            result.fail("LEAF_HASH_MISMATCH", "leaf_hash is not SHA-256(0x00 || canonical bytes)")
    else:
        leaf = _hex(proof.get("leaf_hash"), "proof.leaf_hash", 32)
    result.leaf_hash = leaf.hex()

    path_value = proof.get("audit_path")
    if not isinstance(path_value, list):
        raise _malformed("proof.audit_path is not a list")
    path = [_hex(p, f"proof.audit_path[{i}]", 32) for i, p in enumerate(path_value)]
    try:
        verify_inclusion(leaf, index, header.event_count, path, bytes.fromhex(header.merkle_root))
    except CareledgerError as exc:
        result.fail(
            "PROOF_INVALID",
            f"inclusion proof: {exc.message} (index {index}, signed tree size "
            f"{header.event_count})",
        )

    if event is not None:
        _check_content(line, doc, event, result)
    elif erased is not None:
        _check_erased(line, doc, erased, result)
    else:
        _check_redacted(line, doc, header, policy, result)


_SEALED_SCHEMA: Final = b'"schema":"careledger.sealed-access-event/1"'
#: what an erased line may show: the sealed document's own fields
_ERASED_FIELDS: Final[Mapping[str, Callable[[SealedAccessEvent], Any]]] = {
    "event_id": lambda d: d.event_id,
    "occurred_at": lambda d: d.occurred_at,
    "action": lambda d: d.action,
    "outcome": lambda d: d.outcome,
    "purpose": lambda d: list(d.purpose_of_use),
}


def _open_sealed(
    line: Mapping[str, Any], proof: Mapping[str, Any], canonical: bytes, result: ProofResult
) -> tuple[AccessEvent | None, SealedAccessEvent | None]:
    """A sealed document (ADR 0037): opened by the proof's ``opening`` (the salt and the
    sensitive part, checked against the signed commitment), or an erased line."""
    try:
        document, canon = decode_sealed_document(canonical)
    except CareledgerError as exc:
        raise _LineFailed(
            "EVENT_INVALID", f"canonical bytes are not a sealed access event: {exc.message}"
        ) from exc
    if canon != canonical:
        result.fail("EVENT_INVALID", "event bytes are not in canonical form")
    if "opening" not in proof:
        if "erased" not in line:
            raise _LineFailed(
                "CONTENT_NOT_PROVEN",
                "a sealed event without its opening, and the line does not say it was erased",
            )
        return None, document
    try:
        salt, sensitive = parse_opening(_b64(proof.get("opening"), "proof.opening"))
        return open_with(canonical, salt, sensitive).event, None
    except CareledgerError as exc:
        raise _LineFailed(
            "OPENING_INVALID", f"the opening does not open the signed commitment: {exc.message}"
        ) from exc


def _check_erased(
    line: Mapping[str, Any],
    doc: Mapping[str, Any],
    document: SealedAccessEvent,
    result: ProofResult,
) -> None:
    """An erased line: the signed document is in the block; what it shows must be the
    document's; whose it was is not provable any more (its key is gone)."""
    for name, value in line.items():
        if name in ("proof", "erased", "decision"):
            continue
        if name not in _ERASED_FIELDS:
            result.fail("FIELD_UNBOUND", f"an erased line shows {name}, which nothing binds")
        elif value != _ERASED_FIELDS[name](document):
            result.fail("FIELD_MISMATCH", f"displayed {name} {value!r} is not the document's")
    start, end = doc.get("from"), doc.get("to")
    if (isinstance(start, str) and document.occurred_at < start) or (
        isinstance(end, str) and document.occurred_at >= end
    ):
        result.fail("OUT_OF_RANGE", f"event time {document.occurred_at} is outside the range")
    result.unbound = ["patient"]
    result.notes.append(
        "erased: the signed document is in the block; its sealed part cannot be opened, so "
        "whose access it was rests on the ledgered erasure, not on this file"
    )


def _check_content(
    line: Mapping[str, Any], doc: Mapping[str, Any], event: AccessEvent, result: ProofResult
) -> None:
    """Full proof: every displayed field, the patient, the range and the view's rule."""
    for name in DISPLAYED_FIELDS:
        if name in line:
            actual = DISPLAYED_FIELDS[name](event)
            if line[name] != actual:
                result.fail(
                    "FIELD_MISMATCH",
                    f"displayed {name} {line[name]!r} is not the event's {actual!r}",
                )
    if event.patient.id != doc.get("patient"):
        result.fail(
            "PATIENT_MISMATCH", f"event is about patient {event.patient.id!r}, not the report's"
        )
    start, end = doc.get("from"), doc.get("to")
    if isinstance(start, str) and event.occurred_at < start:
        result.fail("OUT_OF_RANGE", f"event time {event.occurred_at} is before the report's range")
    if isinstance(end, str) and event.occurred_at >= end:
        result.fail("OUT_OF_RANGE", f"event time {event.occurred_at} is after the report's range")
    if doc.get("view") == "hipaa-disclosures" and not is_disclosure(event):
        result.fail("NOT_A_DISCLOSURE", "listed as a disclosure but the event is not one")


def _check_redacted(
    line: Mapping[str, Any],
    doc: Mapping[str, Any],
    header: BlockHeader,
    policy: _Policy,
    result: ProofResult,
) -> None:
    """Redacted proof: only what the signed header binds; name what stays unbound."""
    view = doc.get("view")
    if view == "access":
        result.fail(
            "REDACTION_NOT_ALLOWED", "redacted proof in the access view (it carries the bytes)"
        )
    if policy.require_content:
        result.fail(
            "CONTENT_NOT_PROVEN",
            "redacted proof: the displayed fields cannot be checked without the event bytes",
        )
    topic = _topic(header.chain_id)
    if policy.events_topic is not None and topic != policy.events_topic:
        result.fail(
            "NOT_AN_ACCESS_CHAIN",
            f"the signed chain {header.chain_id} is not on the access-events topic "
            f"{policy.events_topic!r}",
        )
    start, end = doc.get("from"), doc.get("to")
    span = f"[{header.first_event_time}, {header.last_event_time}]"
    if (isinstance(end, str) and header.first_event_time >= end) or (
        isinstance(start, str) and header.last_event_time < start
    ):
        result.fail("OUT_OF_RANGE", f"no event of the signed block {span} is in the report's range")
    if "occurred_at" in line:
        shown = line["occurred_at"]
        if not isinstance(shown, str) or not is_valid_timestamp(shown):
            raise _malformed("displayed occurred_at is not a UTC timestamp")
        if (isinstance(start, str) and shown < start) or (isinstance(end, str) and shown >= end):
            result.fail("OUT_OF_RANGE", f"displayed time {shown} is outside the report's range")
        if not header.first_event_time <= shown <= header.last_event_time:
            result.fail(
                "TIME_OUTSIDE_BLOCK",
                f"displayed time {shown} is outside the signed block's event times {span}",
            )
        else:
            result.notes.append(f"occurred_at lies within the signed block's event times {span}")
    result.unbound = [name for name in DISPLAYED_FIELDS if name in line]
    result.unbound.append("patient")
    if view == "hipaa-disclosures":
        result.unbound.append("is_disclosure")


def _identity(line: object) -> tuple[str | None, str | None, int | None, int | None]:
    if not isinstance(line, Mapping):
        return None, None, None, None
    proof = line.get("proof")
    proof = proof if isinstance(proof, Mapping) else {}
    event_id = line.get("event_id")
    chain = proof.get("chain_id")
    height = proof.get("height")
    index = proof.get("index")
    return (
        event_id if isinstance(event_id, str) else None,
        chain if isinstance(chain, str) else None,
        height if type(height) is int else None,
        index if type(index) is int else None,
    )


def verify_report(
    doc: Mapping[str, Any],
    trusted: TrustedKeys,
    *,
    events_topic: str | None = None,
    require_content: bool = False,
) -> list[ProofResult]:
    """Check every line of an access report against the ``trusted`` keys (pure).

    ``events_topic``: the access-events topic; a redacted line on a chain of another
    topic fails (``None``: not checked). ``require_content``: every redacted line fails.
    Raises :class:`ReportFormatError` if ``doc`` is not an access report; otherwise
    returns one :class:`ProofResult` per line, in order (``ok`` or with its reasons).
    """
    if not isinstance(doc, Mapping):
        raise ReportFormatError("an access report is a JSON object")
    if doc.get("schema") != REPORT_SCHEMA:
        raise ReportFormatError(f"not an access report (schema is not {REPORT_SCHEMA!r})")
    if not isinstance(doc.get("patient"), str):
        raise ReportFormatError("the report names no patient")
    if doc.get("view") not in VIEWS:
        raise ReportFormatError(f"view must be one of {', '.join(VIEWS)}")
    if not isinstance(doc.get("from"), str) or not isinstance(doc.get("to"), str):
        raise ReportFormatError("the report names no time range (from, to)")
    lines = doc.get("lines")
    if not isinstance(lines, list):
        raise ReportFormatError("the report has no list of lines")
    headers = _HeaderCache(trusted)
    policy = _Policy(events_topic, require_content)
    results: list[ProofResult] = []
    first_seen: dict[tuple[str, int, int], int] = {}
    for i, line in enumerate(lines):
        result = ProofResult(i, *_identity(line))
        try:
            if not isinstance(line, Mapping):
                raise _malformed("line is not an object")
            _check_line(line, doc, headers, policy, result)
        except _LineFailed as exc:
            result.fail(exc.code, exc.reason)
        if result.chain_id is not None and result.height is not None and result.index is not None:
            where = (result.chain_id, result.height, result.index)
            if where in first_seen:  # padding: one access listed twice
                result.fail("DUPLICATE_LINE", f"the same event as line {first_seen[where]}")
            else:
                first_seen[where] = i
        results.append(result)
    return results


def redact_report(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` whose proofs are redacted: each line's ``proof.canonical`` (the
    event bytes) is dropped and ``proof.form`` becomes ``"redacted"``; the leaf hash,
    audit path and signed header stay, so inclusion still verifies offline."""
    lines = []
    for line in doc["lines"]:
        proof = {
            k: v
            for k, v in line["proof"].items()
            if k not in ("form", "canonical", "opening")  # an opening names the patient
        }
        lines.append({**line, "proof": {"form": FORM_REDACTED, **proof}})
    return {**doc, "lines": lines}
