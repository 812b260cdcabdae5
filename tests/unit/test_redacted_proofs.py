"""Redacted proofs (ADR 0009): inclusion of a leaf hash, never "content verified".

A redacted line carries the leaf hash, the audit path and the signed header, not the
event bytes. Each tampering test is named after the attack it stands for and checks the
stable code it must be reported with.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest

from careledger.storage.store import ChainStore
from careledger_core.block import SIGNING_CONTEXT, BlockHeader
from careledger_core.event import canonical_event_bytes
from careledger_core.hashing import leaf_hash
from careledger_core.signing import format_public_key
from commands.cli import main
from tests.unit.test_proofs import (
    CHAIN,
    KEY,
    OTHER,
    TRUSTED,
    _block,
    _doc,
    _event,
    _export,
    _FakeBackend,
    _line,
)
from verifiers.reports.access_report import build_report, parse_range, proof_form
from verifiers.reports.proofs import CODES, FORM_FULL, FORM_REDACTED, redact_report, verify_report

TOPIC = "careledger.access-events"


def _block5(key: Any = KEY, chain: str = CHAIN) -> dict[str, Any]:
    block = _block(
        [_event(1), _event(2, patient="MRN2"), _event(3), _export(4), _event(5)], key=key
    )
    if chain != CHAIN:  # the same events on another chain, re-signed
        fields = {f: getattr(block["header"], f) for f in BlockHeader.__struct_fields__}
        block["header"] = BlockHeader(**{**fields, "chain_id": chain})
        block["signature"] = key.sign_header(block["header"])
    return block


@pytest.fixture
def gdpr() -> dict[str, Any]:
    """A redacted GDPR report: MRN1's four accesses of one block."""
    block = _block5()
    return redact_report(_doc([_line(block, i, "gdpr") for i in (0, 2, 3, 4)], "gdpr"))


@pytest.fixture
def report() -> dict[str, Any]:
    """The same accesses in the access view, with full proofs."""
    block = _block5()
    return _doc([_line(block, i) for i in (0, 2, 3, 4)])


def _results(doc: dict[str, Any], **policy: Any) -> list[Any]:
    return verify_report(doc, TRUSTED, events_topic=TOPIC, **policy)


def _codes(doc: dict[str, Any], **policy: Any) -> dict[int, list[str]]:
    return {r.line: r.codes for r in _results(doc, **policy) if not r.ok}


def _proof(doc: dict[str, Any], line: int = 1) -> dict[str, Any]:
    proof: dict[str, Any] = doc["lines"][line]["proof"]
    return proof


def _flip(hex_text: str) -> str:
    return hex_text[:-1] + ("0" if hex_text[-1] != "0" else "1")


# --------------------------------------------------------------------------- good


def test_redacted_report_carries_no_event_bytes(gdpr: dict[str, Any]) -> None:
    text = json.dumps(gdpr)
    block = _block5()
    for canon in block["canon"]:
        assert base64.b64encode(canon).decode() not in text
    assert "canonical" not in text
    assert '"E1"' not in text and "Dr 1" not in text and "Northbridge" not in text
    for line in gdpr["lines"]:
        assert set(line) == {"occurred_at", "purpose", "proof"}
        assert line["proof"]["form"] == FORM_REDACTED
        assert set(line["proof"]) == {
            "form",
            "chain_id",
            "height",
            "index",
            "block_hash",
            "leaf_hash",
            "audit_path",
            "header",
            "signature",
        }


def test_redacted_report_verifies_inclusion_only(gdpr: dict[str, Any]) -> None:
    results = _results(gdpr)
    assert [r.status for r in results] == ["inclusion-verified"] * 4
    assert all(r.ok and r.form == FORM_REDACTED for r in results)
    assert not any(r.status == "content-verified" for r in results)
    first = results[0]
    assert first.unbound == ["occurred_at", "purpose", "patient"]
    assert first.leaf_hash == gdpr["lines"][0]["proof"]["leaf_hash"]
    assert first.notes == [
        "occurred_at lies within the signed block's event times "
        "[2026-11-02T08:01:00.000000Z, 2026-11-02T08:05:00.000000Z]"
    ]


def test_redacted_hipaa_view_verifies_and_leaves_the_disclosure_unbound() -> None:
    block = _block5()
    doc = redact_report(_doc([_line(block, 3, "hipaa-disclosures")], "hipaa-disclosures"))
    [result] = _results(doc)
    assert result.status == "inclusion-verified"
    assert result.unbound == [
        "event_id",
        "occurred_at",
        "actor_id",
        "organization",
        "purpose",
        "description",
        "recipient",
        "patient",
        "is_disclosure",
    ]


def test_full_proofs_in_the_gdpr_view_are_content_verified() -> None:
    block = _block5()
    doc = _doc([_line(block, i, "gdpr") for i in (0, 2)], "gdpr")
    assert [r.status for r in _results(doc)] == ["content-verified"] * 2
    assert not _codes(doc, require_content=True)


def test_redaction_is_the_default_only_for_gdpr_and_hipaa() -> None:
    assert proof_form("access") == FORM_FULL
    assert proof_form("access", include_event_bytes=False) == FORM_FULL
    assert proof_form("gdpr") == FORM_REDACTED
    assert proof_form("hipaa-disclosures") == FORM_REDACTED
    assert proof_form("gdpr", include_event_bytes=True) == FORM_FULL
    assert proof_form("hipaa-disclosures", include_event_bytes=True) == FORM_FULL


def test_report_builder_redacts_the_gdpr_and_hipaa_views() -> None:
    b0 = _block([_event(1), _event(2, patient="MRN2"), _export(3)], height=1)
    backend = _FakeBackend([b0], uncommitted=[])
    store = ChainStore(backend, "db")  # type: ignore[arg-type]
    start, end = parse_range("2026-11-02", "2026-11-02")
    for view in ("gdpr", "hipaa-disclosures"):
        doc = build_report(store, "MRN1", start, end, view=view)
        assert doc["lines"] and all(
            line["proof"]["form"] == FORM_REDACTED and "canonical" not in line["proof"]
            for line in doc["lines"]
        )
        assert all(r.status == "inclusion-verified" for r in _results(doc))
        full = build_report(store, "MRN1", start, end, view=view, include_event_bytes=True)
        assert all(line["proof"]["form"] == FORM_FULL for line in full["lines"])
        assert all(r.status == "content-verified" for r in _results(full))
    access = build_report(store, "MRN1", start, end, view="access")
    assert all("canonical" in line["proof"] for line in access["lines"])


# --------------------------------------------------------------------------- tampering


def test_leaf_hash_replaced_by_a_forged_events(gdpr: dict[str, Any]) -> None:
    forged = _event(3, purpose_of_use=["HMARKT"])
    _proof(gdpr)["leaf_hash"] = leaf_hash(canonical_event_bytes(forged)).hex()
    assert _codes(gdpr) == {1: ["PROOF_INVALID"]}


def test_leaf_hash_bit_flipped(gdpr: dict[str, Any]) -> None:
    _proof(gdpr)["leaf_hash"] = _flip(_proof(gdpr)["leaf_hash"])
    assert _codes(gdpr) == {1: ["PROOF_INVALID"]}


def test_leaf_hash_not_a_hash(gdpr: dict[str, Any]) -> None:
    _proof(gdpr)["leaf_hash"] = _proof(gdpr)["leaf_hash"][:-2]
    _proof(gdpr, 2)["leaf_hash"] = _proof(gdpr, 2)["leaf_hash"].upper()
    del _proof(gdpr, 3)["leaf_hash"]
    assert _codes(gdpr) == {1: ["LINE_MALFORMED"], 2: ["LINE_MALFORMED"], 3: ["LINE_MALFORMED"]}


def test_audit_path_hash_flipped(gdpr: dict[str, Any]) -> None:
    path = _proof(gdpr)["audit_path"]
    path[-1] = _flip(path[-1])
    assert _codes(gdpr) == {1: ["PROOF_INVALID"]}


def test_audit_path_shortened_or_padded(gdpr: dict[str, Any]) -> None:
    _proof(gdpr)["audit_path"].pop()
    _proof(gdpr, 2)["audit_path"].append("00" * 32)
    assert _codes(gdpr) == {1: ["PROOF_INVALID"], 2: ["PROOF_INVALID"]}


def test_line_moved_to_another_index(gdpr: dict[str, Any]) -> None:
    _proof(gdpr)["index"] = 1
    assert _codes(gdpr) == {1: ["PROOF_INVALID"]}


def test_header_bytes_changed_without_resigning(gdpr: dict[str, Any]) -> None:
    proof = _proof(gdpr)
    raw = base64.b64decode(proof["header"]).replace(b'"height":1', b'"height":2')
    proof["header"] = base64.b64encode(raw).decode()
    proof["height"] = 2
    assert _codes(gdpr) == {1: ["SIGNATURE_INVALID"]}


def test_header_merkle_root_replaced_by_a_forged_trees(gdpr: dict[str, Any]) -> None:
    """A forged leaf with a path to a forged root, and the header's root swapped."""
    forged = _block([_event(1), _event(9), _event(3)])
    proof = _proof(gdpr)
    header = base64.b64decode(proof["header"])
    old_root = json.loads(header)["merkle_root"]
    proof["header"] = base64.b64encode(
        header.replace(old_root.encode(), forged["header"].merkle_root.encode())
    ).decode()
    proof["leaf_hash"] = leaf_hash(forged["canon"][1]).hex()
    proof["index"] = 1
    proof["audit_path"] = [p.hex() for p in forged["tree"].inclusion_proof(1)]
    assert _codes(gdpr)[1][0] == "SIGNATURE_INVALID"


def test_header_not_canonical(gdpr: dict[str, Any]) -> None:
    proof = _proof(gdpr)
    raw = base64.b64decode(proof["header"]).replace(b"{", b"{ ", 1)
    proof["header"] = base64.b64encode(raw).decode()
    assert _codes(gdpr) == {1: ["BLOCK_HEADER_INVALID"]}


def test_header_not_base64(gdpr: dict[str, Any]) -> None:
    _proof(gdpr)["header"] = "not base64!"
    assert _codes(gdpr) == {1: ["LINE_MALFORMED"]}


def test_signature_bit_flipped(gdpr: dict[str, Any]) -> None:
    _proof(gdpr)["signature"] = _flip(_proof(gdpr)["signature"])
    assert _codes(gdpr) == {1: ["SIGNATURE_INVALID"]}


def test_forged_block_signed_by_an_untrusted_key_carried_in_the_file(
    gdpr: dict[str, Any],
) -> None:
    forged = _block5(key=OTHER)
    line = redact_report(_doc([_line(forged, 0, "gdpr")], "gdpr"))["lines"][0]
    line["proof"]["public_key"] = format_public_key(OTHER.public_key)
    gdpr["lines"][0] = line
    gdpr["trusted_keys"] = [format_public_key(OTHER.public_key)]
    assert _codes(gdpr) == {0: ["KEY_UNKNOWN"]}


def test_header_resigned_by_another_key_under_the_trusted_key_id(gdpr: dict[str, Any]) -> None:
    proof = _proof(gdpr)
    proof["signature"] = OTHER.sign(SIGNING_CONTEXT + base64.b64decode(proof["header"])).hex()
    assert _codes(gdpr) == {1: ["SIGNATURE_INVALID"]}


def test_proof_relabelled_to_another_block(gdpr: dict[str, Any]) -> None:
    _proof(gdpr)["height"] = 7
    _proof(gdpr, 2)["block_hash"] = "00" * 32
    _proof(gdpr, 3)["chain_id"] = "careledger.local/careledger.access-events/1"
    assert _codes(gdpr) == {1: ["BLOCK_MISMATCH"], 2: ["BLOCK_MISMATCH"], 3: ["BLOCK_MISMATCH"]}


def test_leaf_listed_twice(gdpr: dict[str, Any]) -> None:
    gdpr["lines"].append(copy.deepcopy(gdpr["lines"][1]))
    assert _codes(gdpr) == {4: ["DUPLICATE_LINE"]}


def test_reference_record_passed_off_as_an_access() -> None:
    """A leaf of a reference-data chain, signed by the same key, is not an access."""
    block = _block5(chain="careledger.local/careledger.consents/0")
    doc = redact_report(_doc([_line(block, 0, "gdpr")], "gdpr"))
    assert _codes(doc) == {0: ["NOT_AN_ACCESS_CHAIN"]}
    assert not verify_report(doc, TRUSTED)[0].reasons, "events_topic=None: not checked"


def test_displayed_time_moved_outside_the_signed_block(gdpr: dict[str, Any]) -> None:
    gdpr["lines"][1]["occurred_at"] = "2026-11-02T17:00:00.000000Z"
    assert _codes(gdpr) == {1: ["TIME_OUTSIDE_BLOCK"]}


def test_displayed_time_moved_outside_the_range(gdpr: dict[str, Any]) -> None:
    gdpr["lines"][1]["occurred_at"] = "2026-11-04T08:03:00.000000Z"
    assert _codes(gdpr) == {1: ["OUT_OF_RANGE", "TIME_OUTSIDE_BLOCK"]}


def test_displayed_time_not_a_timestamp(gdpr: dict[str, Any]) -> None:
    gdpr["lines"][1]["occurred_at"] = "yesterday"
    assert _codes(gdpr) == {1: ["LINE_MALFORMED"]}


def test_line_from_a_block_outside_the_range(gdpr: dict[str, Any]) -> None:
    gdpr["from"], gdpr["to"] = "2026-11-03T00:00:00.000000Z", "2026-11-04T00:00:00.000000Z"
    gdpr["lines"] = gdpr["lines"][:1]
    gdpr["lines"][0]["occurred_at"] = "2026-11-03T08:00:00.000000Z"
    assert _codes(gdpr) == {0: ["OUT_OF_RANGE", "TIME_OUTSIDE_BLOCK"]}
    del gdpr["lines"][0]["occurred_at"]  # no displayed time: the signed block's times tell
    assert _codes(gdpr) == {0: ["OUT_OF_RANGE"]}


def test_full_view_downgraded_to_redacted_proofs(report: dict[str, Any]) -> None:
    """Stripping the bytes of the access view to hide a changed actor."""
    report["lines"][1]["actor_id"] = "SOMEONE-INNOCENT"
    downgraded = redact_report(report)
    assert set(_codes(downgraded)) == {0, 1, 2, 3}
    assert all(c == ["REDACTION_NOT_ALLOWED"] for c in _codes(downgraded).values())


def test_full_proof_stripped_of_its_bytes_but_not_marked_redacted(gdpr: dict[str, Any]) -> None:
    _proof(gdpr)["form"] = FORM_FULL  # claims bytes it does not carry
    del _proof(gdpr, 2)["form"]  # an old-style (full) proof without bytes
    _proof(gdpr, 3)["form"] = "partial"
    assert _codes(gdpr) == {1: ["LINE_MALFORMED"], 2: ["LINE_MALFORMED"], 3: ["LINE_MALFORMED"]}


def test_redacted_proof_smuggling_bytes_is_ambiguous(gdpr: dict[str, Any]) -> None:
    block = _block5()
    _proof(gdpr)["canonical"] = base64.b64encode(block["canon"][2]).decode()
    assert _codes(gdpr) == {1: ["LINE_MALFORMED"]}


def test_downgraded_gdpr_line_hides_a_changed_purpose_unless_content_is_required() -> None:
    """What redaction gives up: with the bytes gone, a changed purpose is not caught
    offline. The line says so (``purpose`` unbound), and ``--require-content`` refuses it."""
    block = _block5()
    doc = _doc([_line(block, i, "gdpr") for i in (0, 2)], "gdpr")
    doc["lines"][1]["purpose"] = ["HMARKT"]
    assert _codes(doc) == {1: ["FIELD_MISMATCH"]}
    downgraded = redact_report(doc)
    result = _results(downgraded)[1]
    assert result.status == "inclusion-verified" and "purpose" in result.unbound
    assert _codes(downgraded, require_content=True) == {
        0: ["CONTENT_NOT_PROVEN"],
        1: ["CONTENT_NOT_PROVEN"],
    }


def test_another_patients_event_cannot_be_told_apart_offline(gdpr: dict[str, Any]) -> None:
    """A redacted line does not bind the patient: another patient's access in the same
    block verifies. Stated on every redacted line (``patient`` unbound)."""
    block = _block5()
    gdpr["lines"].append(redact_report(_doc([_line(block, 1, "gdpr")], "gdpr"))["lines"][0])
    result = _results(gdpr)[4]
    assert result.status == "inclusion-verified" and "patient" in result.unbound


def test_every_code_is_documented(gdpr: dict[str, Any]) -> None:
    gdpr["lines"] += ["junk", {"proof": {"form": "redacted", "header": 1}}]
    for codes in _codes(gdpr).values():
        assert set(codes) <= set(CODES)


# --------------------------------------------------------------------------- CLI


def _cli(tmp_path: Path, doc: dict[str, Any], *extra: str) -> tuple[int, str]:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(doc))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "verify-proof",
                str(path),
                "--trusted-key",
                format_public_key(KEY.public_key),
                "--events-topic",
                TOPIC,
                *extra,
            ]
        )
    return code, out.getvalue()


def test_cli_states_per_line_that_redacted_fields_are_not_bound(
    gdpr: dict[str, Any], tmp_path: Path
) -> None:
    code, out = _cli(tmp_path, gdpr)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 5
    for text in lines[:4]:
        assert "inclusion verified, REDACTED" in text
        assert "NOT bound to it offline: occurred_at, purpose, patient" in text
        assert "content verified" not in text
    assert lines[4].startswith("VERIFIED: 4 of 4 line(s)")
    assert "0 content verified, 4 inclusion only" in lines[4]

    code, out = _cli(tmp_path, gdpr, "--json")
    summary = json.loads(out)
    assert (summary["result"], summary["content_verified"], summary["inclusion_verified"]) == (
        "verified",
        0,
        4,
    )
    assert {r["status"] for r in summary["results"]} == {"inclusion-verified"}
    assert summary["results"][0]["unbound"] == ["occurred_at", "purpose", "patient"]

    code, out = _cli(tmp_path, gdpr, "--require-content")
    assert code == 1 and out.count("[CONTENT_NOT_PROVEN]") == 4


def test_cli_fails_closed_on_a_tampered_redacted_line(gdpr: dict[str, Any], tmp_path: Path) -> None:
    _proof(gdpr)["leaf_hash"] = _flip(_proof(gdpr)["leaf_hash"])
    _proof(gdpr, 2)["signature"] = _flip(_proof(gdpr, 2)["signature"])
    code, out = _cli(tmp_path, gdpr)
    assert code == 1
    assert "line 1 " in out and "FAILED: [PROOF_INVALID]" in out
    assert "line 2 " in out and "FAILED: [SIGNATURE_INVALID]" in out
    assert out.splitlines()[-1].startswith("FAILED: 2 of 4 line(s)")
    code, out = _cli(tmp_path, gdpr, "--json")
    summary = json.loads(out)
    assert summary["failed"] == 2
    assert [r["codes"] for r in summary["results"]][1:3] == [
        ["PROOF_INVALID"],
        ["SIGNATURE_INVALID"],
    ]
    assert summary["results"][1]["status"] == "failed"


def test_cli_reports_full_lines_as_content_verified(report: dict[str, Any], tmp_path: Path) -> None:
    code, out = _cli(tmp_path, report)
    assert code == 0
    assert out.count("content verified (the event bytes") == 4
    assert "REDACTED" not in out


def test_design_doc_lists_every_code() -> None:
    design = (Path(__file__).resolve().parents[2] / "docs" / "design.md").read_text()
    section = design[design.index("## Access reports and their proofs") :]
    section = section[: section.index("\n## ", 1)]
    assert all(f"`{code}`" in section for code in CODES)
