"""``careledger access-report`` and ``verify-proof`` on the real pipeline.

Simulated hospital traffic plus a few crafted events for one patient go through the
real processor into ClickHouse; the report must list exactly that patient's accesses
in the range, every view must hold only what it promises, and the exported proofs
must verify offline with the trusted key and fail for each tampering, named after
the attack. The GDPR and HIPAA views carry redacted proofs (ADR 0009): no event bytes,
inclusion verified but never content verified.
"""

from __future__ import annotations

import base64
import copy
import csv
import datetime as dt
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from careledger import stack as stack_mod
from careledger.config import Settings
from careledger.kafka.producer import AccessEventProducer
from careledger_core.block import SIGNING_CONTEXT, BlockHeader, decode_header, header_bytes
from careledger_core.event import AccessEvent, canonical_event_bytes, event_from_dict
from careledger_core.hashing import leaf_hash
from careledger_core.reference import (
    REFERENCE_SCHEMA,
    canonical_reference_bytes,
    reference_from_dict,
)
from careledger_core.signing import SigningKey, format_public_key
from commands.cli import main
from producers.simulator import HospitalModel, simulate
from tests.conftest import _cleanup, _migrate, _with_local_source, isolated_settings
from tests.integration.pipeline import (
    committed_event_count,
    processor_settings,
    run_cli,
    start_processor,
    stop,
    store_for,
    wait_until,
    with_keys,
)
from verifiers.reports.proofs import DISPLAYED_FIELDS, is_disclosure

pytestmark = pytest.mark.integration

DAY = "2026-11-02"
FROM, TO = "2026-11-02T00:00:00.000000Z", "2026-11-03T00:00:00.000000Z"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
DIRECTORY_USER = "DIRTEST1"


def _crafted(patient: str, n: int, occurred_at: str, **changes: Any) -> AccessEvent:
    d: dict[str, Any] = {
        "schema": "careledger.access-event/1",
        "event_id": f"c0ffee00-0000-4000-8000-{n:012d}",
        "occurred_at": occurred_at,
        "recorded_at": occurred_at,
        "event_type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
        },
        "action": "R",
        "outcome": 0,
        "purpose_of_use": ["TREAT"],
        "actor": {
            "id": DIRECTORY_USER,
            "name": "A. L.",
            "roles": ["clerk"],
            "organization": "Northbridge General Hospital",
            "is_requestor": True,
        },
        "source": {"system": "ehr", "type": 4},
        "patient": {"id": patient},
        "object": {"type": "DocumentReference", "id": f"DocumentReference/{n}"},
    }
    d.update(changes)
    return event_from_dict(d)


def _export(patient: str, n: int, occurred_at: str, **changes: Any) -> AccessEvent:
    return _crafted(
        patient,
        n,
        occurred_at,
        action="E",
        event_type={"system": DCM, "code": "110106", "display": "Export"},
        event_subtype=[
            {
                "system": "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle",
                "code": "disclose",
                "display": "Disclose",
            }
        ],
        purpose_of_use=["HPAYMT"],
        **changes,
    )


def _staff(version: int, effective_at: str, given: str, family: str, role: str) -> bytes:
    return canonical_reference_bytes(
        reference_from_dict(
            {
                "schema": REFERENCE_SCHEMA,
                "kind": "staff",
                "record_id": DIRECTORY_USER,
                "version": version,
                "recorded_at": effective_at,
                "effective_at": effective_at,
                "body": {
                    "user_id": DIRECTORY_USER,
                    "family_name": family,
                    "given_name": given,
                    "roles": [role],
                    "department": "HIM",
                    "status": "active",
                    "start_date": "2020-01-01",
                },
            }
        )
    )


FLAGGED = "c0ffee00-0000-4000-8000-000000000001"


def _decide(store: Any, events: list[AccessEvent], patient: str) -> None:
    """Two rows as the auditor writes them to migration 4's ``access_decisions``: the
    crafted disclosure flagged, the patient's first simulated access explained."""
    explained = next(e for e in events if e.patient.id == patient and e.actor.id.startswith("E"))
    rows = []
    for e, kind, explanation, flags, severity in (
        (next(e for e in events if e.event_id == FLAGGED), "", "", '[{"code":"R07"}]', "high"),
        (
            explained,
            "care-relationship",
            '{"kind":"care-relationship","relationship_kind":"encounter"}',
            "[]",
            "",
        ),
    ):
        rows.append(
            (
                e.event_id,
                e.occurred_at,
                dt.date.fromisoformat(e.occurred_at[:10]),
                e.actor.id,
                kind,
                explanation,
                flags,
                severity,
                "2026-11-29T00:00:00.000000Z",
            )
        )
    store.backend.insert(
        f"{store.db}.access_decisions",
        (
            "event_id",
            "occurred_at",
            "occurred_date",
            "actor_id",
            "explanation_kind",
            "explanation",
            "flags",
            "severity",
            "decided_at",
        ),
        rows,
    )


class Ledger:
    """What was produced, and where the reports of it are."""

    def __init__(self, settings: Settings, events: list[AccessEvent], patient: str, out: Path):
        self.settings = settings
        self.events = events
        self.patient = patient
        self.out = out
        self.trusted_key = settings.trusted_keys[0]

    @property
    def expected(self) -> list[AccessEvent]:
        return [
            e for e in self.events if e.patient.id == self.patient and FROM <= e.occurred_at < TO
        ]

    def report(self, view: str, fmt: str, *extra: str) -> Path:
        path = self.out / f"report-{view}{''.join(extra)}.{fmt}"
        if not path.exists():
            result = run_cli(
                self.settings,
                "access-report",
                "--patient",
                self.patient,
                "--from",
                DAY,
                "--to",
                DAY,
                "--view",
                view,
                "--format",
                fmt,
                "--out",
                str(path),
                *extra,
            )
            assert result.returncode == 0, result.stdout + result.stderr
        return path

    def doc(self, view: str = "access", *extra: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.report(view, "json", *extra).read_text())
        return loaded


@pytest.fixture(scope="module")
def ledger(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    tmp = tmp_path_factory.mktemp("access-report")
    base = isolated_settings(stack).replace(verifier_state_dir=tmp / "verifier")
    topics = stack_mod.default_topics(base)
    stack_mod.ensure_topics(base, topics)
    _migrate(base)
    base = _with_local_source(base, tmp)  # signatures are required by default
    try:
        # small blocks: a block's signed time span must not cover the whole report day
        # (the TIME_OUTSIDE_BLOCK attack needs a line whose block it can leave)
        settings = processor_settings(with_keys(base, tmp), block_max_events=100)
        simulated = list(simulate(HospitalModel(staff=40, patients=60, seed=11), 1500, seed=11))
        counts = Counter(e.patient.id for e in simulated if e.patient.id != "-")
        patient = counts.most_common(1)[0][0]
        crafted = [
            _export(patient, 1, "2026-11-02T12:34:56.000001Z"),
            _crafted(  # printing inside the hospital: an access, not a disclosure
                patient,
                2,
                "2026-11-02T12:40:00.000000Z",
                event_type={"system": DCM, "code": "110106", "display": "Export"},
            ),
            _export(patient, 3, "2026-11-02T13:00:00.000000Z", outcome=8),  # failed export
            _crafted(patient, 4, "2026-11-05T09:00:00.000000Z"),  # after the range
            _export("SOMEONE-ELSE", 5, "2026-11-02T12:35:00.000000Z"),
            _crafted(patient, 6, "2026-11-01T23:59:59.999999Z"),  # before the range
        ]
        events = simulated + crafted
        directory = [
            _staff(1, "2026-01-01T00:00:00.000000Z", "Ada", "Lovelace", "physician"),
            _staff(2, "2026-11-03T00:00:00.000000Z", "Ada", "King", "manager"),
        ]
        proc = start_processor(settings, tmp / "processor.log")
        store = store_for(settings)
        try:
            with AccessEventProducer(settings, topic=settings.topic_workforce) as producer:
                for value in directory:
                    producer.send_raw(value, key=DIRECTORY_USER.encode())
                producer.flush()
            with AccessEventProducer(settings) as producer:
                for e in events:
                    producer.send(e)
                producer.flush()

            def staff_rows() -> int:
                rows = store.backend.execute(
                    f"SELECT count() FROM {store.db}.reference_records AS r "
                    f"ANY INNER JOIN (SELECT chain_id, height, block_hash FROM {store.db}.blocks)"
                    " AS b USING (chain_id, height, block_hash)"
                )
                return int(rows[0][0])

            wait_until(
                lambda: committed_event_count(store) >= len(events) and staff_rows() >= 2,
                120,
                what="every event and directory record in a signed block",
            )
            time.sleep(0.5)
            _decide(store, events, patient)
        finally:
            stop(proc)
            store.backend.close()
        yield Ledger(settings, events, patient, tmp)
    finally:
        _cleanup(base, list(topics))


def _ids(doc: dict[str, Any]) -> list[str]:
    return [
        json.loads(base64.b64decode(line["proof"]["canonical"]))["event_id"]
        for line in doc["lines"]
    ]


def _leaves(events: list[AccessEvent]) -> list[str]:
    return sorted(leaf_hash(canonical_event_bytes(e)).hex() for e in events)


def _doc_leaves(doc: dict[str, Any]) -> list[str]:
    return sorted(line["proof"]["leaf_hash"] for line in doc["lines"])


def test_report_lists_exactly_the_patients_accesses_in_range(ledger: Ledger) -> None:
    doc = ledger.doc("access")
    expected = sorted(ledger.expected, key=lambda e: e.occurred_at)
    assert len(expected) >= 5
    assert sorted(_ids(doc)) == sorted(e.event_id for e in expected)
    assert len(set(_ids(doc))) == len(doc["lines"]), "an access is listed twice"
    assert [line["occurred_at"] for line in doc["lines"]] == [e.occurred_at for e in expected]
    assert doc["problems"] == []
    by_id = {e.event_id: e for e in expected}
    for line in doc["lines"]:
        e = by_id[line["event_id"]]
        for name in DISPLAYED_FIELDS:
            if name in line:
                assert line[name] == DISPLAYED_FIELDS[name](e), name
        assert line["proof"]["canonical"] == base64.b64encode(canonical_event_bytes(e)).decode()
        assert "decision" in line  # migration 4's access_decisions exists
    crafted = next(line for line in doc["lines"] if line["actor_id"] == DIRECTORY_USER)
    # the directory version in force at the access time, not the event's own name
    assert (crafted["actor_name"], crafted["actor_role"], crafted["actor_source"]) == (
        "Ada Lovelace",
        "physician",
        "directory",
    )
    simulated = next(line for line in doc["lines"] if line["actor_id"] != DIRECTORY_USER)
    assert simulated["actor_source"] == "event" and simulated["actor_role"]
    decisions = {line["event_id"]: line["decision"] for line in doc["lines"] if line["decision"]}
    assert len(decisions) == 2
    assert decisions[FLAGGED]["flags"] == [{"code": "R07"}]
    assert decisions[FLAGGED]["severity"] == "high"


def test_csv_and_table_render(ledger: Ledger) -> None:
    rows = list(csv.DictReader(io.StringIO(ledger.report("access", "csv").read_text())))
    assert sorted(r["event_id"] for r in rows) == sorted(e.event_id for e in ledger.expected)
    assert {"actor_name", "purpose", "chain_id", "height", "index", "leaf_hash"} <= set(rows[0])
    assert all(r["patient_id"] == ledger.patient for r in rows)
    table = ledger.report("access", "table").read_text()
    assert f"patient {ledger.patient}" in table
    assert f"{len(ledger.expected)} line(s)" in table
    assert "Ada Lovelace" in table
    assert "high: R07" in table and "explained: care-relationship (encounter)" in table
    doc = ledger.doc("access")
    assert doc["lines"][0]["proof"]["canonical"] not in table


def test_hipaa_view_lists_only_disclosures(ledger: Ledger) -> None:
    doc = ledger.doc("hipaa-disclosures")
    disclosures = [e for e in ledger.expected if is_disclosure(e)]
    assert "c0ffee00-0000-4000-8000-000000000001" in {e.event_id for e in disclosures}
    assert _doc_leaves(doc) == _leaves(disclosures)
    assert sorted(line["event_id"] for line in doc["lines"]) == sorted(
        e.event_id for e in disclosures
    )
    assert all(line["proof"]["form"] == "redacted" for line in doc["lines"])
    assert "canonical" not in json.dumps(doc)
    for line in doc["lines"]:
        assert {"occurred_at", "recipient", "description", "purpose"} <= set(line)
    crafted = next(line for line in doc["lines"] if line["actor_id"] == DIRECTORY_USER)
    assert crafted["purpose"] == ["HPAYMT"]
    assert "Northbridge General Hospital" in crafted["recipient"]
    assert "DocumentReference" in crafted["description"]
    rows = list(csv.DictReader(io.StringIO(ledger.report("hipaa-disclosures", "csv").read_text())))
    assert len(rows) == len(disclosures)


def test_gdpr_view_has_only_dates_and_purposes(ledger: Ledger) -> None:
    doc = ledger.doc("gdpr")
    assert len(doc["lines"]) == len(ledger.expected)
    assert all(set(line) == {"occurred_at", "purpose", "proof"} for line in doc["lines"])
    assert _doc_leaves(doc) == _leaves(ledger.expected), "exactly the patient's accesses"
    text = ledger.report("gdpr", "csv").read_text()
    lines = text.splitlines()
    assert lines[0] == "date,purpose"
    assert len(lines) == len(ledger.expected) + 1
    assert DIRECTORY_USER not in text and "Lovelace" not in text


def test_gdpr_json_export_discloses_no_actor_and_no_event_bytes(ledger: Ledger) -> None:
    text = ledger.report("gdpr", "json").read_text()
    doc = json.loads(text)
    assert doc["lines"] and all(line["proof"]["form"] == "redacted" for line in doc["lines"])
    assert '"canonical"' not in text
    for e in ledger.expected:
        raw = canonical_event_bytes(e)
        assert base64.b64encode(raw).decode() not in text
        assert raw.hex() not in text
        assert e.actor.id not in text, "actor id disclosed"
        assert e.event_id not in text
        if e.actor.name:
            assert e.actor.name not in text
        if e.client is not None:
            assert e.client.address not in text
    assert DIRECTORY_USER not in text and "Lovelace" not in text
    for line in doc["lines"]:  # the header is the only decoded content: no event in it
        header = base64.b64decode(line["proof"]["header"])
        assert decode_header(header).chain_id.split("/")[-2] == ledger.settings.topic_events


def test_exported_reports_verify_with_the_trusted_key(ledger: Ledger) -> None:
    assert len(ledger.doc("hipaa-disclosures")["lines"]) >= 1
    for view in ("access", "hipaa-disclosures", "gdpr"):
        path = ledger.report(view, "json")
        result = run_cli(
            ledger.settings, "verify-proof", str(path), "--trusted-key", ledger.trusted_key
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "VERIFIED" in result.stdout
        per_line = result.stdout.splitlines()[:-1]
        assert len(per_line) == len(ledger.doc(view)["lines"])
        if view == "access":
            assert all("content verified" in line for line in per_line)
        else:  # redacted: inclusion only, and said so on every line
            assert all("inclusion verified, REDACTED" in line for line in per_line)
            assert all("NOT bound to it offline" in line for line in per_line)
            assert not any("content verified" in line for line in per_line)
            assert f"0 content verified, {len(per_line)} inclusion only" in result.stdout


def test_gdpr_export_with_event_bytes_for_an_entitled_requester(ledger: Ledger) -> None:
    doc = ledger.doc("gdpr", "--include-event-bytes")
    assert all(line["proof"]["form"] == "full" for line in doc["lines"])
    assert sorted(_ids(doc)) == sorted(e.event_id for e in ledger.expected)
    path = ledger.report("gdpr", "json", "--include-event-bytes")
    result = run_cli(
        ledger.settings,
        "verify-proof",
        str(path),
        "--trusted-key",
        ledger.trusted_key,
        "--require-content",
        "--json",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["content_verified"] == len(doc["lines"]) and summary["inclusion_verified"] == 0
    # the same requester refuses the default, redacted export
    redacted = run_cli(
        ledger.settings,
        "verify-proof",
        str(ledger.report("gdpr", "json")),
        "--trusted-key",
        ledger.trusted_key,
        "--require-content",
    )
    assert redacted.returncode == 1
    assert redacted.stdout.count("[CONTENT_NOT_PROVEN]") == len(doc["lines"])


def _verify(ledger: Ledger, doc: dict[str, Any], name: str) -> tuple[int, str]:
    path = ledger.out / f"tampered-{name}.json"
    path.write_text(json.dumps(doc))
    code = main(
        [
            "verify-proof",
            str(path),
            "--trusted-key",
            ledger.trusted_key,
            "--events-topic",
            ledger.settings.topic_events,
        ]
    )
    return code, name


def _pick(doc: dict[str, Any]) -> int:
    """A line in a block with several events (so its audit path is not empty)."""
    for i, line in enumerate(doc["lines"]):
        if line["proof"]["audit_path"]:
            return i
    raise AssertionError("no block with more than one event")


def test_displayed_actor_changed_in_the_file(ledger: Ledger, capsys: Any) -> None:
    doc = ledger.doc()
    i = _pick(doc)
    doc["lines"][i]["actor_id"] = "SOMEONE-INNOCENT"
    assert _verify(ledger, doc, "actor")[0] == 1
    assert f"line {i} " in capsys.readouterr().out


def test_canonical_bytes_changed(ledger: Ledger) -> None:
    doc = ledger.doc()
    proof = doc["lines"][_pick(doc)]["proof"]
    raw = base64.b64decode(proof["canonical"])
    event = json.loads(raw)
    event["purpose_of_use"] = ["HMARKT"]
    forged = json.dumps(event, sort_keys=True, separators=(",", ":")).encode()
    proof["canonical"] = base64.b64encode(forged).decode()
    proof["leaf_hash"] = leaf_hash(forged).hex()
    assert _verify(ledger, doc, "canonical")[0] == 1


def test_proof_hash_flipped(ledger: Ledger) -> None:
    doc = ledger.doc()
    path = doc["lines"][_pick(doc)]["proof"]["audit_path"]
    path[-1] = path[-1][:-1] + ("0" if path[-1][-1] != "0" else "1")
    assert _verify(ledger, doc, "proof")[0] == 1


def test_header_signed_by_another_key_even_if_the_file_carries_it(ledger: Ledger) -> None:
    doc = ledger.doc()
    other = SigningKey.from_seed(bytes(range(32)))
    proof = doc["lines"][_pick(doc)]["proof"]
    header = decode_header(base64.b64decode(proof["header"]))
    fields = {f: getattr(header, f) for f in BlockHeader.__struct_fields__}
    forged = BlockHeader(**{**fields, "key_id": other.key_id})
    proof["header"] = base64.b64encode(header_bytes(forged)).decode()
    proof["signature"] = other.sign(SIGNING_CONTEXT + header_bytes(forged)).hex()
    proof["public_key"] = format_public_key(other.public_key)
    doc["trusted_keys"] = [format_public_key(other.public_key)]
    assert _verify(ledger, doc, "signature")[0] == 1
    # the same header re-signed by the other key under the trusted key id
    doc = ledger.doc()
    proof = doc["lines"][_pick(doc)]["proof"]
    raw = base64.b64decode(proof["header"])
    proof["signature"] = other.sign(SIGNING_CONTEXT + raw).hex()
    assert _verify(ledger, doc, "signature-same-id")[0] == 1


def test_line_moved_to_another_index(ledger: Ledger) -> None:
    doc = ledger.doc()
    proof = doc["lines"][_pick(doc)]["proof"]
    header = decode_header(base64.b64decode(proof["header"]))
    proof["index"] = (proof["index"] + 1) % header.event_count
    assert _verify(ledger, doc, "index")[0] == 1


@pytest.mark.parametrize(
    ("attack", "code"),
    [
        ("leaf_hash_flipped", "PROOF_INVALID"),
        ("leaf_hash_of_a_forged_event", "PROOF_INVALID"),
        ("audit_path_hash_flipped", "PROOF_INVALID"),
        ("moved_to_another_index", "PROOF_INVALID"),
        ("header_changed_without_resigning", "SIGNATURE_INVALID"),
        ("signature_flipped", "SIGNATURE_INVALID"),
        ("resigned_by_an_untrusted_key", "KEY_UNKNOWN"),
        ("displayed_time_moved_out_of_the_block", "TIME_OUTSIDE_BLOCK"),
    ],
)
def test_tampered_gdpr_export_fails(ledger: Ledger, capsys: Any, attack: str, code: str) -> None:
    doc = ledger.doc("gdpr")
    i = _pick(doc)
    line = doc["lines"][i]
    proof = line["proof"]
    header = decode_header(base64.b64decode(proof["header"]))
    other = SigningKey.from_seed(bytes(range(32)))
    if attack == "leaf_hash_flipped":
        proof["leaf_hash"] = proof["leaf_hash"][:-1] + (
            "0" if proof["leaf_hash"][-1] != "0" else "1"
        )
    elif attack == "leaf_hash_of_a_forged_event":
        forged = _crafted(ledger.patient, 99, line["occurred_at"], purpose_of_use=line["purpose"])
        proof["leaf_hash"] = leaf_hash(canonical_event_bytes(forged)).hex()
    elif attack == "audit_path_hash_flipped":
        path = proof["audit_path"]
        path[0] = path[0][:-1] + ("0" if path[0][-1] != "0" else "1")
    elif attack == "moved_to_another_index":  # to a leaf no other line of the file shows
        listed = {
            (p["chain_id"], p["height"], p["index"]) for p in (x["proof"] for x in doc["lines"])
        }
        proof["index"] = next(
            k
            for k in range(header.event_count)
            if (proof["chain_id"], proof["height"], k) not in listed
        )
    elif attack == "header_changed_without_resigning":
        fields = {f: getattr(header, f) for f in BlockHeader.__struct_fields__}
        changed = BlockHeader(**{**fields, "created_at": "2026-11-02T23:59:59.000000Z"})
        proof["header"] = base64.b64encode(header_bytes(changed)).decode()
        proof.pop("block_hash")
    elif attack == "signature_flipped":
        sig = proof["signature"]
        proof["signature"] = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    elif attack == "resigned_by_an_untrusted_key":
        fields = {f: getattr(header, f) for f in BlockHeader.__struct_fields__}
        forged_header = BlockHeader(**{**fields, "key_id": other.key_id})
        proof["header"] = base64.b64encode(header_bytes(forged_header)).decode()
        proof["signature"] = other.sign(SIGNING_CONTEXT + header_bytes(forged_header)).hex()
        proof.pop("block_hash")
        doc["trusted_keys"] = [format_public_key(other.public_key)]
    elif attack == "displayed_time_moved_out_of_the_block":  # still within the report's day
        late = "2026-11-02T23:59:59.999999Z"
        assert header.first_event_time > FROM or header.last_event_time < late
        line["occurred_at"] = FROM if header.first_event_time > FROM else late
    capsys.readouterr()
    assert _verify(ledger, doc, f"gdpr-{attack}")[0] == 1
    out = capsys.readouterr().out
    failed = [text for text in out.splitlines() if "): FAILED:" in text]
    assert len(failed) == 1 and failed[0].startswith(f"line {i} ")
    assert f"[{code}]" in failed[0]
    assert out.splitlines()[-1].startswith("FAILED: ")


def test_removed_line_is_not_detectable_from_the_file_alone(ledger: Ledger) -> None:
    doc = copy.deepcopy(ledger.doc())
    del doc["lines"][_pick(doc)]
    assert _verify(ledger, doc, "removed")[0] == 0, (
        "the report is complete only up to the ledger: a missing line leaves no trace"
    )
    assert "complete only up to the ledger" in doc["completeness"]


def test_rows_tampered_in_the_store_are_reported_not_laundered(ledger: Ledger) -> None:
    """Runs last: it rewrites one of the patient's stored events in ClickHouse."""
    store = store_for(ledger.settings)
    try:
        target = next(e for e in ledger.expected if e.actor.id != DIRECTORY_USER)
        canonical = canonical_event_bytes(target)
        forged = canonical.replace(b'"action":"' + target.action.encode(), b'"action":"D', 1)
        assert forged != canonical
        store.backend.execute(
            f"ALTER TABLE {store.db}.access_events UPDATE canonical = %(v)s "
            "WHERE event_id = %(id)s",
            {"v": forged, "id": target.event_id},
        )

        def mutations_done() -> bool:
            rows = store.backend.execute(
                "SELECT count() FROM system.mutations WHERE database = %(db)s AND is_done = 0",
                {"db": store.db},
            )
            return int(rows[0][0]) == 0

        wait_until(mutations_done, 60, what="the forged row in place")
    finally:
        store.backend.close()
    out = ledger.out / "after-tampering.json"
    result = run_cli(
        ledger.settings,
        "access-report",
        "--patient",
        ledger.patient,
        "--from",
        DAY,
        "--to",
        DAY,
        "--format",
        "json",
        "--out",
        str(out),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not leaf" in result.stderr
    doc = json.loads(out.read_text())
    failing = [i for i, line in enumerate(doc["lines"]) if line["event_id"] == target.event_id]
    assert len(failing) == 1 and doc["lines"][failing[0]]["action"] == "D"
    verified = run_cli(
        ledger.settings, "verify-proof", str(out), "--trusted-key", ledger.trusted_key
    )
    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert f"line {failing[0]} " in verified.stdout
    assert verified.stdout.count("): FAILED:") == 1, "only the forged line fails"
