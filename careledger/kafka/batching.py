"""The pure part of signing at the source (ADR 0010, 0020): batches, sequence numbers, heartbeats.

The SDK (``careledger/kafka/producer.py``) does the I/O; everything here is deterministic given the
clock values and random bytes passed in, so it is unit-tested without Kafka.

* :class:`SourceBatcher` buffers events per *attributed* source (the producer's own
  source, or one it sends ``on_behalf_of``), numbers them with that source's sequence
  numbers (from 1 within the producer's epoch) and signs each batch once. A batch closes
  when it holds ``max_events`` events, when its first event waited ``max_age_s``, or
  (batch records) before an event that would take its record over ``max_bytes``.
  A closed batch is one Kafka record ``careledger.signed-batch/1`` (record format
  ``"batch"``, ADR 0020: statement, signature and events once, keyed
  ``<source_id>/<epoch>/<first_seq>`` so that batches spread over the partitions), or,
  with record format ``"event"``, one ``careledger.signed-event/1`` record per event
  keyed by patient id (the shape before ADR 0020, for senders and tests that need it).
* :class:`AckTracker` knows, per attributed source, the last sequence number up to
  which Kafka acknowledged *every* event (a batch counts once all its records are
  acknowledged). Heartbeats claim exactly that, so a heartbeat never claims an event
  Kafka does not have. A failed delivery freezes the source's acknowledged prefix for
  the rest of the epoch (the gap is real: the verifier reports it).
* :func:`heartbeat_record` builds the signed heartbeat as a reference record (kind
  ``source-heartbeat``, ``record_id = <source_id>/<epoch>/<beat>``, version 1).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from typing import Any, Final

import msgspec

from careledger.ingest_keys import IngestSealer, load_ingest_public_key
from careledger_core.batch_record import looks_batch, sign_batch_record
from careledger_core.errors import ValidationError
from careledger_core.event import AccessEvent, canonical_event_bytes
from careledger_core.hashing import leaf_hash
from careledger_core.reference import ReferenceRecord
from careledger_core.signing import SigningKey
from careledger_core.source import (
    MAX_BATCH_SIZE,
    HeartbeatStatement,
    encode_signed_event,
    sign_batch,
    sign_heartbeat,
)

__all__ = [
    "RECORD_FORMATS",
    "AckTracker",
    "SignedBatch",
    "SourceBatcher",
    "batch_record_key",
    "event_id_of",
    "event_ids_of",
    "format_utc",
    "heartbeat_record",
    "ingest_public_key_of",
]

_TS_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"

#: ``Settings.source_record_format``: one record per batch (default) or per event.
RECORD_FORMATS: Final = ("batch", "event")

#: A batch record's bytes besides its events' (schema, signature, statement), bounded
#: from above: the statement's two ids may be JSON-escaped (at most 6 bytes a character).
_ENVELOPE_BYTES: Final = 1024
#: The smallest byte budget accepted (a budget must leave room for events).
MIN_BATCH_BYTES: Final = 4096


def ingest_public_key_of(settings: Any) -> bytes | None:
    """The processor's ingest public key a source seals to (None: events go in clear)."""
    path = settings.ingest_public_key
    return None if path is None else load_ingest_public_key(path)


def format_utc(epoch_seconds: float) -> str:
    """A wall-clock instant as an event timestamp ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    return dt.datetime.fromtimestamp(epoch_seconds, dt.UTC).strftime(_TS_FORMAT)


def batch_record_key(source_id: str, epoch: str, first_seq: int) -> bytes:
    """The Kafka key of a batch record: ``<source_id>/<epoch>/<first_seq>`` (UTF-8)."""
    return f"{source_id}/{epoch}/{first_seq}".encode()


@dataclasses.dataclass(frozen=True, slots=True)
class SignedBatch:
    """One signed batch, ready to produce: ``records`` are (Kafka key, value) in order:
    one batch record, or one signed-event record per event."""

    source_id: str  # the attributed source (statement.source_id)
    first_seq: int
    last_seq: int
    records: tuple[tuple[bytes, bytes], ...]

    @property
    def size(self) -> int:
        """Events in the batch (whatever the number of records)."""
        return self.last_seq - self.first_seq + 1


@dataclasses.dataclass(slots=True)
class _Pending:
    opened_at: float  # monotonic time of the first buffered event
    keys: list[bytes]  # per-event Kafka keys (record format "event" only)
    events: list[bytes]
    boxes: list[bytes]  # sealed events: each one's ingest box (ADR 0037)
    room: int  # bytes left for events in the batch record (record format "batch")


class SourceBatcher:
    """Buffers, numbers and signs batches for one producer epoch. Not thread-safe."""

    def __init__(
        self,
        key: SigningKey,
        source_id: str,
        epoch: str,
        *,
        max_events: int,
        max_age_s: float,
        max_bytes: int = 900_000,
        record_format: str = "batch",
        seal_to: bytes | None = None,
    ) -> None:
        if not 1 <= max_events <= MAX_BATCH_SIZE:
            raise ValidationError(f"source_batch_max_events must be in 1..{MAX_BATCH_SIZE}")
        if max_age_s <= 0:
            raise ValidationError("source_batch_max_ms must be positive")
        if max_bytes < MIN_BATCH_BYTES:
            raise ValidationError(f"source_batch_max_bytes must be at least {MIN_BATCH_BYTES}")
        if record_format not in RECORD_FORMATS:
            raise ValidationError(
                f"source_record_format must be one of {', '.join(RECORD_FORMATS)}"
            )
        self.key = key
        self.source_id = source_id
        self.epoch = epoch
        self.max_events = max_events
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.record_format = record_format
        if seal_to is not None and record_format != "batch":
            raise ValidationError("sealed events travel in batch records only (ADR 0037)")
        #: the processor's ingest public key: events are sealed to it (ADR 0037), under
        #: one ephemeral key for this batcher's epoch
        self.seal_to = seal_to
        self._sealer = None if seal_to is None else IngestSealer(seal_to)
        #: one record per event (keys kept per event), not one per batch
        self.per_event = record_format == "event"
        self._pending: dict[str, _Pending] = {}
        #: last sequence number signed per attributed source (0: none yet); the
        #: producer's own source is always attributed
        self._last_seq: dict[str, int] = {source_id: 0}

    @property
    def sources(self) -> tuple[str, ...]:
        """Every attributed source so far (the producer's own first)."""
        return tuple(self._last_seq)

    def last_seq(self, source_id: str | None = None) -> int:
        """The last sequence number signed for ``source_id`` (default: own source)."""
        return self._last_seq.get(source_id or self.source_id, 0)

    def last_seqs(self) -> dict[str, int]:
        return dict(self._last_seq)

    @property
    def buffered(self) -> int:
        """Events waiting in open batches."""
        return sum(len(p.events) for p in self._pending.values())

    def attribute(self, on_behalf_of: str | None) -> str:
        source = self.source_id if on_behalf_of is None else on_behalf_of
        if not source:
            raise ValidationError("on_behalf_of must be a non-empty source id")
        self._last_seq.setdefault(source, 0)
        return source

    def _room(self, source: str) -> int:
        signer = "" if source == self.source_id else self.source_id
        return self.max_bytes - _ENVELOPE_BYTES - 6 * (len(source) + len(signer))

    def overflows(self, source_id: str, event_bytes: int) -> bool:
        """Would an event of ``event_bytes`` take ``source_id``'s open batch record over
        ``max_bytes``? (Then take that batch first.) Never for an empty batch: an event
        too large for any batch travels alone. Always False with per-event records."""
        pending = self._pending.get(source_id)
        return pending is not None and not self.per_event and event_bytes + 1 > pending.room

    def encode(self, event: AccessEvent) -> tuple[bytes, bytes | None]:
        """What goes into a batch for ``event``: its canonical bytes, or when sealing,
        its sealed document and ingest box (ADR 0037)."""
        if self._sealer is None:
            return canonical_event_bytes(event), None
        return self._sealer.seal(event)

    def add(
        self,
        canonical_event: bytes,
        key: bytes,
        now: float,
        on_behalf_of: str | None = None,
        box: bytes | None = None,
    ) -> tuple[str, bool, bool]:
        """Buffer one event (``box``: its ingest box, from :meth:`encode`, when sealing).
        Returns (attributed source, batch opened, batch full).

        ``key`` (the patient id) is the event's Kafka key with per-event records; a
        batch record has a key of its own. Check :meth:`overflows` first."""
        if (box is None) != (self.seal_to is None):
            raise ValidationError("a sealing batcher takes sealed events only, and only it")
        source = self.attribute(on_behalf_of)
        pending = self._pending.get(source)
        opened = pending is None
        if pending is None:
            pending = self._pending[source] = _Pending(now, [], [], [], self._room(source))
        if self.per_event:
            pending.keys.append(key)
        pending.events.append(canonical_event)
        pending.room -= len(canonical_event) + 1  # and its comma
        if box is not None:
            pending.boxes.append(box)
            pending.room -= (len(box) + 2) // 3 * 4 + 3  # base64, quotes and comma
        if opened and self._sealer is not None:
            pending.room -= 64  # the record's sealed_key
        return source, opened, len(pending.events) >= self.max_events or pending.room <= 0

    def due(self, now: float) -> list[str]:
        """Sources whose open batch has waited ``max_age_s`` or longer."""
        return [s for s, p in self._pending.items() if now - p.opened_at >= self.max_age_s]

    def next_deadline(self) -> float | None:
        """Monotonic time at which the oldest open batch is due (None: nothing open)."""
        if not self._pending:
            return None
        return min(p.opened_at for p in self._pending.values()) + self.max_age_s

    def take(self, source_id: str, signed_at: str) -> SignedBatch | None:
        """Close, number and sign ``source_id``'s open batch (None if it has none)."""
        pending = self._pending.pop(source_id, None)
        if pending is None:
            return None
        first = self._last_seq[source_id] + 1
        last = first + len(pending.events) - 1
        signed_by = None if source_id == self.source_id else self.source_id
        records: tuple[tuple[bytes, bytes], ...]
        if self.per_event:
            attestations = sign_batch(
                self.key,
                source_id=source_id,
                epoch=self.epoch,
                first_seq=first,
                event_leaf_hashes=[leaf_hash(e) for e in pending.events],
                signed_at=signed_at,
                signed_by=signed_by,
            )
            records = tuple(
                (k, encode_signed_event(e, a))
                for k, e, a in zip(pending.keys, pending.events, attestations, strict=True)
            )
        else:
            _statement, _signature, value = sign_batch_record(
                self.key,
                source_id=source_id,
                epoch=self.epoch,
                first_seq=first,
                canonical_events=pending.events,
                signed_at=signed_at,
                signed_by=signed_by,
                sealed=pending.boxes,
                sealed_key=b"" if self._sealer is None else self._sealer.public,
            )
            records = ((batch_record_key(source_id, self.epoch, first), value),)
        self._last_seq[source_id] = last
        return SignedBatch(source_id, first, last, records)

    def take_all(self, signed_at: str) -> Iterator[SignedBatch]:
        """Close every open batch (own source first, then in order of attribution)."""
        for source in [s for s in self._last_seq if s in self._pending]:
            batch = self.take(source, signed_at)
            if batch is not None:
                yield batch


class _EventIdOnly(msgspec.Struct):
    event_id: str


class _SignedEventIdOnly(msgspec.Struct):
    event: _EventIdOnly


class _BatchEventIdsOnly(msgspec.Struct):
    events: list[_EventIdOnly]


_event_id_decoder = msgspec.json.Decoder(_EventIdOnly)
_signed_event_id_decoder = msgspec.json.Decoder(_SignedEventIdOnly)
_batch_event_ids_decoder = msgspec.json.Decoder(_BatchEventIdsOnly)


def event_id_of(value: bytes | None) -> str | None:
    """The event id of a plain or signed-event record (None: not readable as one)."""
    if not value:
        return None
    try:
        return _event_id_decoder.decode(value).event_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    try:
        return _signed_event_id_decoder.decode(value).event.event_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def event_ids_of(value: bytes | None, count: int) -> list[str | None]:
    """The event ids of the ``count`` events a record carries (a batch record: all of
    them, in order; otherwise the one event's), None where unreadable."""
    if count <= 0:
        return []
    if value and looks_batch(value):
        try:
            ids: list[str | None] = [
                e.event_id for e in _batch_event_ids_decoder.decode(value).events
            ]
        except (msgspec.DecodeError, msgspec.ValidationError):
            ids = []
        return (ids + [None] * count)[:count]
    return [event_id_of(value)] + [None] * (count - 1)


@dataclasses.dataclass(slots=True)
class _SourceAcks:
    through: int = 0  # every seq <= through acknowledged
    complete: dict[int, int] = dataclasses.field(default_factory=dict)  # first -> last
    open: dict[int, list[int]] = dataclasses.field(default_factory=dict)  # first -> [last, n]
    failed: bool = False


class AckTracker:
    """The acknowledged prefix of each attributed source's sequence numbers.

    Not thread-safe by itself: the SDK calls it under its acknowledgement lock.
    """

    def __init__(self) -> None:
        self._sources: dict[str, _SourceAcks] = {}

    def sent(
        self, source_id: str, first_seq: int, last_seq: int, records: int | None = None
    ) -> None:
        """A batch was handed to Kafka as ``records`` records (default: one per event,
        ``last_seq - first_seq + 1``; a batch record is 1)."""
        acks = self._sources.setdefault(source_id, _SourceAcks())
        n = last_seq - first_seq + 1 if records is None else records
        acks.open[first_seq] = [last_seq, n]

    def delivered(self, source_id: str, first_seq: int, ok: bool) -> None:
        """One record of the batch starting at ``first_seq`` was acknowledged (or failed)."""
        acks = self._sources[source_id]
        batch = acks.open.get(first_seq)
        if batch is None:
            return
        if not ok:
            acks.failed = True
            del acks.open[first_seq]
            return
        batch[1] -= 1
        if batch[1] > 0:
            return
        del acks.open[first_seq]
        acks.complete[first_seq] = batch[0]
        if acks.failed:
            return
        while acks.through + 1 in acks.complete:
            acks.through = acks.complete.pop(acks.through + 1)

    def acked_through(self, source_id: str) -> int:
        """Largest seq such that Kafka acknowledged every event up to it (0: none)."""
        acks = self._sources.get(source_id)
        return 0 if acks is None else acks.through

    def in_flight(self, source_id: str) -> int:
        """Batches handed to Kafka and not yet fully acknowledged."""
        acks = self._sources.get(source_id)
        return 0 if acks is None else len(acks.open)

    def failed(self, source_id: str) -> bool:
        acks = self._sources.get(source_id)
        return acks is not None and acks.failed


def heartbeat_record(
    key: SigningKey,
    *,
    source_id: str,
    epoch: str,
    beat: int,
    last_seq: int,
    sent_at: str,
    closing: bool = False,
) -> ReferenceRecord:
    """A signed heartbeat as a ``source-heartbeat`` reference record (version 1,
    ``recorded_at = effective_at = sent_at``)."""
    statement = HeartbeatStatement(
        source_id=source_id,
        key_id=key.key_id,
        epoch=epoch,
        beat=beat,
        last_seq=last_seq,
        sent_at=sent_at,
        closing=closing,
    )
    return ReferenceRecord(
        kind="source-heartbeat",
        record_id=f"{source_id}/{epoch}/{beat}",
        version=1,
        recorded_at=sent_at,
        effective_at=sent_at,
        body={
            "statement": msgspec.to_builtins(statement),
            "signature": sign_heartbeat(key, statement),
        },
    )
