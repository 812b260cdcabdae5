"""Sealed reference data (ADR 0037) under attack, on real Kafka, ClickHouse 18.16 and a
SoftHSM2 token: what the privacy office's rules and views read (whose consent, whose care
relationship, which staff member) is a pseudonym column, unsigned; verify recomputes it
from every record it opens and finds it edited. A consent sent in clear is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from careledger.config import Settings
from careledger.kafka.producer import AccessEventProducer
from careledger_core.reference import canonical_reference_bytes
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
    _reference_rows,
    _sealed_settings,
    _verify,
)
from tests.integration.test_signed_pipeline import _read

pytestmark = pytest.mark.integration


def test_edits_of_sealed_reference_rows_and_a_consent_sent_in_clear_are_found(
    isolated: Settings, tmp_path: Path
) -> None:
    """Reference data on a sealed ledger: what the privacy office's rules and views will
    read (whose consent, whose care relationship, which staff member) is a pseudonym
    column, unsigned: verify recomputes it from the record opened, and finds it edited."""
    settings = _sealed_settings(isolated, tmp_path)
    model = HospitalModel(staff=10, patients=20, seed=44)
    records = model.reference_records()
    assert produce_reference(settings, records) == (len(records), len(records))
    events = list(simulate(model, 150, seed=44))
    with AccessEventProducer(settings) as producer:
        for e in events:
            producer.send(e)
        producer.flush()
    consent = next(r for r in records if r.kind == "consent")
    with AccessEventProducer(settings, topic=settings.topic_consents, sign=False) as producer:
        # someone with write access to Kafka sends a consent in clear: refused, not chained
        producer.send_raw(canonical_reference_bytes(consent), b"k")
        producer.flush()
    proc = start_processor(settings, tmp_path / "processor.log")
    try:
        wait_until(
            lambda: sum(_committed(settings, k) for k in SEALED_KINDS) >= len(records),
            120,
            what="the reference data chained",
        )
        store = store_for(settings)
        wait_until(lambda: committed_event_count(store) >= len(events), 120, what="chained")
        dead = _read(settings, settings.topic_dead_letter, 1, timeout=60)
        # the consent decision point decides from the sealed consents (chained meanwhile)
        _decide_on_the_sealed_ledger(settings, records)
    finally:
        stop(proc)
    # the consent in clear: dead-lettered with its bytes and reason, for its sender to fix
    assert [dict(m.headers())["careledger-error-code"] for m in dead] == [b"REFERENCE_NOT_SEALED"]
    assert dead[0].value() == canonical_reference_bytes(consent)
    clean = _verify(settings)
    assert clean["result"] == "intact", clean["findings"]
    assert clean["sealed"]["references_opened"] == len(records), clean["sealed"]  # type: ignore[index]
    # the auditor follows a sealed ledger too: every committed access decided once
    followed = run_cli(
        settings, "audit", "--follow", "--no-publish", "--no-warmup", "--max-cycles", "3", "--json"
    )
    assert followed.returncode == 0, followed.stdout + followed.stderr
    cycles = [json.loads(line) for line in followed.stdout.splitlines() if line.startswith("{")]
    # the accesses, and the decision point's own event (it ledgers its decision)
    assert sum(c["decisions"] for c in cycles) == len(events) + 1, followed.stdout
    assert _committed(settings, "consent") == sum(1 for r in records if r.kind == "consent")

    def rows(kind: str) -> list[tuple[Any, ...]]:
        return [r for r in _reference_rows(settings) if r[6] == kind.encode()]

    # chain_id, height, idx, block_hash, kafka_offset, record_id, kind, version,
    # subject_id, ..., sealed, data_key_id (migration 13 appends them)
    cols = [c.decode() for (c,) in _describe(settings, "reference_records")]
    at = {name: cols.index(name) for name in ("record_id", "subject_id", "sealed", "data_key_id")}
    consents, patients, staff = rows("consent"), rows("patient"), rows("staff")
    moved, other = (
        consents[0],
        next(p for p in patients if p[at["subject_id"]] != consents[0][at["subject_id"]]),
    )
    rr = "{db}.reference_records"

    def where(row: tuple[Any, ...]) -> str:
        return f"chain_id = '{row[0].decode()}' AND height = {row[1]} AND idx = {row[2]}"

    # a consent moved to another patient (their subject pseudonym)
    _alter(
        settings,
        f"ALTER TABLE {rr} UPDATE subject_id = '{other[at['subject_id']].decode()}' "
        f"WHERE {where(moved)}",
    )
    # a care record's versions regrouped under another record's id
    regrouped, donor = patients[1], patients[2]
    _alter(
        settings,
        f"ALTER TABLE {rr} UPDATE record_id = '{donor[at['record_id']].decode()}' "
        f"WHERE {where(regrouped)}",
    )
    # a sealed record swapped for another's
    swapped, source = patients[3], patients[4]
    _alter(
        settings,
        f"ALTER TABLE {rr} UPDATE sealed = '{source[at['sealed']].decode()}' "
        f"WHERE {where(swapped)}",
    )
    # a consent shown as retracted: a column its signed document gives (found by the chain
    # checks, which must not stumble on a sealed row's shape)
    withdrawn = consents[1]
    _alter(settings, f"ALTER TABLE {rr} UPDATE retracted = 1 WHERE {where(withdrawn)}")
    # a staff member's key deleted with no ledgered erasure
    gone = staff[0]
    _alter(
        settings,
        f"ALTER TABLE {{db}}.data_keys DELETE WHERE key_id = '{gone[at['data_key_id']].decode()}'",
    )
    report = _verify(settings)
    assert report["result"] == "tampered"
    found = {
        (f["code"], f["chain_id"], f["height"], f["event_index"])  # type: ignore[index]
        for f in report["findings"]  # type: ignore[union-attr]
    }

    def spot(code: str, row: tuple[Any, ...]) -> tuple[str, str, int, int]:
        return (code, row[0].decode(), int(row[1]), int(row[2]))

    assert spot("SEALED_REF_MISMATCH", moved) in found, found
    assert spot("SEALED_REF_MISMATCH", regrouped) in found, found
    assert spot("SEALED_PART_INVALID", swapped) in found, found
    assert spot("SEALED_KEY_MISSING", gone) in found, found
    assert spot("EVENT_FIELD_MISMATCH", withdrawn) in found, found


def _decide_on_the_sealed_ledger(settings: Settings, records: list[Any]) -> None:
    """The consent decision point on a sealed ledger: it opens the consents through the
    key store and answers as it would from them in clear; its ledgered decision (the
    question names the patient) is sealed, and replays identical."""
    from verifiers.auditor.decision_point.engine import ConsentLedger, LedgeredConsent, answer
    from verifiers.auditor.decision_point.model import question_from_dict

    consent = next(r for r in records if r.kind == "consent")
    actor = next(r for r in records if r.kind == "staff").subject_id
    asked = {"patient_id": consent.subject_id, "actor_id": actor, "action": "R"}
    decided = run_cli(
        settings,
        *("consent", "decide", "--patient", consent.subject_id, "--actor", actor),
        *("--action", "R", "--purpose", "TREAT", "--json"),
    )
    assert decided.returncode == 0, decided.stdout + decided.stderr
    record = json.loads(decided.stdout)["decision"]
    # the same answer as the engine gives from the consents in clear
    clear = ConsentLedger()
    clear.apply(
        [
            LedgeredConsent(r, "clear", 0, i, "2026-01-01T00:00:00.000000Z")
            for i, r in enumerate(x for x in records if x.kind == "consent")
        ],
        {"clear": 0},
    )
    question = question_from_dict({**asked, "purposes": ["TREAT"]})
    expected = answer(clear, question, record["decided_at"])
    got = record["answer"]
    assert (got["outcome"], got["provision_path"], got["fallback"]) == (
        expected["outcome"],
        expected["provision_path"],
        expected["fallback"],
    ), (got, expected)
    assert [(c["record_id"], c["version"]) for c in got["consents_in_force"]] == [
        (c["record_id"], c["version"]) for c in expected["consents_in_force"]
    ]
    assert got["consents_in_force"], "the patient's consents were opened"
    # ledgered sealed: the raw record names no one; replayed identical once chained
    store = store_for(settings)
    try:
        wait_until(
            lambda: bool(
                store.backend.execute(
                    f"SELECT count() FROM {settings.clickhouse_database}.raw_records "
                    "WHERE record_id = %(d)s",
                    {"d": record["decision_id"]},
                )[0][0]
            ),
            60,
            what="the decision record chained",
        )
        rows = store.backend.execute(f"SELECT * FROM {settings.clickhouse_database}.raw_records")
    finally:
        store.backend.close()
    assert consent.subject_id not in repr(rows) and actor not in repr(rows)

    def replayed() -> dict[str, Any]:
        out = run_cli(settings, "consent", "replay", "--all", "--json")
        assert out.returncode in (0, 1), out.stdout + out.stderr
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    wait_until(
        lambda: (lambda c: c["identical"] == 1 and not c["problems"])(replayed()),
        60,
        what="the decision and its event chained and replayed",
    )
    check = replayed()
    assert (check["decisions"], check["intact"], check["problems"]) == (1, True, []), check


def _describe(settings: Settings, table: str) -> list[tuple[bytes]]:
    store = store_for(settings)
    try:
        return [
            (r[0],)
            for r in store.backend.execute(f"DESCRIBE TABLE {settings.clickhouse_database}.{table}")
        ]
    finally:
        store.backend.close()
