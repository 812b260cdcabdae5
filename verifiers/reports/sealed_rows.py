"""A patient's rows of a sealed ledger, opened for their access report and patient view
(ADR 0037): their access events (below) and their consents (:func:`sealed_consents`).

The report asks for a patient by id (and the id's system). Through the key store:

* the patient's data keys (each unwrap counted under ``report``) give their pseudonyms,
  which select the rows; each row's sealed part is opened with the key it names, to
  the commitment of its signed document, and must name this patient;
* the registrar-signed erasures of this patient (their ``lookup`` is the key store's
  HMAC of the patient) name the destroyed keys, which select the erased rows: they are
  listed as erased on that date, for that reason, by that requester, with the proof of
  their signed document (what remains of them).

An opened row's line proves its content like a line in clear: the proof carries the
*opening* (the salt and the sensitive part), with which ``verify-proof`` checks the
commitment in the signed document and rebuilds the event. A row that opens to another
patient, or sealed under a key that is neither the patient's nor erased, is a problem
named in the report, never a line.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from careledger.erasure import erasures_of
from careledger.keystore import KeyStore
from careledger.storage.backend import SqlBackend
from careledger_core.errors import CareledgerError
from careledger_core.reference import ReferenceRecord
from careledger_core.sealed_event import SealedAccessEvent, decode_sealed_document, open_stored
from careledger_core.sealed_reference import STAFF_KEY_SYSTEM, open_reference
from careledger_core.sealing import canonical as jcs
from careledger_core.sealing import patient_ref
from careledger_core.signing import PublicKey
from verifiers.reports.report_reader import _Block, _Reader, _Row, _text

__all__ = [
    "ConsentRow",
    "ErasedRow",
    "sealed_consents",
    "sealed_patient_rows",
    "sealed_staff_records",
]


@dataclass(frozen=True)
class ErasedRow:
    chain_id: str
    height: int
    idx: int
    block_hash: str
    canonical: bytes
    document: SealedAccessEvent
    #: the erasure: record id, when, why, by whom, under which policy
    erasure: dict[str, Any]


def sealed_patient_rows(
    reader: _Reader,
    keystore: KeyStore,
    registrars: Sequence[PublicKey],
    *,
    system: str,
    patient: str,
    start: str,
    end: str,
) -> tuple[list[_Row], list[ErasedRow], list[str], dict[tuple[str, int, str], _Block]]:
    """(opened rows, erased rows, problems, their blocks) of ``patient`` in ``[start,
    end)``; only rows of committed blocks (their headers read here, as the report does)."""
    lookup = keystore.lookup(system, patient)
    keys = {k.key_id.hex(): k for k in keystore.data_keys(lookup, "report")}
    refs = [patient_ref(k.key) for k in keys.values()]
    erased = {
        key_id: info
        for info in erasures_of(reader.backend, reader.db, lookup, registrars)
        for key_id in info["key_ids"]
    }
    raw = reader.sealed_rows(refs, sorted(erased), start, end)
    blocks = reader.blocks({(_text(r[0]), int(r[1])) for r in raw})
    rows: list[_Row] = []
    gone: list[ErasedRow] = []
    problems: list[str] = []
    seen: set[tuple[str, int, int]] = set()
    for chain_b, height, idx, digest_b, canonical, key_id_b, sealed in raw:
        chain, digest, key_id = _text(chain_b), _text(digest_b), _text(key_id_b)
        where = f"{chain}@{height}#{idx}"
        if (chain, int(height), digest) not in blocks or (chain, int(height), int(idx)) in seen:
            continue  # uncommitted (no header vouches for it), or listed already
        seen.add((chain, int(height), int(idx)))
        try:
            document, _ = decode_sealed_document(bytes(canonical))
        except CareledgerError as exc:
            problems.append(f"{where}: stored bytes are not a sealed event: {exc}")
            continue
        if key_id in erased:
            info = {k: v for k, v in erased[key_id].items() if k != "key_ids"}
            gone.append(
                ErasedRow(chain, int(height), int(idx), digest, bytes(canonical), document, info)
            )
            continue
        key = keys.get(key_id)
        if key is None:
            problems.append(
                f"{where}: sealed under a data key that is neither the patient's nor erased"
            )
            continue
        try:
            opened = open_stored(
                key.key, bytes(canonical), base64.b64decode(_text(sealed), validate=True)
            )
            salt, sensitive, event = opened.salt, opened.sensitive, opened.event
        except (binascii.Error, CareledgerError) as exc:
            problems.append(f"{where}: the sealed part does not open to its document: {exc}")
            continue
        if event.patient.id != patient:
            problems.append(f"{where}: the row's pseudonym is this patient's, the sealed part not")
            continue
        opening = salt + jcs(sensitive)
        rows.append(_Row(chain, int(height), int(idx), digest, bytes(canonical), event, opening))
    return rows, gone, problems, blocks


#: a consent of the patient view: (record, chain, height, idx, block hash, canonical,
#: opening: salt || record bytes on a sealed ledger, None in clear)
ConsentRow = tuple[ReferenceRecord, str, int, int, str, bytes, bytes | None]


def sealed_consents(
    backend: SqlBackend, db: str, keystore: KeyStore, system: str, patient: str
) -> tuple[list[ConsentRow], list[str]]:
    """A patient's committed consents on a sealed ledger, opened (ADR 0037): their data
    keys (unwraps counted under ``report``) give their pseudonyms, which select the
    consent rows; each must open with the key it names, to its document's commitment,
    and be this patient's. ``system``: the system of reference data's patient ids
    (``reference_patient_system``). Returns the rows and the problems (named, never
    silently dropped)."""
    keys = {
        k.key_id.hex(): k for k in keystore.data_keys(keystore.lookup(system, patient), "report")
    }
    if not keys:
        return [], []
    rows = backend.execute(
        "SELECT chain_id, height, idx, block_hash, canonical, data_key_id, sealed "
        f"FROM {db}.reference_records WHERE kind = 'consent' AND subject_id IN %(refs)s "
        f"AND (chain_id, height, block_hash) IN (SELECT chain_id, height, block_hash "
        f"FROM {db}.blocks) ORDER BY chain_id, height, idx",
        {"refs": tuple(patient_ref(k.key) for k in keys.values())},
    )
    out: list[ConsentRow] = []
    problems: list[str] = []
    for chain_b, height, idx, digest_b, canonical, key_id_b, sealed in rows:
        chain, digest = _text(chain_b), _text(digest_b)
        where = f"{chain}@{height}#{idx}"
        key = keys.get(_text(key_id_b))
        if key is None:
            problems.append(f"{where}: a consent sealed under a data key that is not the patient's")
            continue
        try:
            opened = open_reference(
                key.key, bytes(canonical), base64.b64decode(_text(sealed), validate=True)
            )
        except (binascii.Error, CareledgerError) as exc:
            problems.append(f"{where}: the sealed consent does not open to its document: {exc}")
            continue
        rec = opened.record
        if rec.kind != "consent" or rec.subject_id != patient:
            problems.append(f"{where}: the row's pseudonym is this patient's, the record not")
            continue
        opening = opened.salt + opened.record_bytes
        out.append((rec, chain, int(height), int(idx), digest, bytes(canonical), opening))
    return out, problems


def sealed_staff_records(
    reader: _Reader, keystore: KeyStore, actor_ids: Sequence[str], problems: list[str]
) -> list[ReferenceRecord]:
    """The committed directory records of these users on a sealed ledger, opened (ADR
    0037): selected by their actor pseudonyms, each opened with the key it names, which
    must be that user's (unwraps counted under ``report``). What does not open is a
    problem named in the report; the report then shows the event's own name and roles."""
    refs = {keystore.actor_ref(a): a for a in actor_ids}
    raw: list[tuple[Any, ...]] = []
    wanted = sorted(refs)
    for lo in range(0, len(wanted), 1000):
        raw += reader.backend.execute(
            "SELECT chain_id, height, idx, block_hash, canonical, subject_id, data_key_id, "
            f"sealed FROM {reader.db}.reference_records "
            "WHERE kind = 'staff' AND subject_id IN %(refs)s ORDER BY chain_id, height, idx",
            {"refs": tuple(wanted[lo : lo + 1000])},
        )
    if not raw:
        return []
    committed = reader.blocks({(_text(r[0]), int(r[1])) for r in raw})
    key_ids = set()
    for row in raw:
        try:
            key_ids.add(bytes.fromhex(_text(row[6])))
        except ValueError:
            continue
    keys = {k.hex(): v for k, v in keystore.keys_by_id(sorted(key_ids), "report").items()}
    records: list[ReferenceRecord] = []
    for chain, height, idx, digest, canonical, subject, key_id, sealed in raw:
        where = f"{_text(chain)}@{height}#{idx}"
        if (_text(chain), int(height), _text(digest)) not in committed:
            continue
        actor = refs.get(_text(subject))
        found = keys.get(_text(key_id))
        if actor is None or found is None:
            problems.append(f"{where}: a directory record whose data key is gone")
            continue
        try:
            opened = open_reference(
                found.data_key.key, bytes(canonical), base64.b64decode(_text(sealed), validate=True)
            )
        except (binascii.Error, CareledgerError) as exc:
            problems.append(f"{where}: a directory record does not open: {exc}")
            continue
        rec = opened.record
        if (
            rec.kind != "staff"
            or rec.subject_id != actor
            or found.lookup != keystore.lookup(STAFF_KEY_SYSTEM, actor)
        ):
            problems.append(f"{where}: a directory record that is not the user's it is filed under")
            continue
        records.append(rec)
    return records
