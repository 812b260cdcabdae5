"""The ingest gateway on a sealed ledger (ADR 0037), on real Kafka, ClickHouse 18.16 and a
SoftHSM2 token: the bytes it receives (a FHIR Bundle naming two patients, an ATNA syslog
message) are ledgered sealed, under a record key made of the data keys of every patient
they name, and so is a Consent file `consent load` back-fills. Nothing it received is in
clear in any topic or table; verify opens every raw record and finds an edited one;
erasing one patient of the Bundle erases the shared bytes, and leaves the other
patient's events readable and every proof intact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from careledger.config import Settings
from producers.gateway.framing import octet_counted
from tests.integration.pipeline import (
    committed_event_count,
    run_cli,
    start_processor,
    stop,
    store_for,
    wait_until,
)
from tests.integration.test_gateway import (
    atna_xml,
    bundle,
    post,
    r4_event,
    relaying_gateway,
    send_stream,
    syslog_message,
)
from tests.integration.test_sealed_pipeline import (
    _alter,
    _committed,
    _everything_at_rest,
    _sealed_settings,
    _verify,
)

pytestmark = pytest.mark.integration

ALICE, BOB, CAROL = "PAT-SEAL-ALICE-7731", "PAT-SEAL-BOB-8842", "PAT-SEAL-CAROL-9953"
DAVE = "PAT-SEAL-DAVE-1064"  # named by a record the gateway refuses
#: a published FHIR R4 Consent (HL7's consent-example-Out), loaded with `consent load`
CONSENT = (
    Path(__file__).resolve().parents[1] / "fixtures" / "consent" / "r4" / "consent-example-Out.json"
)
SECRETS = (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    "dr.jones",
    "Dr Jones",
    "radiologist.lee",
    "van de Heuvel",  # the Consent's patient, by name and reference
    "Patient/f001",
)


def _raw_rows(settings: Settings) -> list[tuple[Any, ...]]:
    store = store_for(settings)
    db = settings.clickhouse_database
    try:
        return store.backend.execute(
            f"SELECT chain_id, height, idx, format, sealed, data_key_id FROM {db}.raw_records "
            f"WHERE (chain_id, height, block_hash) IN (SELECT chain_id, height, block_hash "
            f"FROM {db}.blocks) ORDER BY format"
        )
    finally:
        store.backend.close()


def _patient_system(settings: Settings, patient: str) -> str:
    """The system the gateway's adapters gave a patient (read back through the key store
    the way `erase` will look it up)."""
    from careledger.keystore import open_keystore

    with open_keystore(settings) as keys:
        for system in ("", "urn:careledger:patient", "http://hl7.org/fhir/sid/us-mrn"):
            if keys.data_key(keys.lookup(system, patient), "test") is not None:
                return system
    raise AssertionError(f"no data key found for {patient}")


def _sealed_and_erased(settings: Settings) -> None:
    # 1. nothing received is in clear anywhere: topics (raw, events, dead letters, ...)
    # and tables
    rest = _everything_at_rest(settings)
    for secret in SECRETS:
        assert secret.encode() not in rest, secret

    # 2. verify opens both raw records, and the events made from them
    clean = _verify(settings)
    assert clean["result"] == "intact", clean["findings"]
    sealed: dict[str, Any] = clean["sealed"]  # type: ignore[assignment]
    assert (sealed["raw_opened"], sealed["raw_erased"], sealed["opened"]) == (3, 0, 3), sealed
    assert sealed["references_opened"] == 1, sealed  # the Consent, under f001's key

    # 3. erasing Bob erases the Bundle's bytes (his and Alice's), not Alice's events
    system = _patient_system(settings, BOB)
    done = run_cli(
        settings,
        "erase",
        "--patient",
        BOB,
        "--system",
        system,
        "--reason",
        "gdpr-17",
        "--policy",
        "eu-gdpr",
        "--json",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["outcome"] == "erased"
    assert BOB not in done.stdout + done.stderr
    wait_until(lambda: _committed(settings, "erasure") == 1, 60, what="the erasure chained")
    after = _verify(settings)
    assert after["result"] == "intact", after["findings"]
    sealed = after["sealed"]  # type: ignore[assignment]
    assert (sealed["raw_opened"], sealed["raw_erased"]) == (2, 1), sealed
    assert (sealed["opened"], sealed["erased"]) == (2, 1), sealed  # Alice's and Carol's


def test_the_gateway_seals_what_it_receives_and_erasing_one_patient_erases_shared_bytes(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = _sealed_settings(isolated, tmp_path).replace(sealing_key_cache_s=1.0)
    with relaying_gateway(settings, tmp_path) as gw:
        # a Bundle naming Alice and Bob: one raw record, two events
        r = post(gw, "/", bundle("batch", [r4_event(ALICE), r4_event(BOB)]))
        assert r.status_code == 200, r.text
        # an ATNA message naming Carol, over syslog TCP
        send_stream(gw, "syslog-tcp", octet_counted(syslog_message(atna_xml([CAROL]))))
        # a record it refuses: dead-lettered, sealed too
        cut = json.dumps(r4_event(DAVE)).encode()[:-2]  # truncated in transit: not JSON
        r = post(gw, "/AuditEvent", cut)
        assert r.status_code in (400, 422), r.text
        settings = gw.settings
    # a Consent back-filled from a file by the operator: the file is a raw record too
    loaded = run_cli(settings, "consent", "load", str(CONSENT), "--source", "ehr-archive")
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    gateway_log = gw.log.read_bytes()
    for secret in SECRETS:
        assert secret.encode() not in gateway_log, secret
    proc = start_processor(settings, tmp_path / "processor.log")
    try:
        wait_until(lambda: len(_raw_rows(settings)) == 3, 120, what="the raw records chained")
        store = store_for(settings)
        wait_until(lambda: committed_event_count(store) >= 3, 120, what="the events chained")
        _sealed_and_erased(settings)
    finally:
        stop(proc)
    log = (tmp_path / "processor.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    for secret in SECRETS:
        assert secret.encode() not in log.encode(), secret
    # the refused record's bytes: sealed in the dead-letter topic, shown only where the
    # ingest key is, to an operator who asks for them
    shown = run_cli(settings, "dead-letters", "--json", "--show-bytes")
    items = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [DAVE in (i["value"] or "") for i in items] == [True], items
    assert "127.0.0.1" in items[0]["transport"]
    # elsewhere (no ingest key) it is listed, its bytes not shown
    blind = run_cli(settings.replace(ingest_key=None), "dead-letters", "--json", "--show-bytes")
    assert blind.returncode == 0, blind.stdout + blind.stderr
    assert DAVE not in blind.stdout + blind.stderr, blind.stdout
    assert "sealed to the ingest key" in blind.stdout, blind.stdout

    rows = _raw_rows(settings)
    shared = next(r for r in rows if len(r[5].split(b",")) == 2)  # the Bundle: two keys
    single = next(r for r in rows if r is not shared and b"syslog" in r[3])

    # 4. an edited raw row is found where it is: the syslog record's sealed part swapped
    # for the (erased) Bundle's, and its key list edited to drop a key
    def where(row: tuple[Any, ...]) -> str:
        return f"chain_id = '{row[0].decode()}' AND height = {row[1]} AND idx = {row[2]}"

    _alter(
        settings,
        f"ALTER TABLE {{db}}.raw_records UPDATE sealed = '{shared[4].decode()}' "
        f"WHERE {where(single)}",
    )
    report = _verify(settings)
    assert report["result"] == "tampered"
    spots = {
        (f["code"], f["chain_id"], f["height"], f["event_index"])  # type: ignore[index]
        for f in report["findings"]  # type: ignore[union-attr]
    }
    assert ("SEALED_PART_INVALID", single[0].decode(), single[1], single[2]) in spots, spots
