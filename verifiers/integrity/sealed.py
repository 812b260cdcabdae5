"""A sealed ledger's events opened with the key store (ADR 0037).

The chain checks verify what is signed: the sealed documents, their leaves, roots and
signatures. What is not signed and not recomputable from the documents, the sealed
part, its data key id and the two pseudonym columns (``patient_id`` holds
``patient_ref``, ``actor_id`` holds ``actor_ref``), is checked here, where the key store
can open it. For each committed event row:

* its data key (named by ``data_key_id``) must exist, unless an erasure destroyed it:
  ``SEALED_KEY_MISSING`` otherwise (a key row deleted outside ``careledger erase``);
* the sealed part must open with that key, for this leaf, to the commitment its signed
  document holds: ``SEALED_PART_INVALID`` (the column edited, or moved from another row);
* the key must be the one of the patient named inside: ``SEALED_KEY_NOT_PATIENTS``;
* ``patient_id`` and ``actor_id`` must be ``patient_ref(key)`` and the actor's
  pseudonym: ``SEALED_REF_MISMATCH`` (a report selects by them: an edit would move an
  access from one patient's report to another's).

A sealed raw record (the gateway's received bytes, ``careledger.sealed_raw``) is under a
record key derived from the data keys its ``data_key_id`` lists: every one of them must
exist (or an erasure destroyed one: the record is erased), the payload must open to its
document, and the keys must be exactly those of the subjects the payload names
(``SEALED_KEY_NOT_PATIENTS``). Raw records are checked first, so that each event made
from one (its document's ``raw_ref.sha256``) can be checked to be of a patient whose key
the record's key is made of: else erasing that patient would leave the bytes readable
(``SEALED_KEY_NOT_PATIENTS`` at the event).

Rows are read chain by chain in pages of blocks, keys fetched once per page by id.
Rows whose document does not decode or whose leaf does not match are the chain
checks' findings, not repeated here. Every unwrap is counted under ``verify``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from careledger.keystore import KeyStore
from careledger.sealed_raw import decode_sealed_raw, open_raw_row, split_key_ids
from careledger.storage.kinds import decode_sealed_reference_row
from careledger.storage.store import ChainStore
from careledger_core.errors import CareledgerError
from careledger_core.event import canonical_event_bytes
from careledger_core.findings import Finding, FindingCode
from careledger_core.hashing import leaf_hash
from careledger_core.reference import ReferenceRecord
from careledger_core.sealed_event import decode_sealed_document, key_subject, open_stored
from careledger_core.sealed_reference import STAFF_KEY_SYSTEM, open_reference, record_ref
from careledger_core.sealing import patient_ref

__all__ = ["SealedReport", "check_reference_row", "check_sealed", "sealed_opener"]

PAGE_BLOCKS: Final = 200
#: the patient id of an event about no patient (the auditor's and the decision point's)
_NO_PATIENT: Final = "-"


@dataclass
class SealedReport:
    opened: int = 0
    #: rows whose key an erasure destroyed (by key id)
    erased: int = 0
    #: the same for sealed reference records
    references_opened: int = 0
    references_erased: int = 0
    #: the same for sealed raw records
    raw_opened: int = 0
    raw_erased: int = 0
    #: raw records opened: SHA-256 of their bytes -> the data key ids of their keys
    raw_keys: dict[str, set[str]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    #: why nothing was opened (no key store), or None
    not_opened: str | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "opened": self.opened,
            "erased": self.erased,
            "references_opened": self.references_opened,
            "references_erased": self.references_erased,
            "raw_opened": self.raw_opened,
            "raw_erased": self.raw_erased,
        }
        if self.not_opened is not None:
            out["not_opened"] = self.not_opened
        return out


def _str(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


_EVENT_COLUMNS: Final = (
    "height, idx, event_id, canonical, leaf_hash, patient_id, actor_id, data_key_id, sealed"
)
_REFERENCE_COLUMNS: Final = (
    "height, idx, record_id, canonical, leaf_hash, subject_id, kind, data_key_id, sealed"
)
_RAW_COLUMNS: Final = "height, idx, record_id, canonical, leaf_hash, data_key_id, sealed"


def _rows(
    store: ChainStore, chain: str, table: str = "access_events", columns: str = _EVENT_COLUMNS
) -> Iterator[list[tuple[Any, ...]]]:
    db = store.db
    top = store.backend.execute(
        f"SELECT max(height) FROM {db}.blocks WHERE chain_id = %(c)s", {"c": chain}
    )
    head = top[0][0] if top and type(top[0][0]) is int else -1
    for lo in range(0, head + 1, PAGE_BLOCKS):
        yield store.backend.execute(
            f"SELECT {columns} FROM {db}.{table} "
            "WHERE chain_id = %(c)s AND height >= %(lo)s AND height <= %(hi)s AND "
            f"(chain_id, height, block_hash) IN (SELECT chain_id, height, block_hash "
            f"FROM {db}.blocks WHERE chain_id = %(c)s) ORDER BY height, idx",
            {"c": chain, "lo": lo, "hi": lo + PAGE_BLOCKS - 1},
        )


def _keys_of(keystore: KeyStore, page: list[tuple[Any, ...]]) -> dict[bytes, Any]:
    ids = set()
    for row in page:
        try:
            ids.add(bytes.fromhex(_str(row[7])))
        except ValueError:
            continue
    return keystore.keys_by_id(sorted(ids), "verify")


def check_sealed(
    store: ChainStore,
    keystore: KeyStore,
    chains: list[str],
    erased_key_ids: frozenset[str],
    *,
    reference_chains: Sequence[str] = (),
    patient_system: str = "",
    raw_chains: Sequence[str] = (),
) -> SealedReport:
    """Open every committed sealed raw record of ``raw_chains``, every sealed event of
    ``chains`` (the sealed kind's chains) and every sealed reference record of
    ``reference_chains`` (their patients' ids are of ``patient_system``)."""
    report = SealedReport()
    for chain in raw_chains:
        for page in _rows(store, chain, "raw_records", _RAW_COLUMNS):
            keys = _raw_keys_of(keystore, page)
            for row in page:
                check_raw_row(report, keystore, keys, chain, row, erased_key_ids)
    for chain in chains:
        for page in _rows(store, chain):
            keys = _keys_of(keystore, page)
            for row in page:
                _check_row(report, keystore, keys, chain, row, erased_key_ids)
    for chain in reference_chains:
        for page in _rows(store, chain, "reference_records", _REFERENCE_COLUMNS):
            keys = _keys_of(keystore, page)
            for row in page:
                check_reference_row(
                    report, keystore, keys, chain, row, erased_key_ids, patient_system
                )
    return report


def _raw_keys_of(keystore: KeyStore, page: list[tuple[Any, ...]]) -> dict[bytes, Any]:
    ids: set[bytes] = set()
    for row in page:
        try:
            ids.update(split_key_ids(_str(row[5])))
        except ValueError:
            continue
    return keystore.keys_by_id(sorted(ids), "verify")


def check_raw_row(
    report: SealedReport,
    keystore: KeyStore,
    keys: dict[bytes, Any],
    chain: str,
    row: tuple[Any, ...],
    erased_key_ids: frozenset[str],
) -> None:
    """One row of a sealed ledger's raw chain (module doc)."""
    height, idx, record_id, canonical, leaf, key_ids, sealed = row
    if type(canonical) is not bytes or _str(leaf) != leaf_hash(canonical).hex():
        return  # the chain checks report it
    try:
        document, _ = decode_sealed_raw(canonical)
    except CareledgerError:
        return  # the chain checks report it
    where: dict[str, Any] = {"height": height, "event_index": idx, "event_id": _str(record_id)}

    def finding(code: FindingCode, message: str) -> None:
        report.findings.append(Finding.of(code, chain, message, **where))

    try:
        ids = split_key_ids(_str(key_ids))
    except ValueError:
        finding(FindingCode.SEALED_PART_INVALID, "data_key_id is not a list of data key ids")
        return
    gone = [i.hex() for i in ids if i not in keys]
    if gone:
        missing = [g for g in gone if g not in erased_key_ids]
        if missing:
            _gone(missing[0], erased_key_ids, "raw record", finding)
        else:
            report.raw_erased += 1
        return
    found = [keys[i] for i in ids]
    pairs = [(i, f.data_key.key) for i, f in zip(ids, found, strict=True)]
    try:
        opened = open_raw_row(document, canonical, _str(sealed), pairs)
    except CareledgerError as exc:
        finding(FindingCode.SEALED_PART_INVALID, f"the sealed raw record does not open: {exc}")
        return
    named = {keystore.lookup(system, sid) for system, sid in opened.subjects}
    if named != {f.lookup for f in found}:
        finding(
            FindingCode.SEALED_KEY_NOT_PATIENTS,
            "the raw record is not sealed under the data keys of exactly the patients it names",
        )
        return
    report.raw_keys.setdefault(document.sha256, set()).update(i.hex() for i in ids)
    report.raw_opened += 1


def _named_key(keys: dict[bytes, Any], key_id: str) -> Any | None:
    """The key a row names, if the key store holds it."""
    try:
        return keys.get(bytes.fromhex(key_id))
    except ValueError:
        return None


def _gone(
    key_id: str,
    erased_key_ids: frozenset[str],
    what: str,
    finding: Callable[[FindingCode, str], None],
) -> bool:
    """A row's key is gone: True if a ledgered erasure destroyed it (the row is erased),
    else a ``SEALED_KEY_MISSING`` finding and False."""
    if key_id in erased_key_ids:
        return True
    finding(
        FindingCode.SEALED_KEY_MISSING,
        f"the data key {key_id[:16]}... of this {what} is gone, and no ledgered erasure "
        "destroyed it",
    )
    return False


def check_reference_row(
    report: SealedReport,
    keystore: KeyStore,
    keys: dict[bytes, Any],
    chain: str,
    row: tuple[Any, ...],
    erased_key_ids: frozenset[str],
    patient_system: str,
) -> None:
    """One row of a sealed ledger's reference chain: a sealed record must open with the
    key it names, to its document's commitment, under its subject's key, and its
    ``record_id`` and ``subject_id`` must be the pseudonyms recomputed; a record in clear
    (a kind that names no one) must carry its own id and subject."""
    height, idx, record_id, canonical, leaf, subject, kind, key_id, sealed = row
    if type(canonical) is not bytes or _str(leaf) != leaf_hash(canonical).hex():
        return  # the chain checks report it
    try:
        decoded, _ = decode_sealed_reference_row(canonical)
    except CareledgerError:
        return  # the chain checks report it
    where: dict[str, Any] = {
        "height": height,
        "event_index": idx,
        "event_id": _str(record_id),
        "details": {"kind": _str(kind)},
    }

    def finding(code: FindingCode, message: str) -> None:
        report.findings.append(Finding.of(code, chain, message, **where))

    if isinstance(decoded, ReferenceRecord):
        if (_str(record_id), _str(subject)) != (decoded.record_id, decoded.subject_id):
            finding(
                FindingCode.SEALED_REF_MISMATCH,
                "record_id or subject_id is not the one of the record in clear",
            )
        return
    found = _named_key(keys, _str(key_id))
    if found is None:
        if _gone(_str(key_id), erased_key_ids, "record", finding):
            report.references_erased += 1
        return
    key = found.data_key.key
    try:
        record = open_reference(key, canonical, base64.b64decode(_str(sealed), validate=True))
    except (CareledgerError, binascii.Error) as exc:
        finding(FindingCode.SEALED_PART_INVALID, f"the sealed record does not open: {exc}")
        return
    rec = record.record
    staff = rec.kind == "staff"
    system = STAFF_KEY_SYSTEM if staff else patient_system
    if keystore.lookup(system, rec.subject_id) != found.lookup:
        finding(
            FindingCode.SEALED_KEY_NOT_PATIENTS,
            "the sealed record opens with another subject's data key",
        )
        return
    subject_ref = keystore.actor_ref(rec.subject_id) if staff else patient_ref(key)
    if (_str(record_id), _str(subject)) != (record_ref(key, rec.kind, rec.record_id), subject_ref):
        finding(
            FindingCode.SEALED_REF_MISMATCH,
            "record_id or subject_id is not the pseudonym of the record or subject sealed in it",
        )
        return
    report.references_opened += 1


def _check_row(
    report: SealedReport,
    keystore: KeyStore,
    keys: dict[bytes, Any],
    chain: str,
    row: tuple[Any, ...],
    erased_key_ids: frozenset[str],
) -> None:
    height, idx, event_id, canonical, leaf, pref, aref, key_id, sealed = row
    if type(canonical) is not bytes or _str(leaf) != leaf_hash(canonical).hex():
        return  # the chain checks report it
    try:
        document, _ = decode_sealed_document(canonical)
    except CareledgerError:
        return  # the chain checks report it
    where: dict[str, Any] = {"height": height, "event_index": idx, "event_id": _str(event_id)}

    def finding(code: FindingCode, message: str) -> None:
        report.findings.append(Finding.of(code, chain, message, **where))

    found = _named_key(keys, _str(key_id))
    if found is None:
        if _gone(_str(key_id), erased_key_ids, "event", finding):
            report.erased += 1
        return
    try:
        event = open_stored(
            found.data_key.key, canonical, base64.b64decode(_str(sealed), validate=True)
        ).event
    except (CareledgerError, binascii.Error) as exc:
        finding(FindingCode.SEALED_PART_INVALID, f"the sealed part does not open: {exc}")
        return
    actor = event.actor.id
    lookup = keystore.lookup(*key_subject(event))
    if lookup != found.lookup:
        finding(
            FindingCode.SEALED_KEY_NOT_PATIENTS,
            "the sealed part opens with another patient's data key",
        )
        return
    if _str(pref) != patient_ref(found.data_key.key) or _str(aref) != keystore.actor_ref(actor):
        finding(
            FindingCode.SEALED_REF_MISMATCH,
            "patient_id or actor_id is not the pseudonym of the patient or actor sealed in it",
        )
        return
    raw = document.raw_ref
    # an event about no patient (a decision point's, an alert's status change) needs no
    # erasure with anyone: only a patient's event must share its raw record's key
    about_someone = event.patient.id != _NO_PATIENT
    made_from = None if raw is None or not about_someone else report.raw_keys.get(raw.sha256)
    if made_from is not None and _str(key_id) not in made_from:
        finding(
            FindingCode.SEALED_KEY_NOT_PATIENTS,
            "the raw record this event was made from is not sealed under this patient's "
            "data key: erasing the patient would not erase those bytes",
        )
        return
    report.opened += 1


def sealed_opener(keystore: KeyStore) -> Callable[[bytes, str, str], bytes | None]:
    """Opens one sealed row (document, sealed part, data key id) to the canonical bytes of
    its event, for the duplicate search (``verifiers.integrity.duplicates``); None when it
    cannot be opened (erased, or a finding of :func:`check_sealed`)."""
    keys: dict[str, Any] = {}

    def open_row(canonical: bytes, sealed: str, key_id: str) -> bytes | None:
        if key_id not in keys:
            try:
                found = keystore.keys_by_id([bytes.fromhex(key_id)], "verify")
            except ValueError:
                return None
            keys[key_id] = next(iter(found.values()), None)
        key = keys[key_id]
        if key is None:
            return None
        try:
            opened = open_stored(
                key.data_key.key, canonical, base64.b64decode(sealed, validate=True)
            )
        except (CareledgerError, binascii.Error):
            return None
        return canonical_event_bytes(opened.event)

    return open_row
