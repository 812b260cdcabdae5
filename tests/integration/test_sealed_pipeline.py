"""A sealed ledger end to end (ADR 0037): SDK -> Kafka -> processor -> ClickHouse -> verify,
with ``seal_events`` on, a real SoftHSM2 token and the key rows in ClickHouse.

What it claims, each tried here:
* no identifier of the simulated hospital (patient ids, staff ids and names, client
  addresses and workstations) is in clear in the events topic or in any column of the
  events table;
* ``verify`` finds the sealed ledger intact, every event signed by its source;
* every stored sealed part opens with its patient's data key, to the signed commitment,
  and rebuilds the event the SDK sent byte for byte; ``patient_id`` / ``actor_id`` hold
  the pseudonyms the key store gives;
* destroying a patient's key changes no leaf, root or signature: ``verify`` is still
  intact, and that patient's sealed parts no longer open while everyone else's do;
* an ingest ciphertext swapped with another event's is dead-lettered alone with its reason
  (the rest of the batch is chained); a batch in clear sent to a sealed ledger is
  refused whole.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Consumer, TopicPartition

from careledger.config import Settings
from careledger.erasure import signed_privacy_record
from careledger.ingest_keys import write_ingest_key
from careledger.kafka.batching import SourceBatcher
from careledger.kafka.clients import kafka_config
from careledger.kafka.producer import AccessEventProducer
from careledger.kafka.security import ADMIN
from careledger.keys import load_signing_key
from careledger.keystore import open_keystore
from careledger_core.event import AccessEvent, canonical_event_bytes
from careledger_core.hashing import leaf_hash
from careledger_core.reference import ReferenceRecord, canonical_reference_bytes, thaw
from careledger_core.sealed_event import key_subject
from careledger_core.sealing import SealError, join, patient_ref, unseal
from careledger_core.signing import SigningKey
from producers.simulator import HospitalModel, produce_reference, simulate
from producers.simulator.vocabulary import MRN_SYSTEM
from tests.integration.pipeline import (
    committed_event_count,
    processor_settings,
    run_cli,
    start_processor,
    stop,
    store_for,
    wait_until,
    with_keys,
    with_source,
)
from tests.integration.sealed_console import check_console
from tests.integration.test_signed_pipeline import _read, _wait_registry_ledgered
from tests.softhsm import with_token
from verifiers.auditor import Auditor, ReferenceState
from verifiers.auditor.rules import core_consent_evaluator

pytestmark = pytest.mark.integration


def _sealed_settings(isolated: Settings, tmp_path: Path) -> Settings:
    s = with_source(with_keys(isolated, tmp_path), tmp_path, source_id="ehr-main")
    s, _token = with_token(s)
    ingest = tmp_path / "keys" / "ingest.key"
    write_ingest_key(ingest)
    return processor_settings(
        s,
        require_source_signatures=True,
        seal_events=True,
        ingest_key=ingest,
        ingest_public_key=Path(f"{ingest}.pub"),
        reference_patient_system=MRN_SYSTEM,
    )


#: members of reference bodies that name, number or locate a person
_IDENTIFYING_MEMBERS = frozenset(
    {
        "patient_id",
        "user_id",
        "practitioner_id",
        "manager_id",
        "employee_user_id",
        "family_name",
        "given_name",
        "line",
        "phone",
        "id",
        "reference",
    }
)


def _reference_identifiers(records: list[ReferenceRecord]) -> set[bytes]:
    """What names, numbers or locates a person in the simulator's reference data: its
    records' ids and subjects, and every identifying member of their bodies (a patient's
    name, address and phone; a Consent's id and its patient reference), whole and as
    "given family"."""
    found: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for name, member in value.items():
                if name in _IDENTIFYING_MEMBERS and isinstance(member, str):
                    found.add(member)
                walk(member)
            if isinstance(value.get("family_name"), str) and isinstance(
                value.get("given_name"), str
            ):
                found.add(f"{value['given_name']} {value['family_name']}")
        elif isinstance(value, list):
            for member in value:
                walk(member)

    for r in records:
        found |= {r.record_id, r.subject_id}
        walk(thaw(r.body))
    return {v.encode() for v in found if len(v) >= 6}


def _model(seed: int) -> HospitalModel:
    return HospitalModel(staff=40, patients=150, seed=seed)


def _events(count: int, seed: int) -> list[AccessEvent]:
    return list(simulate(_model(seed), count, seed=seed))


def _identifiers(events: list[AccessEvent]) -> set[bytes]:
    """What names, numbers or locates a person in the simulated traffic (long enough
    that a chance match inside base64 or hex is out of the question)."""
    found: set[str] = set()
    for e in events:
        found |= {e.patient.id, e.actor.id}
        if e.actor.name:
            found.add(e.actor.name)
        if e.client is not None:
            found.add(e.client.address)
            if e.client.workstation:
                found.add(e.client.workstation)
    return {v.encode() for v in found if len(v) >= 6}


def _rows(settings: Settings, columns: str = "*") -> list[tuple[object, ...]]:
    store = store_for(settings)
    try:
        return store.backend.execute(
            f"SELECT {columns} FROM {settings.clickhouse_database}.access_events "
            "ORDER BY chain_id, height, idx"
        )
    finally:
        store.backend.close()


_LEAVES = "block_hash, event_id, leaf_hash, canonical, sealed"


def _everything_at_rest(settings: Settings) -> bytes:
    """Every record of every topic of the ledger and every row of every table of its
    database, as bytes, for the plaintext search."""
    from careledger.stack import default_topics

    out: list[bytes] = []
    consumer = Consumer(
        kafka_config(
            settings,
            ADMIN,
            {"group.id": f"at-rest-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False},
        )
    )
    try:
        for topic in sorted(default_topics(settings)):
            parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            ends = {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in parts
            }
            wanted = {p for p, (lo, hi) in ends.items() if hi > lo}
            if not wanted:
                continue
            consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in wanted])
            deadline = time.monotonic() + 30
            while wanted and time.monotonic() < deadline:
                m = consumer.poll(0.5)
                if m is None or m.error():
                    continue
                out.append((m.key() or b"") + b"\t" + (m.value() or b""))
                out += [v or b"" for _k, v in (m.headers() or [])]
                if m.offset() + 1 >= ends[m.partition()][1]:
                    wanted.discard(m.partition())
            assert not wanted, f"{topic}: not read to its end"
    finally:
        consumer.close()
    store = store_for(settings)
    try:
        db = settings.clickhouse_database
        tables = [
            t.decode()
            for (t,) in store.backend.execute(
                "SELECT name FROM system.tables WHERE database = %(d)s", {"d": db}
            )
        ]
        assert {"access_events", "data_keys", "reference_records", "blocks"} <= set(tables)
        for table in tables:
            out += [
                repr(row).encode() for row in store.backend.execute(f"SELECT * FROM {db}.{table}")
            ]
    finally:
        store.backend.close()
    return b"\n".join(out)


def _opened(settings: Settings, events: dict[str, AccessEvent]) -> dict[str, bool]:
    """Per event id: whether its stored sealed part opens to the event the SDK sent
    (asserted when it opens), through the key store."""
    store = store_for(settings)
    try:
        rows = store.backend.execute(
            "SELECT event_id, patient_id, actor_id, data_key_id, sealed, canonical, leaf_hash "
            f"FROM {settings.clickhouse_database}.access_events"
        )
    finally:
        store.backend.close()
    out: dict[str, bool] = {}
    with open_keystore(settings) as keys:
        for eid, pref, aref, key_id, sealed, canonical, leaf in rows:
            if eid.decode() not in events:
                continue  # the auditor's own (an alert's status change)
            event = events[eid.decode()]
            lookup = keys.lookup(*key_subject(event))
            key = keys.key(lookup, bytes.fromhex(key_id.decode()), "test")
            document = json.loads(canonical)
            assert leaf.decode() == leaf_hash(canonical).hex()
            if key is None:
                out[eid.decode()] = False
                continue
            salt, sensitive = unseal(
                key.key,
                leaf_hash(canonical),
                base64.b64decode(sealed),
                bytes.fromhex(document.pop("sealed_commitment")),
            )
            assert len(salt) == 32
            document["schema"] = "careledger.access-event/1"
            rebuilt = msgspec.json.encode(join(document, sensitive), order="sorted")
            assert rebuilt == canonical_event_bytes(event)
            assert pref.decode() == patient_ref(key.key)
            assert aref.decode() == keys.actor_ref(event.actor.id)
            out[eid.decode()] = True
    return out


SEALED_KINDS = ("patient", "staff", "care-relationship", "consent")


def _reference_rows(settings: Settings) -> list[tuple[object, ...]]:
    store = store_for(settings)
    try:
        return store.backend.execute(
            f"SELECT * FROM {settings.clickhouse_database}.reference_records "
            "ORDER BY chain_id, height, idx"
        )
    finally:
        store.backend.close()


def _committed(settings: Settings, kind: str) -> int:
    store = store_for(settings)
    try:
        db = settings.clickhouse_database
        rows = store.backend.execute(
            f"SELECT count() FROM {db}.reference_records WHERE kind = %(k)s AND "
            f"(chain_id, height, block_hash) IN (SELECT chain_id, height, block_hash "
            f"FROM {db}.blocks)",
            {"k": kind},
        )
        return int(rows[0][0])
    finally:
        store.backend.close()


def _verify(settings: Settings) -> dict[str, object]:
    result = run_cli(settings, "verify", "--json")
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_a_sealed_ledger_keeps_no_identifier_in_clear_and_erases_without_breaking_a_proof(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = _sealed_settings(isolated, tmp_path).replace(sealing_key_cache_s=1.0)
    events = _events(600, seed=41)
    # a populated ledger: the simulated hospital's reference data behind those events
    # (patients, the workforce directory, care relationships, consents), sealed by the
    # simulator to the ingest key
    records = _model(41).reference_records()
    assert produce_reference(settings, records) == (len(records), len(records))
    with AccessEventProducer(settings) as producer:
        for e in events:
            producer.send(e)
        producer.flush()
    consenting = {r.subject_id for r in records if r.kind == "consent"}
    erased = next(e.patient for e in events if e.patient.id in consenting)
    assert erased.system == MRN_SYSTEM
    patient = ["--patient", erased.id, "--system", erased.system or ""]
    theirs = [r for r in records if r.kind != "staff" and r.subject_id == erased.id]
    assert {r.kind for r in theirs} >= {"patient", "care-relationship"}
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

        # 1. nothing identifying in clear in the events and reference tables (every topic
        # and table is searched at the end, after everything else)
        identifiers = _identifiers(events) | _reference_identifiers(records)
        assert len(identifiers) > 1000
        rows = _rows(settings)
        assert len(rows) == len(events)
        table_bytes = b"\n".join(repr(r).encode() for r in rows + _reference_rows(settings))
        assert not [i for i in identifiers if i in table_bytes], "an identifier in clear"

        # 2. verify opens every sealed part; each rebuilds the event the SDK sent, and
        # every reference record is opened too
        report = _verify(settings)
        assert report["result"] == "intact", report["findings"]
        assert report["sources"]["signed_events"] == len(events)  # type: ignore[index]
        assert report["sealed"] == {
            "opened": len(events),
            "erased": 0,
            "references_opened": len(records),
            "references_erased": 0,
            "raw_opened": 0,  # no gateway here
            "raw_erased": 0,
        }, report["sealed"]
        by_id = {e.event_id: e for e in events}
        assert set(_opened(settings, by_id).values()) == {True}

        # 2b. the auditor opens what its rules need and decides on pseudonyms: the same
        # decisions as the auditor in clear over the same events and reference data
        # (what it writes is searched with everything else at the end)
        lo = min(e.occurred_at for e in events)
        hi = max(e.occurred_at for e in events)[:19] + ".999999Z"
        audited = run_cli(settings, "audit", "--from", lo, "--to", hi, "--no-publish", "--json")
        assert audited.returncode == 0, audited.stdout + audited.stderr
        summary = json.loads(audited.stdout)
        clear = Auditor(ReferenceState(records), consent_evaluator=core_consent_evaluator).run(
            events
        )
        assert summary["events_read"] == len(events) and summary["sealed_not_opened"] == 0
        assert summary["explained"] == sum(1 for d in clear if d.explained and not d.amends)
        assert summary["flagged"] == sum(1 for d in clear if d.flagged), summary
        assert summary["alerts"] > 0
        told = audited.stdout + audited.stderr
        # the privacy office works an alert: its status change is a sealed access event,
        # chained, opened when the alert is shown (its history ledgered and intact)
        listed = run_cli(settings, "alerts", "list", "--json")
        assert listed.returncode == 0, listed.stdout + listed.stderr
        alerts = json.loads(listed.stdout)
        assert len(alerts) == summary["alerts"]
        alerts.sort(key=lambda a: -len(a["event_ids"]) if a["patient_ref"] else 0)
        worked = alerts[0]["alert_id"]
        # the reviewer's note names a patient: it is sealed with the status event, and
        # neither the alert_status row nor the status topic keeps it or the reviewer's
        # name (searched with everything else at the end)
        named = next(e.patient.id for e in events if e.patient.id not in (erased.id, "-"))
        note = f"complaint from patient {named} about a colleague"
        acked = run_cli(
            settings, "alerts", "ack", worked, "--by", "privacy-officer-7", "--note", note
        )
        assert acked.returncode == 0, acked.stdout + acked.stderr

        def shown() -> dict[str, Any]:
            out = run_cli(settings, "alerts", "show", worked, "--json")
            assert out.returncode == 0, out.stdout + out.stderr
            return json.loads(out.stdout)  # type: ignore[no-any-return]

        wait_until(lambda: not shown()["status_pending"], 90, what="the status change chained")
        case = shown()
        assert case["status"] == "acknowledged" and case["status_history_intact"], case
        assert case["status_history_ledgered"], case
        # the privacy office reads who and why, opened from the ledgered status event
        (change,) = case["status_history"]
        assert (change["changed_by"], change["note"]) == ("privacy-officer-7", note), change
        assert case["status_note"] == note and case["status_by"] == "privacy-officer-7"
        told += listed.stdout + acked.stdout + json.dumps(case).replace(note, "")
        assert not [i for i in identifiers if i.decode() in told], "an identifier in the output"
        # the console works the same alerts on pseudonyms (tests/integration/sealed_console)
        console_views = check_console(
            settings,
            tmp_path,
            alerts,
            (worked, note),
            by_id,
            identifiers,
            (erased.id, erased.system or ""),
        )

        # 3. the patient's access report opens their lines, each proven offline
        mine = [e for e in events if e.patient.id == erased.id]
        days = ["--from", min(e.occurred_at for e in events)[:10]]
        days += ["--to", max(e.occurred_at for e in events)[:10]]
        report_args = ["access-report", *patient, *days, "--format", "json"]
        report_args[report_args.index("--system")] = "--patient-system"
        shown = run_cli(settings, *report_args, "--out", str(tmp_path / "before.json"))
        assert shown.returncode == 0, shown.stdout + shown.stderr
        before_doc = json.loads((tmp_path / "before.json").read_text())
        assert before_doc["problems"] == []
        assert sorted(x["event_id"] for x in before_doc["lines"]) == sorted(
            e.event_id for e in mine
        )
        assert {x["patient_id"] for x in before_doc["lines"]} == {erased.id}
        assert all("opening" in x["proof"] for x in before_doc["lines"])
        checked = run_cli(settings, "verify-proof", str(tmp_path / "before.json"), "--json")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        view_args = ["patient-view", "--patient", erased.id, "--patient-system"]
        view_args += [erased.system or "", *days, "--format", "json"]
        view = run_cli(settings, *view_args)
        assert view.returncode == 0, view.stdout + view.stderr
        (tmp_path / "view.json").write_text(view.stdout)
        view_doc = json.loads(view.stdout)
        assert len(view_doc["accesses"]["lines"]) == len(mine)
        assert view_doc["problems"] == []
        # their consents, opened through the key store, each with its opening
        their_consents = [r for r in theirs if r.kind == "consent"]
        assert sorted((c["record_id"], c["version"]) for c in view_doc["consents"]) == sorted(
            (r.record_id, r.version) for r in their_consents
        )
        assert all("opening" in c["proof"] for c in view_doc["consents"])
        view_checked = run_cli(settings, "patient-view", "--verify", str(tmp_path / "view.json"))
        assert view_checked.returncode == 0, view_checked.stdout + view_checked.stderr
        # a consent line changed after the fact does not verify
        view_doc["consents"][0]["status"] = f"{view_doc['consents'][0]['status']}-forged"
        (tmp_path / "view-forged.json").write_text(json.dumps(view_doc))
        forged_view = run_cli(
            settings, "patient-view", "--verify", str(tmp_path / "view-forged.json")
        )
        assert forged_view.returncode == 1, forged_view.stdout + forged_view.stderr
        # ... nor does one whose opening is not the one its signed document commits to
        view_doc = json.loads(view.stdout)
        opening = bytearray(base64.b64decode(view_doc["consents"][0]["proof"]["opening"]))
        opening[0] ^= 1  # another salt
        view_doc["consents"][0]["proof"]["opening"] = base64.b64encode(opening).decode()
        (tmp_path / "view-forged.json").write_text(json.dumps(view_doc))
        forged_view = run_cli(
            settings, "patient-view", "--verify", str(tmp_path / "view-forged.json")
        )
        assert forged_view.returncode == 1, forged_view.stdout + forged_view.stderr
        assert "COMMITMENT_MISMATCH" in forged_view.stdout + forged_view.stderr or (
            "commitment" in forged_view.stdout + forged_view.stderr
        ), forged_view.stdout
        # the accesses name their staff from the sealed workforce directory, opened
        directory = {
            r.subject_id: f"{r.body['given_name']} {r.body['family_name']}"
            for r in records
            if r.kind == "staff"
        }
        staffed = [x for x in before_doc["lines"] if x["actor_id"] in directory]
        assert staffed, "no access by a member of the directory"
        for x in staffed:
            assert x["actor_source"] == "directory", x
            assert x["actor_name"] == directory[x["actor_id"]], x
        forged = json.loads((tmp_path / "before.json").read_text())
        forged["lines"][0]["actor_id"] = "someone-else"
        (tmp_path / "forged.json").write_text(json.dumps(forged))
        refused = run_cli(settings, "verify-proof", str(tmp_path / "forged.json"), "--json")
        assert refused.returncode == 1, refused.stdout + refused.stderr

        # 4. the retention policies and a legal hold decide; refusals are ledgered
        hipaa = run_cli(settings, "erase", *patient, "--reason", "r", "--policy", "us-hipaa")
        assert hipaa.returncode == 1 and hipaa.stdout.startswith("refused: us-hipaa"), hipaa
        placed = run_cli(settings, "legal-hold", "place", *patient, "--reason", "case 42")
        assert placed.returncode == 0, placed.stdout + placed.stderr
        hold_id = placed.stdout.split()[2]
        wait_until(lambda: _committed(settings, "legal-hold") == 1, 60, what="the hold")
        held = run_cli(settings, "erase", *patient, "--reason", "gdpr-17", "--policy", "eu-gdpr")
        assert held.returncode == 1 and f"legal hold {hold_id}" in held.stdout, held
        lifted = run_cli(settings, "legal-hold", "lift", hold_id, *patient)
        assert lifted.returncode == 0, lifted.stdout + lifted.stderr
        wait_until(lambda: _committed(settings, "legal-hold") == 2, 60, what="the lift")

        # 5. the erasure: ledgered, keys destroyed on the server, proofs untouched
        before = _rows(settings, _LEAVES)
        done = run_cli(
            settings, "erase", *patient, "--reason", "gdpr-17", "--policy", "eu-gdpr", "--json"
        )
        assert done.returncode == 0, done.stdout + done.stderr
        outcome = json.loads(done.stdout)
        assert outcome["outcome"] == "erased" and outcome["key_ids"], outcome
        assert outcome["confirmed_on"] and not outcome["still_held_on"]
        for out in (hipaa, placed, held, lifted, done):
            assert erased.id not in out.stdout + out.stderr
        wait_until(lambda: _committed(settings, "erasure") == 3, 60, what="2 refusals, 1 erasure")

        # 6. a case: the privacy officer re-identifies the worked alert's accesses. It is
        # ledgered first, one sealed access event per patient, in that patient's report;
        # the erased patient's accesses stay erased
        reid = run_cli(
            settings,
            *("alerts", "reidentify", worked, "--by", "privacy-officer-7"),
            *("--reason", "case 42", "--json"),
        )
        assert reid.returncode == 0, reid.stdout + reid.stderr
        case_doc = json.loads(reid.stdout)
        assert len(case_doc["events"]) == len(alerts[0]["event_ids"]) > 0
        reidentified = set()
        for line in case_doc["events"]:
            e = by_id[line["event_id"]]
            if e.patient.id == erased.id:
                assert line.get("erased_or_unopened"), line
                continue
            assert (line["actor_id"], line["patient_id"]) == (e.actor.id, e.patient.id)
            if e.patient.id != "-":
                reidentified.add((e.patient.id, e.patient.system or ""))
        assert len(case_doc["ledgered_as"]) == len(reidentified) > 0, case_doc
        wait_until(
            lambda: (
                committed_event_count(store) >= len(events) + 1 + len(reidentified) + console_views
            ),
            90,
            what="the re-identification chained",
        )
        who, system = sorted(reidentified)[0]
        today = time.strftime("%Y-%m-%d", time.gmtime())
        theirs_now = run_cli(
            settings,
            *("access-report", "--patient", who, "--patient-system", system),
            *("--from", days[1], "--to", today, "--format", "json"),
            "--out",
            str(tmp_path / "reidentified.json"),
        )
        assert theirs_now.returncode == 0, theirs_now.stdout + theirs_now.stderr
        looked = [
            x
            for x in json.loads((tmp_path / "reidentified.json").read_text())["lines"]
            if x["event_id"] in case_doc["ledgered_as"]
        ]
        assert [x["actor_id"] for x in looked] == ["privacy-officer-7"], looked
    finally:
        stop(proc)
    # not a leaf, block hash or stored byte changed by the erasure (rows added after it:
    # the re-identification)
    kept = {r[1] for r in before}
    assert [r for r in _rows(settings, _LEAVES) if r[1] in kept] == before
    # after all of it (erasure, holds, refusals, reports, verifications), nothing at rest
    # names anyone: every topic, every table, the processor's log
    at_rest = _everything_at_rest(settings)
    log = (tmp_path / "processor.log").read_text()
    for identifier in identifiers | {b"privacy-officer-7", note.encode()}:
        assert identifier not in at_rest, "an identifier in clear at rest"
        assert identifier.decode() not in log

    report = _verify(settings)
    assert report["result"] == "intact", report["findings"]
    gone = len(mine)
    # the patient's reference records (their demographics, care relationships and
    # consents) went with their key
    assert report["sealed"] == {
        # and the alert's status change, the re-identifications and the console's views
        "opened": len(events) - gone + 1 + len(reidentified) + console_views,
        "erased": gone,
        "references_opened": len(records) - len(theirs),
        "references_erased": len(theirs),
        "raw_opened": 0,  # no gateway here
        "raw_erased": 0,
    }, report["sealed"]
    # the report still lists the patient's accesses, as erased, each with its proof
    after_report = run_cli(settings, *report_args, "--out", str(tmp_path / "after.json"))
    assert after_report.returncode == 0, after_report.stdout + after_report.stderr
    after_doc = json.loads((tmp_path / "after.json").read_text())
    assert sorted(x["event_id"] for x in after_doc["lines"]) == sorted(e.event_id for e in mine)
    for line in after_doc["lines"]:
        assert line["erased"]["reason"] == "gdpr-17" and "opening" not in line["proof"]
        assert "patient_id" not in line and "actor_id" not in line
    assert erased.id not in json.dumps(after_doc["lines"])
    offline = run_cli(settings, "verify-proof", str(tmp_path / "after.json"), "--json")
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert {tuple(r["unbound"]) for r in json.loads(offline.stdout)["results"]} == {("patient",)}
    opened = _opened(settings, by_id)
    for e in events:
        assert opened[e.event_id] is (e.patient.id != erased.id), e.event_id
    # and no other patient's key opens them
    first = next(e for e in events if e.patient.id == erased.id)
    _bh, _eid, _leaf, canonical, sealed = next(r for r in before if r[1] == first.event_id.encode())
    assert isinstance(canonical, bytes) and isinstance(sealed, bytes)
    other = next(e.patient for e in events if e.patient.id not in (erased.id, "-"))
    with open_keystore(settings) as keys:
        key = keys.data_key(keys.lookup(other.system or "", other.id), "test")
    assert key is not None
    with pytest.raises(SealError):
        unseal(
            key.key,
            leaf_hash(canonical),
            base64.b64decode(sealed),
            bytes.fromhex(json.loads(canonical)["sealed_commitment"]),
        )


def _alter(settings: Settings, statement: str) -> None:
    """``ALTER TABLE ... UPDATE/DELETE`` as an attacker with ClickHouse write access, and
    the wait for the mutation (asynchronous on 18.16)."""
    store = store_for(settings)
    db = settings.clickhouse_database
    try:
        store.backend.execute(statement.format(db=db))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = store.backend.execute(
                "SELECT count() FROM system.mutations WHERE database = %(db)s AND is_done = 0",
                {"db": db},
            )
            if int(rows[0][0]) == 0:
                return
            time.sleep(0.05)
        raise AssertionError("mutation did not finish")
    finally:
        store.backend.close()


def test_edits_of_the_unsigned_columns_and_a_key_deleted_without_an_erasure_are_found(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = _sealed_settings(isolated, tmp_path)
    events = _events(120, seed=43)
    # the same access sent twice (a retry under a new event id): ADR 0023's duplicate,
    # found on a sealed ledger by comparing the opened events (their documents differ)
    again = msgspec.structs.replace(events[7], event_id=str(uuid.uuid4()))
    with AccessEventProducer(settings) as producer:
        for e in [*events, again]:
            producer.send(e)
        producer.flush()
    proc = start_processor(settings, tmp_path / "processor.log")
    try:
        store = store_for(settings)
        wait_until(lambda: committed_event_count(store) > len(events), 120, what="chained")
        _wait_registry_ledgered(settings, store)
    finally:
        stop(proc)
    clean = _verify(settings)
    assert clean["result"] == "intact", clean["findings"]
    duplicates = [f for f in clean["findings"] if f["code"] == "DUPLICATE_EVENT"]  # type: ignore[index,union-attr]
    assert [d["event_id"] for d in duplicates] == [again.event_id], duplicates  # type: ignore[index]
    rows = _rows(settings, "event_id, patient_id, sealed, data_key_id")
    (a_id, a_ref, a_sealed, _), (b_id, b_ref, _b_sealed, _) = next(
        (x, y) for x, y in itertools.pairwise(rows) if x[1] != y[1]
    )
    ev = "{db}.access_events"
    # an access moved into another patient's report: the pseudonym column edited
    _alter(
        settings,
        f"ALTER TABLE {ev} UPDATE patient_id = '{b_ref.decode()}' "  # type: ignore[union-attr]
        f"WHERE event_id = '{a_id.decode()}'",
    )  # type: ignore[union-attr]
    # a sealed part moved to another row
    _alter(
        settings,
        f"ALTER TABLE {ev} UPDATE sealed = '{a_sealed.decode()}' "  # type: ignore[union-attr]
        f"WHERE event_id = '{b_id.decode()}'",
    )  # type: ignore[union-attr]
    # a patient's keys deleted behind the erasure's back (no ledgered erasure)
    third = next(r for r in rows if r[1] not in (a_ref, b_ref))
    _alter(settings, f"ALTER TABLE {{db}}.data_keys DELETE WHERE key_id = '{third[3].decode()}'")  # type: ignore[union-attr]
    # ... and an "erasure" of that key ledgered by someone who is not the registrar: it
    # must not excuse the missing key (anyone may write to a reference topic)
    mallory = SigningKey.from_seed(b"\x66" * 32)
    forged = signed_privacy_record(
        mallory,
        "erasure",
        "erasure-forged",
        {
            "patient_ref": third[1].decode(),  # type: ignore[union-attr]
            "lookup": "00" * 32,
            "outcome": "erased",
            "key_ids": [third[3].decode()],  # type: ignore[union-attr]
            "reason": "cover-up",
            "policy": "eu-gdpr",
            "decision": "none",
            "requested_by": "mallory",
        },
    )
    with AccessEventProducer(settings, topic=settings.topic_patients, sign=False) as producer:
        producer.send_raw(canonical_reference_bytes(forged), b"k")
        producer.flush()
    proc = start_processor(settings, tmp_path / "processor-2.log")
    try:
        wait_until(lambda: _committed(settings, "erasure") == 1, 60, what="the forged erasure")
    finally:
        stop(proc)
    report = _verify(settings)
    assert report["result"] == "tampered"
    assert report["sealed"]["erasures_not_honoured"] == 1, report["sealed"]  # type: ignore[index]
    found = {(f["code"], f["event_id"]) for f in report["findings"]}  # type: ignore[index,union-attr]
    assert ("SEALED_REF_MISMATCH", a_id.decode()) in found, found  # type: ignore[union-attr]
    assert ("SEALED_PART_INVALID", b_id.decode()) in found, found  # type: ignore[union-attr]
    assert ("SEALED_KEY_MISSING", third[0].decode()) in found, found  # type: ignore[union-attr]


def _sealed_batch(settings: Settings, events: list[AccessEvent]) -> bytes:
    """One sealed batch record signed by the registered source, as the SDK makes it."""
    assert settings.source_key is not None and settings.ingest_public_key is not None
    pk = bytes.fromhex(settings.ingest_public_key.read_text().strip())
    batcher = SourceBatcher(
        load_signing_key(settings.source_key, env={}),
        "ehr-main",
        uuid.uuid4().hex[:16],
        max_events=len(events),
        max_age_s=60.0,
        seal_to=pk,
    )
    for e in events:
        value, box = batcher.encode(e)
        batcher.add(value, b"", time.monotonic(), None, box)
    batch = batcher.take("ehr-main", time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()))
    assert batch is not None
    ((_key, record),) = batch.records
    return record


def test_a_swapped_ingest_box_is_dead_lettered_alone_and_a_batch_in_clear_is_refused(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = _sealed_settings(isolated, tmp_path)
    events = _events(20, seed=42)
    record = json.loads(_sealed_batch(settings, events[:10]))
    record["sealed"][2], record["sealed"][3] = record["sealed"][3], record["sealed"][2]
    swapped = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    plain = settings.replace(ingest_public_key=None)
    with AccessEventProducer(settings, sign=False) as raw:
        raw.send_raw(swapped, key=b"k")
        raw.flush()
    with AccessEventProducer(plain) as clear:  # a source that does not seal
        for e in events[10:]:
            clear.send(e)
        clear.flush()
    proc = start_processor(settings, tmp_path / "processor.log")
    try:
        store = store_for(settings)
        wait_until(lambda: committed_event_count(store) >= 8, 120, what="the 8 good events")
        dead = _read(settings, settings.topic_dead_letter, 3, timeout=60)
    finally:
        stop(proc)
    codes = sorted(dict(m.headers())["careledger-error-code"].decode() for m in dead)
    assert codes.count("SEALED_UNOPENED") == 2, codes  # ciphertexts 2 and 3, each alone
    assert any(c != "SEALED_UNOPENED" for c in codes), codes  # the clear batch
    reasons = [dict(m.headers()).get("careledger-error", b"").decode() for m in dead]
    assert any("this ledger is sealed" in r for r in reasons), reasons
    assert committed_event_count(store) == 8


def test_a_sealed_processor_without_its_ingest_key_or_token_says_so_in_one_line(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = _sealed_settings(isolated, tmp_path)
    no_key = run_cli(settings.replace(ingest_key=None), "process")
    assert no_key.returncode == 2, no_key.stdout + no_key.stderr
    assert "no ingest key configured" in no_key.stderr and "Traceback" not in no_key.stderr
    no_token = run_cli(settings.replace(keystore_token_label="no-such-token"), "process")
    assert no_token.returncode == 2, no_token.stdout + no_token.stderr
    assert "cannot open the key store's token" in no_token.stderr
    assert "Traceback" not in no_token.stderr
