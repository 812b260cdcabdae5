"""Source identity: signed batches, heartbeats and the source-key registry (ADR 0010).

A *source* (a hospital system, or the ingest gateway on behalf of one) signs each batch
of access events it sends once, with Ed25519, so that checking costs one verification
per batch rather than per event:

* The batch's entries are ``uint64_be(seq) || leaf_hash(canonical event)`` for the
  per-source sequence numbers ``first_seq .. first_seq + size - 1`` of one *epoch* (16 hex
  digits chosen when the producer starts). Their RFC 6962 Merkle root is the ``root`` of a
  :class:`BatchStatement`, which is signed over ``BATCH_CONTEXT + JCS(statement)``.
* Each Kafka record is a :class:`SignedEvent` envelope (``careledger.signed-event/1``):
  the event, and an :class:`Attestation` (statement, signature, the event's index in
  the batch and its inclusion proof).

Heartbeats (:class:`HeartbeatStatement`) carry the last sequence number sent, so lost
events can be told from an idle source. Keys are registered, rotated and revoked by
*key events* (:class:`KeyEventStatement`) signed by a registrar key; a
:class:`SourceRegistry` built from them says whether a key may sign for a source at an
instant. Key events and heartbeats travel as reference records (kinds ``source-key``
and ``source-heartbeat``, see ``reference.py``) and are ledgered like consents.

Times that decide (ADR 0015): the processor decides a key's status at the broker's append
time of the record (Kafka ``LogAppendTime``), which no signer chooses, and accepts a
``signed_at`` only within ``max_skew_s`` of it (``BatchVerifier.authorize(..., at=...)``);
``verify`` decides it within the window of broker times the block header signs
(``SourceRegistry.authorize_within``). The processor's own key is registered in the same
registry under :func:`processor_source_id` (a ledgered, registrar-signed rotation); such a
key never signs events. :class:`SeqRuns` holds the sequence numbers of a (source, epoch)
that were chained, as sorted runs (replay detection in the processor and ``verify``).

Pure: no I/O. Errors: :class:`SourceAuthError` (an ``IntegrityError``) with a stable
``code`` naming why a record cannot be attributed to its source.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec

from .errors import IntegrityError, ProofError, SignatureError, ValidationError
from .event import (
    MAX_ID_LENGTH,
    TIMESTAMP_PATTERN,
    AccessEvent,
    decode_and_canonicalize,
    is_valid_timestamp,
)
from .hashing import leaf_hash
from .jcs import MAX_SAFE_INTEGER
from .merkle import MerkleTree, verify_inclusion
from .seq_runs import SeqRuns
from .signing import PublicKey, SigningKey

__all__ = [
    "BATCH_CONTEXT",
    "HEARTBEAT_CONTEXT",
    "KEY_EVENT_CONTEXT",
    "MAX_BATCH_SIZE",
    "PROCESSOR_SOURCE_PREFIX",
    "SIGNED_EVENT_SCHEMA",
    "Attestation",
    "BatchStatement",
    "BatchVerifier",
    "HeartbeatStatement",
    "KeyEventStatement",
    "SeqRuns",
    "SignatureB64",
    "SignedEvent",
    "SourceAuthError",
    "SourceEnvelopeError",
    "SourceRegistry",
    "batch_entry",
    "decode_signed_event",
    "encode_signed_event",
    "heartbeat_from_dict",
    "key_event_from_dict",
    "looks_signed",
    "new_epoch",
    "processor_source_id",
    "seconds_of",
    "sign_batch",
    "sign_heartbeat",
    "sign_key_event",
    "statement_bytes",
    "timestamp_of",
    "verify_attestation_proof",
    "verify_heartbeat",
    "verify_key_event",
    "verify_statement",
]

SIGNED_EVENT_SCHEMA: Final = "careledger.signed-event/1"
BATCH_SCHEMA: Final = "careledger.source-batch/1"
HEARTBEAT_SCHEMA: Final = "careledger.source-heartbeat/1"
KEY_EVENT_SCHEMA: Final = "careledger.source-key/1"

#: Domain separation of the three kinds of signed statement.
BATCH_CONTEXT: Final = b"careledger-source-batch-v1\n"
HEARTBEAT_CONTEXT: Final = b"careledger-source-heartbeat-v1\n"
KEY_EVENT_CONTEXT: Final = b"careledger-source-key-v1\n"

#: A batch's inclusion proof is at most 16 hashes.
MAX_BATCH_SIZE: Final = 65536

#: Registry entries whose source id starts with this are a log's processor keys (block
#: signing keys, ADR 0015), registered and rotated by the registrar; they sign no events.
PROCESSOR_SOURCE_PREFIX: Final = "careledger-processor:"

_US_PER_DAY: Final = 86_400_000_000


def processor_source_id(origin: str) -> str:
    """The registry identity of the processor keys of the log ``origin``."""
    return PROCESSOR_SOURCE_PREFIX + origin


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (m <= 2), m, d


def timestamp_of(seconds: float) -> str:
    """A POSIX time as an event timestamp ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC), rounded
    to the microsecond. Pure arithmetic: the core reads no clock and imports no datetime."""
    days, us = divmod(round(seconds * 1_000_000), _US_PER_DAY)
    y, m, d = _civil_from_days(days)
    secs, us = divmod(us, 1_000_000)
    h, rem = divmod(secs, 3600)
    mi, sec = divmod(rem, 60)
    return f"{y:04d}-{m:02d}-{d:02d}T{h:02d}:{mi:02d}:{sec:02d}.{us:06d}Z"


def seconds_of(timestamp: str) -> float:
    """An event timestamp as POSIX seconds. Raises ``ValueError`` if it is not a real
    instant in that format."""
    if not is_valid_timestamp(timestamp):
        raise ValueError(f"not a UTC timestamp: {timestamp[:40]!r}")
    t = timestamp
    days = _days_from_civil(int(t[0:4]), int(t[5:7]), int(t[8:10]))
    us = ((days * 24 + int(t[11:13])) * 60 + int(t[14:16])) * 60 + int(t[17:19])
    return us + int(t[20:26]) / 1_000_000


_HEX16 = r"\A[0-9a-f]{16}\Z"
_HEX64 = r"\A[0-9a-f]{64}\Z"
_B64_SIG = r"\A[A-Za-z0-9+/]{86}==\Z"
_B64_KEY = r"\A[A-Za-z0-9+/]{43}=\Z"

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
Hex16 = Annotated[str, msgspec.Meta(pattern=_HEX16)]
Hex64 = Annotated[str, msgspec.Meta(pattern=_HEX64)]
Timestamp = Annotated[str, msgspec.Meta(pattern=TIMESTAMP_PATTERN)]
Seq = Annotated[int, msgspec.Meta(ge=1, le=MAX_SAFE_INTEGER)]
SignatureB64 = Annotated[str, msgspec.Meta(pattern=_B64_SIG)]
PublicKeyB64 = Annotated[str, msgspec.Meta(pattern=_B64_KEY)]


class _Struct(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True
):
    pass


class BatchStatement(_Struct, frozen=True, kw_only=True):
    """What a source signs for one batch: who, which sequence numbers, which events."""

    schema: Literal["careledger.source-batch/1"] = BATCH_SCHEMA
    #: the source the events are attributed to
    source_id: Id
    #: the signing key (its registered source is ``source_id``, or it ``signs_for`` it)
    key_id: Hex16
    epoch: Hex16
    first_seq: Seq
    size: Annotated[int, msgspec.Meta(ge=1, le=MAX_BATCH_SIZE)]
    root: Hex64
    signed_at: Timestamp
    #: set when a gateway signs for a source that cannot sign itself: the gateway's id
    signed_by: Id | None = None

    def __post_init__(self) -> None:
        # the pattern admits 2026-02-30: a time must be a real instant to be compared
        if not is_valid_timestamp(self.signed_at):
            raise ValueError("signed_at is not a real instant")

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.size - 1


class Attestation(_Struct, frozen=True, kw_only=True):
    """A batch's signed statement plus one event's place in the batch."""

    statement: BatchStatement
    signature: SignatureB64
    index: Annotated[int, msgspec.Meta(ge=0, lt=MAX_BATCH_SIZE)]
    proof: Annotated[tuple[Hex64, ...], msgspec.Meta(max_length=17)]

    @property
    def seq(self) -> int:
        return self.statement.first_seq + self.index


class SignedEvent(_Struct, frozen=True, kw_only=True):
    """The Kafka record of a signed access event (``careledger.signed-event/1``)."""

    schema: Literal["careledger.signed-event/1"]
    event: msgspec.Raw
    attestation: Attestation


class HeartbeatStatement(_Struct, frozen=True, kw_only=True):
    """A source's periodic "I am alive and have sent up to ``last_seq``" (0: nothing yet)."""

    schema: Literal["careledger.source-heartbeat/1"] = HEARTBEAT_SCHEMA
    source_id: Id
    key_id: Hex16
    epoch: Hex16
    beat: Seq
    last_seq: Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INTEGER)]
    sent_at: Timestamp
    #: the producer closed cleanly: nothing follows in this epoch
    closing: bool = False


class KeyEventStatement(_Struct, frozen=True, kw_only=True):
    """Register (``active``) or revoke a source's key from ``valid_from`` on."""

    schema: Literal["careledger.source-key/1"] = KEY_EVENT_SCHEMA
    source_id: Id
    key_id: Hex16
    public_key: PublicKeyB64
    status: Literal["active", "revoked"]
    valid_from: Timestamp
    #: sources this key may sign for (a gateway relaying legacy sources)
    signs_for: Annotated[tuple[Id, ...], msgspec.Meta(max_length=1024)] = ()
    registrar_key_id: Hex16


_ENCODER: Final = msgspec.json.Encoder(order="sorted")
_ENVELOPE_DECODER: Final = msgspec.json.Decoder(SignedEvent)


class SourceEnvelopeError(ValidationError):
    """A record claims to be a signed event but its envelope is malformed."""

    code = "SIGNED_EVENT_INVALID"


class SourceAuthError(IntegrityError):
    """A record cannot be attributed to its source. ``code`` is one of ``UNSIGNED``,
    ``BAD_SIGNATURE``, ``BAD_PROOF``, ``UNKNOWN_KEY``, ``REVOKED_KEY``,
    ``KEY_NOT_FOR_SOURCE``, ``SIGNED_AT_SKEW``, ``REPLAYED``, ``UNTRUSTED_TIME`` (the
    record's Kafka timestamp is the producer's CreateTime, not the broker's)."""

    code = "SOURCE_AUTH"


def statement_bytes(statement: BatchStatement | HeartbeatStatement | KeyEventStatement) -> bytes:
    """RFC 8785 bytes of a statement (sorted members, no floats: msgspec output is JCS)."""
    return _ENCODER.encode(statement)


def new_epoch(random_bytes: bytes) -> str:
    """An epoch from 8 random bytes (the caller supplies them: the core does no I/O)."""
    if len(random_bytes) != 8:
        raise ValidationError("an epoch is made of 8 random bytes")
    return random_bytes.hex()


def batch_entry(seq: int, event_leaf_hash: bytes) -> bytes:
    """The Merkle leaf hash of one batch entry: the sequence number bound to the event."""
    if not 1 <= seq <= MAX_SAFE_INTEGER or len(event_leaf_hash) != 32:
        raise ValidationError("batch entry needs seq >= 1 and a 32-byte leaf hash")
    return leaf_hash(seq.to_bytes(8, "big") + event_leaf_hash)


def _sig_b64(signature: bytes) -> str:
    return base64.b64encode(signature).decode("ascii")


def _sig_raw(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SourceAuthError("signature is not base64", code="BAD_SIGNATURE") from exc


def sign_batch(
    key: SigningKey,
    *,
    source_id: str,
    epoch: str,
    first_seq: int,
    event_leaf_hashes: Sequence[bytes],
    signed_at: str,
    signed_by: str | None = None,
) -> list[Attestation]:
    """Sign one batch; returns one attestation per event, in order."""
    if not event_leaf_hashes:
        raise ValidationError("a batch has at least one event")
    entries = [batch_entry(first_seq + i, h) for i, h in enumerate(event_leaf_hashes)]
    tree = MerkleTree(entries)
    statement = msgspec.convert(
        {
            "source_id": source_id,
            "key_id": key.key_id,
            "epoch": epoch,
            "first_seq": first_seq,
            "size": len(entries),
            "root": tree.root.hex(),
            "signed_at": signed_at,
            **({"signed_by": signed_by} if signed_by is not None else {}),
        },
        BatchStatement,
    )
    signature = _sig_b64(key.sign(BATCH_CONTEXT + statement_bytes(statement)))
    return [
        Attestation(
            statement=statement,
            signature=signature,
            index=i,
            proof=tuple(p.hex() for p in tree.inclusion_proof(i)),
        )
        for i in range(len(entries))
    ]


def verify_statement(statement: BatchStatement, signature: str, key: PublicKey) -> None:
    """Check the batch signature (once per batch). Raises :class:`SourceAuthError`."""
    if key.key_id != statement.key_id:
        raise SourceAuthError("statement names another key", code="BAD_SIGNATURE")
    try:
        key.verify(BATCH_CONTEXT + statement_bytes(statement), _sig_raw(signature))
    except SignatureError as exc:
        raise SourceAuthError(
            "batch signature does not verify",
            code="BAD_SIGNATURE",
            details={"key_id": statement.key_id, "source_id": statement.source_id},
        ) from exc


def verify_attestation_proof(event_leaf_hash: bytes, attestation: Attestation) -> None:
    """Check that the event is entry ``index`` (with its sequence number) of the signed
    batch root. Raises :class:`SourceAuthError` (``BAD_PROOF``)."""
    st = attestation.statement
    if attestation.index >= st.size:
        raise SourceAuthError("index outside the batch", code="BAD_PROOF")
    try:
        verify_inclusion(
            batch_entry(attestation.seq, event_leaf_hash),
            attestation.index,
            st.size,
            [bytes.fromhex(p) for p in attestation.proof],
            bytes.fromhex(st.root),
        )
    except ProofError as exc:
        raise SourceAuthError(
            "event is not in the signed batch",
            code="BAD_PROOF",
            details={"source_id": st.source_id, "seq": attestation.seq},
        ) from exc


def encode_signed_event(canonical_event: bytes, attestation: Attestation) -> bytes:
    """The Kafka record value of one signed event (the event's canonical bytes inside)."""
    return _ENCODER.encode(
        SignedEvent(
            schema=SIGNED_EVENT_SCHEMA,
            event=msgspec.Raw(canonical_event),
            attestation=attestation,
        )
    )


_SCHEMA_PREFIX = re.compile(rb'\A\s*\{\s*"(?:attestation|event|schema)"')


def looks_signed(data: bytes) -> bool:
    """Cheap test: does this record claim to be a signed envelope (not a plain event)?"""
    return b'"careledger.signed-event/1"' in data[:64] or (
        _SCHEMA_PREFIX.match(data) is not None and b'"attestation"' in data
    )


def decode_signed_event(data: bytes) -> tuple[AccessEvent, bytes, Attestation]:
    """Decode an envelope: the event (validated), its canonical bytes and the attestation.

    Raises :class:`SourceEnvelopeError` for a malformed envelope and
    ``EventValidationError`` for a malformed event inside it. Nothing is verified here.
    """
    try:
        env = _ENVELOPE_DECODER.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        raise SourceEnvelopeError(f"invalid signed event envelope: {exc}") from exc
    event, canonical = decode_and_canonicalize(bytes(env.event))
    return event, canonical, env.attestation


# --------------------------------------------------------------------------- heartbeats


def sign_heartbeat(key: SigningKey, statement: HeartbeatStatement) -> str:
    if statement.key_id != key.key_id:
        raise ValidationError("heartbeat names another key")
    return _sig_b64(key.sign(HEARTBEAT_CONTEXT + statement_bytes(statement)))


def verify_heartbeat(statement: HeartbeatStatement, signature: str, key: PublicKey) -> None:
    if key.key_id != statement.key_id:
        raise SourceAuthError("heartbeat names another key", code="BAD_SIGNATURE")
    try:
        key.verify(HEARTBEAT_CONTEXT + statement_bytes(statement), _sig_raw(signature))
    except SignatureError as exc:
        raise SourceAuthError("heartbeat signature does not verify", code="BAD_SIGNATURE") from exc


# --------------------------------------------------------------------------- key events


def sign_key_event(registrar: SigningKey, statement: KeyEventStatement) -> str:
    if statement.registrar_key_id != registrar.key_id:
        raise ValidationError("key event names another registrar key")
    return _sig_b64(registrar.sign(KEY_EVENT_CONTEXT + statement_bytes(statement)))


def verify_key_event(
    statement: KeyEventStatement, signature: str, registrars: Mapping[str, PublicKey]
) -> None:
    """Check a key event against the registrar keys the caller trusts."""
    registrar = registrars.get(statement.registrar_key_id)
    if registrar is None:
        raise SourceAuthError(
            "key event signed by an untrusted registrar",
            code="UNKNOWN_REGISTRAR",
            details={"registrar_key_id": statement.registrar_key_id},
        )
    try:
        registrar.verify(KEY_EVENT_CONTEXT + statement_bytes(statement), _sig_raw(signature))
    except SignatureError as exc:
        raise SourceAuthError("key event signature does not verify", code="BAD_SIGNATURE") from exc
    if PublicKey(base64.b64decode(statement.public_key)).key_id != statement.key_id:
        raise SourceAuthError("key id does not match the public key", code="BAD_SIGNATURE")


def key_event_from_dict(d: Mapping[str, Any]) -> KeyEventStatement:
    try:
        return msgspec.convert(dict(d), KeyEventStatement)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"invalid source key event: {exc}") from exc


def heartbeat_from_dict(d: Mapping[str, Any]) -> HeartbeatStatement:
    try:
        return msgspec.convert(dict(d), HeartbeatStatement)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"invalid source heartbeat: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _KeyState:
    source_id: str
    key: PublicKey
    signs_for: frozenset[str]
    #: (valid_from, status) in time order
    history: tuple[tuple[str, str], ...]

    def status_at(self, at: str) -> str | None:
        status: str | None = None
        for valid_from, s in self.history:
            if valid_from > at:
                break
            status = s
        return status


class SourceRegistry:
    """Which key may sign for which source, when. Built from verified key events."""

    def __init__(self, events: Iterable[KeyEventStatement] = ()) -> None:
        self._keys: dict[str, _KeyState] = {}
        for e in events:
            self.apply(e)

    def __len__(self) -> int:
        return len(self._keys)

    def apply(self, e: KeyEventStatement) -> None:
        """Add a key event (already verified with :func:`verify_key_event`)."""
        old = self._keys.get(e.key_id)
        if old is not None and old.source_id != e.source_id:
            return  # a key id belongs to the source that registered it first
        history = tuple(sorted({*(old.history if old else ()), (e.valid_from, e.status)}))
        signs_for = (old.signs_for if old else frozenset()) | frozenset(e.signs_for)
        key = old.key if old else PublicKey(base64.b64decode(e.public_key))
        self._keys[e.key_id] = _KeyState(e.source_id, key, signs_for, history)

    def _state(self, source_id: str, key_id: str) -> _KeyState:
        state = self._keys.get(key_id)
        if state is None:
            raise SourceAuthError(
                "key is not registered", code="UNKNOWN_KEY", details={"key_id": key_id}
            )
        if state.source_id != source_id and source_id not in state.signs_for:
            raise SourceAuthError(
                "key is not registered for this source",
                code="KEY_NOT_FOR_SOURCE",
                details={"key_id": key_id},
            )
        return state

    def public_key(self, key_id: str) -> PublicKey:
        """The registered key whatever its status; :class:`SourceAuthError` (``UNKNOWN_KEY``)
        if it was never registered."""
        state = self._keys.get(key_id)
        if state is None:
            raise SourceAuthError(
                "key is not registered", code="UNKNOWN_KEY", details={"key_id": key_id}
            )
        return state.key

    def history(self, key_id: str) -> tuple[tuple[str, str], ...]:
        """The key's ``(valid_from, status)`` changes in time order (empty: unknown key)."""
        state = self._keys.get(key_id)
        return () if state is None else state.history

    def keys_of(self, source_id: str) -> list[str]:
        """The key ids registered to ``source_id`` (as their own source, not ``signs_for``)."""
        return sorted(k for k, s in self._keys.items() if s.source_id == source_id)

    def authorize_within(self, source_id: str, key_id: str, lo: str, hi: str) -> PublicKey:
        """The key, if it may sign for ``source_id`` at some instant of ``[lo, hi]``; else
        :class:`SourceAuthError` saying why not at ``hi`` (``REVOKED_KEY`` if it had been
        active before, ``UNKNOWN_KEY`` if it never was by then)."""
        state = self._state(source_id, key_id)
        if state.status_at(lo) == "active" or any(
            lo < t <= hi and s == "active" for t, s in state.history
        ):
            return state.key
        ever = any(t <= hi and s == "active" for t, s in state.history)
        if not ever:
            raise SourceAuthError(
                "key was not yet registered at that time",
                code="UNKNOWN_KEY",
                details={"key_id": key_id, "at": hi},
            )
        raise SourceAuthError(
            "key was revoked at that time",
            code="REVOKED_KEY",
            details={"key_id": key_id, "at": lo},
        )

    def authorize(self, source_id: str, key_id: str, at: str) -> PublicKey:
        """The key, if it may sign for ``source_id`` at ``at``; else :class:`SourceAuthError`."""
        state = self._state(source_id, key_id)
        status = state.status_at(at)
        if status is None:
            raise SourceAuthError(
                "key was not yet registered at that time",
                code="UNKNOWN_KEY",
                details={"key_id": key_id, "at": at},
            )
        if status != "active":
            raise SourceAuthError(
                "key was revoked at that time",
                code="REVOKED_KEY",
                details={"key_id": key_id, "at": at},
            )
        return state.key

    def first_registered_at(self) -> str | None:
        """When the first key of any source became active (None: no key registered);
        processor keys (ADR 0015) are not sources."""
        times = [
            t
            for s in self._keys.values()
            if not s.source_id.startswith(PROCESSOR_SOURCE_PREFIX)
            for t, status in s.history
            if status == "active"
        ]
        return min(times) if times else None

    def key_source(self, key_id: str) -> str | None:
        state = self._keys.get(key_id)
        return None if state is None else state.source_id


class BatchVerifier:
    """Checks attestations against a registry, verifying each batch signature once.

    ``check`` raises :class:`SourceAuthError` unless the key may sign for the source at
    ``at`` (default: the statement's ``signed_at``; a gateway key signing for another
    source must say so in ``signed_by``), the batch signature verifies and the event is
    in the batch. ``verify_batch`` and ``authorize`` are its two halves: what the
    signature proves (whatever the key's status) and whether the key may sign then.
    Verified (statement, signature) pairs are remembered (``cache_size`` most recent).
    """

    def __init__(self, registry: SourceRegistry, cache_size: int = 4096) -> None:
        self.registry = registry
        self._verified: dict[bytes, None] = {}
        self._cache_size = cache_size
        self.signature_checks = 0

    def authorize(self, statement: BatchStatement, at: str) -> PublicKey:
        """The key, if it may sign ``statement``'s batch at ``at``."""
        st = statement
        key = self.registry.authorize(st.source_id, st.key_id, at)
        self._owner_check(st)
        return key

    def authorize_within(self, statement: BatchStatement, lo: str, hi: str) -> PublicKey:
        """The key, if it may sign ``statement``'s batch at some instant of ``[lo, hi]``."""
        st = statement
        key = self.registry.authorize_within(st.source_id, st.key_id, lo, hi)
        self._owner_check(st)
        return key

    def _owner_check(self, st: BatchStatement) -> None:
        owner = self.registry.key_source(st.key_id)
        if owner != st.source_id and st.signed_by != owner:
            raise SourceAuthError(
                "a key signing for another source must name itself in signed_by",
                code="KEY_NOT_FOR_SOURCE",
                details={"key_id": st.key_id},
            )
        if owner is not None and owner.startswith(PROCESSOR_SOURCE_PREFIX):
            raise SourceAuthError(
                "a processor key signs blocks, never events",
                code="KEY_NOT_FOR_SOURCE",
                details={"key_id": st.key_id},
            )

    def verify_signature(self, statement: BatchStatement, signature: str) -> None:
        """The batch signature under the registered key, whatever the key's status (a
        batch record's events are checked against the statement's root by the caller)."""
        fingerprint = BATCH_CONTEXT + statement_bytes(statement) + signature.encode()
        if fingerprint not in self._verified:
            verify_statement(statement, signature, self.registry.public_key(statement.key_id))
            self.signature_checks += 1
            self._verified[fingerprint] = None
            if len(self._verified) > self._cache_size:
                del self._verified[next(iter(self._verified))]

    def verify_batch(self, event_leaf_hash: bytes, attestation: Attestation) -> None:
        """The batch signature (under the registered key, whatever its status) and the
        event's inclusion proof."""
        self.verify_signature(attestation.statement, attestation.signature)
        verify_attestation_proof(event_leaf_hash, attestation)

    def check(
        self, event_leaf_hash: bytes, attestation: Attestation, at: str | None = None
    ) -> None:
        self.authorize(attestation.statement, attestation.statement.signed_at if at is None else at)
        self.verify_batch(event_leaf_hash, attestation)


def same_statement(a: BatchStatement, b: BatchStatement) -> bool:
    return hmac.compare_digest(statement_bytes(a), statement_bytes(b))
