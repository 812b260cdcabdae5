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

Steps 1 and 2 (``careledger_core.sealed_event.open_ingest_batch``) need only the ingest
key: with a worker process (``processors.opening_ahead``, ADR 0039) they are done ahead
of the loop, which then decodes the documents, checks each opening against the signed
commitment and does 3 and 4; without one, or when its results do not fit, the loop does
them all, with the same function.

An event that fails 1 or 2 is refused alone (dead-lettered with the reason; the rest of
the batch is chained and the refused entry is kept for verify, as for any event refused
out of a batch, ADR 0020). A key store that cannot be used stops the batch: nothing is
chained without its sealed part (the error propagates and the record is taken again).

Caches, each bounded: lookups and actor pseudonyms (deterministic), and data keys for
``sealing_key_cache_s`` (default ``DATA_KEY_TTL_S``; an erasure destroys the key rows: a
processor may seal a patient's events under the destroyed key for at most that long
after, and then makes a new key; ``careledger erase`` waits it out before it returns).
A data key used in the last quarter of that time is read again on a thread of its own
(``SubjectKeys``), so that the event loop does not stop every ``sealing_key_cache_s``
to read and unwrap its patients' keys; each entry keeps the time of the read that
found it, so the bound is the same.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from careledger.ingest_keys import IngestKey
from careledger.keystore import KeyStore
from careledger.sealed_raw import (
    decode_sealed_raw,
    is_raw_transit,
    join_key_ids,
    open_raw_transit,
    raw_commitment,
    raw_key,
    seal_raw,
    sealed_raw_document,
)
from careledger.storage.kinds import SealedRaw, SealedRecord, SealedReference
from careledger.storage.store import BatchInfo, ChainedEvent, SealedBlock
from careledger_core.batch_record import open_batch_record
from careledger_core.errors import CareledgerError
from careledger_core.hashing import leaf_hash
from careledger_core.reference import ReferenceRecord, decode_and_canonicalize_reference
from careledger_core.sealed_event import (
    IngestOpening,
    IngestRefusal,
    ingest_key,
    open_ingest_batch,
    read_sealed_columns,
)
from careledger_core.sealed_reference import (
    CLEAR_REFERENCE_KINDS,
    SEALED_REFERENCE_KINDS,
    STAFF_KEY_SYSTEM,
    decode_sealed_reference,
    is_reference_transit,
    open_reference_transit,
    record_ref,
    reference_commitment,
    seal_reference,
    sealed_reference_document,
)
from careledger_core.sealing import (
    SALT_BYTES,
    SealError,
    commitment_of_bytes,
    patient_ref,
    seal_bytes,
)
from processors.opening_ahead import AheadResult, OpenAhead

__all__ = [
    "DATA_KEY_TTL_S",
    "EventOpener",
    "RawSealer",
    "ReferenceSealer",
    "Refusal",
    "SubjectKeys",
]

#: how long a data key stays cached in the processor
DATA_KEY_TTL_S: Final = 30.0
#: a cached data key used after this part of its time is read again in the background
REFRESH_AFTER: Final = 0.75
_REFRESH_CHUNK: Final = 256
_CACHE_ENTRIES: Final = 65_536

log = logging.getLogger("careledger.processor.sealing")

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


class SubjectKeys:
    """The data keys, lookups and actor pseudonyms a processor seals with, cached (each
    bounded; data keys for ``ttl_s``). Shared by the event opener (the event loop's
    thread) and the reference sealer (the write thread): thread-safe.

    A data key used after ``REFRESH_AFTER`` of its time is read again on the
    ``careledger-keys`` thread (``refresh``), in chunks, while the cached one is still
    served; a read that fails leaves the entries to expire, and the caller reads them
    itself as before."""

    def __init__(
        self,
        keystore: KeyStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        ttl_s: float = DATA_KEY_TTL_S,
    ) -> None:
        self.keystore = keystore
        self._clock = clock
        self._ttl = ttl_s
        self._lock = threading.Lock()
        self._lookups = _Lru(_CACHE_ENTRIES)
        self._actors = _Lru(_CACHE_ENTRIES)
        self._keys = _Lru(_CACHE_ENTRIES)
        self._refresher: ThreadPoolExecutor | None = None
        #: lookups whose keys are being read again (under the lock)
        self._refreshing: set[bytes] = set()
        #: keys read again in the background, and reads that failed
        self.refreshed = 0
        self.refresh_failures = 0

    def lookup(self, system: str, subject_id: str) -> bytes:
        with self._lock:
            cached = self._lookups.get((system, subject_id))
        if isinstance(cached, bytes):
            return cached
        lookup = self.keystore.lookup(system, subject_id)
        with self._lock:
            self._lookups.put((system, subject_id), lookup)
        return lookup

    def lookups(self, subjects: Sequence[tuple[str, str]]) -> list[bytes]:
        """:meth:`lookup` of each subject, the cached ones under one hold of the lock (a
        batch's events, in the event loop's thread: one acquisition, not one each)."""
        with self._lock:
            found = [self._lookups.get(s) for s in subjects]
        return [
            f if isinstance(f, bytes) else self.lookup(*s)
            for f, s in zip(found, subjects, strict=True)
        ]

    def actor_refs(self, actor_ids: Sequence[str]) -> list[str]:
        """:meth:`actor_ref` of each actor, the cached ones under one hold of the lock."""
        with self._lock:
            found = [self._actors.get(a) for a in actor_ids]
        return [
            f if isinstance(f, str) else self.actor_ref(a)
            for f, a in zip(found, actor_ids, strict=True)
        ]

    def actor_ref(self, actor_id: str) -> str:
        with self._lock:
            cached = self._actors.get(actor_id)
        if isinstance(cached, str):
            return cached
        ref = self.keystore.actor_ref(actor_id)
        with self._lock:
            self._actors.put(actor_id, ref)
        return ref

    def data_keys(self, lookups: Sequence[bytes]) -> dict[bytes, tuple[bytes, bytes]]:
        """(key id, key) of each subject's preferred data key, made when missing: the
        cached ones, and the others from the key store all at once."""
        now = self._clock()
        out: dict[bytes, tuple[bytes, bytes]] = {}
        missing = []
        due = []
        with self._lock:
            for lookup in lookups:
                cached = self._keys.get(lookup)
                if isinstance(cached, tuple) and now - cached[0] < self._ttl:
                    out[lookup] = (cached[1], cached[2])
                    if (
                        now - cached[0] >= self._ttl * REFRESH_AFTER
                        and lookup not in self._refreshing
                    ):
                        self._refreshing.add(lookup)
                        due.append(lookup)
                elif lookup not in out:
                    missing.append(lookup)
        if due:
            self._schedule(due)
        if missing:
            made = self.keystore.data_keys_for(missing, "ingest")
            with self._lock:
                for lookup, key in made.items():
                    self._keys.put(lookup, (now, key.key_id, key.key))
                    out[lookup] = (key.key_id, key.key)
        return out

    def _schedule(self, due: list[bytes]) -> None:
        if self._refresher is None:
            self._refresher = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="careledger-keys"
            )
        for i in range(0, len(due), _REFRESH_CHUNK):
            chunk = due[i : i + _REFRESH_CHUNK]
            try:
                self._refresher.submit(self.refresh, chunk)
            except RuntimeError:  # closed, or the interpreter is exiting: they expire
                with self._lock:
                    self._refreshing.difference_update(chunk)

    def refresh(self, lookups: Sequence[bytes]) -> None:
        """Read these subjects' data keys again (on the ``careledger-keys`` thread); each
        entry gets the time the read began, and never replaces a fresher one."""
        began = self._clock()
        try:
            made = self.keystore.data_keys_for(lookups, "ingest")
        except (CareledgerError, OSError) as exc:
            made = {}
            self.refresh_failures += 1
            log.warning(
                "reading data keys again failed (%s); they are read when they expire",
                getattr(exc, "code", type(exc).__name__),
            )
        with self._lock:
            for lookup, key in made.items():
                current = self._keys.get(lookup)
                if not (isinstance(current, tuple) and current[0] >= began):
                    self._keys.put(lookup, (began, key.key_id, key.key))
            self.refreshed += len(made)
            self._refreshing.difference_update(lookups)

    def close(self) -> None:
        """Stop the background reads (waiting for the one running)."""
        if self._refresher is not None:
            self._refresher.shutdown(wait=True, cancel_futures=True)


class EventOpener:
    """Opens and re-seals the events of sealed batch records (one per processor)."""

    def __init__(
        self,
        ingest: IngestKey,
        keystore: KeyStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        ttl_s: float = DATA_KEY_TTL_S,
        keys: SubjectKeys | None = None,
        ahead: OpenAhead | None = None,
    ) -> None:
        self.ingest = ingest
        #: the worker process opening records ahead of the loop (ADR 0039), if any
        self.ahead = ahead
        self.keystore = keystore
        self.keys = keys if keys is not None else SubjectKeys(keystore, clock=clock, ttl_s=ttl_s)
        self._ingest_keys = _Lru(1024)
        self._refs = _Lru(_CACHE_ENTRIES)  # the event loop's thread only: no lock
        self.opened = 0
        self.refused = 0
        #: events whose opening came from the worker
        self.opened_ahead = 0

    def _ingest_key(self, sealed_key: bytes) -> bytes:
        cached = self._ingest_keys.get(sealed_key)
        if isinstance(cached, bytes):
            return cached
        key = ingest_key(sealed_key, self.ingest.private)
        self._ingest_keys.put(sealed_key, key)
        return key

    def prefetch(self, records: Sequence[bytes]) -> None:
        """A take's records, handed to the worker that opens them ahead (if any)."""
        if self.ahead is not None:
            self.ahead.submit(records)

    def forget_ahead(self) -> None:
        """The take is done: forget what the worker opened and the loop did not ask for."""
        if self.ahead is not None:
            self.ahead.clear()

    def ahead_of(self, record: bytes) -> AheadResult | None:
        """The worker's opening of ``record`` (waiting for it), or None: no worker, not
        handed over, not a record it could open, or a worker that failed."""
        return None if self.ahead is None else self.ahead.result(record)

    def disagreed(self) -> None:
        """An opening the caller could not use (it opens the record itself)."""
        if self.ahead is not None:
            self.ahead.disagreements += 1

    def open_batch(
        self,
        info: BatchInfo,
        offset: int,
        raw: Sequence[bytes],
        leaves: Sequence[bytes],
        boxes: Sequence[bytes],
        sealed_key: bytes,
        max_event_bytes: int,
        *,
        record: bytes | None = None,
        ahead: AheadResult | None = None,
        asked: bool = False,
    ) -> tuple[list[ChainedEvent], list[Refusal]]:
        """The chainable events of one sealed batch record, and those refused alone
        (``record``: the batch record's bytes, to find it opened ahead; ``ahead``: its
        opening, when the caller ``asked`` for it already). ``boxes`` is empty when the
        caller read the record with the worker's leaf hashes
        (``read_opened_batch_record``): then a worker's answer that does not fit makes
        this open the record in full. Raises
        ``KeyStoreError`` when the key store cannot be used, ``SourceEnvelopeError`` or
        ``SourceAuthError`` when opening it in full finds the record malformed."""
        openings = None
        if not asked and self.ahead is not None and record is not None:
            ahead = self.ahead.result(record)
        if ahead is not None:
            openings = self._opened_ahead(ahead, raw, max_event_bytes)
        if openings is None and not boxes and raw:
            # the leaves were the worker's, whose answer did not fit: trust none of it
            assert record is not None
            full = open_batch_record(record)
            leaves, boxes, sealed_key = full.leaf_hashes, full.sealed, full.sealed_key
        if openings is None:
            try:
                shared = self._ingest_key(sealed_key)
            except SealError as exc:  # every event of the record is refused, each alone
                return [], [(i, d, exc.code, str(exc), "$") for i, d in enumerate(raw)]
            openings = open_ingest_batch(shared, raw, leaves, boxes, max_event_bytes)
        else:
            self.opened_ahead += len(openings[0])
        opened_events, refusals = openings
        refused: list[Refusal] = [(i, raw[i], code, why, at) for i, code, why, at in refusals]
        # the batch's patients' data keys, in a few round trips for all of them
        lookups = self.keys.lookups([o.subject for o in opened_events])
        keys = self.keys.data_keys(lookups)
        actor_refs = self.keys.actor_refs([o.actor_id for o in opened_events])
        chained: list[ChainedEvent] = []
        for o, lookup, actor_ref in zip(opened_events, lookups, actor_refs, strict=True):
            key_id, key = keys[lookup]
            leaf = leaves[o.index]
            sealed = seal_bytes(key, leaf, o.salt, o.body)
            ref = self._refs.get(key_id)
            if not isinstance(ref, str):  # a patient's pseudonym, once per data key
                ref = patient_ref(key)
                self._refs.put(key_id, ref)
            sealed_record = SealedRecord(
                document=o.document,
                patient_ref=ref,
                actor_ref=actor_ref,
                data_key_id=key_id.hex(),
                sealed=base64.b64encode(sealed).decode(),
            )
            chained.append(
                ChainedEvent(offset, sealed_record, raw[o.index], leaf, None, info, o.index)
            )
        if refused and chained:
            skipped = BatchInfo(
                info.statement, info.signature, tuple((r[0], leaves[r[0]]) for r in refused)
            )
            chained = [dataclasses.replace(ev, batch=skipped) for ev in chained]
        self.opened += len(chained)
        self.refused += len(refused)
        return chained, refused

    def _opened_ahead(
        self, result: AheadResult, raw: Sequence[bytes], max_event_bytes: int
    ) -> tuple[list[IngestOpening], list[IngestRefusal]] | None:
        """The worker's opening of a record, checked: each opened event's stored columns
        and commitment read here from its signed document, its opening held against that
        commitment, every event of the batch accounted for once, and one event's leaf
        hash, drawn at random, recomputed. None (the loop opens the record itself):
        results that do not fit."""
        opened, refusals, leaves = result
        indexes = sorted([o[0] for o in opened] + [r[0] for r in refusals])
        spot = secrets.randbelow(len(raw)) if raw else 0
        fits = (
            indexes == list(range(len(raw)))
            and all(len(raw[o[0]]) <= max_event_bytes for o in opened)
            and len(leaves) == len(raw)
            and (not raw or leaves[spot] == leaf_hash(raw[spot]))
        )
        # the documents' columns only: the worker validated each document in full,
        # from these same bytes (the record it was handed), with the function the loop
        # would call; verify validates every stored document again
        documents = read_sealed_columns([raw[o[0]] for o in opened]) if fits else None
        if documents is None:
            self.disagreed()
            return None
        openings = []
        for (i, salt, body, system, subject_id, actor_id), document in zip(
            opened, documents, strict=True
        ):
            if len(salt) != SALT_BYTES or commitment_of_bytes(salt, body) != bytes.fromhex(
                document.sealed_commitment
            ):
                self.disagreed()
                return None
            openings.append(IngestOpening(i, document, salt, body, (system, subject_id), actor_id))
        return openings, list(refusals)


class ReferenceSealer:
    """A sealed ledger's reference records (ADR 0037,
    ``careledger_core.sealed_reference``), in two steps:

    * :meth:`take` (as a record is taken): open the transit envelope with the ingest key,
      validate the record, draw a salt and build the sealed document (the leaf). A
      record of a kind that names no one (an erasure, a legal hold) is taken in clear;
      any other in clear, a sealed document sent as is, or an envelope that does not
      open is refused (``ValidationError`` or ``SealError``: dead-lettered with reason);
    * :meth:`complete` (before the blocks are written): the subjects' data keys for all
      the blocks' sealed records at once, then each record's sealed part and pseudonyms.
      A key store that cannot be used raises ``KeyStoreError``: the write fails closed
      and the records are taken again.

    The subject of a patient's record (consent, care relationship, patient) is the
    patient, under ``patient_system`` (the events' system for the same ids: one data key,
    one erasure); of a staff record, the staff member (:data:`STAFF_KEY_SYSTEM`), whose
    pseudonym is the actor pseudonym the events carry.
    """

    def __init__(
        self,
        ingest: IngestKey,
        keys: SubjectKeys,
        patient_system: str,
        *,
        salt: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.ingest = ingest
        self.keys = keys
        self.patient_system = patient_system
        self._salt = salt
        self.sealed = 0

    def take(self, data: bytes) -> tuple[SealedReference | ReferenceRecord, bytes]:
        if not is_reference_transit(data):
            record, canonical = decode_and_canonicalize_reference(data)
            if record.kind not in CLEAR_REFERENCE_KINDS:
                raise SealError(
                    code="REFERENCE_NOT_SEALED",
                    message=f"a {record.kind} record in clear: this ledger is sealed, "
                    "send it sealed to the ingest key",
                )
            return record, canonical
        record_bytes = open_reference_transit(self.ingest.private, data)
        record, canonical = decode_and_canonicalize_reference(record_bytes)
        if record.kind not in SEALED_REFERENCE_KINDS:
            raise SealError(
                code="REFERENCE_NOT_SEALED",
                message=f"{record.kind} records are not sealed: send them in clear",
            )
        salt = self._salt(SALT_BYTES)
        document = sealed_reference_document(record, reference_commitment(salt, canonical))
        parsed, _ = decode_sealed_reference(document)
        return SealedReference(parsed, document, record, canonical, salt), document

    def _lookup(self, record: ReferenceRecord) -> bytes:
        if record.kind == "staff":
            return self.keys.lookup(STAFF_KEY_SYSTEM, record.subject_id)
        return self.keys.lookup(self.patient_system, record.subject_id)

    def complete(self, blocks: Sequence[SealedBlock]) -> int:
        """Seal every sealed reference record of ``blocks`` not sealed yet; the count."""
        pending = [
            ev.event
            for b in blocks
            for ev in b.events
            if isinstance(ev.event, SealedReference) and not ev.event.sealed
        ]
        if not pending:
            return 0
        lookups = [self._lookup(r.record) for r in pending]
        keys = self.keys.data_keys(lookups)
        for r, lookup in zip(pending, lookups, strict=True):
            key_id, key = keys[lookup]
            record = r.record
            r.sealed = base64.b64encode(
                seal_reference(key, r.canonical, r.salt, r.record_bytes)
            ).decode()
            r.data_key_id = key_id.hex()
            r.record_ref = record_ref(key, record.kind, record.record_id)
            r.subject_ref = (
                self.keys.actor_ref(record.subject_id)
                if record.kind == "staff"
                else patient_ref(key)
            )
        self.sealed += len(pending)
        return len(pending)


class RawSealer:
    """A sealed ledger's raw records (ADR 0037, ``careledger.sealed_raw``), in the same
    two steps as reference records:

    * :meth:`take`: open the transit envelope with the ingest key (a raw envelope in
      clear, or one that does not open, is refused with its reason: ``SealError``),
      draw a salt and build the sealed document (the leaf);
    * :meth:`complete` (before the blocks are written): the data keys of every subject
      of the blocks' raw records at once (the patients each names, or its sender's
      day), then each record's key, sealed payload and key ids. A key store that
      cannot be used raises ``KeyStoreError``: the write fails closed.
    """

    def __init__(
        self, ingest: IngestKey, keys: SubjectKeys, *, salt: Callable[[int], bytes] = os.urandom
    ) -> None:
        self.ingest = ingest
        self.keys = keys
        self._salt = salt
        self.sealed = 0

    def take(self, data: bytes) -> tuple[SealedRaw, bytes]:
        if not is_raw_transit(data):
            raise SealError(
                code="RAW_NOT_SEALED",
                message="a raw record in clear: this ledger is sealed, send it sealed to the "
                "ingest key",
            )
        opened = open_raw_transit(self.ingest.private, data)
        salt = self._salt(SALT_BYTES)
        document = sealed_raw_document(opened.envelope, raw_commitment(salt, opened.payload))
        parsed, _ = decode_sealed_raw(document)
        return SealedRaw(parsed, document, opened.payload, opened.subjects, salt), document

    def complete(self, blocks: Sequence[SealedBlock]) -> int:
        """Seal every sealed raw record of ``blocks`` not sealed yet; the count."""
        pending = [
            ev.event
            for b in blocks
            for ev in b.events
            if isinstance(ev.event, SealedRaw) and not ev.event.sealed
        ]
        if not pending:
            return 0
        lookups = [[self.keys.lookup(system, sid) for system, sid in r.subjects] for r in pending]
        keys = self.keys.data_keys([lk for each in lookups for lk in each])
        for r, mine in zip(pending, lookups, strict=True):
            pairs = [keys[lk] for lk in mine]
            record_key = raw_key(r.document.record_id, pairs)
            r.sealed = base64.b64encode(
                seal_raw(record_key, r.canonical, r.salt, r.payload)
            ).decode()
            r.data_key_id = join_key_ids(key_id for key_id, _ in pairs)
        self.sealed += len(pending)
        return len(pending)
