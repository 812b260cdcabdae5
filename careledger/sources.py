"""Source identity on Kafka (ADR 0010): the registry topic, key events, ``careledger source``.

The *sources topic* (``Settings.topic_sources``) holds reference records of two kinds:

* ``source-key`` (``record_id = <source_id>/<key_id>``): a registrar-signed key event
  registering (``active``) or revoking a source's key from ``valid_from`` on. Version 1
  is the registration; each later change of the same key is the next version.
* ``source-heartbeat`` (``record_id = <source_id>/<epoch>/<beat>``): a source-signed
  "alive, sent up to ``last_seq``", produced by the SDK.

Reading (``read_registry``, ``read_heartbeats``) goes from the beginning of every
partition to its end *as of the call* (watermarks, ``assign``; no consumer group, no
commits). Every key event is checked with ``verify_key_event`` against the registrar
keys the caller trusts (``Settings.trusted_registrar_keys``, never the topic itself):
one that does not verify is skipped and reported as a :class:`SourceProblem`, never
applied. A key id belongs to the first source that registered it.

CLI (``careledger source``): ``keygen`` (a source's Ed25519 key, mode 0600), ``register``
and ``revoke`` (signed with ``Settings.registrar_key``), ``list`` (the registry as read
from Kafka). Private keys are never printed or logged.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from careledger.config import Settings
from careledger.keys import (
    REGISTRAR_KEY_TEXT_ENV,
    KeyFileError,
    load_public_keys,
    load_registrar_key,
    load_source_key,
    write_keypair,
)
from careledger_core.errors import CareledgerError, InfrastructureError, ValidationError
from careledger_core.event import MAX_ID_LENGTH
from careledger_core.reference import (
    ReferenceRecord,
    SourceHeartbeatBody,
    SourceKeyBody,
    canonical_reference_bytes,
    decode_reference,
)
from careledger_core.signing import PublicKey, SigningKey, format_public_key
from careledger_core.source import (
    HeartbeatStatement,
    KeyEventStatement,
    SourceAuthError,
    SourceRegistry,
    sign_key_event,
    verify_heartbeat,
    verify_key_event,
)

log = logging.getLogger("careledger.sources")

__all__ = [
    "KeyEventRecord",
    "KeySummary",
    "ReceivedHeartbeat",
    "SourceProblem",
    "SourcesSnapshot",
    "ensure_local_source",
    "load_registrar_keys",
    "publish_key_event",
    "read_heartbeats",
    "read_registry",
    "read_sources",
    "register_key",
    "revoke_key",
    "summarize_keys",
]

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
    settings: Settings, topic: str, timeout: float = READ_TIMEOUT_S
) -> list[tuple[int, int, bytes | None]]:
    """(partition, offset, value) of every record from the beginning to the end as of
    the call, partition by partition in offset order."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    try:
        consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                # required by the client, never joined (assign) nor committed
                "group.id": f"careledger-sources-reader-{uuid.uuid4().hex[:8]}",
                "client.id": "careledger-sources-reader",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
            }
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
        for partition in sorted(info.partitions):
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=max(deadline - time.monotonic(), 1.0)
                )
            except KafkaException as exc:
                raise InfrastructureError(
                    f"cannot read the offsets of {topic}: {exc}", code="KAFKA_UNAVAILABLE"
                ) from exc
            if high > low:
                ends[partition] = high
                position[partition] = low
        if not ends:
            return []
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
                records.append((p, off, m.value()))
        records.sort(key=lambda r: (r[0], r[1]))
        return records
    finally:
        consumer.close()


def read_sources(
    settings: Settings, registrars: Mapping[str, PublicKey], *, timeout: float = READ_TIMEOUT_S
) -> SourcesSnapshot:
    """Read the sources topic to its current end; apply the key events that verify
    against ``registrars`` (in topic order); report the others."""
    registry = SourceRegistry()
    snapshot = SourcesSnapshot(registry, [], [], [], {})
    owners: dict[str, str] = {}
    for partition, offset, value in _read_topic(settings, settings.topic_sources, timeout):
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
    timeout: float = READ_TIMEOUT_S,
) -> tuple[SourceRegistry, list[SourceProblem]]:
    """The source registry from the sources topic (heartbeats ignored) and the records
    that were skipped: malformed ones and key events that do not verify."""
    snapshot = read_sources(settings, registrars, timeout=timeout)
    return snapshot.registry, snapshot.problems


def read_heartbeats(
    settings: Settings,
    registrars: Mapping[str, PublicKey],
    *,
    timeout: float = READ_TIMEOUT_S,
) -> tuple[list[ReceivedHeartbeat], list[SourceProblem]]:
    """The heartbeats on the sources topic whose signature verifies with a key that may
    sign for their source at their ``sent_at`` (registry read from the same topic);
    the others are skipped and reported."""
    snapshot = read_sources(settings, registrars, timeout=timeout)
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


# --------------------------------------------------------------------------- writing


def _key_record(statement: KeyEventStatement, signature: str, version: int) -> ReferenceRecord:
    return ReferenceRecord(
        kind="source-key",
        record_id=f"{statement.source_id}/{statement.key_id}",
        version=version,
        recorded_at=utc_now(),
        effective_at=statement.valid_from,
        body={"statement": msgspec.to_builtins(statement), "signature": signature},
    )


def publish_key_event(
    settings: Settings,
    registrar_key: SigningKey,
    statement: KeyEventStatement,
    *,
    timeout: float = READ_TIMEOUT_S,
) -> ReferenceRecord:
    """Sign ``statement`` with the registrar key and produce it to the sources topic as
    a ``source-key`` reference record (keyed by source id), waiting for Kafka's
    acknowledgement. Its version is 1 for a key never seen on the topic, else one more
    than the highest there. Raises ``DeliveryError`` if Kafka does not acknowledge."""
    from careledger.kafka.producer import AccessEventProducer

    signature = sign_key_event(registrar_key, statement)
    snapshot = read_sources(settings, {}, timeout=timeout)
    record_id = f"{statement.source_id}/{statement.key_id}"
    record = _key_record(statement, signature, snapshot.versions.get(record_id, 0) + 1)
    producer = AccessEventProducer(settings, topic=settings.topic_sources, sign=False)
    producer.send_raw(canonical_reference_bytes(record), statement.source_id.encode())
    producer.close(timeout)
    log.info(
        "published %s key event for source %s key %s (version %d)",
        statement.status,
        statement.source_id,
        statement.key_id,
        record.version,
    )
    return record


def _public_b64(key: PublicKey) -> str:
    return base64.b64encode(key.raw).decode("ascii")


def register_key(
    settings: Settings,
    registrar_key: SigningKey,
    source_id: str,
    public_key: PublicKey,
    *,
    signs_for: Sequence[str] = (),
    valid_from: str | None = None,
) -> ReferenceRecord:
    """Register ``public_key`` for ``source_id`` (active from ``valid_from``, default now)."""
    statement = msgspec.convert(
        {
            "source_id": source_id,
            "key_id": public_key.key_id,
            "public_key": _public_b64(public_key),
            "status": "active",
            "valid_from": valid_from or utc_now(),
            "signs_for": list(signs_for),
            "registrar_key_id": registrar_key.key_id,
        },
        KeyEventStatement,
    )
    return publish_key_event(settings, registrar_key, statement)


def revoke_key(
    settings: Settings, registrar_key: SigningKey, key: KeySummary, at: str | None = None
) -> ReferenceRecord:
    """Revoke a registered key from ``at`` on (default now)."""
    statement = KeyEventStatement(
        source_id=key.source_id,
        key_id=key.key_id,
        public_key=key.public_key,
        status="revoked",
        valid_from=at or utc_now(),
        signs_for=key.signs_for,
        registrar_key_id=registrar_key.key_id,
    )
    return publish_key_event(settings, registrar_key, statement)


def ensure_local_source(settings: Settings, say: Any = print) -> Settings:
    """Local tooling (the demo): a registrar key and a source key for
    ``settings.source_id`` (created, mode 0600, if missing; defaults under
    ``<run_dir>/keys``), the registrar trusted, and the source key registered on the
    sources topic if it is not yet. Returns the settings that use them."""
    keys = settings.keys_dir
    registrar_path = settings.registrar_key or keys / "registrar.key"
    source_path = settings.source_key or keys / "source.key"
    for path, what in ((registrar_path, "registrar key"), (source_path, "source key")):
        if not path.exists():
            write_keypair(path)
            say(f"== created {what} {path} (public key {path}.pub)")
    trusted = settings.trusted_registrar_keys or (f"{registrar_path}.pub",)
    s = settings.replace(
        registrar_key=registrar_path, source_key=source_path, trusted_registrar_keys=trusted
    )
    registrar = load_registrar_key(s)
    source_key = load_source_key(s)
    assert source_key is not None
    registrars = load_registrar_keys(s)
    if registrar.key_id not in registrars:
        raise KeyFileError(
            f"registrar key {registrar.key_id} is not among trusted_registrar_keys: "
            "its registrations would be ignored"
        )
    registry, _problems = read_registry(s, registrars)
    try:
        registry.authorize(s.source_id, source_key.key_id, utc_now())
    except SourceAuthError as exc:
        if exc.code != "UNKNOWN_KEY":
            raise KeyFileError(
                f"source key {source_key.key_id} cannot sign for {s.source_id} ({exc.code}): "
                "create a new one with `careledger source keygen` and register it"
            ) from exc
        register_key(s, registrar, s.source_id, source_key.public_key)
        say(f"== registered source {s.source_id} key {source_key.key_id}")
    return s


# --------------------------------------------------------------------------- CLI


def _source_id(text: str) -> str:
    if not 1 <= len(text) <= MAX_ID_LENGTH or text != text.strip():
        raise argparse.ArgumentTypeError(f"a source id has 1..{MAX_ID_LENGTH} characters")
    return text


def _time_arg(text: str) -> str:
    try:
        return parse_time(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc


def _source_list(text: str) -> list[str]:
    return [_source_id(p.strip()) for p in text.split(",") if p.strip()]


def configure_source(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source_command", metavar="ACTION", required=True)
    p = sub.add_parser("keygen", help="write a new Ed25519 key pair for a source (mode 600)")
    p.add_argument("--source-id", type=_source_id, required=True)
    p.add_argument("--out", type=Path, help="private key path (default <run_dir>/keys/sources/)")
    p.add_argument("--force", action="store_true", help="overwrite an existing key")

    p = sub.add_parser("register", help="register a source's public key (registrar-signed)")
    p.add_argument("--source-id", type=_source_id, required=True)
    p.add_argument(
        "--public-key", required=True, help="the .pub file or an ed25519:<base64> literal"
    )
    p.add_argument(
        "--signs-for",
        type=_source_list,
        default=[],
        help="comma-separated sources this key may sign for (a gateway)",
    )
    p.add_argument("--valid-from", type=_time_arg, help="ISO 8601 instant (default now)")
    p.add_argument(
        "--init-registrar",
        action="store_true",
        help="create the registrar key (Settings.registrar_key, default "
        "<run_dir>/keys/registrar.key) if it does not exist",
    )

    p = sub.add_parser("revoke", help="revoke a source's key from a time on")
    p.add_argument("--source-id", type=_source_id, required=True)
    p.add_argument("--key-id", required=True)
    p.add_argument("--at", type=_time_arg, help="ISO 8601 instant (default now)")

    p = sub.add_parser("list", help="the source registry as read from Kafka")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--at", type=_time_arg, help="status as of this instant (default now)")


def _err(message: str) -> None:
    print(f"careledger source: {message}", file=sys.stderr)


def _safe_name(source_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", source_id)


def _keygen(args: argparse.Namespace, settings: Settings) -> int:
    path: Path = args.out or settings.keys_dir / "sources" / f"{_safe_name(args.source_id)}.key"
    try:
        key = write_keypair(path, overwrite=args.force)
    except KeyFileError as exc:
        _err(str(exc))
        return 2
    print(f"source: {args.source_id}")
    print(f"private key: {path} (mode 600)")
    print(f"public key file: {path}.pub")
    print(f"public key: {format_public_key(key.public_key)}")
    print(f"key id: {key.key_id}")
    print(
        f"register it: careledger source register --source-id {args.source_id} "
        f"--public-key {path}.pub"
    )
    return 0


def _registrar(settings: Settings, init: bool) -> tuple[SigningKey, Settings]:
    path = settings.registrar_key
    if init and not os.environ.get(REGISTRAR_KEY_TEXT_ENV):
        path = path or settings.keys_dir / "registrar.key"
        if not path.exists():
            write_keypair(path)
            print(f"created registrar key {path} (mode 600), public key {path}.pub")
            print(
                f"  trust it everywhere: CARELEDGER_TRUSTED_REGISTRAR_KEYS={path}.pub; "
                f"sign with it: CARELEDGER_REGISTRAR_KEY={path}"
            )
        settings = settings.replace(registrar_key=path)
    elif not os.environ.get(REGISTRAR_KEY_TEXT_ENV):
        if path is None:
            raise KeyFileError(
                "no registrar key configured: set CARELEDGER_REGISTRAR_KEY "
                "(or pass --init-registrar to create one)"
            )
        if not path.exists():
            raise KeyFileError(
                f"registrar key {path} does not exist (pass --init-registrar to create it)"
            )
    return load_registrar_key(settings), settings


def _trusting(settings: Settings, registrar: SigningKey) -> dict[str, PublicKey]:
    registrars = load_registrar_keys(settings)
    if registrar.key_id not in registrars:
        _err(
            f"warning: registrar key {registrar.key_id} is not in trusted_registrar_keys; "
            "processors and verifiers configured like this ignore its key events"
        )
    return {**registrars, registrar.key_id: registrar.public_key}


def _register(args: argparse.Namespace, settings: Settings) -> int:
    try:
        keys = load_public_keys([args.public_key])
    except (CareledgerError, OSError) as exc:
        _err(f"cannot read the public key: {exc}")
        return 2
    if len(keys) != 1:
        _err(f"expected one public key in {args.public_key}, found {len(keys)}")
        return 2
    public_key = keys[0]
    registrar, settings = _registrar(settings, args.init_registrar)
    snapshot = read_sources(settings, _trusting(settings, registrar))
    for key in summarize_keys(snapshot.key_events):
        if key.key_id != public_key.key_id:
            continue
        if key.source_id != args.source_id:
            _err(f"key {key.key_id} is already registered to another source ({key.source_id})")
            return 2
        valid_from = args.valid_from or utc_now()
        if key.status_at(valid_from) == "active" and set(args.signs_for) <= set(key.signs_for):
            print(f"key {key.key_id} of source {key.source_id} is already active")
            return 0
    record = register_key(
        settings,
        registrar,
        args.source_id,
        public_key,
        signs_for=args.signs_for,
        valid_from=args.valid_from,
    )
    st = _statement(record)
    extra = f", signs for {', '.join(st.signs_for)}" if st.signs_for else ""
    print(
        f"registered key {st.key_id} for source {st.source_id} from {st.valid_from}"
        f"{extra} (version {record.version}, registrar {registrar.key_id})"
    )
    return 0


def _statement(record: ReferenceRecord) -> KeyEventStatement:
    assert isinstance(record.parsed, SourceKeyBody)
    return record.parsed.statement


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    registrar, settings = _registrar(settings, False)
    snapshot = read_sources(settings, _trusting(settings, registrar))
    found = [
        k
        for k in summarize_keys(snapshot.key_events)
        if k.source_id == args.source_id and k.key_id == args.key_id
    ]
    if not found:
        _err(f"source {args.source_id} has no registered key {args.key_id}")
        return 2
    record = revoke_key(settings, registrar, found[0], args.at)
    st = _statement(record)
    print(
        f"revoked key {st.key_id} of source {st.source_id} from {st.valid_from} "
        f"(version {record.version})"
    )
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    registrars = load_registrar_keys(settings)
    if not registrars:
        _err(
            "no trusted registrar keys configured (CARELEDGER_TRUSTED_REGISTRAR_KEYS): "
            "no key event can be verified"
        )
        return 2
    snapshot = read_sources(settings, registrars)
    at = args.at or utc_now()
    keys = summarize_keys(snapshot.key_events)
    if args.json:
        doc = {
            "at": at,
            "keys": [k.to_dict(at) for k in keys],
            "heartbeats": len(snapshot.heartbeats),
            "problems": [p.to_dict() for p in snapshot.problems],
        }
        print(json.dumps(doc, indent=2))
        return 0
    rows = [("SOURCE", "KEY ID", "STATUS", "VALID FROM", "REVOKED FROM", "SIGNS FOR")]
    for k in keys:
        rows.append(
            (
                k.source_id,
                k.key_id,
                k.status_at(at),
                k.valid_from or "-",
                k.revoked_at or "-",
                ",".join(k.signs_for) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if not keys:
        print("(no registered source keys)")
    for p in snapshot.problems:
        _err(f"skipped: {p}")
    return 0


def command_source(args: argparse.Namespace, settings: Settings) -> int:
    actions = {"keygen": _keygen, "register": _register, "revoke": _revoke, "list": _list}
    try:
        return actions[args.source_command](args, settings)
    except (KeyFileError, ValidationError) as exc:
        _err(str(exc))
        return 2
    except CareledgerError as exc:  # Kafka unreachable, delivery failed
        _err(f"{exc.code}: {exc.message}")
        return 2
