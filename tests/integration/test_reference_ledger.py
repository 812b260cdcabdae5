"""Reference data (consents, care relationships, workforce, patients) is ledgered
like access events: chains of its own, signed blocks, verified, tamper-evident.

Runs the real processor on the real broker and server.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from careledger.config import Settings
from careledger.kafka.producer import AccessEventProducer
from careledger_core.reference import (
    MAX_REFERENCE_VERSION,
    REFERENCE_SCHEMA,
    canonical_reference_bytes,
    reference_from_dict,
)
from tests.integration.pipeline import (
    NOT_SOURCE_KINDS,
    processor_settings,
    run_cli,
    start_processor,
    stop,
    store_for,
    wait_until,
    with_keys,
)

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"
T0 = "2026-11-02T08:00:00.000000Z"


def _envelope(kind: str, record_id: str, body: dict[str, Any], version: int = 1) -> bytes:
    record = reference_from_dict(
        {
            "schema": REFERENCE_SCHEMA,
            "kind": kind,
            "record_id": record_id,
            "version": version,
            "recorded_at": T0,
            "effective_at": T0,
            "body": body,
        }
    )
    return canonical_reference_bytes(record)


def _staff_body(i: int) -> dict[str, Any]:
    return {
        "user_id": f"E{i}",
        "family_name": f"Family{i}",
        "given_name": "Sam",
        "roles": ["nurse"],
        "department": "CARD",
        "status": "active",
        "start_date": "2020-01-01",
    }


def _records() -> dict[str, list[tuple[bytes, bytes]]]:
    """(key, value) per reference topic setting name."""
    consents = []
    for path in sorted((FIXTURES / "r4").glob("consent-*.json")):
        resource = json.loads(path.read_text())
        pid = resource["patient"]["reference"].split("/")[-1]
        consents.append((pid.encode(), _envelope("consent", path.stem, resource)))
    staff = [
        (
            f"E{i}".encode(),
            _envelope("staff", f"E{i}", _staff_body(i)),
        )
        for i in range(20)
    ]
    # the highest version the store can hold is stored like any other
    staff[0] = (staff[0][0], _envelope("staff", "E0", _staff_body(0), MAX_REFERENCE_VERSION))
    patients = [
        (
            f"MRN{i}".encode(),
            _envelope(
                "patient",
                f"MRN{i}",
                {"patient_id": f"MRN{i}", "family_name": "Doe", "given_name": "Jo", "vip": i == 3},
            ),
        )
        for i in range(20)
    ]
    relationships = [
        (
            f"MRN{i}".encode(),
            _envelope(
                "care-relationship",
                f"ENC{i}",
                {
                    "patient_id": f"MRN{i}",
                    "kind": "encounter",
                    "practitioner_id": f"E{i}",
                    "department": "CARD",
                    "start": T0,
                },
            ),
        )
        for i in range(20)
    ]
    return {
        "topic_consents": consents,
        "topic_workforce": staff,
        "topic_patients": patients,
        "topic_care_relationships": relationships,
    }


def test_reference_streams_are_chained_signed_verified_and_tamper_evident(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = processor_settings(with_keys(isolated, tmp_path))
    records = _records()
    total = sum(len(v) for v in records.values())
    bad = b'{"schema":"careledger.reference/1","kind":"staff"}'
    # valid JSON and a valid record but for a version one past the store's UInt32 column:
    # accepted, it could never be stored and would stall the partition for ever
    unstorable = _envelope("staff", "E1", _staff_body(1)).replace(
        b'"version":1', f'"version":{MAX_REFERENCE_VERSION + 1}'.encode(), 1
    )
    proc = start_processor(settings, tmp_path / "processor.log")
    try:
        for setting, items in records.items():
            with AccessEventProducer(settings, topic=getattr(settings, setting)) as producer:
                for key, value in items:
                    producer.send_raw(value, key=key)
                if setting == "topic_workforce":
                    producer.send_raw(bad, key=b"broken")
                    producer.send_raw(unstorable, key=b"E1")
                producer.flush()
        store = store_for(settings)

        def stored() -> int:
            rows = store.backend.execute(
                f"SELECT count() FROM {store.db}.reference_records WHERE 1{NOT_SOURCE_KINDS}"
            )
            return int(rows[0][0])

        def accounted() -> int:
            rows = store.backend.execute(
                f"SELECT sum(event_count) + sum(dead_lettered) FROM {store.db}.blocks "
                "WHERE chain_id NOT LIKE '%/careledger.sources%'"  # the test's own source
            )
            return int(rows[0][0] or 0)

        wait_until(lambda: accounted() >= total + 2, 90, what="reference records chained")
        time.sleep(0.5)
    finally:
        stop(proc)

    assert stored() == total
    chains = {
        c
        for c in store.chain_ids()
        if "/careledger.access-events" not in c and "/careledger.sources" not in c
    }
    assert chains == {settings.chain_id(getattr(settings, s), 0) for s in records}, (
        "one chain per reference topic partition"
    )
    kinds = dict(
        (k.decode(), int(n))
        for k, n in store.backend.execute(
            f"SELECT kind, count() FROM {store.db}.reference_records "
            f"WHERE 1{NOT_SOURCE_KINDS} GROUP BY kind"
        )
    )
    assert kinds == {
        "consent": len(records["topic_consents"]),
        "staff": 20,
        "patient": 20,
        "care-relationship": 20,
    }
    dl = store.backend.execute(
        f"SELECT sum(dead_lettered) FROM {store.db}.blocks WHERE chain_id = %(c)s",
        {"c": settings.chain_id(settings.topic_workforce, 0)},
    )
    assert int(dl[0][0]) == 2, "invalid reference records are dead-lettered and counted"
    top = store.backend.execute(
        f"SELECT max(version) FROM {store.db}.reference_records WHERE record_id = 'E0'"
    )
    assert int(top[0][0]) == MAX_REFERENCE_VERSION

    result = run_cli(settings, "verify", "--json")
    assert result.returncode == 0, result.stdout + result.stderr

    # An insider rewrites a patient's consent in ClickHouse.
    consent_chain = settings.chain_id(settings.topic_consents, 0)
    row = store.backend.execute(
        f"SELECT height, idx, record_id, canonical FROM {store.db}.reference_records "
        "WHERE chain_id = %(c)s ORDER BY height, idx LIMIT 1",
        {"c": consent_chain},
    )[0]
    height, idx, record_id, canonical = row
    forged = canonical.replace(b'"status":"active"', b'"status":"inactive"', 1)
    assert forged != canonical
    store.backend.execute(
        f"ALTER TABLE {store.db}.reference_records UPDATE canonical = %(v)s "
        "WHERE chain_id = %(c)s AND height = %(h)s AND idx = %(i)s",
        {"v": forged, "c": consent_chain, "h": height, "i": idx},
    )
    wait_until(
        lambda: (
            int(
                store.backend.execute(
                    "SELECT count() FROM system.mutations WHERE database = %(db)s AND is_done = 0",
                    {"db": store.db},
                )[0][0]
            )
            == 0
        ),
        60,
        0.05,
        "the attacker's mutation",
    )
    result = run_cli(settings, "verify", "--json", "--chain", consent_chain)
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    hits = [f for f in report["findings"] if f["code"] == "EVENT_HASH_MISMATCH"]
    assert hits and hits[0]["chain_id"] == consent_chain
    assert hits[0]["height"] == height and hits[0]["event_index"] == idx
    assert hits[0]["event_id"] == record_id.decode()
