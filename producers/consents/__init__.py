"""Consent intake: FHIR R4 / R5 Consent resources (JSON or XML) as sent -> ledgered
``consent`` reference records (docs/adr/0022-consent-intake.md).

Modules: ``fhir_xml`` (safe FHIR XML -> FHIR JSON), ``intake`` (checks, attachment
hashes, versions, the reference record; pure), ``ingest`` (the gateway's Jobs),
``load`` (``careledger consent load``: files -> Kafka).
"""
