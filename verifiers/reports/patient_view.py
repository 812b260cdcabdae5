"""``careledger patient-view --patient P``: a patient's consents, who may see the record
now and why, who decided access and who did see it, each line with its proof.

The view (JSON schema ``careledger.patient-view/1``, or text) has four sections:

* ``consents``: every ledgered version of every consent of the patient, in ledger
  order: what changed (``granted``, ``changed``, ``revoked``, ``retracted``), when (its
  effective time and the block time it was ledgered), who (the Consent's grantor /
  performer, organisation or controller, as the resource names them) and whether that
  version is in force now;
* ``may_see_now``: for each consent in force now, its base rule and every provision,
  each with its effect and whom and what it covers (the rules the decision point and
  the auditor apply, from the same parser);
* ``decisions``: the decision point's ledgered decisions about the patient (question,
  outcome, deciding consent version and provision), newest first;
* ``accesses``: who did see the record: the access report (``careledger access-report``,
  view ``access``) of ``--from``/``--to``, as that command builds it, proofs included
  (checkable with ``careledger verify-proof``).

Each consent and decision line carries a **proof** of the same shape as an access
report's full proof: its canonical bytes, leaf hash, Merkle audit path, the signed block
header and signature. :func:`verify_view` checks them offline against trusted keys
(the signature, the leaf hash of the bytes, the path to the signed root, and that the
bytes are what the line displays); access lines are checked by
:func:`verifiers.reports.proofs.verify_report`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final

from careledger.config import Settings
from careledger.keys import load_public_keys
from careledger.raw_record import decode_and_canonicalize_raw
from careledger.safe_text import display
from careledger.storage.backend import ClickHouseBackend, SqlBackend, StorageError
from careledger.storage.migrations import check_identifier
from careledger.storage.store import ChainStore
from careledger_core.block import decode_header
from careledger_core.errors import CareledgerError
from careledger_core.event import normalise_identifier
from careledger_core.hashing import leaf_hash
from careledger_core.merkle import MerkleTree, verify_inclusion
from careledger_core.reference import ReferenceRecord, decode_reference, thaw
from careledger_core.sealed_reference import SEALED_REFERENCE_SCHEMA, check_opening
from careledger_core.sealing import SALT_BYTES, SealError
from careledger_core.signing import TrustedKeys
from verifiers.auditor.consent import Policy, Provision, parse_consent
from verifiers.auditor.decision_point.model import DECISION_FORMAT
from verifiers.reports.access_report import SealedAccess, build_report, parse_range
from verifiers.reports.proofs import verify_report
from verifiers.reports.sealed_rows import ConsentRow, sealed_consents

__all__ = [
    "VIEW_SCHEMA",
    "build_view",
    "command_patient_view",
    "configure_patient_view",
    "render_text",
    "verify_view",
]

VIEW_SCHEMA: Final = "careledger.patient-view/1"
_ENDED: Final = frozenset({"inactive", "rejected", "entered-in-error", "not-done"})
MAX_DECISIONS: Final = 200
#: newest decision records read to find the patient's (the patient is inside the
#: record's bytes, not in a column)
MAX_SCANNED: Final = 50_000


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------- proofs


class _Proofs:
    """Inclusion proofs of rows of ``table`` (reference_records, raw_records)."""

    def __init__(self, backend: SqlBackend, db: str) -> None:
        self.backend = backend
        self.db = db
        self._trees: dict[tuple[str, str, int, str], MerkleTree | None] = {}
        self._headers: dict[tuple[str, int, str], tuple[bytes, str, str] | None] = {}

    def header(self, chain: str, height: int, block_hash: str) -> tuple[bytes, str, str] | None:
        key = (chain, height, block_hash)
        if key not in self._headers:
            rows = self.backend.execute(
                f"SELECT header, signature, created_at FROM {self.db}.blocks "
                "WHERE chain_id = %(c)s AND height = %(h)s AND block_hash = %(b)s",
                {"c": chain, "h": height, "b": block_hash},
            )
            self._headers[key] = (
                (bytes(rows[0][0]), _text(rows[0][1]), _text(rows[0][2])) if rows else None
            )
        return self._headers[key]

    def tree(self, table: str, chain: str, height: int, block_hash: str) -> MerkleTree | None:
        key = (table, chain, height, block_hash)
        if key not in self._trees:
            rows = self.backend.execute(
                f"SELECT idx, leaf_hash FROM {self.db}.{table} "
                "WHERE chain_id = %(c)s AND height = %(h)s AND block_hash = %(b)s ORDER BY idx",
                {"c": chain, "h": height, "b": block_hash},
            )
            try:
                self._trees[key] = MerkleTree([bytes.fromhex(_text(h)) for _i, h in rows])
            except (CareledgerError, ValueError):
                self._trees[key] = None
        return self._trees[key]

    def proof(
        self, table: str, chain: str, height: int, idx: int, block_hash: str, canonical: bytes
    ) -> dict[str, Any] | None:
        """The proof of a committed row (None: its block has no header)."""
        head = self.header(chain, height, block_hash)
        if head is None:
            return None
        header, signature, _created = head
        tree = self.tree(table, chain, height, block_hash)
        path = (
            [p.hex() for p in tree.inclusion_proof(idx)]
            if tree is not None and idx < tree.size
            else []
        )
        return {
            "form": "full",
            "chain_id": chain,
            "height": height,
            "index": idx,
            "block_hash": block_hash,
            "leaf_hash": leaf_hash(canonical).hex(),
            "canonical": base64.b64encode(canonical).decode("ascii"),
            "audit_path": path,
            "header": base64.b64encode(header).decode("ascii"),
            "signature": signature,
        }


# --------------------------------------------------------------------------- consents


def _refs(value: Any) -> list[str]:
    """``reference``/``display`` of a FHIR Reference or a list of them."""
    items = value if isinstance(value, list) else [value] if value is not None else []
    out = []
    for item in items:
        if isinstance(item, Mapping):
            ref = item.get("reference") or item.get("display")
            if isinstance(ref, str):
                out.append(ref)
    return out


def _who(resource: Mapping[str, Any]) -> dict[str, list[str]]:
    who = {
        "grantor": _refs(resource.get("grantor")) + _refs(resource.get("performer")),
        "grantee": _refs(resource.get("grantee")),
        "organization": _refs(resource.get("organization")) + _refs(resource.get("controller")),
    }
    return {k: v for k, v in who.items() if v}


def _change(rec: ReferenceRecord, previous: ReferenceRecord | None) -> str:
    status = str(rec.body.get("status", ""))
    if rec.retracted:
        return "retracted"
    if status in _ENDED:
        return "revoked"
    if previous is None:
        return "granted" if status == "active" else status or "recorded"
    return "changed"


def _read_consents(backend: SqlBackend, db: str, patient: str) -> list[ConsentRow]:
    rows = backend.execute(
        "SELECT chain_id, height, idx, block_hash, canonical "
        f"FROM {db}.reference_records WHERE kind = 'consent' AND subject_id = %(p)s "
        f"AND (chain_id, height, block_hash) IN (SELECT chain_id, height, block_hash "
        f"FROM {db}.blocks) ORDER BY chain_id, height, idx",
        {"p": patient},
    )
    out: list[ConsentRow] = []
    for chain, height, idx, digest, canonical in rows:
        try:
            rec = decode_reference(bytes(canonical))
        except CareledgerError:
            continue  # `careledger verify` reports it
        if type(height) is int and type(idx) is int and rec.kind == "consent":
            out.append((rec, _text(chain), height, idx, _text(digest), bytes(canonical), None))
    return out


def _provision_lines(provisions: Sequence[Provision], prefix: tuple[int, ...]) -> list[Any]:
    lines: list[dict[str, Any]] = []
    for i, p in enumerate(provisions):
        path = (*prefix, i)
        covers: dict[str, Any] = {}
        if p.actors:
            covers["actors"] = [
                f"{'/'.join(a.roles) + ' ' if a.roles else ''}{a.target}:{a.target_id or '*'}"
                for a in p.actors
            ]
        for name in ("actions", "purposes", "security_labels", "data_classes", "unevaluable"):
            value = getattr(p, name)
            if value:
                covers[name] = list(value)
        if p.period is not None:
            covers["period"] = p.period.describe()
        lines.append({"provision_path": list(path), "effect": p.effect, "covers": covers})
        lines.extend(_provision_lines(p.provisions, path))
    return lines


def _rules(policy: Policy) -> dict[str, Any]:
    return {
        "consent_id": policy.consent_id,
        "fhir_version": policy.fhir_version,
        "base": policy.base,
        "base_source": policy.base_source,
        "period": None if policy.period is None else policy.period.describe(),
        "provisions": _provision_lines(policy.provisions, ()),
    }


# --------------------------------------------------------------------------- the view


def build_view(
    store: ChainStore,
    patient: str,
    start: str,
    end: str,
    *,
    now: str | None = None,
    sealed: SealedAccess | None = None,
) -> dict[str, Any]:
    """The patient view (``careledger.patient-view/1``). Raises ``StorageError``, and
    ``ValueError`` for a patient id no event can hold (the id is asked in its one
    spelling, ADR 0026)."""
    patient = normalise_identifier(patient)
    now = now or _now()
    db = check_identifier(store.db)
    backend = store.backend
    proofs = _Proofs(backend, db)
    problems: list[str] = []
    consents: list[dict[str, Any]] = []
    latest: dict[str, ReferenceRecord] = {}
    in_force: dict[str, ReferenceRecord] = {}
    previous: dict[str, ReferenceRecord] = {}
    if sealed is None:
        found = _read_consents(backend, db, patient)
    else:  # ADR 0037: the patient's consents opened through the key store
        system = sealed.system if sealed.reference_system is None else sealed.reference_system
        found, unopened = sealed_consents(backend, db, sealed.keystore, system, patient)
        problems.extend(unopened)
    for rec, *_rest in found:
        if rec.effective_at <= now and (
            rec.record_id not in in_force or rec.version > in_force[rec.record_id].version
        ):
            in_force[rec.record_id] = rec
    for rec, chain, height, idx, digest, canonical, opening in found:
        head = proofs.header(chain, height, digest)
        proof = proofs.proof("reference_records", chain, height, idx, digest, canonical)
        if proof is not None and opening is not None:  # what verify_view checks it with
            proof["opening"] = base64.b64encode(opening).decode("ascii")
        body = thaw(rec.body)
        line = {
            "record_id": rec.record_id,
            "version": rec.version,
            "change": _change(rec, previous.get(rec.record_id)),
            "status": body.get("status"),
            "effective_at": rec.effective_at,
            "recorded_at": rec.recorded_at,
            "ledgered_at": None if head is None else head[2],
            "who": _who(body),
            "in_force_now": False,
            "proof": proof,
        }
        previous[rec.record_id] = rec
        latest[rec.record_id] = rec
        consents.append(line)
    now_rules: list[dict[str, Any]] = []
    for rid in sorted(in_force):
        rec = in_force[rid]
        active = not rec.retracted and rec.body.get("status") == "active"
        for line in consents:
            if line["record_id"] == rid and line["version"] == rec.version:
                line["in_force_now"] = active
        if not active:
            continue
        try:
            policy = parse_consent(thaw(rec.body))
        except CareledgerError as exc:
            now_rules.append({"record_id": rid, "version": rec.version, "error": str(exc)})
            continue
        if policy.governs_access and (policy.period is None or policy.period.covers(_us(now))):
            now_rules.append({"record_id": rid, "version": rec.version, **_rules(policy)})
    report = build_report(
        store, patient, start, end, view="access", generated_at=now, sealed=sealed
    )
    problems.extend(report["problems"])
    return {
        "schema": VIEW_SCHEMA,
        "patient": patient,
        "generated_at": now,
        "database": store.db,
        "consents": consents,
        "may_see_now": now_rules,
        "decisions": _decisions(backend, db, patient, proofs),
        "accesses": report,
        "problems": problems,
    }


def _us(ts: str) -> int:
    from verifiers.auditor._time import ts_to_us

    return ts_to_us(ts)


def _decisions(backend: SqlBackend, db: str, patient: str, proofs: _Proofs) -> list[dict[str, Any]]:
    rows = backend.execute(
        "SELECT chain_id, height, idx, block_hash, canonical FROM "
        f"{db}.raw_records WHERE format = %(f)s "
        f"AND (chain_id, height, block_hash) IN (SELECT chain_id, height, block_hash "
        f"FROM {db}.blocks) ORDER BY received_at DESC LIMIT {MAX_SCANNED}",
        {"f": DECISION_FORMAT},
    )
    out: list[dict[str, Any]] = []
    for chain, height, idx, digest, canonical in rows:
        try:
            envelope, _ = decode_and_canonicalize_raw(bytes(canonical))
            record = json.loads(envelope.raw_bytes())
        except (CareledgerError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("question", {}).get("patient_id") != patient:
            continue
        answer = record.get("answer", {})
        out.append(
            {
                "decision_id": record.get("decision_id"),
                "decided_at": record.get("decided_at"),
                "question": record.get("question"),
                "requester": (record.get("requester") or {}).get("institution"),
                "outcome": answer.get("outcome"),
                "consent": answer.get("consent"),
                "provision_path": answer.get("provision_path"),
                "reason": answer.get("reason"),
                "fallback": answer.get("fallback"),
                "proof": proofs.proof(
                    "raw_records",
                    _text(chain),
                    int(height),
                    int(idx),
                    _text(digest),
                    bytes(canonical),
                ),
            }
        )
        if len(out) >= MAX_DECISIONS:
            break
    return out


# --------------------------------------------------------------------------- checking


def _check_proof(proof: Any, trusted: TrustedKeys) -> tuple[bytes | None, str | None]:
    """(the proven canonical bytes, None) or (None, why the proof fails)."""
    if not isinstance(proof, Mapping):
        return None, "no proof"
    try:
        header = decode_header(base64.b64decode(str(proof["header"]), validate=True))
        trusted.verify_header(header, bytes.fromhex(str(proof["signature"])))
        canonical = base64.b64decode(str(proof["canonical"]), validate=True)
        leaf = leaf_hash(canonical)
        if leaf.hex() != proof["leaf_hash"]:
            return None, "the bytes do not hash to the leaf hash"
        if (proof["chain_id"], proof["height"]) != (header.chain_id, header.height):
            return None, "the proof names another block than its header"
        path = [bytes.fromhex(str(p)) for p in proof["audit_path"]]
        verify_inclusion(
            leaf, int(proof["index"]), header.event_count, path, bytes.fromhex(header.merkle_root)
        )
    except (CareledgerError, KeyError, TypeError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return canonical, None


def _proven_consent(canonical: bytes, proof: Mapping[str, Any]) -> ReferenceRecord:
    """The record of proven bytes: in clear, or a sealed document opened by the proof's
    opening (ADR 0037; ``SealError`` when it does not open the document's commitment)."""
    if SEALED_REFERENCE_SCHEMA.encode() not in canonical:
        return decode_reference(canonical)
    opening = proof.get("opening")
    if not isinstance(opening, str):
        raise SealError(
            code="OPENING_MISSING", message="a sealed consent's proof carries no opening"
        )
    try:
        raw = base64.b64decode(opening, validate=True)
    except binascii.Error:
        raise SealError(code="SEALED_MALFORMED", message="the opening is not base64") from None
    return check_opening(canonical, raw[:SALT_BYTES], raw[SALT_BYTES:]).record


def verify_view(doc: Mapping[str, Any], trusted: TrustedKeys) -> list[str]:
    """Check every line's proof offline and that each line shows what its proven bytes
    say. Returns the failures (empty: every line proven)."""
    failures: list[str] = []
    for i, line in enumerate(doc.get("consents", [])):
        canonical, why = _check_proof(line.get("proof"), trusted)
        if canonical is None:
            failures.append(f"consents[{i}]: {why}")
            continue
        try:
            rec = _proven_consent(canonical, line.get("proof"))
        except CareledgerError as exc:
            failures.append(f"consents[{i}]: proven bytes are not a reference record: {exc}")
            continue
        shown = (line.get("record_id"), line.get("version"), line.get("effective_at"))
        if shown != (rec.record_id, rec.version, rec.effective_at) or (
            rec.body.get("status") != line.get("status") or rec.subject_id != doc.get("patient")
        ):
            failures.append(f"consents[{i}]: the line does not show what its record says")
    for i, line in enumerate(doc.get("decisions", [])):
        canonical, why = _check_proof(line.get("proof"), trusted)
        if canonical is None:
            failures.append(f"decisions[{i}]: {why}")
            continue
        try:
            envelope, _ = decode_and_canonicalize_raw(canonical)
            record = json.loads(envelope.raw_bytes())
        except (CareledgerError, ValueError) as exc:
            failures.append(f"decisions[{i}]: proven bytes are not a decision record: {exc}")
            continue
        answer = record.get("answer", {}) if isinstance(record, dict) else {}
        if (
            line.get("decision_id") != record.get("decision_id")
            or line.get("outcome") != answer.get("outcome")
            or line.get("question") != record.get("question")
            or line.get("consent") != answer.get("consent")
        ):
            failures.append(f"decisions[{i}]: the line does not show what its record says")
    accesses = doc.get("accesses")
    if isinstance(accesses, Mapping) and accesses.get("lines"):
        try:
            results = verify_report(accesses, trusted)
        except CareledgerError as exc:
            return [*failures, f"accesses: {exc}"]
        for r in results:
            failures.extend(f"accesses[{r.line}]: {reason}" for reason in r.reasons)
    return failures


# --------------------------------------------------------------------------- text


def render_text(doc: Mapping[str, Any]) -> str:
    out = [f"Patient {doc['patient']} (as of {doc['generated_at']})", "", "Consents:"]
    for c in doc["consents"]:
        who = "; ".join(f"{k} {', '.join(v)}" for k, v in c["who"].items()) or "-"
        proof = c["proof"] or {}
        out.append(
            f"  {c['effective_at']}  {c['record_id']} v{c['version']}  {c['change']:<9} "
            f"status {c['status']}  by {who}  ledgered {c['ledgered_at']} "
            f"[{proof.get('chain_id')}@{proof.get('height')}#{proof.get('index')}]"
            + ("  IN FORCE" if c["in_force_now"] else "")
        )
    out += ["", "Who may see the record now, and why:"]
    if not doc["may_see_now"]:
        out.append("  no consent in force: the organisation's policy applies")
    for r in doc["may_see_now"]:
        if "error" in r:
            out.append(f"  {r['record_id']} v{r['version']}: cannot be evaluated ({r['error']})")
            continue
        out.append(
            f"  {r['record_id']} v{r['version']} ({r['fhir_version']}): everyone else "
            f"{r['base'] or 'per the policy table'} ({r['base_source']})"
        )
        for p in r["provisions"]:
            covers = "; ".join(f"{k}: {v}" for k, v in p["covers"].items()) or "everything"
            out.append(f"    provision {p['provision_path']}: {p['effect']} for {covers}")
    out += ["", "Decisions of the consent decision point (newest first):"]
    for d in doc["decisions"]:
        q = d["question"] or {}
        c = d["consent"] or {}
        out.append(
            f"  {d['decided_at']}  {q.get('actor_id')} ({q.get('actor_organization') or '-'}) "
            f"{q.get('action')} for {','.join(q.get('purposes') or []) or '-'}: "
            f"{str(d['outcome']).upper()} by {c.get('record_id', '-')} v{c.get('version', '-')} "
            f"provision {d['provision_path']}"
        )
    lines = doc["accesses"]["lines"]
    out += ["", f"Who did see the record ({doc['accesses']['from']} .. {doc['accesses']['to']}):"]
    for a in lines:
        p = a["proof"]
        out.append(
            f"  {a['occurred_at']}  {a['actor_id']} {a.get('actor_name') or ''} "
            f"{a['action']} {a.get('object_type') or ''} for {','.join(a['purpose']) or '-'} "
            f"[{p['chain_id']}@{p['height']}#{p['index']}]"
        )
    for problem in doc["problems"]:
        out.append(f"problem: {problem}")
    out.append("")
    out.append(
        "every line carries a Merkle inclusion proof in a signed block (--format json; "
        "check with --verify FILE)"
    )
    return "\n".join(display(line) for line in out)  # no terminal escapes (ADR 0026)


# --------------------------------------------------------------------------- command


def configure_patient_view(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patient", help="the patient's id")
    parser.add_argument(
        "--patient-system",
        default="",
        help="a sealed ledger (ADR 0037): the system of the patient id, as in the events",
    )
    parser.add_argument("--from", dest="start", default="1970-01-01", help="accesses from")
    parser.add_argument(
        "--to", dest="end", default=None, help="accesses until (default: the end of today, UTC)"
    )
    parser.add_argument("--format", choices=["text", "json"], default="text")
    parser.add_argument(
        "--verify",
        metavar="FILE",
        help="check an exported view (JSON) offline against the trusted keys instead",
    )
    parser.add_argument("--trusted-key", action="append", default=[], help="with --verify")


def command_patient_view(args: argparse.Namespace, settings: Settings) -> int:
    if args.verify:
        keys = load_public_keys(args.trusted_key or list(settings.trusted_keys))
        if not keys:
            print("careledger patient-view: no trusted key (--trusted-key)", file=sys.stderr)
            return 2
        try:
            with open(args.verify, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as exc:
            print(f"careledger patient-view: cannot read {args.verify}: {exc}", file=sys.stderr)
            return 2
        failures = verify_view(doc, TrustedKeys(keys))
        for failure in failures:
            print(failure)
        print("verified" if not failures else f"{len(failures)} line(s) fail")
        return 1 if failures else 0
    if not args.patient:
        print("careledger patient-view: --patient is required", file=sys.stderr)
        return 2
    try:
        start, end = parse_range(args.start, args.end or _now()[:10])
        args.patient = normalise_identifier(args.patient)
    except (CareledgerError, ValueError) as exc:
        print(f"careledger patient-view: {exc}", file=sys.stderr)
        return 2
    keystore = None
    sealed = None
    if settings.seal_events:  # ADR 0037: the accesses opened through the key store
        from careledger.keystore import open_keystore

        try:
            keystore = open_keystore(settings)
            registrars = tuple(load_public_keys(settings.trusted_registrar_keys))
        except CareledgerError as exc:
            print(
                f"careledger patient-view: a sealed ledger needs its key store: {exc}",
                file=sys.stderr,
            )
            return 2
        sealed = SealedAccess(
            keystore, registrars, args.patient_system, settings.reference_patient_system
        )
    backend = ClickHouseBackend.from_settings(settings, "reader")
    try:
        store = ChainStore.for_settings(backend, settings)
        doc = build_view(store, args.patient, start, end, sealed=sealed)
    except StorageError as exc:
        print(f"careledger patient-view: cannot read the ledger: {exc}", file=sys.stderr)
        return 2
    except CareledgerError as exc:  # the key store, mid-view
        print(f"careledger patient-view: cannot open the sealed ledger: {exc}", file=sys.stderr)
        return 2
    finally:
        backend.close()
        if keystore is not None:
            keystore.close()
    print(json.dumps(doc, sort_keys=True) if args.format == "json" else render_text(doc))
    return 0
