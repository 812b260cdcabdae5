"""The decision point on a sealed ledger (ADR 0037): what it reads is opened through the
key store, what it ledgers is sealed to the processor's ingest key.

* **Consents** are sealed reference records under their patient's data key: each
  committed one is opened with the key its row names, which must be the key of the
  patient named inside (``reference_patient_system``); one that does not open is left
  out and counted (``verify`` says why). The decision point holds the opened consents in
  memory, as it holds them in clear on a ledger in clear: deciding fast is its job.
* **Decision records** are raw records: sealed to the ingest key with the patient the
  question names (``careledger.sealed_raw``), so the record key is that patient's and
  erasing them erases the question. ``consent replay`` opens them with the keys their
  rows list; a record whose key an erasure destroyed is reported as erased.
* **Decision events** are sealed access events (the SDK seals them); replay opens them.

Unwraps are counted under ``decide`` (consents) and ``replay``.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass, field
from typing import Any

from careledger.keystore import KeyStore
from careledger.raw_record import RawRecordEnvelope
from careledger.sealed_raw import decode_sealed_raw, open_raw_row, split_key_ids
from careledger_core.errors import CareledgerError
from careledger_core.event import AccessEvent
from careledger_core.reference import ReferenceRecord
from careledger_core.sealed_reference import open_reference
from verifiers.auditor.runner.sealed_store import SealedEventOpener

__all__ = ["SealedReader"]

log = logging.getLogger("careledger.decision_point")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass
class SealedReader:
    """Opens a sealed ledger's consents, decision records and decision events."""

    keystore: KeyStore
    #: the system of the patient ids in consents (``reference_patient_system``)
    patient_system: str
    purpose: str = "decide"
    unopened: int = 0
    _events: SealedEventOpener | None = field(default=None, repr=False)

    def consent(self, canonical: bytes, sealed: Any, key_id: Any) -> ReferenceRecord | None:
        """A committed sealed consent row opened (None: it does not open, or not under
        its patient's key)."""
        try:
            found = self.keystore.keys_by_id([bytes.fromhex(_text(key_id))], self.purpose)
        except ValueError:
            found = {}
        key = next(iter(found.values()), None)
        record: ReferenceRecord | None = None
        if key is not None:
            try:
                record = open_reference(
                    key.data_key.key, canonical, base64.b64decode(_text(sealed), validate=True)
                ).record
            except (CareledgerError, binascii.Error):
                record = None
        if (
            key is None
            or record is None
            or record.kind != "consent"
            or self.keystore.lookup(self.patient_system, record.subject_id) != key.lookup
        ):
            self.unopened += 1  # erased, or a finding of verify
            return None
        return record

    def decision_envelope(
        self, canonical: bytes, sealed: Any, key_ids: Any
    ) -> RawRecordEnvelope | str:
        """A sealed decision record's envelope, or why it cannot be read ("erased": a key
        it is sealed under is gone)."""
        try:
            document, _ = decode_sealed_raw(canonical)
            ids = split_key_ids(_text(key_ids))
        except (CareledgerError, ValueError) as exc:
            return f"not a sealed raw record: {exc}"
        keys = self.keystore.keys_by_id(ids, "replay")
        if any(i not in keys for i in ids):
            return "erased: a key it is sealed under is gone"
        pairs = [(i, keys[i].data_key.key) for i in ids]
        try:
            opened = open_raw_row(document, canonical, _text(sealed), pairs)
        except CareledgerError as exc:
            return f"its sealed part does not open: {exc}"
        return opened.envelope

    def event(self, canonical: bytes, sealed: Any, key_id: Any) -> AccessEvent | None:
        """A sealed decision event opened (None: it does not open)."""
        if self._events is None:
            self._events = SealedEventOpener(self.keystore, "replay")
        return self._events(canonical, _text(sealed), _text(key_id))
