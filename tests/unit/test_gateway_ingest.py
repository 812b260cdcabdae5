"""Received bytes -> raw record + events, or a dead letter (the gateway's pure part)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from careledger.storage.kinds import RAW
from producers.gateway.auth import Identity
from producers.gateway.framing import FrameError
from producers.gateway.ingest import Ingestor, frame_error_job, received

XML = (
    b'<?xml version="1.0"?><AuditMessage><EventIdentification EventActionCode="R" '
    b'EventDateTime="2026-11-29T09:20:00Z" EventOutcomeIndicator="0"><EventID '
    b'csd-code="110110" codeSystemName="DCM" originalText="Patient Record"/>'
    b'</EventIdentification><ActiveParticipant UserID="u1" UserIsRequestor="true"/>'
    b'<AuditSourceIdentification AuditSourceID="pacs"/>'
    b'<ParticipantObjectIdentification ParticipantObjectID="P1" ParticipantObjectTypeCode="1" '
    b'ParticipantObjectTypeCodeRole="1"><ParticipantObjectIDTypeCode csd-code="2"/>'
    b"</ParticipantObjectIdentification>"
    b'<ParticipantObjectIdentification ParticipantObjectID="P2" ParticipantObjectTypeCode="1" '
    b'ParticipantObjectTypeCodeRole="1"><ParticipantObjectIDTypeCode csd-code="2"/>'
    b"</ParticipantObjectIdentification></AuditMessage>"
)
FRAME = b"<85>1 2026-11-29T09:20:01Z pacs PACS 12 IHE+RFC-3881 - " + XML
WHO = Identity("pacs-net", "open", "127.0.0.1")
ING = Ingestor(1 << 20)


def headers(job: Any) -> dict[str, str]:
    (dl,) = job.dead_letters
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in dl.headers}


def test_syslog_frame_becomes_a_raw_record_and_one_event_per_patient() -> None:
    rec = received(FRAME, "syslog-tcp", {"peer": "127.0.0.1:5000", "framing": "octet-counting"})
    job, refused = ING.syslog_frame(rec, WHO)
    assert refused is None and not job.dead_letters
    assert job.raw is not None and job.on_behalf_of == "pacs-net"
    key, value = job.raw
    assert key == b"pacs-net"
    envelope, canonical = RAW.decode(value)
    assert canonical == value
    assert envelope.sha256 == hashlib.sha256(FRAME).hexdigest() == rec.sha256
    assert base64.b64decode(envelope.data) == FRAME
    assert envelope.format.startswith("syslog+")
    t = envelope.transport
    assert (t["protocol"], t["pri"], t["hostname"], t["app_name"], t["procid"], t["msgid"]) == (
        "syslog-tcp",
        "85",
        "pacs",
        "PACS",
        "12",
        "IHE+RFC-3881",
    )
    assert (t["source_id"], t["auth"], t["framing"]) == ("pacs-net", "open", "octet-counting")
    assert sorted(e.patient.id for e in job.events) == ["P1", "P2"]
    for e in job.events:
        assert e.raw_ref is not None
        assert e.raw_ref.sha256 == rec.sha256 and e.raw_ref.format == envelope.format


def test_refused_frames_are_dead_letters_with_their_bytes() -> None:
    for data, code in (
        (b"no pri here", "SYSLOG_NO_PRI"),
        (b"<85>1 - - - - - - <AuditMessage><broken", "NOT_XML"),
        (
            b'<85>1 - - - - - - <!DOCTYPE x [<!ENTITY a "aaaa">]><AuditMessage>&a;</AuditMessage>',
            "XML_FORBIDDEN",
        ),
    ):
        rec = received(data, "syslog-udp", {"peer": "127.0.0.1:1"})
        job, refused = ING.syslog_frame(rec, WHO)
        assert refused == code and job.raw is None and not job.events
        (dl,) = job.dead_letters
        assert dl.value == data
        h = headers(job)
        assert h["careledger-error-code"] == code
        assert h["careledger-source-topic"] == "gateway/syslog-udp"
        assert (h["careledger-source-partition"], h["careledger-source-offset"]) == ("-1", "-1")
        assert h["careledger-raw-sha256"] == hashlib.sha256(data).hexdigest()
        assert json.loads(h["careledger-transport"])["peer"] == "127.0.0.1:1"


def test_an_unidentified_syslog_sender_is_dead_lettered() -> None:
    job, refused = ING.syslog_frame(received(FRAME, "syslog-tcp", {}), None)
    assert refused == "UNAUTHENTICATED" and job.raw is None
    assert job.dead_letters[0].value == FRAME


def test_an_oversized_frame_keeps_its_first_bytes() -> None:
    error = FrameError("FRAME_TOO_LARGE", "too large", b"<85>1 abc", 5_000_000, "octet-counting")
    rec = received(error.prefix, "syslog-tls", {"framing": error.framing})
    job = frame_error_job(rec, error)
    h = headers(job)
    assert h["careledger-error-code"] == "FRAME_TOO_LARGE"
    assert h["careledger-original-size"] == "5000000"
    assert job.dead_letters[0].value == b"<85>1 abc"


def r4(patient: str) -> dict[str, Any]:
    return {
        "resourceType": "AuditEvent",
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
        },
        "action": "R",
        "recorded": "2026-11-29T09:15:01Z",
        "agent": [{"who": {"identifier": {"value": "dr"}}, "requestor": True}],
        "source": {"observer": {"display": "ehr"}},
        "entity": [{"what": {"reference": f"Patient/{patient}"}, "role": {"code": "1"}}],
    }


def test_batch_bundle_keeps_good_entries_and_dead_letters_bad_ones() -> None:
    bad_entry = {"resource": {"resourceType": "Patient"}, "request": {"method": "POST"}}
    doc = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": r4("A"), "request": {"method": "POST", "url": "AuditEvent"}},
            bad_entry,
        ],
    }
    body = json.dumps(doc).encode()
    who = Identity("ehr", "signature", "k")
    out = ING.fhir_bundle(received(body, "http", {}), who)
    assert out.kind == "batch" and out.error is None and not out.refused_entries
    assert out.job.raw is not None
    envelope, _ = RAW.decode(out.job.raw[1])
    assert base64.b64decode(envelope.data) == body  # the whole Bundle, as received
    assert "ENTRY_REFUSED" in {i.code for i in envelope.issues}
    assert [e.patient.id for e in out.job.events] == ["A"]
    (dl,) = out.job.dead_letters
    assert json.loads(dl.value) == bad_entry  # the entry's own bytes
    assert dict((k, v) for k, v in dl.headers)["careledger-bundle-entry"] == b"1"

    doc["type"] = "transaction"
    out = ING.fhir_bundle(received(json.dumps(doc).encode(), "http", {}), who)
    assert out.kind == "transaction" and out.refused_entries and out.job.raw is None
    assert not out.job.events
    assert headers(out.job)["careledger-error-code"] == "TRANSACTION_REFUSED"


def test_not_json_is_refused_with_its_bytes() -> None:
    out = ING.fhir_audit_event(received(b"<xml/>", "http", {}), Identity("ehr", "mtls", "x"))
    assert out.error is not None and out.error.code == "NOT_JSON"
    assert out.job.raw is None and out.job.dead_letters[0].value == b"<xml/>"
