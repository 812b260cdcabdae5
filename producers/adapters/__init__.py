"""Ingest adapters: audit records as hospital systems already send them -> access events.

Pure parsing, no I/O: bytes in, :class:`ParseResult` out. The ingest gateway (HTTP FHIR
endpoints, syslog transports) calls these and publishes the events; a record that cannot
be parsed at all raises :class:`IngestError` (a stable ``code``) and is dead-lettered
with its bytes. A record that parses but departs from the standards is accepted and its
departures are listed as :class:`Conformance` issues (IHE BALP: an audit repository
shall not reject an AuditEvent for non-conformance).

    result = parse_dicom_audit_xml(msg_bytes, received_at=ts, transport={"MSGID": "..."})
    for event in result.events:          # one per patient named (patient "-" if none)
        producer.send(event)

Formats: FHIR R4 / R5 AuditEvent JSON (:func:`parse_fhir_audit_event`), ITI-20 Bundles
(:func:`parse_fhir_bundle`, or :func:`parse_fhir` for either), DICOM PS3.15 A.5 and
RFC 3881 ``AuditMessage`` XML (:func:`parse_dicom_audit_xml`). Field mapping, fallbacks
and every code: docs/ingest-mapping.md.
"""

from ._model import (
    DEFAULT_MAX_BYTES,
    ERROR_CODES,
    FORMAT_DICOM_XML,
    FORMAT_FHIR_BUNDLE,
    FORMAT_FHIR_R4,
    FORMAT_FHIR_R5,
    FORMAT_RFC3881_XML,
    ISSUE_CODES,
    MIN_MAX_BYTES,
    Conformance,
    EntryResult,
    IngestError,
    ParseResult,
    RawRecord,
)
from ._values import derived_event_id
from .dicom import parse_dicom_audit_xml
from .fhir import parse_fhir, parse_fhir_audit_event, parse_fhir_bundle

#: The same parser under the name of the transport profile (IHE ATNA over syslog).
parse_atna_xml = parse_dicom_audit_xml

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ERROR_CODES",
    "FORMAT_DICOM_XML",
    "FORMAT_FHIR_BUNDLE",
    "FORMAT_FHIR_R4",
    "FORMAT_FHIR_R5",
    "FORMAT_RFC3881_XML",
    "ISSUE_CODES",
    "MIN_MAX_BYTES",
    "Conformance",
    "EntryResult",
    "IngestError",
    "ParseResult",
    "RawRecord",
    "derived_event_id",
    "parse_atna_xml",
    "parse_dicom_audit_xml",
    "parse_fhir",
    "parse_fhir_audit_event",
    "parse_fhir_bundle",
]
