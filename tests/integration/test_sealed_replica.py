"""A sealed ledger's replica (ADR 0017, ADR 0037), on real Kafka, ClickHouse 18.16 and a
SoftHSM2 token: a partner's replica copies and verifies every signed document, holds no
identifier and no sealed part, is compared with the primary on what is signed, and is
never used to restore a sealed chain (it could not give back the sealed parts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from careledger.config import Settings
from careledger.kafka.producer import AccessEventProducer
from careledger.storage.backend import ClickHouseBackend
from producers.simulator import HospitalModel, produce_reference, simulate
from tests.integration.pipeline import (
    committed_event_count,
    run_cli,
    start_processor,
    stop,
    store_for,
    wait_until,
)
from tests.integration.test_sealed_pipeline import (
    SEALED_KINDS,
    _alter,
    _committed,
    _identifiers,
    _reference_identifiers,
    _sealed_settings,
)
from tests.integration.test_signed_pipeline import _wait_registry_ledgered

pytestmark = pytest.mark.integration


def _json(settings: Settings, *args: str, code: int) -> dict[str, object]:
    result = run_cli(settings, *args, "--json")
    assert result.returncode == code, (args, result.stdout[-2000:], result.stderr[-2000:])
    assert result.stdout.strip(), (args, result.stderr[-6000:])  # never a traceback
    doc: dict[str, object] = json.loads(result.stdout)
    return doc


def test_a_sealed_ledgers_replica_holds_the_signed_documents_and_no_identifier(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = _sealed_settings(isolated, tmp_path).replace(
        replica_clickhouse_database=f"{isolated.clickhouse_database}_replica"
    )
    model = HospitalModel(staff=10, patients=25, seed=61)
    records = model.reference_records()
    events = list(simulate(model, 150, seed=61))
    assert produce_reference(settings, records) == (len(records), len(records))
    with AccessEventProducer(settings) as producer:
        for e in events:
            producer.send(e)
        producer.flush()
    proc = start_processor(settings, tmp_path / "processor.log")
    try:
        store = store_for(settings)
        wait_until(lambda: committed_event_count(store) >= len(events), 120, what="chained")
        wait_until(
            lambda: sum(_committed(settings, k) for k in SEALED_KINDS) >= len(records),
            120,
            what="the reference data chained",
        )
        _wait_registry_ledgered(settings, store)
    finally:
        stop(proc)
    replica_db = settings.replica_clickhouse_database
    try:
        caught = _json(settings, "replica", "catch-up", code=0)
        assert caught, caught
        clean = _json(settings, "verify", "--replica", code=0)
        assert clean["result"] == "intact", clean["findings"]

        backend = ClickHouseBackend.from_settings(settings, "replica")
        try:
            rows = backend.execute(
                f"SELECT count(), countIf(patient_id != '' OR actor_id != '' OR sealed != '' "
                f"OR data_key_id != '') FROM {replica_db}.access_events"
            )
            assert [tuple(r) for r in rows] == [(len(events), 0)]
            refs = backend.execute(
                f"SELECT count(), countIf(sealed != '' OR data_key_id != '') "
                f"FROM {replica_db}.reference_records WHERE kind IN %(k)s",
                {"k": SEALED_KINDS},
            )
            assert [tuple(r) for r in refs] == [(len(records), 0)]
            # a partner's copy names no one: not an id, name, address or phone
            everything = b"\n".join(
                repr(row).encode()
                for (table,) in backend.execute(
                    "SELECT name FROM system.tables WHERE database = %(d)s", {"d": replica_db}
                )
                for row in backend.execute(f"SELECT * FROM {replica_db}.{table.decode()}")
            )
        finally:
            backend.close()
        identifiers = _identifiers(events) | _reference_identifiers(records)
        assert len(identifiers) > 100
        assert not [i for i in identifiers if i in everything], "an identifier in the replica"

        # what is signed is compared: an access's outcome changed on the primary differs
        first = events[0]
        _alter(
            settings,
            "ALTER TABLE {db}.access_events UPDATE outcome = 8 "
            f"WHERE event_id = '{first.event_id}'",
        )
        compared = _json(settings, "verify", "--replica", code=1)
        differing = [
            f
            for f in compared["findings"]  # type: ignore[union-attr]
            if "replica" in f["message"]  # type: ignore[index]
        ]
        assert differing and "outcome" in json.dumps(differing), compared["findings"]
        # ... and the replica is not used to restore a sealed chain
        plan = _json(settings, "restore", "--dry-run", code=1)
        refused = [c for c in plan["chains"] if c.get("refused")]  # type: ignore[union-attr]
        assert refused and {c["code"] for c in refused} == {"SEALED_NOT_RESTORABLE"}, plan
        assert plan["restored"] == []
    finally:
        backend = ClickHouseBackend.from_settings(settings)
        try:
            backend.execute(f"DROP DATABASE IF EXISTS {replica_db}")
        finally:
            backend.close()
