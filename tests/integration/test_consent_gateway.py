"""Consent intake through the real gateway, Kafka, processor and ClickHouse (issue 11.1).

Published HL7 / IHE Consent examples (tests/fixtures/consent/, byte for byte) are sent
as a real sender would: signed requests and mTLS; JSON and XML; POST, PUT and Bundles.
Each version ends as a chained, verified ``consent`` reference record next to the raw
record of the bytes received. Nothing is mocked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from careledger.config import Settings
from careledger_core.reference import decode_reference, thaw
from producers.consents.intake import INTAKE_URL
from producers.gateway.auth import signed_headers
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
    Running,
    headers_of,
    r4_event,
    raw_records,
    read_topic,
    start_gateway,
)

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "consent"
OUT_JSON = FIXTURES / "r4" / "consent-example-Out.json"
OUT_XML = FIXTURES / "r4" / "consent-example-Out.xml"
JSON = "application/fhir+json"
XML = "application/fhir+xml"


def send(
    running: Running,
    method: str,
    path: str,
    body: bytes,
    media: str = JSON,
    *,
    sign: bool = True,
    headers: dict[str, str] | None = None,
    scheme: str = "http",
    cert: bool = False,
) -> httpx.Response:
    h = {"Content-Type": media, **(headers or {})}
    if sign:
        h.update(signed_headers("ehr-east", running.request_key, method, path, body))
    verify: ssl.SSLContext | bool = running.client_context(cert) if scheme == "https" else True
    with httpx.Client(verify=verify, timeout=60) as client:
        return client.request(method, running.url(path, scheme), content=body, headers=h)


def consents_in(settings: Settings, want: int, timeout: float = 30.0) -> list[Any]:
    return [
        decode_reference(m.value())
        for m in read_topic(settings, settings.topic_consents, want, timeout=timeout)
    ]


def intake_of(record: Any) -> dict[str, Any]:
    body = thaw(record.body)
    ext = next(e for e in body["meta"]["extension"] if e["url"] == INTAKE_URL)
    return {e["url"]: e for e in ext["extension"]}


def _signing_gateway(isolated: Settings, tmp_path: Path, **changes: Any) -> Running:
    relaying = with_source(
        with_keys(isolated, tmp_path),
        tmp_path,
        "gateway-test",
        signs_for=("ehr-east", "legacy-lab", "pacs-net"),
    )
    return start_gateway(relaying, tmp_path, **changes)


def _no_traceback(running: Running) -> None:
    text = running.log.read_text(errors="replace")
    assert "Traceback" not in text, text[-4000:]


# =========================================================================== tests
def test_post_put_and_a_status_change_are_three_chained_verified_versions(
    isolated: Settings, tmp_path: Path
) -> None:
    gateway = _signing_gateway(isolated, tmp_path)
    s = gateway.settings
    try:
        published = OUT_JSON.read_bytes()
        consent_id = json.loads(published)["id"]
        # 1. POST the published example as sent (signed request)
        r = send(gateway, "POST", "/Consent", published)
        assert r.status_code == 201, r.text
        v1 = int(r.headers["etag"].split('"')[1])
        assert r.headers["location"] == f"Consent/{consent_id}/_history/{v1}"
        echoed = r.json()
        assert echoed["meta"]["versionId"] == str(v1)
        # 2. PUT: the consent withdrawn (inactive), FHIR XML over mTLS
        xml = OUT_XML.read_bytes().replace(
            b'<status value="active"/>', b'<status value="inactive"/>'
        )
        assert b"inactive" in xml
        r = send(
            gateway,
            "PUT",
            f"/Consent/{consent_id}",
            xml,
            XML,
            sign=False,
            scheme="https",
            cert=True,
        )
        assert r.status_code == 200, r.text
        v2 = int(r.headers["etag"].split('"')[1])
        # 3. PUT: entered in error (a retraction), minimal answer
        doc = json.loads(published)
        doc["status"] = "entered-in-error"
        r = send(
            gateway,
            "PUT",
            f"/Consent/{consent_id}",
            json.dumps(doc).encode(),
            headers={"Prefer": "return=minimal"},
        )
        assert r.status_code == 200 and r.content == b"", r.text
        v3 = int(r.headers["etag"].split('"')[1])
        assert v1 < v2 < v3, "versions increase per consent"
        # refusals, each with an OperationOutcome naming the FHIR path
        r = send(gateway, "POST", "/Consent", b'{"resourceType":"Patient","id":"x"}')
        assert r.status_code == 422
        issue = r.json()["issue"][0]
        assert issue["expression"] == ["Consent.resourceType"]
        assert issue["details"]["coding"][0]["code"] == "NOT_A_CONSENT"
        no_patient = json.loads(published)
        del no_patient["patient"]
        r = send(gateway, "POST", "/Consent", json.dumps(no_patient).encode())
        assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["Consent.patient"]
        r = send(gateway, "PUT", "/Consent/another-id", published)
        assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["Consent.id"]
        r = send(gateway, "POST", "/Consent", b"<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>", XML)
        assert r.status_code == 400
        # another body: the same signed (method, path, body) within the same second is a
        # replay of step 1's accepted request, refused (401) before its media type is read
        r = send(gateway, "POST", "/Consent", published + b"\n", "text/plain")
        assert r.status_code == 415
        r = send(gateway, "POST", "/Consent", published, sign=False)
        assert r.status_code == 401
        # an open (legacy) source is identified, not authenticated: 403, dead-lettered
        r = send(
            gateway,
            "POST",
            "/Consent",
            published,
            sign=False,
            headers={"X-Careledger-Source": "legacy-lab"},
        )
        assert r.status_code == 403, r.text
        huge = b'{"resourceType":"Consent","x":"' + b"a" * (s.gateway_max_record_bytes + 1) + b'"}'
        r = send(gateway, "POST", "/Consent", huge)
        assert r.status_code == 413

        records = consents_in(s, 3)
        assert len(records) == 3, "refused consents never reach the consents topic"
        assert [r.version for r in records] == [v1, v2, v3]
        assert {r.record_id for r in records} == {f"ehr-east/{consent_id}"}
        assert [r.retracted for r in records] == [False, False, True]
        assert [thaw(r.body)["status"] for r in records] == [
            "active",
            "inactive",
            "entered-in-error",
        ]
        raws = {x["record_id"]: x for x in raw_records(s, 3)}
        for record, auth in zip(records, ("signature", "mtls", "signature"), strict=True):
            info = intake_of(record)
            assert info["source"]["valueString"] == "ehr-east"
            assert info["auth"]["valueCode"] == auth
            raw = raws[info["raw-record"]["valueString"]]
            assert raw["sha256"] == info["raw-sha256"]["valueString"]
            assert hashlib.sha256(base64.b64decode(raw["data"])).hexdigest() == raw["sha256"]
        assert (
            base64.b64decode(raws[intake_of(records[0])["raw-record"]["valueString"]]["data"])
            == published
        )
        assert raws[intake_of(records[1])["raw-record"]["valueString"]]["format"] == (
            "fhir-r4-consent+xml"
        )
        letters = read_topic(s, s.topic_dead_letter, 5)
        codes = sorted(headers_of(m)["careledger-error-code"] for m in letters)
        assert codes == sorted(
            ["NOT_A_CONSENT", "NO_PATIENT", "ID_MISMATCH", "XML_FORBIDDEN", "NOT_AUTHENTICATED"]
        ), codes
        assert any(m.value() == published for m in letters), "refused bytes kept as sent"
    finally:
        stop(gateway.proc)
    _no_traceback(gateway)

    ps = processor_settings(s, require_source_signatures=True)
    proc = start_processor(ps, tmp_path / "processor.log")
    try:
        store = store_for(ps)

        def stored() -> bool:
            refs = store.backend.execute(
                f"SELECT count() FROM {store.db}.reference_records WHERE kind = 'consent'"
            )
            raw = store.backend.execute(f"SELECT count() FROM {store.db}.raw_records")
            return int(refs[0][0]) == 3 and int(raw[0][0]) == 3

        wait_until(stored, 120, what="three consent versions and their raw records chained")
    finally:
        stop(proc)
    rows = store.backend.execute(
        f"SELECT record_id, version, retracted, chain_id FROM {store.db}.reference_records "
        "WHERE kind = 'consent' ORDER BY version"
    )
    assert [int(r[1]) for r in rows] == [v1, v2, v3]
    assert len({r[3] for r in rows}) == 1, "one consent's versions are in one chain"
    result = run_cli(ps, "verify", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["result"] == "intact"


def test_a_bundle_with_consents_answers_per_entry(isolated: Settings, tmp_path: Path) -> None:
    gateway = _signing_gateway(isolated, tmp_path)
    s = gateway.settings
    try:
        grantor = json.loads((FIXTURES / "r4" / "consent-example-grantor.json").read_bytes())
        not_org = json.loads((FIXTURES / "r4" / "consent-example-notOrg.json").read_bytes())
        batch = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {
                    "resource": r4_event("PAT-BUNDLE"),
                    "request": {"method": "POST", "url": "AuditEvent"},
                },
                {"resource": grantor, "request": {"method": "POST", "url": "Consent"}},
                {
                    "resource": not_org,
                    "request": {"method": "PUT", "url": f"Consent/{not_org['id']}"},
                },
                {
                    "resource": {"resourceType": "Consent", "status": "active"},
                    "request": {"method": "POST", "url": "Consent"},
                },
            ],
        }
        r = send(gateway, "POST", "/", json.dumps(batch).encode())
        assert r.status_code == 200, r.text
        statuses = [e["response"]["status"] for e in r.json()["entry"]]
        assert [x.split()[0] for x in statuses] == ["201", "201", "201", "422"]
        locations = [e["response"].get("location", "") for e in r.json()["entry"]]
        assert locations[0].startswith("AuditEvent/")
        assert locations[1].startswith(f"Consent/{grantor['id']}/_history/")
        outcome = r.json()["entry"][3]["response"]["outcome"]
        assert outcome["issue"][0]["expression"] == ["Bundle.entry[3].resource.patient"]
        # an XML Bundle of published XML consents
        inner = b"".join(
            b"<entry><resource>" + p.read_bytes().split(b"?>", 1)[-1] + b"</resource>"
            b"<request><method value='POST'/><url value='Consent'/></request></entry>"
            for p in (
                FIXTURES / "r4" / "consent-example-notThem.xml",
                FIXTURES / "r4" / "consent-example-notTime.xml",
            )
        )
        xml = (
            b"<Bundle xmlns='http://hl7.org/fhir'><type value='transaction'/>"
            + inner
            + b"</Bundle>"
        )
        r = send(gateway, "POST", "/", xml, XML)
        assert r.status_code == 200, r.text
        assert r.json()["type"] == "transaction-response"
        records = consents_in(s, 4)
        assert sorted(x.record_id for x in records) == sorted(
            f"ehr-east/{i}"
            for i in (
                grantor["id"],
                not_org["id"],
                "consent-example-notThem",
                "consent-example-notTime",
            )
        )
        entries = sorted(intake_of(x)["bundle-entry"]["valueInteger"] for x in records)
        assert entries == [0, 1, 1, 2]
        letters = read_topic(s, s.topic_dead_letter, 1)
        assert [headers_of(m)["careledger-error-code"] for m in letters] == ["NO_PATIENT"]
        refused = json.loads(letters[0].value())  # the entry's own bytes
        assert refused["resource"] == {"resourceType": "Consent", "status": "active"}
    finally:
        stop(gateway.proc)
    _no_traceback(gateway)


def test_a_consent_while_kafka_is_down_is_503_and_not_lost(
    isolated: Settings, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    published = OUT_JSON.read_bytes()
    (tmp_path / "down").mkdir()
    (tmp_path / "up").mkdir()
    down = start_gateway(
        isolated, tmp_path / "down", kafka_port=dead_port, gateway_ack_timeout_s=2.0
    )
    try:
        r = send(down, "POST", "/Consent", published)
        assert r.status_code == 503, r.text
        assert r.json()["issue"][0]["code"] == "transient" and "retry-after" in r.headers
    finally:
        stop(down.proc)
    # the sender still has it (nothing was acknowledged) and retries: ledgered once
    up = _signing_gateway(isolated, tmp_path / "up")
    try:
        r = send(up, "POST", "/Consent", published)
        assert r.status_code == 201, r.text
        records = consents_in(up.settings, 1)
        assert len(records) == 1
    finally:
        stop(up.proc)
    _no_traceback(up)


def test_consent_load_ledgers_a_directory_of_published_examples(
    isolated: Settings, tmp_path: Path
) -> None:
    files = sorted(p for p in FIXTURES.rglob("*") if p.suffix in (".json", ".xml"))
    result = run_cli(isolated, "consent", "load", str(FIXTURES), "--source", "ehr-archive")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.count(": ledgered: consent ehr-archive/") == len(files)
    records = consents_in(isolated, len(files))
    assert len(records) == len(files)
    raws = raw_records(isolated, len(files))
    assert {x["transport"]["auth"] for x in raws} == {"operator"}
    assert {x["transport"]["source_id"] for x in raws} == {"ehr-archive"}
    # a rejected file: exit 1, the others ledgered, the reason printed
    bad_dir = tmp_path / "mixed"
    bad_dir.mkdir()
    (bad_dir / "a.json").write_bytes(OUT_JSON.read_bytes())
    (bad_dir / "b.json").write_bytes(b'{"resourceType":"Patient"}')
    result = run_cli(isolated, "consent", "load", str(bad_dir), "--source", "ehr-archive")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "b.json: rejected: NOT_A_CONSENT at Consent.resourceType" in result.stdout
    # Kafka unreachable: exit 2, one line, no traceback
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    result = run_cli(
        isolated.replace(kafka_port=dead_port), "consent", "load", str(bad_dir), "--source", "x"
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert len(result.stdout.strip().splitlines()) == 1 and "Kafka" in result.stdout
