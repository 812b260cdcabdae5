"""Identifiers on the real pipeline (issue 12, point 4; ADR 0026).

Attack: a patient id sent full-width (``ｅｘａｍｐｌｅ``), in NFD or with a zero-width
space was stored as a patient of its own, so ``careledger access-report --patient
example`` missed those accesses. Now the adapters write full-width and NFD ids in their
one spelling, refuse the invisible one (``INVALID_IDENTIFIER``), the processor
dead-letters an event that still carries one (a producer that skips the adapters), and
the report asks for the id in the same spelling.
"""

from __future__ import annotations

import json
import time
import unicodedata
from pathlib import Path

import msgspec
import pytest

from careledger.config import Settings
from careledger.kafka.producer import AccessEventProducer
from careledger.processes import run_cli
from careledger_core.errors import EventValidationError
from careledger_core.event import AccessEvent, Patient, canonical_event_bytes
from processors.dead_letters import DeadLetter, read_dead_letters
from producers.adapters import IngestError, parse_fhir_audit_event
from tests.integration.pipeline import (
    committed_event_count,
    processor_settings,
    start_processor,
    stop,
    store_for,
    wait_until,
    with_keys,
)

pytestmark = pytest.mark.integration

FIXTURE = (
    Path(__file__).resolve().parents[1]
    / "fixtures"
    / "ingest"
    / "fhir-r4"
    / "audit-event-example-vread.json"
)
RECEIVED = "2026-01-05T08:00:00.000000Z"
FULL_WIDTH = "\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45"  # ｅｘａｍｐｌｅ
NFD = "Jose\u0301"
NFC = unicodedata.normalize("NFC", NFD)


def _record(patient: str, n: int) -> bytes:
    doc = json.loads(FIXTURE.read_bytes())
    doc["entity"][0]["what"]["reference"] = f"Patient/{patient}"
    doc["id"] = f"id-{n}"
    doc["recorded"] = f"2013-06-20T23:42:2{n}Z"
    return json.dumps(doc, ensure_ascii=False).encode()


def _events(patient: str, n: int) -> tuple[AccessEvent, ...]:
    return parse_fhir_audit_event(_record(patient, n), received_at=RECEIVED).events


def _report(settings: Settings, patient: str) -> dict[str, object]:
    result = run_cli(
        settings,
        "access-report",
        "--patient",
        patient,
        "--from",
        "2013-06-01",
        "--to",
        "2013-06-30",
        "--format",
        "json",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    doc: dict[str, object] = json.loads(result.stdout)
    return doc


def test_the_report_finds_every_spelling_of_a_patient_id(
    isolated: Settings, tmp_path: Path
) -> None:
    with pytest.raises(IngestError) as refused:
        _events("exam\u200bple", 9)
    assert refused.value.code == "INVALID_IDENTIFIER"

    events = [*_events("example", 1), *_events(FULL_WIDTH, 2), *_events(NFD, 3)]
    assert [e.patient.id for e in events] == ["example", "example", NFC]
    # the SDK cannot even build such an event (its fields are checked when it is built)
    with pytest.raises(EventValidationError) as built:
        msgspec.structs.replace(events[0], patient=Patient(id="exam\u200bple"))
    assert built.value.field == "patient.id"
    # a producer that skips the adapters and the SDK sends the bytes: the processor must
    # refuse them, not store them
    doc = msgspec.json.decode(canonical_event_bytes(events[0]))
    doc["event_id"] = "c0ffee00-0000-4000-8000-000000000026"
    doc["patient"]["id"] = "exam\u200bple"
    smuggled = msgspec.json.encode(doc, order="sorted")
    settings = processor_settings(with_keys(isolated, tmp_path))
    proc = start_processor(settings, tmp_path / "processor.log")
    store = store_for(settings)
    try:
        with AccessEventProducer(settings) as producer:
            for e in events:
                producer.send(e)
            producer.send_raw(smuggled)
            producer.flush()
        wait_until(
            lambda: committed_event_count(store) >= len(events),
            120,
            what="the three events in a signed block",
        )
        dead: list[DeadLetter] = []
        deadline = time.monotonic() + 60
        while not dead and time.monotonic() < deadline:
            dead = [d for d in read_dead_letters(settings) if d.field == "patient.id"]
        time.sleep(0.5)
    finally:
        stop(proc)
        store.backend.close()
    assert committed_event_count(store_for(settings)) == len(events)
    (letter,) = dead
    assert letter.code == "EVENT_INVALID"
    assert "invisible" in letter.reason

    for asked, expected in (("example", 2), (FULL_WIDTH, 2), (NFC, 1), (NFD, 1)):
        doc = _report(settings, asked)
        lines = doc["lines"]
        assert isinstance(lines, list) and len(lines) == expected, (asked, doc)
    refused_cli = run_cli(
        settings,
        "access-report",
        "--patient",
        "exam\u200bple",
        "--from",
        "2013-06-01",
        "--to",
        "2013-06-30",
    )
    assert refused_cli.returncode == 2 and "identifier" in refused_cli.stderr
