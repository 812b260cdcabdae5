"""Consent intake (issue 11 part 1): FHIR Consent JSON / XML -> ledgered reference records.

Fixtures are HL7's and IHE's published Consent examples, byte for byte
(tests/fixtures/consent/, see its README). The attacks: XML bombs and external
entities, deep nesting, wrong resource types, no patient, bad attachments, a sender
forging the intake extension, open (unauthenticated) sources.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from careledger_core.reference import decode_reference, thaw
from producers.consents.fhir_xml import MAX_DEPTH, read_fhir_xml
from producers.consents.ingest import ingest_bundle, ingest_consent
from producers.consents.intake import (
    INTAKE_URL,
    ConsentProblem,
    IntakeContext,
    VersionClock,
    build_consent_record,
    check_consent,
    consent_id_for,
    decode_document,
)
from producers.gateway.auth import Identity
from producers.gateway.ingest import Ingestor, received

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "consent"
TOPIC = "careledger.consents"
SIGNED = Identity("ehr-east", "signature", "key-1")
OPEN = Identity("legacy-lab", "open", "10.0.0.9")
CTX = IntakeContext(
    source_id="ehr-east",
    auth="signature",
    raw_record_id="00000000-0000-4000-8000-000000000000",
    raw_sha256="0" * 64,
    raw_format="fhir-r4-consent+json",
    received_at="2026-12-01T00:00:00.000000Z",
)


def _pairs() -> list[Path]:
    return sorted(p for p in FIXTURES.rglob("*.xml") if p.with_suffix(".json").exists())


def _examples() -> list[Path]:
    return sorted(p for p in FIXTURES.rglob("*") if p.suffix in (".json", ".xml"))


def _without_div(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(doc))
    out.get("text", {}).pop("div", None)
    return out


def _record(resource: dict[str, Any], clock: VersionClock | None = None) -> Any:
    hashes = check_consent(resource)
    return build_consent_record(
        resource,
        consent_id=consent_id_for(resource, None, "Consent"),
        ctx=CTX,
        hashes=hashes,
        clock=clock or VersionClock(),
    )


def _consent(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resourceType": "Consent",
        "id": "c1",
        "status": "active",
        "subject": {"reference": "Patient/P1"},
        "decision": "deny",
    }
    doc.update(changes)
    return doc


def _intake(body: Any) -> dict[str, Any]:
    ext = next(e for e in body["meta"]["extension"] if e["url"] == INTAKE_URL)
    return {e["url"]: e for e in ext["extension"] if e["url"] != "attachment"} | {
        "attachments": [
            {
                x["url"]: next(v for k, v in x.items() if k.startswith("value"))
                for x in a["extension"]
            }
            for a in ext["extension"]
            if a["url"] == "attachment"
        ]
    }


# ----------------------------------------------------------------------- published examples
def test_the_published_examples_are_there() -> None:
    assert len(_examples()) >= 10, "tests/fixtures/consent/ holds HL7's and IHE's examples"
    assert _pairs(), "at least one example published in both JSON and XML"


@pytest.mark.parametrize("xml_path", _pairs(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_json_and_xml_of_a_published_example_give_the_same_ledgered_body(xml_path: Path) -> None:
    from_json = decode_document(xml_path.with_suffix(".json").read_bytes())
    from_xml = decode_document(xml_path.read_bytes())
    assert from_xml.syntax == "xml" and from_json.syntax == "json"
    assert from_xml.guessed == (), "every element of the example is in the Consent table"
    # the narrative is XHTML re-serialised (white space, attribute order): compared apart
    assert _without_div(from_xml.resource) == _without_div(from_json.resource)
    div = from_xml.resource.get("text", {}).get("div")
    if div is not None:
        assert div.startswith('<div xmlns="http://www.w3.org/1999/xhtml"')
    clock_a, clock_b = VersionClock(), VersionClock()
    a = _record(_without_div(from_json.resource), clock_a)
    b = _record(_without_div(from_xml.resource), clock_b)
    assert thaw(a.body) == thaw(b.body)
    assert (a.record_id, a.retracted) == (b.record_id, b.retracted)


@pytest.mark.parametrize("path", _examples(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_published_example_is_ledgered_as_sent(path: Path) -> None:
    doc = decode_document(path.read_bytes())
    record = _record(doc.resource)
    assert record.kind == "consent"
    assert record.record_id == f"ehr-east/{doc.resource['id']}"
    body = thaw(record.body)
    # the resource as sent, plus only careledger's intake extension in meta
    sent = json.loads(json.dumps(doc.resource))
    got_meta = body.pop("meta")
    sent_meta = sent.pop("meta", {})
    assert body == sent
    assert got_meta["extension"][: len(sent_meta.get("extension", []))] == sent_meta.get(
        "extension", []
    )
    assert got_meta["extension"][-1]["url"] == INTAKE_URL
    assert record.retracted == (sent["status"] == "entered-in-error")
    # the canonical bytes decode back to the same record (what the processor chains)
    from careledger_core.reference import canonical_reference_bytes

    assert decode_reference(canonical_reference_bytes(record)) == record


# ----------------------------------------------------------------------- attachments
def test_what_the_patient_signed_is_hashed_sha256_of_the_decoded_data() -> None:
    signed = b"%PDF-1.7 I, the patient, consent to ..."
    sha1 = base64.b64encode(hashlib.sha1(signed).digest()).decode()
    r5 = _consent(
        sourceAttachment=[
            {"contentType": "application/pdf", "data": base64.b64encode(signed).decode()},
            {"url": "https://docs.example.org/consent/77.pdf", "hash": sha1},
            {"data": base64.b64encode(b"other").decode(), "hash": sha1},
        ]
    )
    info = _intake(thaw(_record(r5).body))
    first, second, third = info["attachments"]
    assert first["sha256"] == hashlib.sha256(signed).hexdigest()
    assert first["size"] == len(signed) and first["path"] == "Consent.sourceAttachment[0]"
    assert "sha256" not in second and second["not-fetched"] is True  # never fetched
    assert second["url"] == "https://docs.example.org/consent/77.pdf"
    assert third["declared-sha1-matches"] is False  # the sender's own hash disagrees
    r4 = {
        "resourceType": "Consent",
        "id": "r4",
        "status": "active",
        "patient": {"reference": "Patient/P2"},
        "sourceAttachment": {"data": base64.b64encode(signed).decode()},
    }
    (only,) = _intake(thaw(_record(r4).body))["attachments"]
    assert only["sha256"] == hashlib.sha256(signed).hexdigest()
    assert only["path"] == "Consent.sourceAttachment"


@pytest.mark.parametrize("data", ["not base64!", "QUJD=", "QQ", "%%%%"])
def test_an_attachment_that_is_not_base64_is_refused_with_its_path(data: str) -> None:
    with pytest.raises(ConsentProblem) as exc:
        check_consent(_consent(sourceAttachment=[{"data": data}]))
    assert exc.value.code == "BAD_ATTACHMENT" and exc.value.status == 422
    assert exc.value.path == "Consent.sourceAttachment[0].data"


# ----------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("doc", "code", "path"),
    [
        ({"resourceType": "AuditEvent"}, "NOT_A_CONSENT", "Consent.resourceType"),
        ({"resourceType": "Patient", "id": "x"}, "NOT_A_CONSENT", "Consent.resourceType"),
        ({"resourceType": "Consent", "status": "active"}, "NO_PATIENT", "Consent.patient"),
        (
            {"resourceType": "Consent", "status": "active", "subject": {"reference": "Group/1"}},
            "NO_PATIENT",
            "Consent.subject",
        ),
        (
            _consent(meta={"extension": [{"url": INTAKE_URL, "valueString": "forged"}]}),
            "RESERVED_EXTENSION",
            "Consent.meta.extension",
        ),
    ],
)
def test_not_a_consent_for_a_patient_is_a_422(doc: dict[str, Any], code: str, path: str) -> None:
    with pytest.raises(ConsentProblem) as exc:
        check_consent(doc)
    assert (exc.value.code, exc.value.path, exc.value.status) == (code, path, 422)


def test_an_invalid_status_is_refused_by_the_reference_checks_with_the_fhir_path() -> None:
    with pytest.raises(ConsentProblem) as exc:
        _record(_consent(status="approved"))
    assert exc.value.code == "CONSENT_INVALID" and exc.value.path == "Consent.status"


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Consent xmlns="http://hl7.org/fhir"><status value="&lol3;"/></Consent>"""
XXE = b"""<?xml version="1.0"?><!DOCTYPE c [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<Consent xmlns="http://hl7.org/fhir"><status value="&x;"/></Consent>"""


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (BOMB, "XML_FORBIDDEN"),
        (XXE, "XML_FORBIDDEN"),
        (b"<Consent xmlns='http://hl7.org/fhir'><status value='active'>", "NOT_XML"),
        (b"<Consent><status value='active'/></Consent>", "NOT_FHIR_XML"),
        (b"[" * 100_000 + b"]" * 100_000, "TOO_DEEP"),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "TOO_DEEP"),
        (b"{", "NOT_JSON"),
        (b'{"resourceType":"Consent","resourceType":"Consent"}', "NOT_JSON"),
        (b'{"x": NaN}', "NOT_JSON"),
        (b"\xff\xfe{}", "NOT_UTF8"),
        (b"  \n", "EMPTY"),
    ],
)
def test_hostile_bytes_are_a_400_and_never_expanded(data: bytes, code: str) -> None:
    with pytest.raises(ConsentProblem) as exc:
        decode_document(data)
    assert exc.value.code == code and exc.value.status == 400


def test_deeply_nested_xml_is_refused_before_any_recursion_limit() -> None:
    deep = b"<extension url='u'>" * (MAX_DEPTH + 5) + b"</extension>" * (MAX_DEPTH + 5)
    data = b"<Consent xmlns='http://hl7.org/fhir'>" + deep + b"</Consent>"
    with pytest.raises(ConsentProblem) as exc:
        decode_document(data)
    assert exc.value.code == "TOO_DEEP"
    very_deep = b"<a>" * 200_000 + b"</a>" * 200_000
    with pytest.raises(ConsentProblem):
        decode_document(b"<Consent xmlns='http://hl7.org/fhir'>" + very_deep + b"</Consent>")


# ----------------------------------------------------------------------- XML mapping rules
def test_fhir_xml_rules_primitives_extensions_arrays_and_r5() -> None:
    xml = b"""<Consent xmlns="http://hl7.org/fhir">
      <id value="x5"/>
      <status value="active"><extension url="urn:e"><valueBoolean value="true"/></extension>
      </status>
      <category><coding><system value="http://loinc.org"/><code value="59284-0"/></coding>
      </category>
      <subject><reference value="Patient/P9"/></subject>
      <sourceAttachment><data value="SGVsbG8="/><size value="5"/></sourceAttachment>
      <verification><verified value="false"/></verification>
      <decision value="permit"/>
      <provision><period><start value="2026-01-01"/></period>
        <provision><action><text value="access"/></action></provision></provision>
    </Consent>"""
    doc = read_fhir_xml(xml).resource
    assert doc["status"] == "active"
    assert doc["_status"] == {"extension": [{"url": "urn:e", "valueBoolean": True}]}
    assert doc["category"] == [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}]
    # R5 (subject/decision): sourceAttachment and provision are arrays; size is integer64
    assert doc["sourceAttachment"] == [{"data": "SGVsbG8=", "size": "5"}]
    assert doc["verification"] == [{"verified": False}]
    assert doc["provision"][0]["provision"][0]["action"] == [{"text": "access"}]
    r4 = read_fhir_xml(
        b"<Consent xmlns='http://hl7.org/fhir'><patient><reference value='Patient/1'/>"
        b"</patient><sourceAttachment><size value='5'/></sourceAttachment>"
        b"<provision><type value='deny'/></provision></Consent>"
    ).resource
    assert r4["sourceAttachment"] == {"size": 5} and r4["provision"] == {"type": "deny"}


def test_a_repeated_element_that_allows_one_value_is_refused() -> None:
    with pytest.raises(ConsentProblem) as exc:
        decode_document(
            b"<Consent xmlns='http://hl7.org/fhir'><status value='active'/>"
            b"<status value='inactive'/></Consent>"
        )
    assert exc.value.code == "FHIR_XML_INVALID" and exc.value.status == 422


# ----------------------------------------------------------------------- versions and ids
def test_versions_increase_strictly_per_consent_and_fit_the_store() -> None:
    clock = VersionClock()
    records = [_record(_consent(status=s), clock) for s in ("active", "inactive", "active")]
    versions = [r.version for r in records]
    assert versions == sorted(set(versions)), "strictly increasing, even within one second"
    assert all(v <= 2**32 - 1 for v in versions), "reference versions are UInt32 in the store"
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    for r in records:
        assert r.recorded_at == r.effective_at
        when = dt.datetime.strptime(r.recorded_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
        seconds = (when - epoch) // dt.timedelta(seconds=1)
        assert seconds <= r.version <= seconds + 2  # the receive second (bumped if needed)
    times = [r.recorded_at for r in records]
    assert times == sorted(set(times))
    # another consent's first version is not pushed ahead by these
    other = _record(_consent(id="other"), clock)
    assert other.version <= versions[0] + 1


@pytest.mark.parametrize(
    ("given", "effective"),
    [
        ({"dateTime": "2016-06-23T17:02:33+10:00"}, "2016-06-23T07:02:33.000000Z"),  # R4
        ({"dateTime": "2018-12-28"}, "2018-12-28T00:00:00.000000Z"),  # a date: its first instant
        ({"date": "2022-11"}, "2022-11-01T00:00:00.000000Z"),  # R5, partial
        ({"dateTime": "2016-06-23T17:02:33.123456789Z"}, "2016-06-23T17:02:33.123456Z"),
    ],
)
def test_a_back_filled_consent_is_effective_from_its_own_date_and_recorded_now(
    given: dict[str, str], effective: str
) -> None:
    loaded = _record(_consent(**given), VersionClock(backfill=True))
    assert loaded.effective_at == effective
    assert loaded.recorded_at > effective, "the ledger still says when careledger learnt it"
    # received live, the same consent counts from its receipt: a sender cannot back-date
    live = _record(_consent(**given), VersionClock())
    assert live.effective_at == live.recorded_at


@pytest.mark.parametrize(
    "given",
    [{}, {"dateTime": "2999-01-01"}, {"dateTime": "2016-13-01"}, {"date": 20160101}, {"date": "x"}],
)
def test_a_back_fill_without_a_usable_past_date_counts_from_the_load(given: dict[str, Any]) -> None:
    loaded = _record(_consent(**given), VersionClock(backfill=True))
    assert loaded.effective_at == loaded.recorded_at


def test_entered_in_error_is_a_retraction_and_other_statuses_are_versions() -> None:
    clock = VersionClock()
    for status in ("draft", "proposed", "active", "rejected", "inactive"):
        assert not _record(_consent(status=status), clock).retracted
    assert _record(_consent(status="entered-in-error"), clock).retracted


def test_put_id_must_match_and_ids_are_scoped_by_source() -> None:
    assert consent_id_for(_consent(), "c1", "Consent") == "c1"
    assert consent_id_for({"resourceType": "Consent"}, "c2", "Consent") == "c2"
    with pytest.raises(ConsentProblem) as exc:
        consent_id_for(_consent(), "other", "Consent")
    assert exc.value.code == "ID_MISMATCH" and exc.value.path == "Consent.id"
    with pytest.raises(ConsentProblem):
        consent_id_for(_consent(), "../etc", "Consent")
    fresh = consent_id_for({"resourceType": "Consent"}, None, "Consent")
    assert len(fresh) == 36  # a POST without an id gets a new one
    assert _record(_consent()).record_id == "ehr-east/c1"


# ----------------------------------------------------------------------- gateway jobs
def test_a_consent_becomes_a_raw_record_and_a_reference_record_keyed_by_patient() -> None:
    data = json.dumps(_consent()).encode()
    rec = received(data, "https", {"source_id": "ehr-east"})
    out = ingest_consent(
        rec,
        SIGNED,
        url_id=None,
        syntax="json",
        fhir_version=None,
        clock=VersionClock(),
        topic=TOPIC,
    )
    assert out.error is None and out.record is not None
    assert out.job.raw is not None and not out.job.dead_letters and not out.job.events
    envelope = json.loads(out.job.raw[1])
    assert base64.b64decode(envelope["data"]) == data  # the bytes as sent
    assert envelope["sha256"] == hashlib.sha256(data).hexdigest()
    assert envelope["format"] == "fhir-r5-consent+json"
    assert envelope["transport"]["source_id"] == "ehr-east"
    ((topic, key, value),) = out.job.references
    assert topic == TOPIC and key == b"P1"
    ledgered = decode_reference(value)
    info = _intake(thaw(ledgered.body))
    assert info["source"]["valueString"] == "ehr-east"
    assert info["raw-sha256"]["valueString"] == envelope["sha256"]
    assert info["raw-record"]["valueString"] == envelope["record_id"]


def test_a_consent_from_an_open_source_is_refused_and_dead_lettered_with_its_bytes() -> None:
    data = json.dumps(_consent()).encode()
    rec = received(data, "http", {})
    out = ingest_consent(
        rec,
        OPEN,
        url_id=None,
        syntax="json",
        fhir_version=None,
        clock=VersionClock(),
        topic=TOPIC,
    )
    assert out.error is not None and out.error.code == "NOT_AUTHENTICATED"
    assert out.job.raw is None and not out.job.references
    (letter,) = out.job.dead_letters
    assert letter.value == data
    headers = dict(letter.headers)
    assert headers["careledger-error-code"] == b"NOT_AUTHENTICATED"


def test_a_refused_consent_is_dead_lettered_with_the_reason_and_path() -> None:
    data = json.dumps(_consent(sourceAttachment=[{"data": "!!"}])).encode()
    out = ingest_consent(
        received(data, "http", {}),
        SIGNED,
        url_id=None,
        syntax="json",
        fhir_version=None,
        clock=VersionClock(),
        topic=TOPIC,
    )
    assert out.error is not None and out.error.code == "BAD_ATTACHMENT"
    (letter,) = out.job.dead_letters
    headers = dict(letter.headers)
    assert headers["careledger-error-field"] == b"Consent.sourceAttachment[0].data"
    assert letter.value == data


def _bundle(kind: str, entries: list[dict[str, Any]]) -> bytes:
    return json.dumps({"resourceType": "Bundle", "type": kind, "entry": entries}).encode()


def test_a_batch_with_consents_and_a_bad_entry_answers_per_entry() -> None:
    data = _bundle(
        "batch",
        [
            {"resource": _consent(id="a"), "request": {"method": "POST", "url": "Consent"}},
            {"resource": _consent(id="b"), "request": {"method": "PUT", "url": "Consent/b"}},
            {"resource": _consent(id="c"), "request": {"method": "PUT", "url": "Consent/zz"}},
            {"resource": _consent(id="d"), "request": {"method": "DELETE", "url": "Consent/d"}},
        ],
    )
    out = ingest_bundle(
        Ingestor(1 << 20),
        received(data, "http", {}),
        SIGNED,
        syntax="json",
        fhir_version=None,
        clock=VersionClock(),
        topic=TOPIC,
    )
    assert out.error is None and out.job.raw is not None
    assert [c.error.code if c.error else None for c in out.consents.values()] == [
        None,
        None,
        "ID_MISMATCH",
        "METHOD_NOT_SUPPORTED",
    ]
    assert len(out.job.references) == 2 and len(out.job.dead_letters) == 2
    ids = sorted(decode_reference(v).record_id for _t, _k, v in out.job.references)
    assert ids == ["ehr-east/a", "ehr-east/b"]


def test_a_transaction_with_a_bad_consent_is_refused_whole() -> None:
    data = _bundle(
        "transaction",
        [
            {"resource": _consent(id="a"), "request": {"method": "POST", "url": "Consent"}},
            {
                "resource": {"resourceType": "Consent", "status": "active"},
                "request": {"method": "POST", "url": "Consent"},
            },
        ],
    )
    out = ingest_bundle(
        Ingestor(1 << 20),
        received(data, "http", {}),
        SIGNED,
        syntax="json",
        fhir_version=None,
        clock=VersionClock(),
        topic=TOPIC,
    )
    assert out.job.raw is None and not out.job.references
    assert [e.index for e in out.refused_entries] == [1]
    (letter,) = out.job.dead_letters
    assert letter.value == data and dict(letter.headers)["careledger-error-code"] == (
        b"TRANSACTION_REFUSED"
    )


def test_an_xml_bundle_of_published_consents() -> None:
    inner = b"".join(
        b"<entry><resource>"
        + p.read_bytes().split(b"?>", 1)[-1]
        + b"</resource><request><method value='POST'/><url value='Consent'/></request></entry>"
        for p in _pairs()[:3]
    )
    data = b"<Bundle xmlns='http://hl7.org/fhir'><type value='batch'/>" + inner + b"</Bundle>"
    out = ingest_bundle(
        Ingestor(1 << 20),
        received(data, "http", {}),
        SIGNED,
        syntax="xml",
        fhir_version=None,
        clock=VersionClock(),
        topic=TOPIC,
    )
    assert out.error is None, out.error
    assert all(c.error is None for c in out.consents.values())
    assert len(out.job.references) == 3
    assert json.loads(out.job.raw[1])["format"] == "fhir-bundle+xml"  # type: ignore[index]


def test_every_listener_of_a_gateway_shares_one_version_clock() -> None:
    # HTTP and HTTPS are two GatewayApps: a consent's versions must increase across them
    from producers.gateway.auth import SenderRegistry
    from producers.gateway.http import GatewayApp

    apps = [
        GatewayApp(publisher=None, registry=SenderRegistry(), max_bytes=1 << 20)  # type: ignore[arg-type]
        for _ in range(2)
    ]
    assert apps[0].clock is apps[1].clock
    first = apps[0].clock.next("ehr-east/c")[0]
    assert apps[1].clock.next("ehr-east/c")[0] > first


def test_a_source_cannot_version_another_sources_consent() -> None:
    # source B PUTs the id of source A's consent: it gets a consent of its own, A's stays
    data = json.dumps(_consent(status="inactive")).encode()
    other = Identity("ehr-west", "signature", "key-9")
    outs = [
        ingest_consent(
            received(data, "https", {}),
            who,
            url_id="c1",
            syntax="json",
            fhir_version=None,
            clock=VersionClock(),
            topic=TOPIC,
        )
        for who in (SIGNED, other)
    ]
    ids = [o.record.record_id for o in outs if o.record is not None]
    assert ids == ["ehr-east/c1", "ehr-west/c1"]
