"""The processor's source gate: may this access-event record be chained? (ADR 0010, 0015)

``SourceGate.admit(value, kafka_ts, where, timestamp_type=...)`` decodes one record of the
events topic and returns the event, its canonical bytes and its attestation, or raises:

* a ``ValidationError`` (malformed envelope or event): the record is dead-lettered;
* a ``SourceAuthError`` with a stable code: the record is quarantined —
  ``UNSIGNED`` (a plain event while signatures are required), ``BAD_SIGNATURE``,
  ``BAD_PROOF``, ``UNKNOWN_KEY``, ``REVOKED_KEY``, ``KEY_NOT_FOR_SOURCE``,
  ``REPLAYED`` (a sequence number of the source already chained, or admitted from
  another offset), ``UNTRUSTED_TIME`` (the record's Kafka timestamp is the producer's
  CreateTime: the events topic is not configured with LogAppendTime) and
  ``SIGNED_AT_SKEW`` (the signed time is more than ``max_skew_s`` from the broker's).

The checks run in this order, so that each record gets the most telling reason: what the
signature proves (key registered at all, signature, inclusion proof), then a replay (a
copy of a genuine record is REPLAYED whenever it arrives, even a day later), then time,
then the key's status **at the broker's append time**, which the signer cannot choose:
a revoked key cannot be used by backdating ``signed_at`` (ADR 0015).

An unknown key id. With a ``RegistryFollower`` (the processor; ADR 0027) the registry is
read incrementally on a thread of its own. A record whose key id is unknown to a registry
read *after* the record was appended is refused (``UNKNOWN_KEY``); otherwise ``admit``
raises ``RegistryStale`` before touching any state, and the caller waits off its event
loop (``wait_for_registry``: one incremental, rate-limited read, at most
``registry_wait_s``) and takes the record again. So a key registered before its first
batch was produced is found, and an unknown key id never costs a full re-read. Without
a follower, ``load_registry`` is called again (at most every ``refresh_interval_s``).

Replay detection uses ``seqs`` (``processors.seq_state``): the sequence numbers chained
in the store (rebuilt from ClickHouse by the processor) and those admitted but not yet
written, with their position. Reading the same offset again (after a failed write or a
restart) is not a replay; the same sequence number at another offset is.

``SourceGate.admit_batch`` takes a batch record (``careledger.signed-batch/1``, ADR 0020):
the same checks in the same order, once per record (the root over its events, the
signature, the whole sequence range, time, key status), then each event is validated.
A record-level failure raises as above (the record is dead-lettered or quarantined
whole); an event that is malformed, too large or not in its canonical form (its signed
leaf hash binds the bytes in the record) is refused alone (``EventRefused``) and the
others are chained. Per event there is one msgspec decode and no signature, proof or
statement encoding: the whole batch is decoded and re-encoded in one call each, and only
when that finds a problem is each event decoded on its own to name it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from confluent_kafka import KafkaException

from careledger.storage.store import BatchInfo, ChainedEvent, SealedBlock
from careledger_core.batch_record import (
    OpenedBatch,
    open_batch_record,
    read_checked_batch_record,
    read_opened_batch_record,
)
from careledger_core.errors import CareledgerError, ValidationError
from careledger_core.event import AccessEvent, decode_and_canonicalize
from careledger_core.event_batch import decode_canonical_events, read_access_columns
from careledger_core.hashing import leaf_hash
from careledger_core.source import (
    Attestation,
    BatchStatement,
    BatchVerifier,
    SourceAuthError,
    SourceEnvelopeError,
    SourceRegistry,
    decode_signed_event,
    looks_signed,
    processor_source_id,
    seconds_of,
    timestamp_of,
)
from processors.opening_ahead import CheckResult, OpenAhead
from processors.registry_follower import RegistryFollower
from processors.seq_state import SeqState

log = logging.getLogger("careledger.processor.sources")

#: Kafka record timestamp types (the protocol's attribute bit)
CREATE_TIME = 0
LOG_APPEND_TIME = 1


class RegistryStale(Exception):
    """The record names a key id the registry read so far does not know, and no read
    has started since the record was appended: wait for one (``wait_for_registry``)
    and take the record again. Raised before any state is changed."""

    def __init__(self, appended_at: float) -> None:
        super().__init__(f"source registry not yet read past {appended_at:.3f}")
        self.appended_at = appended_at


@dataclass(frozen=True, slots=True)
class Admitted:
    event: AccessEvent
    canonical: bytes
    leaf_hash: bytes
    attestation: Attestation | None
    #: the broker's append time the key status was decided at (signed events only)
    appended_at: float | None = None


@dataclass(frozen=True, slots=True)
class EventRefused:
    """An event of a well-signed batch record that cannot be chained: dead-lettered
    alone (its bytes as they stand in the record), the others are chained."""

    index: int
    value: bytes
    code: str
    reason: str
    field: str


class BatchOpener(Protocol):
    """Opens the events of a sealed batch record (``processors.sealing.EventOpener``):
    the chainable ones, and (index, bytes, code, reason, field) of those refused."""

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
        ahead: Any = None,
        asked: bool = False,
    ) -> tuple[list[ChainedEvent], list[tuple[int, bytes, str, str, str]]]: ...

    def ahead_of(self, record: bytes) -> Any:
        """The worker's opening of a record (``processors.opening_ahead.AheadResult``:
        its third item the events' leaf hashes), or None."""

    def disagreed(self) -> None:
        """An opening the gate could not use."""

    def prefetch(self, records: Sequence[bytes]) -> None:
        """A take's records, before the loop reaches them (to be opened ahead)."""

    def forget_ahead(self) -> None:
        """The take is done."""


class ReferenceTaker(Protocol):
    """Takes a sealed ledger's reference records (``processors.sealing.ReferenceSealer``):
    ``take`` when a record is taken (the record and its leaf's bytes; raises
    ``ValidationError`` or ``SealError``), ``complete`` before its block is written."""

    def take(self, data: bytes) -> tuple[Any, bytes]: ...

    def complete(self, blocks: Sequence[SealedBlock]) -> int: ...


@dataclass(frozen=True, slots=True)
class AdmittedBatch:
    """A batch record admitted: its chainable events (sharing ``events[0].batch``, whose
    ``skipped`` lists the refused ones) and those refused. ``events`` may be empty."""

    statement: BatchStatement
    events: list[ChainedEvent]
    refused: list[EventRefused]
    #: the broker's append time the key status was decided at
    appended_at: float


NOT_CANONICAL: Final = "EVENT_NOT_CANONICAL"


def _canonical(data: bytes) -> bool:
    """Is ``data`` a valid access event in its canonical form?"""
    try:
        return decode_and_canonicalize(data)[1] == data
    except ValidationError:
        return False


class SourceGate:
    def __init__(
        self,
        *,
        require_signatures: bool,
        load_registry: Callable[[], SourceRegistry] | None,
        max_skew_s: float = 900.0,
        refresh_interval_s: float = 5.0,
        seqs: SeqState | None = None,
        follower: RegistryFollower | None = None,
        registry_wait_s: float = 10.0,
    ) -> None:
        self.require_signatures = require_signatures
        self._load_registry = load_registry
        self.follower = follower
        self.registry_wait_s = registry_wait_s
        #: records appended up to this time are decided on the registry at hand (a
        #: wait for a fresher one timed out: the sources topic could not be read)
        self._decided_upto = float("-inf")
        self._verifier = BatchVerifier(SourceRegistry())
        self._loaded_at: float | None = None
        self.max_skew_s = max_skew_s
        self.refresh_interval_s = refresh_interval_s
        #: chained and pending sequence numbers (rebuilt from the store by the processor)
        self.seqs = seqs if seqs is not None else SeqState()
        self.quarantined = 0
        #: a sealed ledger's opener (ADR 0037): then batch records of sealed events are
        #: the only records admitted; None: sealed records are refused
        self.opener: BatchOpener | None = None
        #: and its reference sealer: then reference records are sealed (ADR 0037)
        self.reference_sealer: ReferenceTaker | None = None
        #: and its raw record sealer (the gateway's received bytes, ADR 0037)
        self.raw_sealer: ReferenceTaker | None = None
        #: a ledger in clear's worker checking batch records ahead of the loop (ADR 0042)
        self.ahead: OpenAhead | None = None
        #: events whose leaf hashes and validation came from that worker
        self.checked_ahead = 0

    @property
    def reading_ahead(self) -> OpenAhead | None:
        """The worker pool reading this gate's batch records ahead of the loop: the sealed
        ledger's opener's (ADR 0039) or the checking one of a ledger in clear (ADR 0042)."""
        if self.opener is not None:
            ahead = getattr(self.opener, "ahead", None)
            return ahead if isinstance(ahead, OpenAhead) else None
        return self.ahead

    def prefetch(self, records: Sequence[bytes]) -> None:
        """A take's events-topic records, handed to the worker as the take arrives."""
        if self.opener is not None:
            self.opener.prefetch(records)
        elif self.ahead is not None:
            self.ahead.submit(records)

    def forget_ahead(self) -> None:
        """The take is done: forget what the worker read and the loop did not ask for."""
        if self.opener is not None:
            self.opener.forget_ahead()
        elif self.ahead is not None:
            self.ahead.clear()

    @property
    def registry(self) -> SourceRegistry:
        if self.follower is not None:
            return self.follower.registry
        return self._verifier.registry

    def _sync_registry(self) -> None:
        """Use the follower's newest registry (swapped whole by its thread)."""
        if self.follower is not None:
            registry = self.follower.registry
            if self._verifier.registry is not registry:
                self._verifier.registry = registry
        elif self._loaded_at is None:
            self.refresh(force=True)

    def _renewed(self, appended_at: float, timestamp_type: int) -> bool:
        """An unknown key id: may a newer registry know it? With a follower: False if a
        read started after the record was appended (the key is really unknown), else
        ``RegistryStale``; without one, whether ``load_registry`` was called again. A
        producer's timestamp (CreateTime) is never waited for: its sender chooses it."""
        follower = self.follower
        if follower is None:
            return self.refresh()
        if (
            timestamp_type != LOG_APPEND_TIME
            or follower.fresh_for(appended_at)
            or appended_at <= self._decided_upto
        ):
            registry = follower.registry
            if self._verifier.registry is registry:
                return False
            self._verifier.registry = registry  # a read completed since this record began
            return True
        follower.request()
        raise RegistryStale(appended_at)

    def wait_for_registry(self, appended_at: float) -> bool:
        """Blocking (run it on a worker thread): wait until the follower has read the
        sources topic past ``appended_at``. On timeout, records appended until then
        are decided on the registry at hand. Returns whether the read came in time."""
        if self.follower is None:
            return True
        if self.follower.wait_fresh(appended_at, self.registry_wait_s):
            return True
        log.warning(
            "source registry not read within %.0f s; deciding on the keys known",
            self.registry_wait_s,
        )
        self._decided_upto = max(self._decided_upto, appended_at)
        return False

    @property
    def signature_checks(self) -> int:
        return self._verifier.signature_checks

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the registry; returns whether it was (re)loaded. With a follower:
        one incremental read on the caller's thread (not on an event loop)."""
        if self.follower is not None:
            if not self.follower.poll():
                return False
            self._verifier.registry = self.follower.registry
            return True
        if self._load_registry is None:
            return False
        now = time.monotonic()
        if (
            not force
            and self._loaded_at is not None
            and now - self._loaded_at < self.refresh_interval_s
        ):
            return False
        self._loaded_at = now
        try:
            registry = self._load_registry()
        except (KafkaException, CareledgerError, OSError) as exc:
            # the registry topic is unreachable or unreadable: keep what we have
            log.warning("cannot read the source registry: %s", type(exc).__name__)
            return False
        self._verifier.registry = registry
        log.info("source registry loaded: %d keys", len(registry))
        return True

    def admit(
        self,
        value: bytes,
        kafka_ts: float,
        where: tuple[str, int],
        timestamp_type: int = LOG_APPEND_TIME,
    ) -> Admitted:
        if self.opener is not None:
            raise SourceEnvelopeError(
                "a sealed ledger chains sealed events in batch records only (ADR 0037)"
            )
        if not looks_signed(value):
            event, canonical = decode_and_canonicalize(value)
            if self.require_signatures:
                raise SourceAuthError("event is not signed by a registered source", code="UNSIGNED")
            return Admitted(event, canonical, leaf_hash(canonical), None)
        event, canonical, att = decode_signed_event(value)
        leaf = leaf_hash(canonical)
        st = att.statement
        self._sync_registry()
        # 1. what the signature proves, whatever the key's status
        try:
            self._verifier.verify_batch(leaf, att)
        except SourceAuthError as exc:
            if exc.code != "UNKNOWN_KEY" or not self._renewed(kafka_ts, timestamp_type):
                raise
            self._verifier.verify_batch(leaf, att)  # the key may have been registered meanwhile
        # 2. a copy of a record already chained (or admitted from elsewhere)
        self.seqs.check(st.source_id, st.epoch, att.seq, where)
        # 3. time: only the broker's append time is not the signer's choice
        self._check_time(st, kafka_ts, timestamp_type)
        # 4. the key's status when the broker appended the record
        self._authorize(st, kafka_ts)
        self.seqs.admit(st.source_id, st.epoch, att.seq, where)
        return Admitted(event, canonical, leaf, att, kafka_ts)

    def admit_batch(
        self,
        value: bytes,
        kafka_ts: float,
        where: tuple[str, int],
        timestamp_type: int = LOG_APPEND_TIME,
        *,
        max_event_bytes: int = 65536,
    ) -> AdmittedBatch:
        """Admit a batch record (ADR 0020): the checks of ``admit`` once for the record,
        then each event. Raises ``ValidationError`` (dead-letter the record) or
        ``SourceAuthError`` (quarantine it) for the record as a whole."""
        # 1. what the signature proves: the events are the signed entries, the signature
        opened, ahead = self._open_record(value)
        st = opened.statement
        self._sync_registry()
        try:
            self._verifier.verify_signature(st, opened.signature)
        except SourceAuthError as exc:
            if exc.code != "UNKNOWN_KEY" or not self._renewed(kafka_ts, timestamp_type):
                raise
            self._verifier.verify_signature(st, opened.signature)
        # 2. replays: the whole range at once
        self.seqs.check_range(st.source_id, st.epoch, st.first_seq, st.last_seq, where)
        # 3. time, 4. the key's status at the broker's append time
        self._check_time(st, kafka_ts, timestamp_type)
        self._authorize(st, kafka_ts)
        # the events
        raw, leaves = opened.events, opened.leaf_hashes
        info = BatchInfo(st, opened.signature)
        offset = where[1]
        if self.opener is not None or opened.sealed:
            chained, refused = self._open_sealed(
                opened, info, offset, max_event_bytes, value, ahead
            )
        else:
            valid = ahead is not None and ahead[2]  # the checking worker's validation
            chained, refused = self._plain(info, offset, raw, leaves, max_event_bytes, valid)
        if chained:
            self.seqs.admit_range(st.source_id, st.epoch, st.first_seq, st.last_seq, where)
        return AdmittedBatch(st, chained, refused, kafka_ts)

    def _open_record(self, value: bytes) -> tuple[OpenedBatch, Any]:
        """The batch record opened: by the worker when it read it (a sealed ledger's,
        ADR 0039, or one in clear's, ADR 0042: its leaf hashes and root check taken, the
        loop only reads the record again), else here (``open_batch_record``); and the
        worker's answer, if used."""
        if self.opener is None:
            checked = self.ahead.checked(value) if self.ahead is not None else None
            if checked is not None:
                opened = self._read_checked(value, checked)
                if opened is not None:
                    return opened, checked
            return open_batch_record(value), None
        ahead = self.opener.ahead_of(value)
        if ahead is not None:
            try:
                return read_opened_batch_record(value, ahead[2]), ahead
            except SourceEnvelopeError:
                self.opener.disagreed()
        return open_batch_record(value), None

    def _read_checked(self, value: bytes, checked: CheckResult) -> OpenedBatch | None:
        """The record read again with the checking worker's leaf hashes, when the answer
        is about these bytes (their SHA-256); one event, drawn at random, has its leaf
        hash recomputed here and, when the worker found them all valid, is validated here
        too. None (the loop opens the record itself): an answer that does not fit."""
        assert self.ahead is not None
        digest, leaves, valid = checked
        opened = None
        if hashlib.sha256(value).digest() == digest:
            with contextlib.suppress(SourceEnvelopeError):  # does not fit: opened here
                opened = read_checked_batch_record(value, leaves)
        if opened is not None and opened.events:
            spot = secrets.randbelow(len(opened.events))
            data = opened.events[spot]
            if opened.leaf_hashes[spot] != leaf_hash(data) or (valid and not _canonical(data)):
                opened = None
        if opened is None:
            self.ahead.disagreements += 1
        return opened

    def _plain(
        self,
        info: BatchInfo,
        offset: int,
        raw: Sequence[bytes],
        leaves: Sequence[bytes],
        max_event_bytes: int,
        valid: bool = False,
    ) -> tuple[list[ChainedEvent], list[EventRefused]]:
        """The events of a batch record in clear: in one decode when all are valid.
        ``valid``: the checking worker validated every event in full from these bytes
        (ADR 0042); then only their stored columns are read here (``verify`` validates
        every stored event again)."""
        if valid and max(map(len, raw)) <= max_event_bytes:  # the loop's limit counts
            columns = read_access_columns(raw)
            if columns is not None:
                self.checked_ahead += len(columns)
                return [
                    ChainedEvent(offset, ev, data, leaf, None, info, i)
                    for i, (ev, data, leaf) in enumerate(zip(columns, raw, leaves, strict=True))
                ], []
            assert self.ahead is not None
            self.ahead.disagreements += 1
        decoded = decode_canonical_events(raw) if max(map(len, raw)) <= max_event_bytes else None
        if decoded is None:
            return self._one_by_one(info, offset, raw, leaves, max_event_bytes)
        # the usual case: every event valid and canonical
        chained = [
            ChainedEvent(offset, ev, data, leaf, None, info, i)
            for i, (ev, data, leaf) in enumerate(zip(decoded, raw, leaves, strict=True))
        ]
        return chained, []

    def _open_sealed(
        self,
        opened: OpenedBatch,
        info: BatchInfo,
        offset: int,
        max_event_bytes: int,
        record: bytes,
        ahead: Any = None,
    ) -> tuple[list[ChainedEvent], list[EventRefused]]:
        """A batch record of sealed events (ADR 0037), opened by the sealed ledger's
        opener. A ledger that is not sealed refuses it whole, and a sealed one a record
        whose events are not sealed: neither may end up in the other's table."""
        if self.opener is None:
            raise SourceEnvelopeError(
                "sealed events, but this ledger is not sealed (seal_events is off)"
            )
        if not (opened.sealed or opened.sealed_ahead):
            raise SourceEnvelopeError(
                "events in clear, but this ledger is sealed: sources must seal to the ingest "
                "key (ingest_public_key, ADR 0037)"
            )
        chained, refusals = self.opener.open_batch(
            info,
            offset,
            opened.events,
            opened.leaf_hashes,
            opened.sealed,
            opened.sealed_key,
            max_event_bytes,
            record=record,
            ahead=ahead,
            asked=self.opener is not None,  # ``_open_record`` asked the worker
        )
        return chained, [EventRefused(*r) for r in refusals]

    @staticmethod
    def _one_by_one(
        info: BatchInfo,
        offset: int,
        raw: Sequence[bytes],
        leaves: Sequence[bytes],
        max_event_bytes: int,
    ) -> tuple[list[ChainedEvent], list[EventRefused]]:
        """Each event of a batch on its own: which can be chained, which are refused."""
        chained: list[ChainedEvent] = []
        refused: list[EventRefused] = []
        for i, data in enumerate(raw):
            if len(data) > max_event_bytes:
                refused.append(
                    EventRefused(
                        i,
                        data,
                        "EVENT_TOO_LARGE",
                        f"event of {len(data)} bytes exceeds the limit of {max_event_bytes}",
                        "$",
                    )
                )
                continue
            try:
                event, canonical = decode_and_canonicalize(data)
            except ValidationError as exc:
                refused.append(
                    EventRefused(i, data, exc.code, str(exc), getattr(exc, "field", "$"))
                )
                continue
            if canonical != data:
                refused.append(
                    EventRefused(
                        i,
                        data,
                        NOT_CANONICAL,
                        "the event's bytes in the batch record are not its canonical "
                        "(RFC 8785) form; the signed leaf hash binds these bytes",
                        "$",
                    )
                )
                continue
            chained.append(ChainedEvent(offset, event, data, leaves[i], None, info, i))
        if refused and chained:
            skipped = BatchInfo(
                info.statement, info.signature, tuple((r.index, leaves[r.index]) for r in refused)
            )
            chained = [dataclasses.replace(ev, batch=skipped) for ev in chained]
        return chained, refused

    def _check_time(self, st: BatchStatement, kafka_ts: float, timestamp_type: int) -> None:
        """Only the broker's append time is not the signer's choice (ADR 0015)."""
        if timestamp_type != LOG_APPEND_TIME:
            raise SourceAuthError(
                "the record's Kafka timestamp is the producer's (CreateTime): the events "
                "topic must use message.timestamp.type=LogAppendTime",
                code="UNTRUSTED_TIME",
                details={"source_id": st.source_id, "key_id": st.key_id},
            )
        skew = abs(seconds_of(st.signed_at) - kafka_ts)
        if skew > self.max_skew_s:
            raise SourceAuthError(
                f"batch signed {skew:.0f} s away from the broker's append time",
                code="SIGNED_AT_SKEW",
                details={
                    "source_id": st.source_id,
                    "key_id": st.key_id,
                    "max_skew_s": self.max_skew_s,
                },
            )

    def _authorize(self, st: BatchStatement, kafka_ts: float) -> None:
        """The key's status when the broker appended the record."""
        at = timestamp_of(kafka_ts)
        try:
            self._verifier.authorize(st, at)
        except SourceAuthError as exc:
            # the time is the broker's (``_check_time`` ran first)
            if exc.code != "UNKNOWN_KEY" or not self._renewed(kafka_ts, LOG_APPEND_TIME):
                raise
            self._verifier.authorize(st, at)


def processor_key_problem(
    registry: SourceRegistry, origin: str, key_id: str, at: str
) -> str | None:
    """Why the processor must not sign with ``key_id`` now, or None (ADR 0015).

    Once the log's processor keys are registered (``careledger keygen
    --rotate-processor``), only the current one may sign: a retired key signing new
    blocks is what ``verify`` reports as ``BLOCK_KEY_NOT_CURRENT``. With no processor key
    registered (a log that never rotated) any key the verifiers trust may sign.
    """
    identity = processor_source_id(origin)
    registered = registry.keys_of(identity)
    if not registered:
        return None
    setting = "set CARELEDGER_SIGNING_KEY (signing_key) to the current processor key"
    if key_id not in registered:
        return (
            f"signing key {key_id} is not a registered processor key of {origin} "
            f"(registered: {', '.join(registered)}); {setting}"
        )
    try:
        registry.authorize(identity, key_id, at)
    except SourceAuthError as exc:
        status = "retired" if exc.code == "REVOKED_KEY" else "not yet valid"
        return f"signing key {key_id} is {status} (ledgered key rotation); {setting}"
    return None
