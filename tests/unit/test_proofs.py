"""The pure check behind ``careledger verify-proof``, on hand-built reports.

Each tampering test is named after the attack it stands for.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from careledger_core.block import SIGNING_CONTEXT, BlockHeader, block_hash, header_bytes
from careledger_core.event import AccessEvent, canonical_event_bytes, event_from_dict
from careledger_core.hashing import EMPTY_ROOT, leaf_hash
from careledger_core.merkle import MerkleTree
from careledger_core.signing import SigningKey, TrustedKeys, format_public_key
from commands.cli import main
from verifiers.reports.access_report import parse_range, render_csv, render_table
from verifiers.reports.proofs import (
    REPORT_SCHEMA,
    ReportFormatError,
    describe,
    is_disclosure,
    recipient,
    verify_report,
)

KEY = SigningKey.from_seed(bytes(range(32)))
OTHER = SigningKey.from_seed(bytes(range(1, 33)))
TRUSTED = TrustedKeys([KEY.public_key])
CHAIN = "careledger.local/careledger.access-events/0"
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def _event(n: int, patient: str = "MRN1", **changes: Any) -> AccessEvent:
    d: dict[str, Any] = {
        "schema": "careledger.access-event/1",
        "event_id": f"00000000-0000-4000-8000-{n:012d}",
        "occurred_at": f"2026-11-02T08:{n:02d}:00.000000Z",
        "recorded_at": f"2026-11-02T08:{n:02d}:01.000000Z",
        "event_type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
        },
        "action": "R",
        "outcome": 0,
        "purpose_of_use": ["TREAT"],
        "actor": {
            "id": f"E{n}",
            "name": f"Dr {n}",
            "roles": ["physician"],
            "organization": "Northbridge",
            "is_requestor": True,
        },
        "source": {"system": "ehr", "type": 4},
        "patient": {"id": patient},
        "object": {"type": "Observation", "id": f"Observation/{n}"},
    }
    d.update(changes)
    return event_from_dict(d)


def _export(n: int) -> AccessEvent:
    return _event(
        n,
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
    )


def _block(events: list[AccessEvent], key: SigningKey = KEY, height: int = 1) -> dict[str, Any]:
    canon = [canonical_event_bytes(e) for e in events]
    tree = MerkleTree([leaf_hash(c) for c in canon])
    header = BlockHeader(
        chain_id=CHAIN,
        height=height,
        prev_hash="ab" * 32,
        merkle_root=(tree.root if events else EMPTY_ROOT).hex(),
        event_count=len(events),
        first_offset=10,
        last_offset=10 + len(events) - 1,
        dead_lettered=0,
        absent_offsets=0,
        first_event_time=events[0].occurred_at,
        last_event_time=events[-1].occurred_at,
        created_at="2026-11-02T09:00:00.000000Z",
        key_id=key.key_id,
    )
    return {"header": header, "canon": canon, "tree": tree, "signature": key.sign_header(header)}


def _line(block: dict[str, Any], i: int, view: str = "access") -> dict[str, Any]:
    header: BlockHeader = block["header"]
    canon: bytes = block["canon"][i]
    e = event_from_dict(json.loads(canon))
    proof = {
        "chain_id": header.chain_id,
        "height": header.height,
        "index": i,
        "block_hash": block_hash(header).hex(),
        "leaf_hash": leaf_hash(canon).hex(),
        "canonical": base64.b64encode(canon).decode(),
        "audit_path": [p.hex() for p in block["tree"].inclusion_proof(i)],
        "header": base64.b64encode(header_bytes(header)).decode(),
        "signature": block["signature"].hex(),
    }
    if view == "gdpr":
        return {"occurred_at": e.occurred_at, "purpose": list(e.purpose_of_use), "proof": proof}
    if view == "hipaa-disclosures":
        return {
            "event_id": e.event_id,
            "occurred_at": e.occurred_at,
            "recipient": recipient(e),
            "actor_id": e.actor.id,
            "organization": e.actor.organization,
            "description": describe(e),
            "purpose": list(e.purpose_of_use),
            "proof": proof,
        }
    return {
        "event_id": e.event_id,
        "occurred_at": e.occurred_at,
        "patient_id": e.patient.id,
        "actor_id": e.actor.id,
        "actor_name": "Directory Name",
        "actor_role": "physician",
        "action": e.action,
        "purpose": list(e.purpose_of_use),
        "object_type": "Observation",
        "object_id": e.object.id if e.object else None,
        "proof": proof,
    }


def _doc(lines: list[dict[str, Any]], view: str = "access") -> dict[str, Any]:
    return {
        "schema": REPORT_SCHEMA,
        "view": view,
        "patient": "MRN1",
        "from": "2026-11-02T00:00:00.000000Z",
        "to": "2026-11-03T00:00:00.000000Z",
        "lines": lines,
    }


@pytest.fixture
def report() -> dict[str, Any]:
    block = _block([_event(1), _event(2, patient="MRN2"), _event(3), _export(4), _event(5)])
    return _doc([_line(block, i) for i in (0, 2, 3, 4)])


def _failures(doc: dict[str, Any], trusted: TrustedKeys = TRUSTED) -> dict[int, list[str]]:
    return {r.line: r.reasons for r in verify_report(doc, trusted) if not r.ok}


def test_an_honest_report_verifies(report: dict[str, Any]) -> None:
    results = verify_report(report, TRUSTED)
    assert [r.ok for r in results] == [True] * 4
    assert results[1].index == 2 and results[1].chain_id == CHAIN


def test_every_view_verifies() -> None:
    block = _block([_event(1), _export(2), _event(3, action="E")])
    assert not _failures(_doc([_line(block, i, "gdpr") for i in range(3)], "gdpr"))
    assert not _failures(_doc([_line(block, 1, "hipaa-disclosures")], "hipaa-disclosures"))


def test_single_leaf_block_has_an_empty_audit_path() -> None:
    block = _block([_event(7)])
    line = _line(block, 0)
    assert line["proof"]["audit_path"] == []
    assert not _failures(_doc([line]))


def test_displayed_actor_changed(report: dict[str, Any]) -> None:
    report["lines"][1]["actor_id"] = "E999"
    failures = _failures(report)
    assert list(failures) == [1]
    assert "actor_id" in failures[1][0]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("occurred_at", "2026-11-02T23:00:00.000000Z"),
        ("action", "U"),
        ("patient_id", "MRN9"),
        ("purpose", ["HMARKT"]),
        ("event_id", "00000000-0000-4000-8000-000000000099"),
    ],
)
def test_displayed_field_changed(report: dict[str, Any], name: str, value: Any) -> None:
    report["lines"][0][name] = value
    assert list(_failures(report)) == [0]


def test_canonical_bytes_changed(report: dict[str, Any]) -> None:
    proof = report["lines"][2]["proof"]
    raw = base64.b64decode(proof["canonical"]).replace(b'"HPAYMT"', b'"TREAT"')
    proof["canonical"] = base64.b64encode(raw).decode()
    report["lines"][2]["purpose"] = ["TREAT"]  # consistent with the forged bytes
    failures = _failures(report)
    assert list(failures) == [2]
    assert any("leaf_hash" in r for r in failures[2])
    assert any("inclusion proof" in r for r in failures[2])


def test_canonical_bytes_changed_and_leaf_hash_recomputed(report: dict[str, Any]) -> None:
    proof = report["lines"][0]["proof"]
    raw = base64.b64decode(proof["canonical"]).replace(b'"E1"', b'"E7"')
    proof["canonical"] = base64.b64encode(raw).decode()
    proof["leaf_hash"] = leaf_hash(raw).hex()
    report["lines"][0]["actor_id"] = "E7"
    failures = _failures(report)
    assert list(failures) == [0]
    assert any("inclusion proof" in r for r in failures[0])


def test_canonical_bytes_not_an_event(report: dict[str, Any]) -> None:
    report["lines"][0]["proof"]["canonical"] = base64.b64encode(b'{"hello":1}').decode()
    assert list(_failures(report)) == [0]


def test_proof_hash_flipped(report: dict[str, Any]) -> None:
    path = report["lines"][1]["proof"]["audit_path"]
    path[0] = ("0" if path[0][0] != "0" else "1") + path[0][1:]
    failures = _failures(report)
    assert list(failures) == [1]
    assert "inclusion proof" in failures[1][0]


def test_proof_shortened(report: dict[str, Any]) -> None:
    report["lines"][1]["proof"]["audit_path"].pop()
    assert list(_failures(report)) == [1]


def test_header_signed_by_another_key_even_if_the_file_carries_it(
    report: dict[str, Any],
) -> None:
    events = [_event(1), _event(2, patient="MRN2"), _event(3), _export(4), _event(5)]
    forged = _block(events, key=OTHER)
    report["lines"][0] = _line(forged, 0)
    report["trusted_keys"] = [format_public_key(OTHER.public_key)]
    report["lines"][0]["proof"]["public_key"] = format_public_key(OTHER.public_key)
    failures = _failures(report)
    assert list(failures) == [0]
    assert "KEY_UNKNOWN" in failures[0][0]


def test_header_resigned_by_another_key_under_the_trusted_key_id(
    report: dict[str, Any],
) -> None:
    block = _block([_event(1), _event(2, patient="MRN2"), _event(3), _export(4), _event(5)])
    report["lines"][0]["proof"]["signature"] = OTHER.sign(
        SIGNING_CONTEXT + header_bytes(block["header"])
    ).hex()
    failures = _failures(report)
    assert list(failures) == [0]
    assert "SIGNATURE_INVALID" in failures[0][0]


def test_header_bytes_changed(report: dict[str, Any]) -> None:
    proof = report["lines"][3]["proof"]
    raw = base64.b64decode(proof["header"]).replace(b'"event_count":5', b'"event_count":6')
    proof["header"] = base64.b64encode(raw).decode()
    assert list(_failures(report)) == [3]


def test_header_not_canonical(report: dict[str, Any]) -> None:
    proof = report["lines"][3]["proof"]
    raw = base64.b64decode(proof["header"]).replace(b"{", b"{ ", 1)
    proof["header"] = base64.b64encode(raw).decode()
    failures = _failures(report)
    assert "does not decode" in failures[3][0]


def test_line_moved_to_another_index(report: dict[str, Any]) -> None:
    report["lines"][1]["proof"]["index"] = 1
    failures = _failures(report)
    assert list(failures) == [1]
    assert "inclusion proof" in failures[1][0]


def test_tree_size_is_taken_from_the_signed_header(report: dict[str, Any]) -> None:
    report["lines"][0]["proof"]["tree_size"] = 1  # the file's own claim is ignored
    report["lines"][0]["proof"]["event_count"] = 1
    assert not _failures(report)


def test_line_about_another_patient(report: dict[str, Any]) -> None:
    block = _block([_event(1), _event(2, patient="MRN2")])
    line = _line(block, 1)
    del line["patient_id"]
    report["lines"].append(line)
    failures = _failures(report)
    assert list(failures) == [4]
    assert "patient" in failures[4][0]


def test_line_outside_the_range(report: dict[str, Any]) -> None:
    report["to"] = "2026-11-02T08:04:30.000000Z"
    assert list(_failures(report)) == [3]


def test_non_disclosure_in_the_hipaa_view() -> None:
    block = _block([_event(1), _export(2)])
    doc = _doc([_line(block, i, "hipaa-disclosures") for i in (0, 1)], "hipaa-disclosures")
    failures = _failures(doc)
    assert list(failures) == [0]
    assert "not one" in failures[0][0]


def test_a_removed_line_is_not_detectable_from_the_file(report: dict[str, Any]) -> None:
    del report["lines"][1]
    assert not _failures(report), "the report is complete only up to the ledger"


def test_an_access_listed_twice(report: dict[str, Any]) -> None:
    report["lines"].append(copy.deepcopy(report["lines"][1]))
    failures = _failures(report)
    assert list(failures) == [4]
    assert "same event as line 1" in failures[4][0]


def test_not_a_report() -> None:
    with pytest.raises(ReportFormatError):
        verify_report({"schema": "something-else", "lines": []}, TRUSTED)
    with pytest.raises(ReportFormatError):
        verify_report({**_doc([]), "lines": {}}, TRUSTED)
    with pytest.raises(ReportFormatError):
        verify_report({k: v for k, v in _doc([]).items() if k != "to"}, TRUSTED)


def test_malformed_line_fails_alone(report: dict[str, Any]) -> None:
    report["lines"].append("junk")
    report["lines"].append({"actor_id": "E1"})
    report["lines"].append({"proof": {"header": 1}})
    assert list(_failures(report)) == [4, 5, 6]


def test_is_disclosure() -> None:
    assert is_disclosure(_export(1))
    assert not is_disclosure(_event(1))
    assert not is_disclosure(_event(1, action="E"))  # a search, not an export
    printed = _event(
        1, event_type={"system": DCM, "code": "110106"}, action="R"
    )  # printing inside the organisation
    assert not is_disclosure(printed)
    failed = _event(1, action="E", outcome=8, event_type={"system": DCM, "code": "110106"})
    assert not is_disclosure(failed)
    bulk = _event(
        1,
        action="E",
        event_subtype=[
            {
                "system": "http://hl7.org/fhir/restful-interaction",
                "code": "operation",
                "display": "$export",
            }
        ],
    )
    assert is_disclosure(bulk)


def test_parse_range() -> None:
    assert parse_range("2026-11-02", "2026-11-02") == (
        "2026-11-02T00:00:00.000000Z",
        "2026-11-03T00:00:00.000000Z",
    )
    assert parse_range("2026-11-02T08:00:00Z", "2026-11-02T09:00:00.5Z")[1] == (
        "2026-11-02T09:00:00.500000Z"
    )
    with pytest.raises(ValueError):
        parse_range("2026-11-03", "2026-11-02")
    with pytest.raises(ValueError):
        parse_range("yesterday", "2026-11-02")


def test_render_csv_and_table(report: dict[str, Any]) -> None:
    csv_text = render_csv(report)
    assert csv_text.splitlines()[0].startswith("event_id,occurred_at,patient_id,actor_id")
    assert len(csv_text.splitlines()) == 5
    assert report["lines"][0]["proof"]["canonical"] not in csv_text
    table = render_table(report)
    assert "Directory Name" in table and f"{CHAIN}@1#3" in table
    assert report["lines"][0]["proof"]["canonical"] not in table
    gdpr = _doc([{"occurred_at": "2026-11-02T08:01:00.000000Z", "purpose": ["TREAT"]}], "gdpr")
    assert render_csv(gdpr) == "date,purpose\n2026-11-02,TREAT\n"


def test_cli_exit_codes(report: dict[str, Any], tmp_path: Path, capsys: Any) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(report))
    key = format_public_key(KEY.public_key)
    assert main(["verify-proof", str(good), "--trusted-key", key]) == 0
    honest = [line for line in capsys.readouterr().out.splitlines() if line.startswith("line ")]
    assert honest and all(
        line.endswith(
            "content verified (the event bytes are in the signed block and match "
            "every displayed field)"
        )
        for line in honest
    ), honest
    bad = copy.deepcopy(report)
    bad["lines"][2]["actor_id"] = "E1"
    bad_path = tmp_path / "bad.json"
    bad_path.write_text(json.dumps(bad))
    capsys.readouterr()
    assert main(["verify-proof", str(bad_path), "--trusted-key", key]) == 1
    out = capsys.readouterr().out
    assert "line 2" in out and "actor_id" in out
    assert main(["verify-proof", str(bad_path), "--trusted-key", key, "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert (summary["result"], summary["lines"], summary["failed"]) == ("tampered", 4, 1)
    assert summary["results"][2]["ok"] is False and summary["results"][2]["index"] == 3
    other = format_public_key(OTHER.public_key)
    assert main(["verify-proof", str(good), "--trusted-key", other]) == 1
    assert main(["verify-proof", str(tmp_path / "missing.json"), "--trusted-key", key]) == 2
    (tmp_path / "x.json").write_text("not json")
    assert main(["verify-proof", str(tmp_path / "x.json"), "--trusted-key", key]) == 2
    (tmp_path / "y.json").write_text("{}")
    assert main(["verify-proof", str(tmp_path / "y.json"), "--trusted-key", key]) == 2


class _FakeBackend:
    """Serves the report's queries from memory and counts them."""

    def __init__(self, blocks: list[dict[str, Any]], uncommitted: list[AccessEvent]) -> None:
        self.queries: list[str] = []
        self.events: list[tuple[str, int, int, str, bytes, AccessEvent]] = []
        self.headers: list[tuple[str, int, str, bytes, str]] = []
        for b in blocks:
            h: BlockHeader = b["header"]
            digest = block_hash(h).hex()
            self.headers.append(
                (h.chain_id, h.height, digest, header_bytes(h), b["signature"].hex())
            )
            for i, c in enumerate(b["canon"]):
                self.events.append(
                    (h.chain_id, h.height, i, digest, c, event_from_dict(json.loads(c)))
                )
        for i, e in enumerate(uncommitted):  # a crash left them without a header
            self.events.append((CHAIN, 99, i, "ee" * 32, canonical_event_bytes(e), e))

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        self.queries.append(sql)
        p = params or {}
        if "patient_id =" in sql:
            rows = [
                (c.encode(), h, i, d.encode(), raw)
                for c, h, i, d, raw, e in self.events
                if e.patient.id == p["p"] and p["t1"] <= e.occurred_at < p["t2"]
            ]
            return sorted(rows, key=lambda r: (event_from_dict(json.loads(r[4])).occurred_at,))
        if "FROM db.blocks" in sql:
            return [
                (c.encode(), h, d.encode(), hb, s.encode())
                for c, h, d, hb, s in self.headers
                if c in p["c"] and h in p["h"]
            ]
        if "SELECT idx, leaf_hash" in sql:
            return [
                (i, leaf_hash(raw).hex().encode())
                for c, h, i, d, raw, _e in self.events
                if (c, h, d) == (p["c"], p["h"], p["b"])
            ]
        return []  # no directory records, no access_decisions table

    def insert(self, *args: Any) -> None:
        raise AssertionError("a report never writes")

    def close(self) -> None:
        pass


def test_report_from_committed_blocks_with_few_queries() -> None:
    from careledger.storage.store import ChainStore
    from verifiers.reports.access_report import build_report

    b0 = _block([_event(1), _event(2, patient="MRN2"), _export(3)], height=1)
    b1 = _block([_event(10), _event(11), _event(12, patient="MRN2"), _event(13)], height=2)
    backend = _FakeBackend([b0, b1], uncommitted=[_event(20), _event(21)])
    store = ChainStore(backend, "db")  # type: ignore[arg-type]
    start, end = parse_range("2026-11-02", "2026-11-02")
    doc = build_report(store, "MRN1", start, end)
    ids = [line["event_id"][-2:] for line in doc["lines"]]
    assert ids == ["01", "03", "10", "11", "13"], "only committed rows of the patient"
    assert doc["problems"] == []
    assert all("decision" not in line for line in doc["lines"])  # no access_decisions table
    assert not _failures(doc)
    # rows, headers, one per block for its leaves, directory, decisions: never per event
    assert len(backend.queries) == 1 + 1 + 2 + 1 + 1
    hipaa = build_report(store, "MRN1", start, end, view="hipaa-disclosures")
    assert [line["event_id"][-2:] for line in hipaa["lines"]] == ["03"]
    assert not _failures(hipaa)
