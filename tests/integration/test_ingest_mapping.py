"""Issue 11 part 5 end to end: published disclosures through the gateway, the same record
sent twice (HTTP twice; syslog over TCP and over UDP), the UDP datagram hashed as
received, ``verify`` reporting the duplicates (ADR 0023) and the HIPAA accounting of
disclosures naming the recipient, with proofs that verify. Real Kafka and ClickHouse.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from careledger.config import Settings
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
from verifiers.integrity.duplicates import check_duplicate_events

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ingest"
DISCLOSURE = FIXTURES / "balp" / "AuditEvent-ex-auditPrivacyDisclosure-source.json"
HL7_DISCLOSURE = FIXTURES / "fhir-r4" / "auditevent-example-disclosure.json"
EXPORT_XML = FIXTURES / "atna" / "rfc3881-openatna-partid.xml"


def _duplicates(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["code"] == "DUPLICATE_EVENT"]


def test_duplicates_are_reported_udp_is_hashed_as_received_and_recipients_shown(
    isolated: Settings, tmp_path: Path
) -> None:
    signing = with_source(
        with_keys(isolated, tmp_path),
        tmp_path,
        "gateway-mapping",
        signs_for=("ehr-east", "legacy-lab", "pacs-net"),
    )
    gateway = start_gateway(signing, tmp_path)
    frame = syslog_message(EXPORT_XML.read_bytes())
    # what many senders put in a datagram (UDP identifies no source since issue 12:
    # sent octet-counted over TCP, the frame is recorded as received, LF included)
    datagram = frame + b"\n"
    try:
        for i in range(2):  # the same record sent twice (a retry, signed anew)
            r = post(gateway, "/AuditEvent", DISCLOSURE.read_bytes(), now=time.time() + i)
            assert r.status_code == 201, r.text[:500]
        r = post(gateway, "/AuditEvent", HL7_DISCLOSURE.read_bytes())
        assert r.status_code == 201, r.text[:500]
        send_stream(gateway, "syslog-tcp", octet_counted(frame))
        send_stream(gateway, "syslog-tcp", octet_counted(datagram))
    finally:
        stop(gateway.proc)
    assert "Traceback" not in gateway.log.read_text(errors="replace")
    s = gateway.settings
    raws = raw_records(s, 5)
    assert len(raws) == 5
    assert not read_topic(s, s.topic_dead_letter, 0, timeout=3)

    # (f) the UDP raw record is the datagram received, byte for byte, and its hash
    (udp,) = [x for x in raws if base64.b64decode(x["data"]) == datagram]
    assert udp["sha256"] == hashlib.sha256(datagram).hexdigest()
    (tcp,) = [x for x in raws if base64.b64decode(x["data"]) == frame]
    assert tcp["sha256"] == hashlib.sha256(frame).hexdigest() != udp["sha256"]

    ps = processor_settings(s, require_source_signatures=True)
    proc = start_processor(ps, tmp_path / "processor.log")
    try:
        store = store_for(ps)

        def chained() -> bool:
            ev = store.backend.execute(f"SELECT count() FROM {store.db}.access_events")
            return int(ev[0][0]) >= 5

        wait_until(chained, 120, what="the five records' events chained")
        events = [
            json.loads(c)
            for (c,) in store.backend.execute(f"SELECT canonical FROM {store.db}.access_events")
        ]
    finally:
        stop(proc)
    assert len(events) == 5  # nothing dropped: both copies are chained

    # (e) verify reports each duplicate with both positions; the ledger is intact
    result = run_cli(ps, "verify", "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["result"] == "intact"
    dups = _duplicates(report)
    assert len(dups) == 2, dups
    # the candidate search in slices of the key space (flat memory on a large ledger)
    # finds what one pass finds: here one row a pass, five passes
    sliced = check_duplicate_events(store_for(ps), rows_per_pass=1)
    one_pass = check_duplicate_events(store_for(ps))
    assert sorted((f.chain_id, f.height, f.event_index) for f in sliced) == sorted(
        (f.chain_id, f.height, f.event_index) for f in one_pass
    )
    assert len(sliced) == 2
    raw_of = {e["event_id"]: e["raw_ref"]["sha256"] for e in events}
    same_raw = {d["details"]["same_raw_record"] for d in dups}
    assert same_raw == {True, False}  # HTTP: the same bytes; TCP vs UDP: other bytes
    for d in dups:
        first, dup = d["details"]["first"], d["details"]["duplicate"]
        assert d["severity"] == "info"
        assert (first["chain_id"], first["height"], first["index"]) != (
            dup["chain_id"],
            dup["height"],
            dup["index"],
        )
        assert dup["event_id"] == d["event_id"]
        assert raw_of[dup["event_id"]] == dup["raw_sha256"]
    udp_tcp = next(d for d in dups if not d["details"]["same_raw_record"])
    assert {
        udp_tcp["details"]["first"]["raw_sha256"],
        udp_tcp["details"]["duplicate"]["raw_sha256"],
    } == {
        tcp["sha256"],
        udp["sha256"],
    }
    human = run_cli(ps, "verify", "--no-record")
    assert "DUPLICATE_EVENT" in human.stdout, human.stdout[-2000:]

    # (a) the accounting of disclosures names the recipient and who disclosed
    out = tmp_path / "hipaa.json"
    rep = run_cli(
        ps,
        "access-report",
        "--patient",
        "example",
        "--from",
        "2013-09-22",
        "--to",
        "2013-09-22",
        "--view",
        "hipaa-disclosures",
        "--format",
        "json",
        "--out",
        str(out),
    )
    assert rep.returncode == 0, rep.stdout + rep.stderr
    doc = json.loads(out.read_text())
    (line,) = doc["lines"]
    assert line["recipient"] == "Where (Practitioner/example) at marketing.land"
    assert line["disclosed_by"] == (
        "That guy everyone wishes would be caught (SomeIdiot@nowhere) at custodian.net"
    )
    table = run_cli(
        ps,
        "access-report",
        "--patient",
        "example",
        "--from",
        "2013-09-22",
        "--to",
        "2013-09-22",
        "--view",
        "hipaa-disclosures",
    )
    assert table.returncode == 0 and "marketing.land" in table.stdout, table.stdout
    proof = run_cli(ps, "verify-proof", str(out), "--trusted-key", ps.trusted_keys[0])
    assert proof.returncode == 0 and "VERIFIED" in proof.stdout, proof.stdout + proof.stderr
    # with the event bytes, the recipient shown is bound to them: an edited one fails
    full = tmp_path / "hipaa-full.json"
    rep = run_cli(
        ps,
        "access-report",
        "--patient",
        "example",
        "--from",
        "2013-09-22",
        "--to",
        "2013-09-22",
        "--view",
        "hipaa-disclosures",
        "--format",
        "json",
        "--include-event-bytes",
        "--out",
        str(full),
    )
    assert rep.returncode == 0, rep.stdout + rep.stderr
    ok = run_cli(ps, "verify-proof", str(full), "--trusted-key", ps.trusted_keys[0])
    assert ok.returncode == 0 and "content verified" in ok.stdout, ok.stdout + ok.stderr
    for field, forged in (("recipient", "Nobody in particular"), ("disclosed_by", "Dr. Good")):
        edited = json.loads(full.read_text())
        edited["lines"][0][field] = forged
        path = tmp_path / f"hipaa-{field}.json"
        path.write_text(json.dumps(edited))
        bad = run_cli(ps, "verify-proof", str(path), "--trusted-key", ps.trusted_keys[0])
        assert bad.returncode == 1, (field, bad.stdout + bad.stderr)

    # tampering: a side column edited to hide a duplicate, and the recipient rewritten in
    # the event bytes the report shows, are both findings of verify (exit 1)
    store = store_for(ps)
    hidden = next(d for d in dups if d["details"]["same_raw_record"])["details"]["duplicate"]
    _mutate(
        store,
        f"ALTER TABLE {store.db}.access_events UPDATE actor_id = 'someone-else' "
        "WHERE chain_id = %(c)s AND height = %(h)s AND idx = %(i)s",
        {"c": hidden["chain_id"], "h": hidden["height"], "i": hidden["index"]},
    )
    _mutate(
        store,
        f"ALTER TABLE {store.db}.access_events UPDATE canonical = "
        "replaceAll(canonical, 'marketing.land', 'marketing.lane') "
        "WHERE position(canonical, 'marketing.land') > 0",
        {},
    )
    tampered = run_cli(ps, "verify", "--json", "--no-record")
    assert tampered.returncode == 1, tampered.stdout[-3000:] + tampered.stderr[-2000:]
    found = json.loads(tampered.stdout.splitlines()[-1])["findings"]
    at = {(f["code"], f["chain_id"], f["height"], f["event_index"]) for f in found}
    assert ("EVENT_FIELD_MISMATCH", hidden["chain_id"], hidden["height"], hidden["index"]) in at
    assert any(f["code"] == "EVENT_HASH_MISMATCH" for f in found)
    # the hidden copy no longer pairs up, the TCP/UDP one still does
    assert len(_duplicates({"findings": found})) == 1


def _mutate(store: Any, statement: str, params: dict[str, Any]) -> None:
    """An ALTER ... UPDATE, waited for (mutations are asynchronous)."""
    store.backend.execute(statement, params)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pending = store.backend.execute(
            "SELECT count() FROM system.mutations WHERE database = %(db)s AND is_done = 0",
            {"db": store.db},
        )
        if int(pending[0][0]) == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"mutation did not finish: {statement}")
