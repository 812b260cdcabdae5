"""The auditor's reads of a sealed ledger (ADR 0037): ``SealedAuditStore``.

The same reads as :class:`~verifiers.auditor.runner.store.AuditStore` (committed rows
only, in ledger order), but each sealed event and reference record is opened with the
data key its row names (unwrapped once per key, counted under ``audit``) and handed to
the rules on pseudonyms (:mod:`verifiers.auditor.pseudonyms`). A row that does not open
(erased, or tampered: ``verify`` names it) is skipped with a warning that counts, never
names; erased patients' accesses are no longer decided, which is what an erasure means.
Writes are the plain store's: what the auditor writes names no one.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from careledger.keystore import KeyStore
from careledger.storage.backend import SqlBackend
from careledger.storage.kinds import decode_sealed_reference_row
from careledger_core.errors import CareledgerError
from careledger_core.event import AccessEvent
from careledger_core.reference import ReferenceRecord
from careledger_core.sealed_event import open_stored
from careledger_core.sealed_reference import open_reference
from careledger_core.sealing import patient_ref

from ..pseudonyms import pseudonymous_event, pseudonymous_reference
from ..status_records import SealedStatus
from .decide import LedgeredEvent, LedgeredReference, Position
from .rows import _text
from .store import AuditStore

__all__ = ["KeystorePseudonyms", "SealedAuditStore", "SealedEventOpener", "sealed_status"]

log = logging.getLogger("careledger.audit")

_PURPOSE: Final = "audit"
_TOKEN_SYSTEM: Final = "urn:careledger:audit-token:"


class KeystorePseudonyms:
    """:class:`~verifiers.auditor.pseudonyms.Pseudonyms` from the key store, cached."""

    def __init__(self, keystore: KeyStore, patient_system: str) -> None:
        self.keystore = keystore
        self.patient_system = patient_system
        self._actors: dict[str, str] = {}
        self._patients: dict[str, str] = {}
        self._tokens: dict[tuple[str, str], str] = {}

    def actor(self, actor_id: str) -> str:
        ref = self._actors.get(actor_id)
        if ref is None:
            ref = self._actors[actor_id] = self.keystore.actor_ref(actor_id)
        return ref

    def patient(self, patient_id: str) -> str:
        """Their oldest data key's ``patient_ref``; a patient without a key (none of
        their data is on the ledger, or they were erased) gets the lookup's token, which
        no event carries."""
        ref = self._patients.get(patient_id)
        if ref is None:
            lookup = self.keystore.lookup(self.patient_system, patient_id)
            keys = self.keystore.data_keys(lookup, _PURPOSE)
            ref = patient_ref(keys[0].key) if keys else f"absent-{lookup.hex()}"
            self._patients[patient_id] = ref
        return ref

    def token(self, kind: str, value: str) -> str:
        ref = self._tokens.get((kind, value))
        if ref is None:
            ref = self.keystore.lookup(_TOKEN_SYSTEM + kind, value).hex()
            self._tokens[(kind, value)] = ref
        return ref


class SealedEventOpener:
    """Opens a sealed ledger's event rows (signed document, sealed part, data key id) to
    their events, keys unwrapped once each and counted under ``purpose``; None for a row
    that does not open (its key erased, or a tamper ``verify`` names)."""

    def __init__(self, keystore: KeyStore, purpose: str) -> None:
        self.keystore = keystore
        self.purpose = purpose
        self._keys: dict[str, bytes | None] = {}

    def __call__(self, canonical: bytes, sealed: str, key_id: str) -> AccessEvent | None:
        if key_id not in self._keys:
            try:
                found = self.keystore.keys_by_id([bytes.fromhex(key_id)], self.purpose)
            except ValueError:
                found = {}
            of = next(iter(found.values()), None)
            self._keys[key_id] = None if of is None else of.data_key.key
        key = self._keys[key_id]
        if key is None:
            return None
        try:
            return open_stored(key, canonical, base64.b64decode(sealed, validate=True)).event
        except (CareledgerError, binascii.Error):
            return None


def sealed_status(keystore: KeyStore, purpose: str) -> SealedStatus:
    """How the alert book writes and reads a sealed ledger's status changes: records
    opened through the key store (unwraps counted under ``purpose``), reviewers named by
    their actor pseudonyms (cached)."""
    refs: dict[str, str] = {}

    def actor_ref(actor_id: str) -> str:
        ref = refs.get(actor_id)
        if ref is None:
            ref = refs[actor_id] = keystore.actor_ref(actor_id)
        return ref

    return SealedStatus(SealedEventOpener(keystore, purpose), actor_ref)


class SealedAuditStore(AuditStore):
    """An :class:`AuditStore` whose events and reference records are sealed."""

    def __init__(
        self,
        backend: SqlBackend,
        database: str,
        reference_topics: frozenset[str],
        keystore: KeyStore,
        patient_system: str,
    ) -> None:
        super().__init__(backend, database, reference_topics)
        self.keystore = keystore
        self.refs = KeystorePseudonyms(keystore, patient_system)
        self._keys: dict[str, bytes | None] = {}
        self.unopened = 0

    def _key(self, key_ids: Iterable[str]) -> Mapping[str, bytes | None]:
        wanted = sorted({k for k in key_ids if k not in self._keys})
        ids = []
        for k in wanted:
            try:
                ids.append(bytes.fromhex(k))
            except ValueError:
                self._keys[k] = None
        if ids:
            found = self.keystore.keys_by_id(ids, _PURPOSE)
            for raw in ids:
                of = found.get(raw)
                self._keys[raw.hex()] = None if of is None else of.data_key.key
        return self._keys

    def _skipped(self, what: str, where: str, why: str) -> None:
        self.unopened += 1
        log.warning("sealed %s at %s not opened (%s): not decided; run verify", what, where, why)

    # -- reference data
    def _references(
        self, rows: Sequence[Sequence[Any]], times: Iterable[Sequence[Any]]
    ) -> list[LedgeredReference]:
        block_time = {(_text(c), h, _text(b)): _text(t) for c, h, b, t in times if type(h) is int}
        keys = self._key(_text(r[5]) for r in rows if r[5])
        out: list[LedgeredReference] = []
        for chain_b, height, block_b, canonical, record_id, key_id, sealed, subject in rows:
            if type(height) is not int:
                continue
            chain, block = _text(chain_b), _text(block_b)
            when = block_time.get((chain, height, block))
            if when is None:
                continue
            where = f"{chain}@{height}"
            try:
                decoded, _ = decode_sealed_reference_row(bytes(canonical))
                if isinstance(decoded, ReferenceRecord):  # a kind that names no one
                    out.append(LedgeredReference(decoded, chain, height, when))
                    continue
                key = keys.get(_text(key_id))
                if key is None:
                    self._skipped("reference record", where, "its data key is gone")
                    continue
                opened = open_reference(
                    key, bytes(canonical), base64.b64decode(_text(sealed), validate=True)
                )
                record = pseudonymous_reference(
                    opened.record, _text(record_id), _text(subject), self.refs
                )
            except (CareledgerError, binascii.Error, ValueError) as exc:
                self._skipped("reference record", where, type(exc).__name__)
                continue
            out.append(LedgeredReference(record, chain, height, when))
        return out

    # -- access events
    _EVENT_COLUMNS = (
        "occurred_at, chain_id, height, idx, canonical, patient_id, actor_id, data_key_id, sealed"
    )
    _REFERENCE_COLUMNS = (
        "chain_id, height, block_hash, canonical, record_id, data_key_id, sealed, subject_id"
    )

    def _events(self, rows: Sequence[Sequence[Any]]) -> list[LedgeredEvent]:
        keys = self._key(_text(r[7]) for r in rows)
        out: list[LedgeredEvent] = []
        for _occ, chain_b, height, idx, canonical, pref, aref, key_id, sealed in rows:
            if type(height) is not int or type(idx) is not int:
                continue
            chain = _text(chain_b)
            where = f"{chain}@{height}#{idx}"
            key = keys.get(_text(key_id))
            if key is None:
                self._skipped("event", where, "its data key is gone")
                continue
            try:
                opened = open_stored(
                    key, bytes(canonical), base64.b64decode(_text(sealed), validate=True)
                )
            except (CareledgerError, binascii.Error) as exc:
                self._skipped("event", where, type(exc).__name__)
                continue
            event = pseudonymous_event(opened.event, _text(pref), _text(aref), self.refs)
            out.append(LedgeredEvent(Position(chain, height, idx), event))
        return out

    def events_of_chains(self, ranges: Mapping[str, tuple[int, int]]) -> list[LedgeredEvent]:
        out: list[LedgeredEvent] = []
        for chain, (above, upto) in sorted(ranges.items()):
            out += self.events_of_chain(chain, above, upto)
        return out
