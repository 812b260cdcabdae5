"""Reading the sources topic (ADR 0010): the registry, heartbeats and key summaries.

Reading (``read_registry``, ``read_heartbeats``) goes from the beginning of every
partition to its end *as of the call* (watermarks, ``assign``; no consumer group, no
commits). Every key event is checked with ``verify_key_event`` against the registrar
keys the caller trusts (``Settings.trusted_registrar_keys``, never the topic itself):
one that does not verify is skipped and reported as a :class:`SourceProblem`, never
applied. A key id belongs to the first source that registered it. Every reader names
the Kafka ``principal`` it logs in as (``careledger.kafka.security``): the caller's own
(the processor, the registrar's CLI, the decision point...).

Also the time helpers (``utc_now``, ``parse_time``) and the trusted registrar keys
(``load_registrar_keys``) the rest of ``careledger.sources`` shares.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.keys import load_public_keys
from careledger_core.errors import CareledgerError, InfrastructureError, ValidationError
from careledger_core.reference import (
    ReferenceRecord,
    SourceHeartbeatBody,
    SourceKeyBody,
    decode_reference,
)
from careledger_core.signing import PublicKey
from careledger_core.source import (
    HeartbeatStatement,
    KeyEventStatement,
    SourceAuthError,
    SourceRegistry,
    verify_heartbeat,
    verify_key_event,
)

_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
READ_TIMEOUT_S = 30.0


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime(_TS_FORMAT)


def parse_time(text: str) -> str:
    """``now`` or an ISO 8601 instant with a zone (``Z`` or an offset), as an event
    timestamp ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC."""
    if text.strip().lower() == "now":
        return utc_now()
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValidationError(f"not an ISO 8601 time: {text!r}") from exc
    if moment.tzinfo is None:
        raise ValidationError(f"time {text!r} needs a zone (e.g. a trailing Z for UTC)")
    return moment.astimezone(dt.UTC).strftime(_TS_FORMAT)


def load_registrar_keys(settings: Settings) -> dict[str, PublicKey]:
    """The registrar public keys trusted for key events, by key id (from
    ``trusted_registrar_keys``: files or ``ed25519:<base64>`` literals, like
    ``trusted_keys``). Empty when none is configured."""
    return {k.key_id: k for k in load_public_keys(settings.trusted_registrar_keys)}


# --------------------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True, slots=True)
class SourceProblem:
    """A record of the sources topic that was skipped (never applied)."""

    partition: int
    offset: int
    code: str  # e.g. UNKNOWN_REGISTRAR, BAD_SIGNATURE, REFERENCE_INVALID, KEY_ID_TAKEN
    message: str
    kind: str | None = None
    record_id: str | None = None

    def __str__(self) -> str:
        what = f"{self.kind} {self.record_id}" if self.record_id else "record"
        return f"{self.code}: {what} at partition {self.partition} offset {self.offset}: " + (
            self.message
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class KeyEventRecord:
    """A verified key event as read from the topic."""

    record: ReferenceRecord
    statement: KeyEventStatement
    signature: str
    partition: int
    offset: int


@dataclasses.dataclass(frozen=True, slots=True)
class ReceivedHeartbeat:
    """A heartbeat as read from the topic (verified when read with ``read_heartbeats``)."""

    statement: HeartbeatStatement
    signature: str
    partition: int
    offset: int


@dataclasses.dataclass(slots=True)
class SourcesSnapshot:
    """Everything on the sources topic up to its end at the time of reading."""

    registry: SourceRegistry
    key_events: list[KeyEventRecord]
    heartbeats: list[ReceivedHeartbeat]  # not verified
    problems: list[SourceProblem]  # malformed records and key events that do not verify
    #: highest version of every well-formed ``source-key`` record id, verified or not
    versions: dict[str, int]


def _read_topic(
    settings: Settings, topic: str, timeout: float = READ_TIMEOUT_S, *, principal: str
) -> list[tuple[int, int, bytes | None]]:
    """(partition, offset, value) of every record from the beginning to the end as of
    the call, partition by partition in offset order."""
    return read_topic_from(settings, topic, {}, timeout, principal=principal)[0]


def read_topic_from(
    settings: Settings,
    topic: str,
    start: Mapping[int, int],
    timeout: float = READ_TIMEOUT_S,
    keep: Callable[[int, int, bytes | None], bool] | None = None,
    *,
    principal: str,
) -> tuple[list[tuple[int, int, bytes | None]], dict[int, int]]:
    """The records of ``topic`` from ``start`` (next offset per partition; the beginning
    where absent or no longer in Kafka) to its end as of the call, and that end per
    partition (where an incremental reader resumes next time), read as the Kafka
    ``principal``. With ``keep``, only the records it keeps are returned (the others
    are never held)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from careledger.kafka.offsets import watermark_offsets

    try:
        consumer = Consumer(
            kafka_config(
                settings,
                principal,
                {
                    # required by the client, never joined (assign) nor committed
                    "group.id": f"careledger-sources-reader-{uuid.uuid4().hex[:8]}",
                    "client.id": "careledger-sources-reader",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                    "enable.partition.eof": False,
                },
            )
        )
    except KafkaException as exc:
        raise InfrastructureError(f"cannot create Kafka consumer: {exc}", code="KAFKA") from exc
    deadline = time.monotonic() + timeout
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=timeout)
        except KafkaException as exc:
            raise InfrastructureError(
                f"cannot read topic {topic}: {exc}", code="KAFKA_UNAVAILABLE"
            ) from exc
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise InfrastructureError(
                f"topic {topic} does not exist (run `careledger up` to create the topics)",
                code="KAFKA_TOPIC_MISSING",
            )
        ends: dict[int, int] = {}
        position: dict[int, int] = {}
        reached: dict[int, int] = {}
        for partition in sorted(info.partitions):
            try:
                low, high = watermark_offsets(consumer, TopicPartition(topic, partition), deadline)
            except KafkaException as exc:
                raise InfrastructureError(
                    f"cannot read the offsets of {topic}: {exc}", code="KAFKA_UNAVAILABLE"
                ) from exc
            resume = start.get(partition, 0)
            low = max(low, resume if resume <= high else 0)  # beyond the end: recreated
            reached[partition] = high
            if high > low:
                ends[partition] = high
                position[partition] = low
        if not ends:
            return [], reached
        consumer.assign([TopicPartition(topic, p, position[p]) for p in sorted(ends)])
        records: list[tuple[int, int, bytes | None]] = []
        while any(position[p] < ends[p] for p in ends):
            if time.monotonic() > deadline:
                raise InfrastructureError(
                    f"timed out reading {topic} to its end after {timeout:g} s",
                    code="KAFKA_TIMEOUT",
                )
            batch = consumer.consume(num_messages=1000, timeout=0.5)
            if not batch:
                # control records (transactions) leave offsets no message carries
                for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                    if tp.offset >= 0:
                        position[tp.partition] = max(position[tp.partition], tp.offset)
                continue
            for m in batch:
                err = m.error()
                if err is not None:
                    raise InfrastructureError(
                        f"error reading {topic}: {err.str()}", code="KAFKA_CONSUME"
                    )
                p, off = int(m.partition() or 0), int(m.offset() or 0)
                if p not in ends or off >= ends[p]:
                    continue
                position[p] = off + 1
                value = m.value()
                if keep is None or keep(p, off, value):
                    records.append((p, off, value))
        records.sort(key=lambda r: (r[0], r[1]))
        return records, reached
    finally:
        consumer.close()


def read_sources(
    settings: Settings,
    registrars: Mapping[str, PublicKey],
    *,
    principal: str,
    timeout: float = READ_TIMEOUT_S,
) -> SourcesSnapshot:
    """Read the sources topic to its current end (as the Kafka ``principal``); apply the
    key events that verify against ``registrars`` (in topic order); report the others."""
    registry = SourceRegistry()
    snapshot = SourcesSnapshot(registry, [], [], [], {})
    owners: dict[str, str] = {}
    records = _read_topic(settings, settings.topic_sources, timeout, principal=principal)
    for partition, offset, value in records:
        try:
            if value is None:
                raise ValidationError("empty record (a tombstone)", code="REFERENCE_INVALID")
            record = decode_reference(value)
        except CareledgerError as exc:
            snapshot.problems.append(SourceProblem(partition, offset, exc.code, exc.message))
            continue
        body = record.parsed
        if isinstance(body, SourceHeartbeatBody):
            snapshot.heartbeats.append(
                ReceivedHeartbeat(body.statement, body.signature, partition, offset)
            )
            continue
        if not isinstance(body, SourceKeyBody):
            snapshot.problems.append(
                SourceProblem(
                    partition,
                    offset,
                    "WRONG_KIND",
                    "only source-key and source-heartbeat records belong on this topic",
                    record.kind,
                    record.record_id,
                )
            )
            continue
        rid = record.record_id
        snapshot.versions[rid] = max(snapshot.versions.get(rid, 0), record.version)
        st = body.statement
        try:
            verify_key_event(st, body.signature, registrars)
        except SourceAuthError as exc:
            snapshot.problems.append(
                SourceProblem(partition, offset, exc.code, exc.message, record.kind, rid)
            )
            continue
        owner = owners.setdefault(st.key_id, st.source_id)
        if owner != st.source_id:
            snapshot.problems.append(
                SourceProblem(
                    partition,
                    offset,
                    "KEY_ID_TAKEN",
                    "the key is registered to another source; ignored",
                    record.kind,
                    rid,
                )
            )
            continue
        registry.apply(st)
        snapshot.key_events.append(KeyEventRecord(record, st, body.signature, partition, offset))
    return snapshot


def read_registry(
    settings: Settings,
    registrars: Mapping[str, PublicKey],
    *,
    principal: str,
    timeout: float = READ_TIMEOUT_S,
) -> tuple[SourceRegistry, list[SourceProblem]]:
    """The source registry from the sources topic (heartbeats ignored) and the records
    that were skipped: malformed ones and key events that do not verify."""
    snapshot = read_sources(settings, registrars, principal=principal, timeout=timeout)
    return snapshot.registry, snapshot.problems


def read_heartbeats(
    settings: Settings,
    registrars: Mapping[str, PublicKey],
    *,
    principal: str,
    timeout: float = READ_TIMEOUT_S,
) -> tuple[list[ReceivedHeartbeat], list[SourceProblem]]:
    """The heartbeats on the sources topic whose signature verifies with a key that may
    sign for their source at their ``sent_at`` (registry read from the same topic);
    the others are skipped and reported."""
    snapshot = read_sources(settings, registrars, principal=principal, timeout=timeout)
    good: list[ReceivedHeartbeat] = []
    problems: list[SourceProblem] = []
    for hb in snapshot.heartbeats:
        st = hb.statement
        try:
            key = snapshot.registry.authorize(st.source_id, st.key_id, st.sent_at)
            verify_heartbeat(st, hb.signature, key)
        except SourceAuthError as exc:
            problems.append(
                SourceProblem(
                    hb.partition,
                    hb.offset,
                    exc.code,
                    exc.message,
                    "source-heartbeat",
                    f"{st.source_id}/{st.epoch}/{st.beat}",
                )
            )
            continue
        good.append(hb)
    return good, problems


# --------------------------------------------------------------------------- summaries


@dataclasses.dataclass(frozen=True, slots=True)
class KeySummary:
    """One registered key as the verified key events describe it."""

    source_id: str
    key_id: str
    public_key: str  # base64 of the 32 raw bytes
    signs_for: tuple[str, ...]
    history: tuple[tuple[str, str], ...]  # (valid_from, status), in time order
    version: int  # highest verified version of its record

    def status_at(self, at: str) -> Literal["active", "revoked", "pending"]:
        status: str | None = None
        for valid_from, s in self.history:
            if valid_from > at:
                break
            status = s
        if status is None:
            return "pending"
        return "active" if status == "active" else "revoked"

    @property
    def valid_from(self) -> str | None:
        """When the key first became active."""
        return next((t for t, s in self.history if s == "active"), None)

    @property
    def revoked_at(self) -> str | None:
        """From when the key is revoked (the last revocation not followed by a
        re-activation), if it is."""
        if self.history and self.history[-1][1] == "revoked":
            t = self.history[-1][0]
            for valid_from, s in reversed(self.history):
                if s != "revoked":
                    break
                t = valid_from
            return t
        return None

    def to_dict(self, at: str) -> dict[str, Any]:
        return {
            "source_id": self.source_id,
            "key_id": self.key_id,
            "public_key": "ed25519:" + self.public_key,
            "status": self.status_at(at),
            "valid_from": self.valid_from,
            "revoked_at": self.revoked_at,
            "signs_for": list(self.signs_for),
            "history": [{"valid_from": t, "status": s} for t, s in self.history],
            "version": self.version,
        }


def summarize_keys(events: Sequence[KeyEventRecord]) -> list[KeySummary]:
    """One summary per key, from verified key events (same rules as ``SourceRegistry``:
    histories merge, ``signs_for`` only grows, a key id stays with its first source)."""
    keys: dict[str, KeySummary] = {}
    for e in events:
        st = e.statement
        old = keys.get(st.key_id)
        if old is not None and old.source_id != st.source_id:
            continue
        history = tuple(sorted({*(old.history if old else ()), (st.valid_from, st.status)}))
        signs_for = tuple(sorted({*(old.signs_for if old else ()), *st.signs_for}))
        version = max(old.version if old else 0, e.record.version)
        keys[st.key_id] = KeySummary(
            st.source_id, st.key_id, st.public_key, signs_for, history, version
        )
    return sorted(keys.values(), key=lambda k: (k.source_id, k.valid_from or "", k.key_id))
