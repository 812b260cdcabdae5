"""Published example records round-trip through the gateway into verified blocks.

Every example kept under tests/fixtures/ingest/ (HL7 FHIR R4 and R5 AuditEvents, IHE
BALP examples, ATNA audit messages in the DICOM and RFC 3881 dialects; sources and
licences in its README) is sent to the running gateway the way a hospital system
would: FHIR over HTTP with a signed request, ATNA over syslog TCP. The gateway signs
what it relays; the processor, requiring source signatures, chains every event and
raw record; `verify` finds the ledger intact and nothing is quarantined.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from careledger.config import Settings
from producers.adapters import parse_dicom_audit_xml, parse_fhir
from producers.gateway.framing import octet_counted
from tests.integration.pipeline import (
    processor_settings,
    run_cli,
    start_processor,
    stop,
    store_for,
    wait_until,
    with_keys,
    with_source,
)
from tests.integration.test_gateway import (
    post,
    raw_records,
    read_topic,
    send_stream,
    start_gateway,
    syslog_message,
)

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ingest"
FHIR = sorted(p for d in ("fhir-r4", "fhir-r5", "balp") for p in (FIXTURES / d).glob("*.json"))
ATNA = sorted((FIXTURES / "atna").glob("*.xml"))
NOW = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_published_examples_round_trip_into_verified_blocks(
    isolated: Settings, tmp_path: Path
) -> None:
    assert len(FHIR) >= 10 and len(ATNA) >= 6
    # what the gateway's parsers make of each example: the events that must be chained
    expected = sum(len(parse_fhir(p.read_bytes(), received_at=NOW).events) for p in FHIR) + sum(
        len(parse_dicom_audit_xml(p.read_bytes(), received_at=NOW).events) for p in ATNA
    )
    signing = with_source(
        with_keys(isolated, tmp_path),
        tmp_path,
        "gateway-examples",
        signs_for=("ehr-east", "legacy-lab", "pacs-net"),
    )
    gateway = start_gateway(signing, tmp_path)
    try:
        for path in FHIR:
            r = post(gateway, "/AuditEvent", path.read_bytes())
            assert r.status_code == 201, f"{path.name}: {r.status_code} {r.text[:500]}"
            assert r.headers["location"].startswith("AuditEvent/")
        stream = b"".join(octet_counted(syslog_message(p.read_bytes())) for p in ATNA)
        send_stream(gateway, "syslog-tcp", stream)
    finally:
        stop(gateway.proc)
    assert "Traceback" not in gateway.log.read_text(errors="replace")
    s = gateway.settings
    raws = raw_records(s, len(FHIR) + len(ATNA))
    assert len(raws) == len(FHIR) + len(ATNA)
    assert not read_topic(s, s.topic_dead_letter, 0, timeout=3), "an example was refused"

    ps = processor_settings(s, require_source_signatures=True)
    proc = start_processor(ps, tmp_path / "processor.log")
    try:
        store = store_for(ps)

        def chained() -> bool:
            ev = store.backend.execute(f"SELECT count() FROM {store.db}.access_events")
            raw = store.backend.execute(f"SELECT count() FROM {store.db}.raw_records")
            return int(ev[0][0]) >= expected and int(raw[0][0]) >= len(raws)

        wait_until(chained, 120, what="every example's events and raw record chained")
        events = [
            json.loads(c)
            for (c,) in store.backend.execute(f"SELECT canonical FROM {store.db}.access_events")
        ]
    finally:
        stop(proc)
    assert len(events) == expected
    # every event names the raw record it came from, and every raw record is ledgered
    assert {e["raw_ref"]["sha256"] for e in events} <= {r["sha256"] for r in raws}
    result = run_cli(ps, "verify", "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["result"] == "intact"
    assert report["sources"]["signed_events"] == expected
    assert not read_topic(s, s.topic_quarantine, 0, timeout=3)
