"""``careledger verify-proof FILE``: check an exported access report offline.

An access report (``careledger access-report --format json``, schema
``careledger.access-report/1``, see docs/design.md) is a list of lines, each about one
access event, each carrying everything needed to check it without the store: the
event's canonical bytes, its Merkle inclusion proof (audit path) and the signed block
header it is a leaf of. ``verify_report`` is the pure core (no I/O): for every line

1. the header bytes decode strictly (canonical ``careledger.block/1``) and the
   header's Ed25519 signature verifies under one of the **trusted** keys passed in
   (keys found in the file are never used), and the line's ``chain_id``/``height``/
   ``block_hash`` are the header's;
2. the canonical bytes decode to an access event and are canonical, and the leaf hash
   SHA-256(0x00 ‖ bytes) equals the line's ``leaf_hash``;
3. the audit path leads from that leaf, at the line's ``index``, to the header's
   ``merkle_root`` for a tree of ``header.event_count`` leaves (the size always comes
   from the signed header, never from the file);
4. every displayed field the line shows (``DISPLAYED_FIELDS``) equals the event's: the
   patient (also the report's ``patient``), event id, time, actor, action, purpose,
   object, description and recipient; the event time lies in the report's
   ``[from, to)`` range; and in the ``hipaa-disclosures`` view the event is a
   disclosure (``is_disclosure``).

What it cannot show: that the report is **complete**. A line removed from the file
leaves every other line valid; the report lists what the ledger held when it was made
and is complete only up to the ledger (``careledger verify`` checks the ledger itself
against its signed checkpoints). Directory data shown next to an actor (``actor_name``,
``actor_role``) and decisions come from other tables and are informational, not proven
here.

Exit status: 0 every line verifies, 1 at least one line fails (each is named with its
reasons), 2 usage error (unreadable file, not a report, no trusted key).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from careledger.config import Settings
from careledger.keys import load_public_keys, load_trusted_keys
from careledger_core.block import BlockHeader, block_hash, decode_header
from careledger_core.errors import CareledgerError
from careledger_core.event import AccessEvent, Coding, decode_and_canonicalize
from careledger_core.hashing import leaf_hash
from careledger_core.merkle import verify_inclusion
from careledger_core.signing import TrustedKeys

__all__ = [
    "DISPLAYED_FIELDS",
    "REPORT_SCHEMA",
    "VIEWS",
    "ProofResult",
    "ReportFormatError",
    "describe",
    "is_disclosure",
    "recipient",
    "verify_report",
]

REPORT_SCHEMA: Final = "careledger.access-report/1"
VIEWS: Final = ("access", "hipaa-disclosures", "gdpr")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

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


def is_disclosure(e: AccessEvent) -> bool:
    """Whether an access event is a *disclosure* for the HIPAA accounting (164.528).

    Precisely: ``action == "E"`` (execute), ``outcome == 0`` (it succeeded: a failed
    export released nothing), and the event type or one of its subtypes is an export:
    DICOM ``110106`` Export, ISO 21089 lifecycle ``disclose``, or a FHIR
    restful-interaction / audit-event-type coding whose code or display is ``export``
    (``$export``, bulk data). A print (DICOM 110106 with action ``R``) is a use inside
    the organisation, not a disclosure; an ``extract`` exported with action E is
    counted, because the ledger cannot tell whether the copy left the entity and the
    accounting must not under-report.
    """
    if e.action != "E" or e.outcome != 0:
        return False
    return _is_export_coding(e.event_type) or any(_is_export_coding(c) for c in e.event_subtype)


def describe(e: AccessEvent) -> str:
    """What happened, in words, from the event alone: type/subtypes and the object."""
    kinds = [e.event_type.display or e.event_type.code]
    kinds += [c.display or c.code for c in e.event_subtype]
    what = "patient record"
    if e.object is not None:
        what = e.object.type + (f" {e.object.id}" if e.object.id else "")
    return f"{' / '.join(kinds)}: {what}"


def recipient(e: AccessEvent) -> str:
    """Who received a disclosure, from the event: the actor and their organisation."""
    who = f"{e.actor.name} ({e.actor.id})" if e.actor.name else e.actor.id
    return f"{who}, {e.actor.organization}" if e.actor.organization else who


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
}


class ReportFormatError(CareledgerError):
    """The document is not an access report at all (a usage error, exit 2)."""

    code = "REPORT_INVALID"


@dataclass
class ProofResult:
    """The outcome for one line of a report."""

    line: int  # 0-based position in ``lines``
    event_id: str | None
    chain_id: str | None
    height: int | None
    index: int | None
    reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reasons

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "ok": self.ok,
            "event_id": self.event_id,
            "chain_id": self.chain_id,
            "height": self.height,
            "index": self.index,
            "reasons": list(self.reasons),
        }


class _LineFailed(Exception):
    pass


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise _LineFailed(f"{what} is not a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise _LineFailed(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != value:
        raise _LineFailed(f"{what} is not canonical base64")
    return raw


def _hex(value: object, what: str, size: int) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * size or value != value.lower():
        raise _LineFailed(f"{what} is not {size} bytes of lowercase hex")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise _LineFailed(f"{what} is not hex") from exc


def _int(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise _LineFailed(f"{what} is not a non-negative integer")
    return value


class _HeaderCache:
    """Decode and check each distinct (header, signature) once."""

    def __init__(self, trusted: TrustedKeys) -> None:
        self.trusted = trusted
        self._seen: dict[tuple[str, str], BlockHeader | str] = {}

    def check(self, header_b64: object, signature_hex: object) -> BlockHeader:
        if not isinstance(header_b64, str) or not isinstance(signature_hex, str):
            raise _LineFailed("proof.header and proof.signature must be strings")
        key = (header_b64, signature_hex)
        cached = self._seen.get(key)
        if cached is None:
            cached = self._check(header_b64, signature_hex)
            self._seen[key] = cached
        if isinstance(cached, str):
            raise _LineFailed(cached)
        return cached

    def _check(self, header_b64: str, signature_hex: str) -> BlockHeader | str:
        try:
            raw = _b64(header_b64, "proof.header")
            signature = _hex(signature_hex, "proof.signature", 64)
        except _LineFailed as exc:
            return str(exc)
        try:
            header = decode_header(raw)
        except CareledgerError as exc:
            return f"block header does not decode: {exc.message}"
        try:
            self.trusted.verify_header(header, signature)
        except CareledgerError as exc:
            return f"block signature: {exc.code}: {exc.message}"
        return header


def _check_line(
    line: Mapping[str, Any],
    doc: Mapping[str, Any],
    headers: _HeaderCache,
) -> list[str]:
    proof = line.get("proof")
    if not isinstance(proof, Mapping):
        raise _LineFailed("no proof")
    header = headers.check(proof.get("header"), proof.get("signature"))
    reasons: list[str] = []
    chain_id = proof.get("chain_id")
    height = _int(proof.get("height"), "proof.height")
    index = _int(proof.get("index"), "proof.index")
    if chain_id != header.chain_id or height != header.height:
        reasons.append(
            f"proof names block {chain_id}@{height}, the signed header is "
            f"{header.chain_id}@{header.height}"
        )
    if "block_hash" in proof and proof["block_hash"] != block_hash(header).hex():
        reasons.append("proof.block_hash is not the hash of the signed header")

    canonical = _b64(proof.get("canonical"), "proof.canonical")
    try:
        event, canon = decode_and_canonicalize(canonical)
    except CareledgerError as exc:
        raise _LineFailed(f"canonical bytes are not an access event: {exc.message}") from exc
    if canon != canonical:
        reasons.append("event bytes are not in canonical form")
    leaf = leaf_hash(canonical)
    claimed_leaf = proof.get("leaf_hash")
    if not isinstance(claimed_leaf, str) or not hmac.compare_digest(
        claimed_leaf.encode(), leaf.hex().encode()
    ):
        reasons.append("leaf_hash is not SHA-256(0x00 || canonical bytes)")

    path_value = proof.get("audit_path")
    if not isinstance(path_value, list):
        raise _LineFailed("proof.audit_path is not a list")
    path = [_hex(p, f"proof.audit_path[{i}]", 32) for i, p in enumerate(path_value)]
    try:
        verify_inclusion(leaf, index, header.event_count, path, bytes.fromhex(header.merkle_root))
    except CareledgerError as exc:
        reasons.append(
            f"inclusion proof: {exc.message} (index {index}, signed tree size {header.event_count})"
        )

    for name in DISPLAYED_FIELDS:
        if name in line:
            actual = DISPLAYED_FIELDS[name](event)
            if line[name] != actual:
                reasons.append(f"displayed {name} {line[name]!r} is not the event's {actual!r}")
    if event.patient.id != doc.get("patient"):
        reasons.append(f"event is about patient {event.patient.id!r}, not the report's")
    start, end = doc.get("from"), doc.get("to")
    if isinstance(start, str) and event.occurred_at < start:
        reasons.append(f"event time {event.occurred_at} is before the report's range")
    if isinstance(end, str) and event.occurred_at >= end:
        reasons.append(f"event time {event.occurred_at} is after the report's range")
    if doc.get("view") == "hipaa-disclosures" and not is_disclosure(event):
        reasons.append("listed as a disclosure but the event is not one")
    return reasons


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


def verify_report(doc: Mapping[str, Any], trusted: TrustedKeys) -> list[ProofResult]:
    """Check every line of an access report against the ``trusted`` keys (pure).

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
    results: list[ProofResult] = []
    first_seen: dict[tuple[str, int, int], int] = {}
    for i, line in enumerate(lines):
        result = ProofResult(i, *_identity(line))
        try:
            if not isinstance(line, Mapping):
                raise _LineFailed("line is not an object")
            result.reasons.extend(_check_line(line, doc, headers))
        except _LineFailed as exc:
            result.reasons.append(str(exc))
        if result.chain_id is not None and result.height is not None and result.index is not None:
            where = (result.chain_id, result.height, result.index)
            if where in first_seen:  # padding: one access listed twice
                result.reasons.append(f"the same event as line {first_seen[where]}")
            else:
                first_seen[where] = i
        results.append(result)
    return results


# --------------------------------------------------------------------------- CLI


def configure_verify_proof(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="access report (JSON)")
    parser.add_argument(
        "--trusted-key",
        action="append",
        metavar="KEY",
        help="trusted public key: 'ed25519:<base64>' or a key file (repeatable; "
        "replaces CARELEDGER_TRUSTED_KEYS). Keys inside the report are never used.",
    )
    parser.add_argument("--json", action="store_true", help="results as one JSON document")


def _usage(message: str) -> int:
    print(f"careledger verify-proof: {message}", file=sys.stderr)
    return EXIT_USAGE


def command_verify_proof(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.trusted_key:
            keys = load_public_keys(args.trusted_key)
            if not keys:
                return _usage("--trusted-key names no key")
            trusted = TrustedKeys(keys)
        else:
            trusted = load_trusted_keys(settings)
    except CareledgerError as exc:
        return _usage(f"no usable trusted key: {exc.message}")
    try:
        doc = json.loads(Path(args.file).read_bytes())
    except OSError as exc:
        return _usage(f"cannot read {args.file}: {exc}")
    except ValueError as exc:
        return _usage(f"{args.file} is not JSON: {exc}")
    try:
        results = verify_report(doc, trusted)
    except ReportFormatError as exc:
        return _usage(f"{args.file}: {exc.message}")
    failed = [r for r in results if not r.ok]
    if args.json:
        json.dump(
            {
                "result": "failed" if failed else "verified",
                "lines": len(results),
                "failed": len(failed),
                "results": [r.to_json() for r in results],
            },
            sys.stdout,
        )
        sys.stdout.write("\n")
    else:
        for r in failed:
            where = f"{r.chain_id}@{r.height}#{r.index}" if r.chain_id else "-"
            print(
                f"line {r.line} (event {r.event_id or '-'}, {where}): FAILED: "
                + "; ".join(r.reasons)
            )
        status = "FAILED" if failed else "VERIFIED"
        print(
            f"{status}: {len(results) - len(failed)} of {len(results)} line(s) verify "
            f"under {len(trusted)} trusted key(s); the report is complete only up to the "
            "ledger (a removed line cannot be detected from the file)"
        )
    return EXIT_FAILED if failed else EXIT_OK
