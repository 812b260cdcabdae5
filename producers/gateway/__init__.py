"""The ingest gateway: audit records the way hospital systems already send them.

FHIR AuditEvent over HTTP (IHE ITI-20) and DICOM / RFC 3881 audit XML over syslog
(RFC 5424 over TCP with RFC 6587 framing, TLS per RFC 5425, UDP per RFC 5426). Each
received record is kept as a ledgered raw record (``careledger.raw_record``), turned
into access events by ``producers.adapters`` and produced to Kafka; the sender is told
"accepted" only once Kafka has acknowledged both. See docs/design.md, "Ingest gateway".

Modules: ``framing`` (RFC 6587 frames), ``syslog`` (RFC 5424 header), ``fhir``
(OperationOutcome, CapabilityStatement, Bundle responses), ``auth`` (who sent it),
``publisher`` (Kafka, acknowledgements), ``ingest`` (bytes -> raw record + events or a
dead letter), ``http`` (the ASGI app), ``server`` (listeners and `careledger gateway`),
``benchmark`` (`careledger benchmark-gateway`).
"""
