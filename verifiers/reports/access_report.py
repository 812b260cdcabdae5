"""``careledger access-report``: "who looked at my record?", every line with its proof.

``careledger access-report --patient P --from D1 --to D2 [--view access|hipaa-disclosures|
gdpr] [--format table|json|csv] [--include-event-bytes] [--out FILE]`` lists every access
to patient ``P``'s data that occurred in ``[D1, D2]`` (dates are whole UTC days, both
included; full timestamps ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` are taken as ``[from, to)``),
read from **committed** blocks only: an event row counts only if its ``(chain_id, height,
block_hash)`` is a stored block header (rows a crash left without a header are not
accesses the ledger vouches for).

Views:

* ``access`` (HITECH access report): who (actor id; name and role from the ledgered
  workforce directory — ``reference_records`` of kind ``staff``, the latest version in
  force at the access time — else from the event), when, what (object type and id),
  action, outcome, purpose, and, when the auditor's ``access_decisions`` table exists,
  its explanation or alert for the event;
* ``hipaa-disclosures`` (accounting of disclosures, 45 CFR 164.528): only the events for
  which :func:`verifiers.reports.proofs.is_disclosure` holds (successful exports: DICOM
  110106, lifecycle ``disclose``, FHIR ``$export``, with action E or a named recipient),
  with date, recipient (the event's ``recipient``: name and address, as 164.528 asks),
  who disclosed it (``discloser``), description, purpose;
* ``gdpr`` (GDPR Art. 15 as read by CJEU C-579/21): dates and purposes only.

Every line carries its proof (JSON output): chain id, height, event index, leaf hash,
the RFC 9162 audit path (hex) and the signed block header bytes (base64) with the
signature (hex), so ``careledger verify-proof`` checks it offline with only the trusted
public keys. In the ``access`` view the proof is **full**: it also carries the canonical
event bytes (base64), and verify-proof checks every displayed field against them. In the
``gdpr`` and ``hipaa-disclosures`` views it is **redacted** by default (ADR 0009): no
event bytes, which would disclose the staff member and every other field the view hides;
verify-proof then proves the leaf is in the signed block but says, per line, that the
displayed fields are not bound to it offline. ``--include-event-bytes`` keeps the bytes
in those views, for a requester entitled to the whole event (the privacy office, a
regulator). The table and CSV show where the proof is (chain, height, index, leaf hash)
but never the bytes. The JSON format is in docs/design.md ("Access reports").

Completeness: the report lists what the ledger holds. A proof shows a line is in the
ledger; nothing in the file shows no line is missing (``careledger verify`` checks the
ledger itself, against the signed checkpoints).

Cost: one query for the patient's rows, one for their block headers, one per distinct
block for its leaf hashes (the tree is built once per block), one for the directory
entries of the actors, and one for the decisions: never a query per event.

Witnesses (ADR 0019): with a witness policy (``--witnesses`` or
``CARELEDGER_WITNESSES_FILE``) the report also carries, per chain it cites, the newest
checkpoint a quorum of witnesses cosigned (``checkpoints``) and, per line, the inclusion
proof of its block in it (``proof.block_inclusion``), so that ``verify-proof`` checks
offline that every line is in a witnessed checkpoint (:mod:`verifiers.reports.
report_witnesses`). The trusted keys are then required.

Exit status: 0 report written (and, with a witness policy, every line witnessed), 1
written but some rows do not reproduce the signed block or a witnessed checkpoint (the
store is inconsistent: see the problems on stderr and in the JSON), 2 usage or
infrastructure error (one line; with a witness policy also when no covering cosigned
checkpoint could be looked for: "cannot tell"), 3 written, but some lines are in blocks
newer than the newest quorum-cosigned checkpoint ("not yet witnessed", named on stderr:
export again once the cosigner has run).
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import io
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from careledger.config import Settings
from careledger.keys import load_public_keys
from careledger.keystore import KeyStore, open_keystore
from careledger.safe_text import csv_cell, display
from careledger.storage.backend import ClickHouseBackend, StorageError
from careledger.storage.store import ChainStore
from careledger.witnesses import WITNESSES_FILE_ENV, WitnessesConfigError
from careledger_core.block import decode_header
from careledger_core.errors import CareledgerError
from careledger_core.event import AccessEvent, decode_and_canonicalize, normalise_identifier
from careledger_core.hashing import leaf_hash
from careledger_core.merkle import MerkleTree
from careledger_core.signing import PublicKey, TrustedKeys
from verifiers.auditor.state import ReferenceState
from verifiers.reports.proofs import (
    FORM_FULL,
    FORM_REDACTED,
    REPORT_SCHEMA,
    VIEWS,
    describe,
    disclosed_by,
    is_disclosure,
    recipient,
    redact_report,
    verify_report,
)
from verifiers.reports.report_reader import _Block, _Reader, _Row, _text
from verifiers.reports.report_witnesses import witness_report
from verifiers.reports.sealed_rows import ErasedRow, sealed_patient_rows, sealed_staff_records
from verifiers.reports.verify_proof import (
    load_policy,
    outcome,
    policy_json,
)
from verifiers.reports.witnessed import NOT_WITNESSED, check_witnessing

__all__ = [
    "FORMATS",
    "build_report",
    "parse_range",
    "proof_form",
    "render_csv",
    "render_table",
    "report_patient_id",
]

FORMATS: Final = ("table", "json", "csv")
EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2

COMPLETENESS: Final = (
    "complete only up to the ledger: each line is proven to be in a signed block, but a "
    "line missing from this file cannot be detected from the file alone"
)

#: Decision columns, most telling first, for the one-cell summary (migration 4's
#: ``access_decisions`` has explanation_kind/explanation, flags and severity).
_DECISION_SUMMARY: Final = (
    "flags",
    "alert",
    "alert_id",
    "explanation",
    "explanations",
    "decision",
    "status",
)

_DATE = re.compile(r"\A\d{4}-\d{2}-\d{2}\Z")
_TIME = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?Z\Z")


def _ts(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_bound(text: str, *, end: bool) -> dt.datetime:
    try:
        if _DATE.match(text):
            day = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.UTC)
            return day + dt.timedelta(days=1) if end else day
        if _TIME.match(text):
            fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if "." in text else "%Y-%m-%dT%H:%M:%SZ"
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC)
    except ValueError:  # the shape is right, the day or time is not (2026-13-01)
        raise ValueError(f"{text!r} is not a real date or time") from None
    raise ValueError(f"{text!r} is neither YYYY-MM-DD nor YYYY-MM-DDTHH:MM:SS[.ffffff]Z")


def parse_range(start: str, end: str) -> tuple[str, str]:
    """``(from, to)`` event timestamps, ``from`` included, ``to`` excluded.

    A date ``D2`` as the end means the whole of that day. Raises ``ValueError``.
    """
    lo, hi = _parse_bound(start, end=False), _parse_bound(end, end=True)
    if hi <= lo:
        raise ValueError("--to must be after --from")
    return _ts(lo), _ts(hi)


def decision_summary(decision: dict[str, Any] | None) -> str:
    """One cell: the alert flags (with severity) if any, else the explanation."""
    if not decision:
        return ""
    flags = decision.get("flags")
    if isinstance(flags, list) and flags:
        codes = [str(f.get("code", f)) if isinstance(f, dict) else str(f) for f in flags]
        severity = decision.get("severity")
        return f"{severity}: {' '.join(codes)}" if severity else " ".join(codes)
    explanation = decision.get("explanation")
    if isinstance(explanation, dict) and explanation:
        via = explanation.get("relationship_kind") or explanation.get("via")
        kind = str(explanation.get("kind", ""))
        return f"explained: {kind} ({via})" if via else f"explained: {kind}"
    if decision.get("explanation_kind"):
        return f"explained: {decision['explanation_kind']}"
    for name in _DECISION_SUMMARY:
        value = decision.get(name)
        if value not in (None, "", [], {}):
            return str(value)
    return "unexplained"


def _proof(
    row: _Row | ErasedRow, block: _Block, tree: MerkleTree | None, leaf: bytes
) -> dict[str, Any]:
    path: list[str] = []
    if tree is not None and row.idx < tree.size:
        path = [p.hex() for p in tree.inclusion_proof(row.idx)]
    opening = row.opening if isinstance(row, _Row) else None
    extra = {} if opening is None else {"opening": base64.b64encode(opening).decode("ascii")}
    return {
        **extra,
        "form": FORM_FULL,
        "chain_id": row.chain_id,
        "height": row.height,
        "index": row.idx,
        "block_hash": block.block_hash,
        "leaf_hash": leaf.hex(),
        "canonical": base64.b64encode(row.canonical).decode("ascii"),
        "audit_path": path,
        "header": base64.b64encode(block.header).decode("ascii"),
        "signature": block.signature,
    }


def _line(view: str, e: AccessEvent, state: ReferenceState) -> dict[str, Any]:
    purpose = list(e.purpose_of_use)
    if view == "gdpr":
        return {"occurred_at": e.occurred_at, "purpose": purpose}
    if view == "hipaa-disclosures":
        return {
            "event_id": e.event_id,
            "occurred_at": e.occurred_at,
            "recipient": recipient(e),
            "disclosed_by": disclosed_by(e),
            "actor_id": e.actor.id,
            "organization": e.actor.organization,
            "description": describe(e),
            "purpose": purpose,
        }
    staff = state.as_of(e.occurred_at).staff(e.actor.id)
    if staff is not None:
        name = f"{staff.given_name} {staff.family_name}"
        roles = list(staff.roles)
        source = "directory"
    else:
        name = e.actor.name or ""
        roles = list(e.actor.roles)
        source = "event"
    line: dict[str, Any] = {
        "event_id": e.event_id,
        "occurred_at": e.occurred_at,
        "patient_id": e.patient.id,
        "actor_id": e.actor.id,
        "actor_name": name,
        "actor_role": " ".join(roles),
        "actor_source": source,
        "organization": e.actor.organization,
        "action": e.action,
        "outcome": e.outcome,
        "object_type": e.object.type if e.object is not None else None,
        "object_id": e.object.id if e.object is not None else None,
        "purpose": purpose,
        "description": describe(e),
    }
    return line


def proof_form(view: str, include_event_bytes: bool = False) -> str:
    """The form of a view's proofs: the access view always carries the event bytes; the
    GDPR and HIPAA views only on request (``--include-event-bytes``)."""
    return FORM_FULL if view == "access" or include_event_bytes else FORM_REDACTED


#: the asked patient id in its one spelling, as the intake stores it (ADR 0026)
report_patient_id: Final = normalise_identifier


@dataclass(frozen=True)
class SealedAccess:
    """How a report opens a sealed ledger (ADR 0037): the key store, the registrar keys
    that sign erasures, and the system of the asked patient id (the key store's lookup
    is keyed by both)."""

    keystore: KeyStore
    registrars: tuple[PublicKey, ...]
    system: str = ""
    #: the system of reference data's patient ids (``reference_patient_system``); None:
    #: ``system``
    reference_system: str | None = None


def _clear_rows(
    reader: _Reader, patient: str, start: str, end: str, problems: list[str]
) -> tuple[list[_Row], dict[tuple[str, int, str], _Block]]:
    """A ledger in clear: the patient's committed rows, decoded, and their blocks."""
    raw = reader.patient_rows(patient, start, end)
    blocks = reader.blocks({(_text(r[0]), int(r[1])) for r in raw})
    rows: list[_Row] = []
    seen: set[tuple[str, int, int]] = set()
    for chain_b, height, idx, digest_b, canonical in raw:
        chain, digest = _text(chain_b), _text(digest_b)
        if (chain, int(height), digest) not in blocks:
            continue  # uncommitted: no header vouches for it
        row_key = (chain, int(height), int(idx))
        if row_key in seen:
            continue
        seen.add(row_key)
        try:
            event, _canon = decode_and_canonicalize(bytes(canonical))
        except CareledgerError as exc:
            problems.append(f"{chain}@{height}#{idx}: stored bytes are not an event: {exc}")
            continue
        if event.patient.id != patient:
            problems.append(f"{chain}@{height}#{idx}: row says patient {patient}, bytes do not")
            continue
        rows.append(_Row(chain, int(height), int(idx), digest, bytes(canonical), event))
    return rows, blocks


def _erased_line(view: str, r: ErasedRow) -> dict[str, Any]:
    d = r.document
    erased = dict(r.erasure)
    if view == "gdpr":
        return {"occurred_at": d.occurred_at, "purpose": list(d.purpose_of_use), "erased": erased}
    return {
        "event_id": d.event_id,
        "occurred_at": d.occurred_at,
        "action": d.action,
        "outcome": d.outcome,
        "purpose": list(d.purpose_of_use),
        "erased": erased,
    }


def build_report(
    store: ChainStore,
    patient: str,
    start: str,
    end: str,
    *,
    view: str = "access",
    generated_at: str | None = None,
    include_event_bytes: bool = False,
    sealed: SealedAccess | None = None,
) -> dict[str, Any]:
    """The report document (``careledger.access-report/1``) for ``patient`` in
    ``[start, end)``, its proofs in the view's form (:func:`proof_form`). On a sealed
    ledger (``sealed``) the rows are opened through the key store and the patient's
    erased rows are listed as erased (not in the HIPAA disclosures view, which cannot
    tell a disclosure without the sealed part). Raises ``StorageError`` if the store
    cannot be read."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}")
    patient = report_patient_id(patient)
    reader = _Reader(store)
    problems: list[str] = []
    erased: list[ErasedRow] = []
    if sealed is None:
        rows, blocks = _clear_rows(reader, patient, start, end, problems)
    else:
        rows, erased, problems, blocks = sealed_patient_rows(
            reader,
            sealed.keystore,
            sealed.registrars,
            system=sealed.system,
            patient=patient,
            start=start,
            end=end,
        )
    if view == "hipaa-disclosures":
        rows = [r for r in rows if is_disclosure(r.event)]
        erased = []
    placed: list[_Row | ErasedRow] = [*rows, *erased]

    trees: dict[tuple[str, int, str], MerkleTree | None] = {}
    for block_key in sorted({(r.chain_id, r.height, r.block_hash) for r in placed}):
        trees[block_key] = _tree(reader, blocks[block_key], problems)

    state = ReferenceState()
    if view == "access" and rows:
        actors = sorted({r.event.actor.id for r in rows})
        state = ReferenceState(
            reader.staff_records(actors)
            if sealed is None
            else sealed_staff_records(reader, sealed.keystore, actors, problems)
        )
    decisions = None
    if view == "access" and rows:
        decisions = reader.decisions(sorted({r.event.event_id for r in rows}))

    lines: list[tuple[tuple[str, str, int, int], dict[str, Any]]] = []
    for r in placed:
        key = (r.chain_id, r.height, r.block_hash)
        tree = trees[key]
        leaf = leaf_hash(r.canonical)
        if tree is not None and (r.idx >= tree.size or tree.leaf(r.idx) != leaf):
            problems.append(
                f"{r.chain_id}@{r.height}#{r.idx}: event bytes are not leaf {r.idx} of the block"
            )
        if isinstance(r, ErasedRow):
            line = _erased_line(view, r)
            at = r.document.occurred_at
        else:
            line = _line(view, r.event, state)
            if decisions is not None:  # the auditor's table exists
                line["decision"] = decisions.get(r.event.event_id)
            at = r.event.occurred_at
        line["proof"] = _proof(r, blocks[key], tree, leaf)
        lines.append(((at, r.chain_id, r.height, r.idx), line))
    doc = {
        "schema": REPORT_SCHEMA,
        "view": view,
        "patient": patient,
        "from": start,
        "to": end,
        "generated_at": generated_at or _ts(dt.datetime.now(dt.UTC)),
        "database": store.db,
        "completeness": COMPLETENESS,
        "problems": problems,
        "lines": [line for _, line in sorted(lines, key=lambda pair: pair[0])],
    }
    if proof_form(view, include_event_bytes) == FORM_REDACTED:
        return redact_report(doc)
    return doc


def _tree(reader: _Reader, block: _Block, problems: list[str]) -> MerkleTree | None:
    where = f"{block.chain_id}@{block.height}"
    try:
        header = decode_header(block.header)
    except CareledgerError as exc:
        problems.append(f"{where}: stored header does not decode: {exc}")
        return None
    by_idx: dict[int, bytes] = {}
    for idx, digest in reader.leaf_hashes(block):
        try:
            by_idx.setdefault(idx, bytes.fromhex(digest))
        except ValueError:
            problems.append(f"{where}#{idx}: stored leaf hash is not hex")
    if sorted(by_idx) != list(range(header.event_count)):
        problems.append(
            f"{where}: {len(by_idx)} stored leaves for a signed event count of {header.event_count}"
        )
    try:
        tree = MerkleTree([by_idx[i] for i in sorted(by_idx)])
    except CareledgerError as exc:
        problems.append(f"{where}: stored leaf hashes are malformed: {exc}")
        return None
    if tree.root.hex() != header.merkle_root:
        problems.append(f"{where}: stored leaves do not reproduce the signed Merkle root")
    return tree


# --------------------------------------------------------------------------- rendering

_TABLE_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "access": (
        "occurred_at",
        "actor_id",
        "actor_name",
        "actor_role",
        "action",
        "object",
        "purpose",
        "decision",
        "block",
    ),
    "hipaa-disclosures": ("date", "recipient", "disclosed_by", "description", "purpose", "block"),
    "gdpr": ("date", "purpose"),
}
_CSV_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "access": (
        "event_id",
        "occurred_at",
        "patient_id",
        "actor_id",
        "actor_name",
        "actor_role",
        "organization",
        "action",
        "outcome",
        "object_type",
        "object_id",
        "purpose",
        "description",
        "decision",
        "chain_id",
        "height",
        "index",
        "leaf_hash",
    ),
    "hipaa-disclosures": (
        "event_id",
        "date",
        "occurred_at",
        "recipient",
        "disclosed_by",
        "description",
        "purpose",
        "chain_id",
        "height",
        "index",
        "leaf_hash",
    ),
    "gdpr": ("date", "purpose"),
}


def _cell(line: dict[str, Any], name: str) -> str:
    proof = line.get("proof") or {}
    erased = line.get("erased")
    if isinstance(erased, dict) and name in ("actor_name", "purpose") and name not in line:
        return (
            f"erased on {str(erased.get('erased_at', ''))[:10]} ({erased.get('reason', '')}, "
            f"requested by {erased.get('requested_by', '')})"
        )
    if name == "date":
        return str(line.get("occurred_at", ""))[:10]
    if name == "purpose":
        return " ".join(line.get("purpose") or [])
    if name == "object":
        otype, oid = line.get("object_type") or "", line.get("object_id") or ""
        return oid if oid.startswith(f"{otype}/") else f"{otype} {oid}".strip()
    if name == "decision":
        return decision_summary(line.get("decision"))
    if name == "block":
        return f"{proof.get('chain_id')}@{proof.get('height')}#{proof.get('index')}"
    if name in ("chain_id", "height", "index", "leaf_hash"):
        return str(proof.get(name, ""))
    value = line.get(name)
    return "" if value is None else str(value)


def render_csv(doc: dict[str, Any]) -> str:
    """CSV of a report: displayed fields and where the proof is (not the proof bytes);
    formulas and control characters neutralised (``csv_cell``, ADR 0026)."""
    out = io.StringIO()
    columns = _CSV_COLUMNS[doc["view"]]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for line in doc["lines"]:
        writer.writerow([csv_cell(_cell(line, c)) for c in columns])
    return out.getvalue()


def render_table(doc: dict[str, Any], max_width: int = 48) -> str:
    """A plain-text table for people (no proof bytes; control characters escaped)."""
    columns = _TABLE_COLUMNS[doc["view"]]
    rows = [
        [display(_cell(line, c))[: None if c == "block" else max_width] for c in columns]
        for line in doc["lines"]
    ]
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    title = {
        "access": "Access report",
        "hipaa-disclosures": "Accounting of disclosures (45 CFR 164.528)",
        "gdpr": "Consultations of personal data (GDPR Art. 15)",
    }[doc["view"]]
    out = [
        f"{title} for patient {display(doc['patient'])}, {doc['from']} to {doc['to']} "
        f"(exclusive): {len(rows)} line(s)",
        "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(),
    ]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    policy = doc.get("witness_policy")
    if isinstance(policy, dict):
        late = policy.get("not_witnessed_lines") or []
        out.append(
            f"Witnesses: quorum {policy.get('quorum')} of {policy.get('of')}; "
            f"{len(doc.get('checkpoints') or [])} cosigned checkpoint(s) attached"
            + (f"; NOT YET WITNESSED: line(s) {', '.join(map(str, late))}" if late else "")
            + " (checked by verify-proof on the JSON export)."
        )
    out.append(f"Report {COMPLETENESS}.")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- CLI


def configure_access_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patient", required=True, help="patient id (as in the events)")
    parser.add_argument(
        "--patient-system",
        default="",
        help="a sealed ledger (ADR 0037): the system of the patient id, as in the events",
    )
    parser.add_argument(
        "--from", dest="start", required=True, metavar="D1", help="first day (YYYY-MM-DD)"
    )
    parser.add_argument(
        "--to", dest="end", required=True, metavar="D2", help="last day, included (YYYY-MM-DD)"
    )
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.add_argument("--view", choices=VIEWS, default="access")
    parser.add_argument(
        "--include-event-bytes",
        action="store_true",
        help="gdpr and hipaa-disclosures views: keep each event's canonical bytes in its "
        "JSON proof (the whole event, staff identity included), for a requester entitled "
        "to them (privacy office, regulator); by default these views' proofs are redacted. "
        "The access view always includes them.",
    )
    parser.add_argument("--out", type=Path, metavar="FILE", help="write here, not to stdout")
    parser.add_argument("--database", help="ClickHouse database (default: settings)")
    parser.add_argument(
        "--trusted-key",
        action="append",
        metavar="KEY",
        help="check the report's proofs with this key before writing it (repeatable; "
        "default CARELEDGER_TRUSTED_KEYS when set; required with a witness policy)",
    )
    parser.add_argument(
        "--witnesses",
        type=Path,
        metavar="FILE",
        help=f"witness policy (replaces {WITNESSES_FILE_ENV}): attach each cited chain's "
        "newest quorum-cosigned checkpoint and the inclusion proof of every line's block "
        "in it (ADR 0019)",
    )


def _usage(message: str) -> int:
    print(f"careledger access-report: {message}", file=sys.stderr)
    return EXIT_USAGE


def command_access_report(args: argparse.Namespace, settings: Settings) -> int:
    if not getattr(args, "verbose", False):  # a dead broker logs once per retry: we say it once
        logging.getLogger("careledger.cosigned_checkpoints.kafka").setLevel(logging.CRITICAL)
    try:
        start, end = parse_range(args.start, args.end)
        args.patient = report_patient_id(args.patient)
    except ValueError as exc:
        return _usage(str(exc))
    if args.database:
        settings = settings.replace(clickhouse_database=args.database)
    try:
        keys = load_public_keys(list(args.trusted_key or settings.trusted_keys))
    except CareledgerError as exc:
        return _usage(f"unusable trusted key: {exc.message}")
    try:
        witnesses, label = load_policy(args.witnesses, settings)
    except WitnessesConfigError as exc:
        return _usage(exc.message)
    if witnesses is not None and not keys:
        return _usage(
            f"a witness policy ({label}) needs the log's public key to check checkpoints: "
            "set CARELEDGER_TRUSTED_KEYS or pass --trusted-key"
        )
    witnessing = None
    keystore = None
    if settings.seal_events:  # ADR 0037: opened through the key store, unwraps counted
        try:
            keystore = open_keystore(settings)
            registrars = tuple(load_public_keys(settings.trusted_registrar_keys))
        except CareledgerError as exc:
            return _usage(f"a sealed ledger needs its key store: {exc.message}")
    store = ChainStore.for_settings(ClickHouseBackend.from_settings(settings, "reader"), settings)
    try:
        sealed = None
        if keystore is not None:
            sealed = SealedAccess(keystore, registrars, getattr(args, "patient_system", ""))
        # built with the bytes, so the self-check below verifies content before redaction
        doc = build_report(
            store,
            args.patient,
            start,
            end,
            view=args.view,
            include_event_bytes=True,
            sealed=sealed,
        )
        if witnesses is not None:
            witnessing = witness_report(
                doc, store, settings, keys, witnesses, policy_json(witnesses, label)
            )
    except StorageError as exc:
        return _usage(f"cannot read ClickHouse database {store.db!r}: {exc.message}")
    except CareledgerError as exc:  # the key store, mid-report
        return _usage(f"cannot open the sealed ledger: {exc.message}")
    finally:
        store.backend.close()
        if keystore is not None:
            keystore.close()
    if witnessing is not None and witnessing.unavailable is not None:
        return _usage(f"cannot tell: {witnessing.unavailable}")
    problems = list(doc["problems"])
    late: list[str] = []
    code = EXIT_OK
    if witnessing is not None:
        problems += witnessing.problems
        for warning in witnessing.warnings:
            print(f"careledger access-report: warning: {warning}", file=sys.stderr)
    if keys:  # the report checks itself as its reader will (with the bytes, if it has them)
        trusted = TrustedKeys(keys)
        results = verify_report(doc, trusted)
        verdict = None
        if witnesses is not None:
            verdict = check_witnessing(
                doc, results, trusted.values(), witnesses.policy, setting=label
            )
            doc["witness_policy"]["status_at_export"] = verdict.status
            doc["witness_policy"]["not_witnessed_lines"] = verdict.lines_with(NOT_WITNESSED)
        for r in results:
            if not r.ok:
                problems.append(f"line {r.line} does not verify: {'; '.join(r.reasons)}")
            elif r.witnessing is not None and r.witnessing["status"] != "witnessed":
                status = str(r.witnessing["status"]).replace("_", " ")
                late.append(
                    f"{status}: line {r.line} ({r.chain_id}@{r.height}): {r.witnessing['reason']}"
                )
        code = outcome(results, verdict)
        doc["problems"] = problems
    if proof_form(args.view, args.include_event_bytes) == FORM_REDACTED:
        doc = redact_report(doc)
    if args.format == "json":
        text = json.dumps(doc, indent=1) + "\n"
    elif args.format == "csv":
        text = render_csv(doc)
    else:
        text = render_table(doc)
    if args.out:
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as exc:
            return _usage(f"cannot write {args.out}: {exc}")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    for p in problems:
        print(f"careledger access-report: problem: {display(p)}", file=sys.stderr)
    if problems:
        return EXIT_PROBLEMS
    for text in late:
        print(f"careledger access-report: {text}", file=sys.stderr)
    return code
