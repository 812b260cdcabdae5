"""The raw record envelope (schema ``careledger.raw-record/1``): received bytes, ledgered.

Every record the ingest gateway accepts (an HTTP body, a syslog frame) is published,
before the access events made from it, to ``Settings.topic_raw`` as one JSON envelope::

    {"schema": "careledger.raw-record/1", "record_id": <UUID>, "sha256": <hex>,
     "format": <adapter format>, "received_at": <timestamp>,
     "transport": {<name>: <string>, ...}, "issues": [{"code", "message", "path"}],
     "data": <base64 of the bytes>}

``sha256`` is taken over the bytes exactly as received, before any parsing; the events
made from the record carry it as ``raw_ref.sha256``. ``transport`` holds what the
transport said about the record (protocol, peer, authenticated ``source_id`` and how it
was authenticated, syslog PRI / HOSTNAME / APP-NAME / PROCID / MSGID, HTTP path, ...),
``issues`` the conformance issues of a record that was accepted although it departs
from its standard (IHE BALP: accept and flag, never reject). ``record_id`` is assigned
at receipt: the same bytes received twice are two raw records.

The processor chains raw records like reference data (chains of their own, one per
partition of the raw topic, table ``raw_records``) and ``careledger verify`` checks
them; decoding checks that ``data`` hashes to ``sha256``, so a stored envelope whose
bytes were swapped fails verification even if it was re-hashed into the chain.

Canonical bytes are RFC 8785 (JCS): member names are ASCII (transport names are
restricted to ``[a-z0-9_]``), there are no floats, and msgspec escapes strings like
JCS, so ``msgspec.json.Encoder(order="sorted")`` gives JCS directly (as for events).

Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from typing import Annotated, Final, Literal

import msgspec

from careledger_core.errors import ValidationError

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "MAX_RECORD_BYTES",
    "RAW_SCHEMA",
    "RawIssue",
    "RawRecordEnvelope",
    "RawRecordValidationError",
    "build_envelope",
    "decode_and_canonicalize_raw",
    "encode_envelope",
    "envelope_bytes_for",
]

RAW_SCHEMA: Final = "careledger.raw-record/1"

#: The largest record (bytes as received) a raw envelope may carry. The gateway's own
#: bound (``Settings.gateway_max_record_bytes``, default 1 MiB) must not exceed it.
MAX_RECORD_BYTES: Final = 8 * 1024 * 1024
#: Room for the envelope around the base64 data (transport metadata, issues).
_ENVELOPE_OVERHEAD: Final = 512 * 1024
MAX_ISSUES: Final = 200
MAX_TRANSPORT_ENTRIES: Final = 64
MAX_TRANSPORT_VALUE: Final = 4096


def envelope_bytes_for(record_bytes: int) -> int:
    """An upper bound of the envelope size for a record of ``record_bytes`` bytes."""
    return 4 * ((record_bytes + 2) // 3) + _ENVELOPE_OVERHEAD


#: The largest envelope: the processor chains raw records up to this size, and the raw
#: and dead-letter topics accept messages this large.
MAX_ENVELOPE_BYTES: Final = envelope_bytes_for(MAX_RECORD_BYTES)

_UUID: Final = r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z"
_SHA256: Final = r"\A[0-9a-f]{64}\Z"
_TIMESTAMP: Final = (
    r"\A[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z\Z"
)
_NAME: Final = r"\A[a-z0-9_]{1,64}\Z"

Uuid = Annotated[str, msgspec.Meta(pattern=_UUID)]
Sha256Hex = Annotated[str, msgspec.Meta(pattern=_SHA256)]
Timestamp = Annotated[str, msgspec.Meta(pattern=_TIMESTAMP)]
Name = Annotated[str, msgspec.Meta(pattern=_NAME)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TRANSPORT_VALUE)]
Format = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class RawRecordValidationError(ValidationError):
    """A raw record envelope violates its schema (``RAW_RECORD_INVALID``)."""

    code = "RAW_RECORD_INVALID"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(
            f"{field}: {reason}", details={"field": field, "reason": reason}, code=self.code
        )
        self.field = field
        self.reason = reason


class _Base(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True
):
    pass


class RawIssue(_Base, frozen=True, kw_only=True):
    """A conformance issue of an accepted record (``producers.adapters.Conformance``)."""

    code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    message: Text
    path: Text = ""


class RawRecordEnvelope(_Base, frozen=True, kw_only=True):
    """One received record as ledgered (``careledger.raw-record/1``)."""

    schema: Literal["careledger.raw-record/1"]
    record_id: Uuid
    sha256: Sha256Hex
    format: Format
    received_at: Timestamp
    transport: Annotated[dict[Name, Text], msgspec.Meta(max_length=MAX_TRANSPORT_ENTRIES)] = {}
    issues: Annotated[tuple[RawIssue, ...], msgspec.Meta(max_length=MAX_ISSUES)] = ()
    data: str = ""

    @property
    def source_id(self) -> str:
        """The authenticated sender the gateway recorded ('' if none)."""
        return self.transport.get("source_id", "")

    @property
    def protocol(self) -> str:
        return self.transport.get("protocol", "")

    def raw_bytes(self) -> bytes:
        return base64.b64decode(self.data, validate=True)


_DECODER: Final = msgspec.json.Decoder(RawRecordEnvelope)
_ENCODER: Final = msgspec.json.Encoder(order="sorted")


def encode_envelope(envelope: RawRecordEnvelope) -> bytes:
    """Canonical (JCS) bytes of an envelope."""
    return _ENCODER.encode(envelope)


def build_envelope(
    *,
    record_id: str,
    data: bytes,
    sha256: str,
    format: str,
    received_at: str,
    transport: Mapping[str, str],
    issues: Sequence[Mapping[str, str]] = (),
) -> tuple[RawRecordEnvelope, bytes]:
    """Build, validate and encode an envelope; returns it and its canonical bytes.

    Issues beyond ``MAX_ISSUES`` are summarised in one last issue; transport values are
    cut at ``MAX_TRANSPORT_VALUE`` characters.
    """
    kept = [
        RawIssue(
            code=str(i.get("code", ""))[:64] or "ISSUE",
            message=str(i.get("message", ""))[:MAX_TRANSPORT_VALUE],
            path=str(i.get("path", ""))[:MAX_TRANSPORT_VALUE],
        )
        for i in issues[: MAX_ISSUES - 1]
    ]
    if len(issues) >= MAX_ISSUES:
        kept.append(
            RawIssue(
                code="ISSUES_TRUNCATED",
                message=f"{len(issues) - len(kept)} more conformance issues not listed",
            )
        )
    envelope = RawRecordEnvelope(
        schema=RAW_SCHEMA,
        record_id=record_id,
        sha256=sha256,
        format=format,
        received_at=received_at,
        transport={str(k): str(v)[:MAX_TRANSPORT_VALUE] for k, v in transport.items()},
        issues=tuple(kept),
        data=base64.b64encode(data).decode("ascii"),
    )
    encoded = encode_envelope(envelope)
    # Round trip through the decoder: what we publish must chain.
    decoded, canonical = decode_and_canonicalize_raw(encoded)
    return decoded, canonical


def _translate(exc: msgspec.ValidationError) -> RawRecordValidationError:
    text = str(exc)
    reason, _, where = text.partition(" - at `")
    field = where.rstrip("`").removeprefix("$.") or "$"
    return RawRecordValidationError(field, reason)


def decode_and_canonicalize_raw(data: bytes) -> tuple[RawRecordEnvelope, bytes]:
    """Validate one raw-record envelope and return it with its canonical bytes.

    Besides the schema, ``data`` must be standard padded base64 of bytes whose SHA-256
    is ``sha256``. Raises :class:`RawRecordValidationError`.
    """
    try:
        envelope = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise _translate(exc) from exc
    except msgspec.DecodeError as exc:
        raise RawRecordValidationError("$", f"invalid JSON: {exc}") from exc
    try:
        raw = base64.b64decode(envelope.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RawRecordValidationError("data", "must be standard padded base64") from exc
    if base64.b64encode(raw).decode("ascii") != envelope.data:
        raise RawRecordValidationError("data", "base64 is not in canonical form")
    if hashlib.sha256(raw).hexdigest() != envelope.sha256:
        raise RawRecordValidationError("sha256", "is not the SHA-256 of the data")
    return envelope, _ENCODER.encode(envelope)
