"""Retention expiry and a partner's replica of a sealed ledger (ADR 0037, ADR 0017), on
real Kafka, ClickHouse 18.16 and a SoftHSM2 token, over one populated ledger (one test:
building a ledger is most of the cost):

* ``careledger expire``: nothing expires before its time, everything after it but what a
  legal hold keeps, the proofs stay intact, and a ledger an insider edited to make a
  patient look expired is not expired at all;
* ``careledger replica``: the partner's copy verifies every signed document, holds no
  identifier and no sealed part, is compared with the primary on what is signed, and is
  never used to restore a sealed chain (it could not give back the sealed parts)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

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
    _verify,
)
from tests.integration.test_signed_pipeline import _wait_registry_ledgered

pytestmark = pytest.mark.integration

_POLICIES = """
[[policy]]
name = "brief"
retain_years = 0
expire_years = 1
"""


def _data_keys(settings: Settings) -> int:
    store = store_for(settings)
    try:
        rows = store.backend.execute(
            f"SELECT count() FROM {settings.clickhouse_database}.data_keys"
        )
        return int(rows[0][0])
    finally:
        store.backend.close()


def _json(settings: Settings, *args: str, code: int) -> dict[str, object]:
    result = run_cli(settings, *args, "--json")
    assert result.returncode == code, (args, result.stdout[-2000:], result.stderr[-2000:])
    assert result.stdout.strip(), (args, result.stderr[-6000:])  # never a traceback
    doc: dict[str, object] = json.loads(result.stdout)
    return doc


def _replica_holds_no_one(settings: Settings, events: list[Any], records: list[Any]) -> None:
    """The replica holds every signed document, with the key store's columns empty, and
    none of the simulation's identifiers in any table."""
    replica_db = settings.replica_clickhouse_database
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


def test_records_expire_after_their_time_but_not_under_a_hold_and_the_replica_names_no_one(
    isolated: Settings, tmp_path: Path
) -> None:
    policies = tmp_path / "retention.toml"
    policies.write_text(_POLICIES, encoding="utf-8")
    settings = _sealed_settings(isolated, tmp_path).replace(
        retention_policy_file=policies,
        sealing_key_cache_s=1.0,
        replica_clickhouse_database=f"{isolated.clickhouse_database}_replica",
    )
    try:
        _expire_and_replicate(settings, tmp_path)
    finally:
        backend = ClickHouseBackend.from_settings(settings)
        try:
            backend.execute(f"DROP DATABASE IF EXISTS {settings.replica_clickhouse_database}")
        finally:
            backend.close()


def _expire_and_replicate(settings: Settings, tmp_path: Path) -> None:
    model = HospitalModel(staff=10, patients=25, seed=51)
    records = model.reference_records()
    events = list(simulate(model, 200, seed=51))
    assert produce_reference(settings, records) == (len(records), len(records))
    with AccessEventProducer(settings) as producer:
        for e in events:
            producer.send(e)
        producer.flush()
    held = next(e.patient for e in events if len(e.patient.id) >= 6)
    mine = [e for e in events if e.patient.id == held.id]
    patient = ["--patient", held.id, "--system", held.system or ""]
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
        placed = run_cli(settings, "legal-hold", "place", *patient, "--reason", "case 7")
        assert placed.returncode == 0, placed.stdout + placed.stderr
        wait_until(lambda: _committed(settings, "legal-hold") == 1, 60, what="the hold")
        keys = _data_keys(settings)

        # 1. today nothing has expired (the simulated records are weeks old); a dry run
        # destroys nothing
        today = run_cli(settings, "expire", "--policy", "brief", "--dry-run", "--json")
        assert today.returncode == 0, today.stdout + today.stderr
        run = json.loads(today.stdout)
        assert run["expired"] == 0 and run["not_yet"] == run["examined"] > 30, run
        assert _data_keys(settings) == keys

        # 2. a year and a day after the newest record: everyone but the held patient
        newest = max([e.occurred_at for e in events] + [r.recorded_at for r in records])
        later = (
            dt.datetime.fromisoformat(newest.replace("Z", "+00:00")) + dt.timedelta(days=367)
        ).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        done = run_cli(settings, "expire", "--policy", "brief", "--now", later, "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        outcome = json.loads(done.stdout)
        assert outcome["expired"] == run["examined"] - 1 and outcome["held"] == 1, outcome
        assert not outcome["not_confirmed"]
        expired_records = len(outcome["erasures"])
        wait_until(
            lambda: _committed(settings, "erasure") == expired_records,
            60,
            what="the expiries ledgered",
        )
        for out in (today, done):
            assert held.id not in out.stdout + out.stderr
    finally:
        stop(proc)

    # 3. the ledger is intact; only the held patient's accesses still open
    report = _verify(settings)
    assert report["result"] == "intact", report["findings"]
    theirs = [r for r in records if r.kind != "staff" and r.subject_id == held.id]
    assert report["sealed"] == {
        "opened": len(mine),
        "erased": len(events) - len(mine),
        "references_opened": len(theirs),
        "references_erased": len(records) - len(theirs),
        "raw_opened": 0,  # no gateway here
        "raw_erased": 0,
    }, report["sealed"]

    # 4. a partner's replica copies and verifies every signed document (the erased ones
    # too: erasure changes no leaf) and names no one
    assert _json(settings, "replica", "catch-up", code=0)
    clean = _json(settings, "verify", "--replica", code=0)
    assert clean["result"] == "intact", clean["findings"]
    _replica_holds_no_one(settings, events, records)

    # 5. an insider deletes the held patient's newest access to make them look expired,
    # and lifts nothing: the job refuses, because the ledger no longer verifies
    newest_mine = max(mine, key=lambda e: e.occurred_at)
    _alter(
        settings,
        f"ALTER TABLE {{db}}.access_events DELETE WHERE event_id = '{newest_mine.event_id}'",
    )
    refused = run_cli(settings, "expire", "--policy", "brief", "--now", later)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "does not verify intact" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert _data_keys(settings) > 0

    # 6. the comparison with the replica finds the deleted row; the replica is not used
    # to restore a sealed chain (it holds no sealed part to give back)
    compared = _json(settings, "verify", "--replica", code=1)
    differing = [
        f
        for f in compared["findings"]  # type: ignore[union-attr]
        if "replica" in f["message"]  # type: ignore[index]
    ]
    assert differing, compared["findings"]
    plan = _json(settings, "restore", "--dry-run", code=1)
    refused_chains = [c for c in plan["chains"] if c.get("refused")]  # type: ignore[union-attr]
    assert {c["code"] for c in refused_chains} == {"SEALED_NOT_RESTORABLE"}, plan
    assert plan["restored"] == []
