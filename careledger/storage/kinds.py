"""The kinds of record careledger chains, and how each is stored and checked.

Access events, reference data (consents, care relationships, the workforce
directory, patient demographics) and the raw records the ingest gateway received
(``careledger.raw_record``) are chained and signed the same way: one
chain per Kafka partition, the same block headers. They differ in how a
record is decoded, which time it carries, and which denormalised columns it
gets in ClickHouse. Those columns are for querying only; the verifier checks
them against the canonical bytes, so both the writer (processor) and the
checker (verifier) take them from here. ``read_columns`` are *all* of them (but for
sealed events what only the key store can check, ADR 0037), derived dates included
(``occurred_date``, ``effective_date``, ``received_date``: a moved date hides a record
from date-bounded queries such as the access report).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from careledger.raw_record import (
    MAX_ENVELOPE_BYTES,
    RawRecordEnvelope,
    decode_and_canonicalize_raw,
)
from careledger.sealed_raw import MAX_RAW_TRANSIT_BYTES, SealedRawDocument, decode_sealed_raw
from careledger_core.errors import ReferenceValidationError
from careledger_core.event import AccessEvent, decode_and_canonicalize
from careledger_core.event_batch import AccessColumns
from careledger_core.reference import ReferenceRecord, decode_and_canonicalize_reference
from careledger_core.sealed_event import SealedAccessEvent, SealedColumns, decode_sealed_document
from careledger_core.sealed_reference import (
    CLEAR_REFERENCE_KINDS,
    SEALED_REFERENCE_SCHEMA,
    SealedReferenceDocument,
    decode_sealed_reference,
)


def _date(timestamp: str) -> dt.date:
    return _day(timestamp[:10])


@functools.lru_cache(maxsize=4096)
def _day(day: str) -> dt.date:
    return dt.date(int(day[0:4]), int(day[5:7]), int(day[8:10]))


@dataclass(frozen=True)
class RecordKind:
    """How one kind of chained record is decoded and laid out in its table."""

    name: str
    table: str
    #: denormalised columns, between ``kafka_offset`` and ``canonical``; the first
    #: is the record's id.
    columns: tuple[str, ...]
    decode: Callable[[bytes], tuple[Any, bytes]]
    record_id: Callable[[Any], str]
    time_of: Callable[[Any], str]
    values: Callable[[Any], tuple[Any, ...]]
    #: which of ``columns`` the reader returns (and the verifier compares): every one ...
    read_columns: tuple[str, ...]
    #: ... and their values for a record, as the reader returns them (str as bytes).
    #: Written out per kind: the verifier calls it for every record.
    read_values: Callable[[Any], tuple[Any, ...]]
    #: what must not repeat within a block: an access event's id; a reference
    #: record's (kind, id, version) — several versions of one record may share a block
    unique_key: Callable[[Any], Any]
    #: the Python type the reader returns for each of ``read_columns`` (bytes for
    #: String, int for UInt*, ``datetime.date`` for Date); anything else is tampering
    read_types: tuple[type, ...]
    #: largest record the processor chains for this kind (None: ``max_event_bytes``)
    max_bytes: int | None = None
    #: access events signed by their sources (ADR 0010): the source gate admits them,
    #: and their attestations and batch rows are stored beside them
    signed: bool = False
    #: columns only the key store can make or check (a sealed ledger's pseudonyms and
    #: sealed parts, ADR 0037): not in the block publications, so a replica holds them
    #: empty and the primary-replica comparison leaves them out
    private_columns: tuple[str, ...] = ()


def _access_values(e: AccessEvent | AccessColumns) -> tuple[Any, ...]:
    return (
        e.event_id,
        e.occurred_at,
        _date(e.occurred_at),
        e.actor.id,
        e.patient.id,
        e.action,
        e.outcome,
        e.source.system,
    )


def _reference_values(r: ReferenceRecord) -> tuple[Any, ...]:
    return (
        r.record_id,
        r.kind,
        r.version,
        r.subject_id,
        r.recorded_at,
        r.effective_at,
        _date(r.effective_at),
        1 if r.retracted else 0,
    )


ACCESS = RecordKind(
    name="access-event",
    table="access_events",
    columns=(
        "event_id",
        "occurred_at",
        "occurred_date",
        "actor_id",
        "patient_id",
        "action",
        "outcome",
        "source_system",
    ),
    decode=decode_and_canonicalize,
    record_id=lambda e: e.event_id,
    time_of=lambda e: e.occurred_at,
    values=_access_values,
    read_columns=(
        "event_id",
        "occurred_at",
        "actor_id",
        "patient_id",
        "action",
        "outcome",
        "source_system",
        "occurred_date",
    ),
    unique_key=lambda e: e.event_id,
    read_values=lambda e: (
        e.event_id.encode(),
        e.occurred_at.encode(),
        e.actor.id.encode(),
        e.patient.id.encode(),
        e.action.encode(),
        e.outcome,
        e.source.system.encode(),
        _date(e.occurred_at),
    ),
    read_types=(bytes, bytes, bytes, bytes, bytes, int, bytes, dt.date),
    signed=True,
)


@dataclass(frozen=True, slots=True)
class SealedRecord:
    """A sealed access event as the processor chains it (ADR 0037): the signed sealed
    document (the leaf's bytes) and what the processor adds from the key store. The
    pseudonyms and the sealed part are not recomputable from the document: ``verify``
    checks them only where it can open the sealed part."""

    #: the document, or its stored columns when a worker validated it (ADR 0039)
    document: SealedAccessEvent | SealedColumns
    patient_ref: str
    actor_ref: str
    data_key_id: str
    sealed: str  # base64 of XChaCha20-Poly1305(data key, salt || sensitive, AAD = leaf)

    @property
    def event_id(self) -> str:
        return self.document.event_id

    @property
    def occurred_at(self) -> str:
        return self.document.occurred_at


def _sealed_values(r: SealedRecord | SealedAccessEvent) -> tuple[Any, ...]:
    if isinstance(r, SealedAccessEvent):  # a replica's row: the signed document only
        r = SealedRecord(r, "", "", "", "")
    d = r.document
    return (
        d.event_id,
        d.occurred_at,
        _date(d.occurred_at),
        r.actor_ref,
        r.patient_ref,
        d.action,
        d.outcome,
        d.source.system,
        r.sealed,
        r.data_key_id,
    )


#: access events of a sealed ledger (``seal_events``, ADR 0037), in the same table: the
#: actor and patient columns hold pseudonyms, ``canonical`` the sealed document, and the
#: sensitive part is in ``sealed`` under the data key ``data_key_id``. The processor
#: writes a ``SealedRecord``; ``verify`` decodes the sealed document, whose public
#: columns it checks (``read_columns``).
SEALED = RecordKind(
    name="sealed-access-event",
    table="access_events",
    columns=(
        "event_id",
        "occurred_at",
        "occurred_date",
        "actor_id",
        "patient_id",
        "action",
        "outcome",
        "source_system",
        "sealed",
        "data_key_id",
    ),
    decode=decode_sealed_document,
    record_id=lambda r: r.event_id,
    time_of=lambda r: r.occurred_at,
    values=_sealed_values,
    read_columns=(
        "event_id",
        "occurred_at",
        "action",
        "outcome",
        "source_system",
        "occurred_date",
    ),
    unique_key=lambda r: r.event_id,
    read_values=lambda d: (
        d.event_id.encode(),
        d.occurred_at.encode(),
        d.action.encode(),
        d.outcome,
        d.source.system.encode(),
        _date(d.occurred_at),
    ),
    read_types=(bytes, bytes, bytes, int, bytes, dt.date),
    signed=True,
    private_columns=("actor_id", "patient_id", "sealed", "data_key_id"),
)

REFERENCE = RecordKind(
    name="reference",
    table="reference_records",
    columns=(
        "record_id",
        "kind",
        "version",
        "subject_id",
        "recorded_at",
        "effective_at",
        "effective_date",
        "retracted",
    ),
    decode=decode_and_canonicalize_reference,
    record_id=lambda r: r.record_id,
    time_of=lambda r: r.recorded_at,
    values=_reference_values,
    read_columns=(
        "record_id",
        "kind",
        "version",
        "subject_id",
        "recorded_at",
        "effective_at",
        "retracted",
        "effective_date",
    ),
    unique_key=lambda r: (r.kind, r.record_id, r.version),
    read_values=lambda r: (
        r.record_id.encode(),
        r.kind.encode(),
        r.version,
        r.subject_id.encode(),
        r.recorded_at.encode(),
        r.effective_at.encode(),
        1 if r.retracted else 0,
        _date(r.effective_at),
    ),
    read_types=(bytes, bytes, int, bytes, bytes, bytes, int, dt.date),
)


@dataclass(slots=True)
class SealedReference:
    """A sealed reference record as the processor chains it (ADR 0037). Made in two
    steps: when the record is taken, its sealed document (the leaf's bytes: the salt is
    drawn then); when its block is stored, what needs the subject's data key (fetched for
    all the blocks' records at once): the pseudonyms and the sealed part. Until then
    ``sealed`` is empty, and such a record is never written (``values`` refuses it)."""

    document: SealedReferenceDocument
    canonical: bytes  # the document's canonical bytes (the leaf's)
    record: ReferenceRecord  # opened: in memory only
    record_bytes: bytes
    salt: bytes
    record_ref: str = ""
    subject_ref: str = ""
    data_key_id: str = ""
    sealed: str = ""  # base64 of the sealed part

    @property
    def record_id(self) -> str:
        return self.record.record_id

    @property
    def recorded_at(self) -> str:
        return self.document.recorded_at


def _sealed_reference_values(
    r: SealedReference | ReferenceRecord | SealedReferenceDocument,
) -> tuple[Any, ...]:
    if isinstance(r, ReferenceRecord):  # a kind that names no one, in clear
        return (*_reference_values(r), "", "")
    if isinstance(r, SealedReferenceDocument):  # a replica's row: the signed document only
        retracted = 1 if r.retracted else 0
        at = r.effective_at
        return ("", r.kind, r.version, "", r.recorded_at, at, _date(at), retracted, "", "")
    if not r.sealed:
        raise RuntimeError("a sealed reference record was not sealed before its block's write")
    d = r.document
    return (
        r.record_ref,
        d.kind,
        d.version,
        r.subject_ref,
        d.recorded_at,
        d.effective_at,
        _date(d.effective_at),
        1 if d.retracted else 0,
        r.sealed,
        r.data_key_id,
    )


def decode_sealed_reference_row(
    data: bytes,
) -> tuple[SealedReferenceDocument | ReferenceRecord, bytes]:
    """A stored record of a sealed ledger's reference chain: a sealed document, or a
    record of a kind that names no one in clear (any other kind in clear is refused:
    ``ReferenceValidationError``)."""
    if b'"schema":"' + SEALED_REFERENCE_SCHEMA.encode() + b'"' in data:
        return decode_sealed_reference(data)
    record, canonical = decode_and_canonicalize_reference(data)
    if record.kind not in CLEAR_REFERENCE_KINDS:
        raise ReferenceValidationError(
            "kind",
            f"a {record.kind} record in clear: this ledger is sealed, such records must be "
            "sealed to the ingest key",
        )
    return record, canonical


def _sealed_reference_key(r: SealedReference | SealedReferenceDocument | ReferenceRecord) -> Any:
    if isinstance(r, SealedReferenceDocument):  # as verify reads it: the record id is sealed
        return ("sealed", r.sealed_commitment)
    if isinstance(r, SealedReference):
        return (r.document.kind, r.record.record_id, r.document.version)
    return (r.kind, r.record_id, r.version)


#: reference data of a sealed ledger (ADR 0037), in the reference table: ``record_id`` and
#: ``subject_id`` hold pseudonyms (``careledger_core.sealed_reference``), ``canonical`` the
#: sealed document, ``sealed`` and ``data_key_id`` the record under its subject's key.
#: Kinds that name no one (erasures, legal holds) stay in clear in the same chains.
#: ``read_columns`` are what the documents say; the pseudonyms are checked where the key
#: store opens the records (``verifiers/integrity/sealed.py``).
SEALED_REFERENCE = RecordKind(
    name="sealed-reference",
    table="reference_records",
    columns=(
        "record_id",
        "kind",
        "version",
        "subject_id",
        "recorded_at",
        "effective_at",
        "effective_date",
        "retracted",
        "sealed",
        "data_key_id",
    ),
    decode=decode_sealed_reference_row,
    record_id=lambda r: r.record_id,
    time_of=lambda r: r.recorded_at,
    values=_sealed_reference_values,
    read_columns=(
        "kind",
        "version",
        "recorded_at",
        "effective_at",
        "retracted",
        "effective_date",
    ),
    unique_key=_sealed_reference_key,
    read_values=lambda r: (
        r.kind.encode(),
        r.version,
        r.recorded_at.encode(),
        r.effective_at.encode(),
        1 if r.retracted else 0,
        _date(r.effective_at),
    ),
    read_types=(bytes, int, bytes, bytes, int, dt.date),
    private_columns=("record_id", "subject_id", "sealed", "data_key_id"),
)


def _raw_values(r: RawRecordEnvelope) -> tuple[Any, ...]:
    return (
        r.record_id,
        r.sha256,
        r.format,
        r.received_at,
        _date(r.received_at),
        r.source_id,
        r.protocol,
        len(r.issues),
    )


RAW = RecordKind(
    name="raw-record",
    table="raw_records",
    columns=(
        "record_id",
        "sha256",
        "format",
        "received_at",
        "received_date",
        "source_id",
        "protocol",
        "issue_count",
    ),
    decode=decode_and_canonicalize_raw,
    record_id=lambda r: r.record_id,
    time_of=lambda r: r.received_at,
    values=_raw_values,
    read_columns=(
        "record_id",
        "sha256",
        "format",
        "received_at",
        "source_id",
        "protocol",
        "issue_count",
        "received_date",
    ),
    # the same bytes received twice are two raw records (two record ids)
    unique_key=lambda r: r.record_id,
    read_values=lambda r: (
        r.record_id.encode(),
        r.sha256.encode(),
        r.format.encode(),
        r.received_at.encode(),
        r.source_id.encode(),
        r.protocol.encode(),
        len(r.issues),
        _date(r.received_at),
    ),
    read_types=(bytes, bytes, bytes, bytes, bytes, bytes, int, dt.date),
    max_bytes=MAX_ENVELOPE_BYTES,
)


@dataclass(slots=True)
class SealedRaw:
    """A sealed raw record as the processor chains it (ADR 0037,
    ``careledger.sealed_raw``): its document (the leaf's bytes) when taken; its sealed
    payload and key ids when its block is stored (the subjects' keys fetched for all the
    blocks' records at once). Until then ``sealed`` is empty and it is never written."""

    document: SealedRawDocument
    canonical: bytes  # the document's canonical bytes (the leaf's)
    payload: bytes  # in memory only
    subjects: list[tuple[str, str]]
    salt: bytes
    data_key_id: str = ""  # the key ids, comma-separated
    sealed: str = ""  # base64 of the sealed part

    @property
    def record_id(self) -> str:
        return self.document.record_id

    @property
    def received_at(self) -> str:
        return self.document.received_at


def _sealed_raw_values(r: SealedRaw | SealedRawDocument) -> tuple[Any, ...]:
    if isinstance(r, SealedRawDocument):  # a replica's row: the signed document only
        d, sealed, key_ids = r, "", ""
    else:
        if not r.sealed:
            raise RuntimeError("a sealed raw record was not sealed before its block's write")
        d, sealed, key_ids = r.document, r.sealed, r.data_key_id
    return (
        d.record_id,
        d.sha256,
        d.format,
        d.received_at,
        _date(d.received_at),
        d.source_id,
        d.protocol,
        d.issue_count,
        sealed,
        key_ids,
    )


def _sealed_raw_id(r: SealedRaw | SealedRawDocument) -> str:
    return r.record_id


#: raw records of a sealed ledger (ADR 0037): ``canonical`` holds the sealed document (the
#: envelope's public fields and a commitment), ``sealed`` the payload under the record
#: key, ``data_key_id`` the ids of the data keys it is derived from. ``read_columns`` are
#: the document's, as for raw records in clear; the rest is checked where the key store
#: opens the records (``verifiers/integrity/sealed.py``).
SEALED_RAW = RecordKind(
    name="sealed-raw-record",
    table="raw_records",
    columns=(*RAW.columns, "sealed", "data_key_id"),
    decode=decode_sealed_raw,
    record_id=_sealed_raw_id,
    time_of=lambda r: r.received_at,
    values=_sealed_raw_values,
    read_columns=RAW.read_columns,
    unique_key=_sealed_raw_id,
    read_values=lambda r: (
        r.record_id.encode(),
        r.sha256.encode(),
        r.format.encode(),
        r.received_at.encode(),
        r.source_id.encode(),
        r.protocol.encode(),
        r.issue_count,
        _date(r.received_at),
    ),
    read_types=RAW.read_types,
    max_bytes=MAX_RAW_TRANSIT_BYTES,  # a transit record (the gateway refuses larger)
    private_columns=("sealed", "data_key_id"),
)


def topic_of(chain_id: str) -> str:
    """``<origin>/<topic>/<partition>`` -> topic (topic names cannot contain '/')."""
    parts = chain_id.rsplit("/", 2)
    return parts[-2] if len(parts) == 3 else ""


def reference_topics(settings: Any) -> frozenset[str]:
    return frozenset(
        (
            settings.topic_consents,
            settings.topic_care_relationships,
            settings.topic_workforce,
            settings.topic_patients,
            settings.topic_sources,
        )
    )


def raw_topics(settings: Any) -> frozenset[str]:
    """The topics of raw records (the ingest gateway's received bytes)."""
    return frozenset((settings.topic_raw,))


def sealed_topics(settings: Any) -> frozenset[str]:
    """The sealed topics of a sealed ledger: its events, the gateway's raw records and the
    reference data that names a person (consents, care relationships, the workforce
    directory, patients); the sources' topic stays in clear."""
    if not settings.seal_events:
        return frozenset()
    return frozenset(
        (
            settings.topic_events,
            settings.topic_raw,
            settings.topic_consents,
            settings.topic_care_relationships,
            settings.topic_workforce,
            settings.topic_patients,
        )
    )


def sealed_kind(topic: str, reference: frozenset[str]) -> RecordKind:
    """The kind of a sealed topic: sealed reference data, or sealed access events."""
    return SEALED_REFERENCE if topic in reference else SEALED


def kind_for_topic(settings: Any, topic: str) -> RecordKind:
    if topic in raw_topics(settings):
        return SEALED_RAW if settings.seal_events else RAW
    if topic in sealed_topics(settings):
        return sealed_kind(topic, reference_topics(settings))
    return REFERENCE if topic in reference_topics(settings) else ACCESS
