"""The processor's half of sealed events (ADR 0037): open what a source sealed to the
ingest key, check it against the signed commitment, and seal it again under the
patient's data key for storage.

:class:`EventOpener` runs inside the source gate, after a batch record's signature and
root were checked (so every document it sees is one the source signed), for each event:

1. decode the sealed document (public fields only; canonical bytes);
2. open the ingest ciphertext (``open_ingest``) under the record's key (X25519 of its
   ``sealed_key`` and the ingest key, computed once per ephemeral key): it must open for
   this document, to the commitment the document signs, and rebuild a valid event;
3. find the patient's data key (``lookup = HMAC(K_lookup, system | id)`` in the token; a
   new patient gets a new key), and the actor's pseudonym (``HMAC(K_actor, id)``);
4. seal ``salt || sensitive`` under the data key with the event's leaf hash as
   associated data, and compute ``patient_ref`` (``HMAC(data key, ...)``).

An event that fails 1 or 2 is refused alone (dead-lettered with the reason; the rest of
the batch is chained and the refused entry is kept for verify, as for any event refused
out of a batch, ADR 0020). A key store that cannot be used stops the batch: nothing is
chained without its sealed part (the error propagates and the record is taken again).

Caches, each bounded: lookups and actor pseudonyms (deterministic), and data keys for
``sealing_key_cache_s`` (default ``DATA_KEY_TTL_S``; an erasure destroys the key rows: a
processor may seal a patient's events under the destroyed key for at most that long
after, and then makes a new key; ``careledger erase`` waits it out before it returns).
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final

from careledger.ingest_keys import IngestKey
from careledger.keystore import KeyStore
from careledger.storage.kinds import SealedRecord
from careledger.storage.store import BatchInfo, ChainedEvent
from careledger_core.errors import ValidationError
from careledger_core.sealed_event import (
    OpenedEvent,
    SealedAccessEvent,
    decode_sealed_document,
    ingest_key,
    open_ingest,
)
from careledger_core.sealing import SealError, patient_ref, seal

__all__ = ["DATA_KEY_TTL_S", "EventOpener", "Refusal"]

#: how long a data key stays cached in the processor
DATA_KEY_TTL_S: Final = 30.0
_CACHE_ENTRIES: Final = 65_536

#: (batch index, the event's bytes, code, reason, field): an event refused alone
Refusal = tuple[int, bytes, str, str, str]


class _Lru:
    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[object, object] = OrderedDict()

    def get(self, key: object) -> object | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: object, value: object) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


class EventOpener:
    """Opens and re-seals the events of sealed batch records (one per processor)."""

    def __init__(
        self,
        ingest: IngestKey,
        keystore: KeyStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        ttl_s: float = DATA_KEY_TTL_S,
    ) -> None:
        self.ingest = ingest
        self.keystore = keystore
        self._clock = clock
        self._ttl = ttl_s
        self._lookups = _Lru(_CACHE_ENTRIES)
        self._actors = _Lru(_CACHE_ENTRIES)
        self._keys = _Lru(_CACHE_ENTRIES)
        self._ingest_keys = _Lru(1024)
        self.opened = 0
        self.refused = 0

    def _lookup(self, system: str, patient_id: str) -> bytes:
        cached = self._lookups.get((system, patient_id))
        if isinstance(cached, bytes):
            return cached
        lookup = self.keystore.lookup(system, patient_id)
        self._lookups.put((system, patient_id), lookup)
        return lookup

    def _actor_ref(self, actor_id: str) -> str:
        cached = self._actors.get(actor_id)
        if isinstance(cached, str):
            return cached
        ref = self.keystore.actor_ref(actor_id)
        self._actors.put(actor_id, ref)
        return ref

    def _ingest_key(self, sealed_key: bytes) -> bytes:
        cached = self._ingest_keys.get(sealed_key)
        if isinstance(cached, bytes):
            return cached
        key = ingest_key(sealed_key, self.ingest.private)
        self._ingest_keys.put(sealed_key, key)
        return key

    def _data_keys(self, lookups: list[bytes]) -> dict[bytes, tuple[bytes, bytes]]:
        """(key id, key) of each patient's preferred data key, made when missing: the
        cached ones, and the others from the key store all at once."""
        now = self._clock()
        out: dict[bytes, tuple[bytes, bytes]] = {}
        missing = []
        for lookup in lookups:
            cached = self._keys.get(lookup)
            if isinstance(cached, tuple) and now - cached[0] < self._ttl:
                out[lookup] = (cached[1], cached[2])
            elif lookup not in out:
                missing.append(lookup)
        if missing:
            for lookup, made in self.keystore.data_keys_for(missing, "ingest").items():
                self._keys.put(lookup, (now, made.key_id, made.key))
                out[lookup] = (made.key_id, made.key)
        return out

    def open_batch(
        self,
        info: BatchInfo,
        offset: int,
        raw: Sequence[bytes],
        leaves: Sequence[bytes],
        boxes: Sequence[bytes],
        sealed_key: bytes,
        max_event_bytes: int,
    ) -> tuple[list[ChainedEvent], list[Refusal]]:
        """The chainable events of one sealed batch record, and those refused alone.
        Raises ``KeyStoreError`` when the key store cannot be used."""
        chained: list[ChainedEvent] = []
        refused: list[Refusal] = []
        try:
            shared = self._ingest_key(sealed_key)
        except SealError as exc:  # every event of the record is refused, each alone
            return [], [(i, d, exc.code, str(exc), "$") for i, d in enumerate(raw)]
        opened_events: list[tuple[int, bytes, bytes, SealedAccessEvent, OpenedEvent]] = []
        for i, (data, leaf, box) in enumerate(zip(raw, leaves, boxes, strict=True)):
            if len(data) > max_event_bytes:
                refused.append(
                    (
                        i,
                        data,
                        "EVENT_TOO_LARGE",
                        f"event of {len(data)} bytes exceeds the limit of {max_event_bytes}",
                        "$",
                    )
                )
                continue
            try:
                document, _ = decode_sealed_document(data)
                opened = open_ingest(shared, data, box)
            except (ValidationError, SealError) as exc:
                refused.append((i, data, exc.code, str(exc), getattr(exc, "field", "$")))
                continue
            opened_events.append((i, data, leaf, document, opened))
        # the batch's patients' data keys, in a few round trips for all of them
        lookups = [
            self._lookup(o.event.patient.system or "", o.event.patient.id)
            for *_, o in opened_events
        ]
        keys = self._data_keys(lookups)
        for (i, data, leaf, document, opened), lookup in zip(opened_events, lookups, strict=True):
            event = opened.event
            key_id, key = keys[lookup]
            sealed = seal(key, leaf, opened.salt, opened.sensitive)
            record = SealedRecord(
                document=document,
                patient_ref=patient_ref(key),
                actor_ref=self._actor_ref(event.actor.id),
                data_key_id=key_id.hex(),
                sealed=base64.b64encode(sealed).decode(),
            )
            chained.append(ChainedEvent(offset, record, data, leaf, None, info, i))
        if refused and chained:
            skipped = BatchInfo(
                info.statement, info.signature, tuple((r[0], leaves[r[0]]) for r in refused)
            )
            chained = [dataclasses.replace(ev, batch=skipped) for ev in chained]
        self.opened += len(chained)
        self.refused += len(refused)
        return chained, refused
