"""``verify-proof`` under a witness policy (ADR 0019), with real crypto: a chain sealed by
the real chainer and signed with the processor's key, C2SP checkpoints signed with it,
tlog-cosignatures by three witness keys (quorum 2), and the exporter's own pure code
(``verifiers.reports.quorum``) attaching them to a report. Each attack is a test named
after it; the command runs as ``careledger verify-proof`` (``commands.cli.main``).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from careledger.storage.store import ChainHead, SealedBlock
from careledger_core.block import header_bytes
from careledger_core.chain_tree import ChainTree, block_leaf_hash
from careledger_core.checkpoint import SIGNATURE_DASH, checkpoint_for, format_checkpoint, sign_note
from careledger_core.cosignature import (
    WitnessKey,
    WitnessPolicy,
    attach_cosignatures,
    cosign,
    split_note,
)
from careledger_core.event import canonical_event_bytes, event_from_dict
from careledger_core.merkle import MerkleTree
from careledger_core.signing import SigningKey, format_public_key
from commands.cli import main
from processors.chainer import PartitionChain
from verifiers.reports.access_report import render_table
from verifiers.reports.proofs import REPORT_SCHEMA, redact_report
from verifiers.reports.quorum import (
    QuorumCheckpoints,
    attach_witnessing,
    cited_chains,
    select_checkpoint,
)


def _key(label: str) -> SigningKey:
    return SigningKey.from_seed(hashlib.sha256(label.encode()).digest())


KEY = _key("processor")
ATTACKER = _key("attacker")
CHAIN = "careledger.local/careledger.access-events/0"
PATIENT = "MRN1"
W1, W2, W3 = "a.example/witness", "b.example/witness", "c.example/witness"
WKEYS = {W1: _key("w1"), W2: _key("w2"), W3: _key("w3")}
POLICY = WitnessPolicy(tuple(WitnessKey(n, k.public_key) for n, k in WKEYS.items()), 2)
BLOCKS, PER_BLOCK = 4, 3
NOW = 1_900_000_000


def _event(n: int) -> bytes:
    return canonical_event_bytes(
        event_from_dict(
            {
                "schema": "careledger.access-event/1",
                "event_id": f"00000000-0000-4000-8000-{n:012d}",
                "occurred_at": f"2026-11-02T{8 + n // 60:02d}:{n % 60:02d}:00.000000Z",
                "recorded_at": f"2026-11-02T{8 + n // 60:02d}:{n % 60:02d}:01.000000Z",
                "event_type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                    "code": "rest",
                },
                "action": "R",
                "outcome": 0,
                "purpose_of_use": ["TREAT"],
                "actor": {
                    "id": f"E{n}",
                    "roles": ["physician"],
                    "organization": "Northbridge",
                    "is_requestor": True,
                },
                "source": {"system": "ehr", "type": 4},
                "patient": {"id": PATIENT},
                "object": {"type": "Observation", "id": f"Observation/{n}"},
            }
        )
    )


def _chain(first: int = 0, on: list[SealedBlock] | None = None) -> list[SealedBlock]:
    """Blocks 0..BLOCKS-1 of CHAIN; with ``on``, a fork: ``on``'s blocks, then others
    linked to them and signed with the same key (the key holder's other history)."""
    blocks = list(on or [])
    if blocks:
        head = blocks[-1]
        chain = PartitionChain.resume(
            CHAIN,
            ChainHead(CHAIN, head.header.height, head.block_hash.hex(), head.header.last_offset),
            max_event_bytes=65536,
        )
    else:
        chain = PartitionChain(CHAIN, max_event_bytes=65536)
    offset = blocks[-1].header.last_offset + 1 if blocks else 0
    n = first
    while len(blocks) < BLOCKS:
        for _ in range(PER_BLOCK):
            assert chain.add(offset, _event(n), b"k", 0.0, 0.0) is None
            offset, n = offset + 1, n + 1
        block = chain.seal(KEY, now=1_800_000_000.0 + len(blocks))
        assert block is not None
        blocks.append(block)
    return blocks


GENUINE = _chain()


def _note(blocks: list[SealedBlock], size: int, key: SigningKey = KEY) -> str:
    tree = ChainTree.of_blocks(b.block_hash for b in blocks[:size])
    body = format_checkpoint(checkpoint_for(blocks[size - 1].header, tree))
    return sign_note(body, CHAIN, key)


def _cosigned(note: str, *names: str, at: int = NOW) -> str:
    body = split_note(note)[0]
    return attach_cosignatures(note, [cosign(body, n, WKEYS[n], at).line for n in names])


def _report(blocks: list[SealedBlock], view: str = "access") -> dict[str, Any]:
    lines = []
    for block in blocks:
        tree = MerkleTree([e.leaf_hash for e in block.events])
        for i, e in enumerate(block.events):
            event = e.event
            lines.append(
                {
                    "event_id": event.event_id,
                    "occurred_at": event.occurred_at,
                    "patient_id": PATIENT,
                    "proof": {
                        "form": "full",
                        "chain_id": CHAIN,
                        "height": block.header.height,
                        "index": i,
                        "block_hash": block.block_hash.hex(),
                        "leaf_hash": e.leaf_hash.hex(),
                        "canonical": base64.b64encode(e.canonical).decode(),
                        "audit_path": [p.hex() for p in tree.inclusion_proof(i)],
                        "header": base64.b64encode(header_bytes(block.header)).decode(),
                        "signature": block.signature.hex(),
                    },
                }
            )
    doc = {
        "schema": REPORT_SCHEMA,
        "view": view,
        "patient": PATIENT,
        "from": "2026-11-02T00:00:00.000000Z",
        "to": "2026-11-03T00:00:00.000000Z",
        "problems": [],
        "lines": lines,
    }
    if view == "gdpr":
        for line in lines:
            for name in ("event_id", "patient_id"):
                del line[name]
        return redact_report(doc)
    return doc


def _export(blocks: list[SealedBlock], notes: list[str], view: str = "access") -> dict[str, Any]:
    """The report as ``access-report`` exports it under POLICY, given these notes."""
    doc = _report(blocks, view)
    needed = cited_chains(doc)
    collector = QuorumCheckpoints([KEY.public_key], POLICY, needed)
    for note in notes:
        collector.add(note)
    hashes = [b.block_hash for b in blocks]
    chosen, problems = select_checkpoint(CHAIN, collector.candidates(CHAIN), hashes)
    assert problems == []
    picked = {CHAIN: chosen} if chosen is not None else {}
    assert attach_witnessing(doc, picked, {CHAIN: hashes}, {"quorum": 2}) == []
    return doc


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("CARELEDGER_WITNESSES_FILE", "CARELEDGER_TRUSTED_KEYS"):
        monkeypatch.delenv(name, raising=False)
    _witnesses_file(tmp_path / "witnesses.toml", WKEYS)
    return tmp_path


def _witnesses_file(path: Path, keys: dict[str, SigningKey], quorum: int = 2) -> Path:
    lines = [f"quorum = {quorum}", ""]
    for name, key in keys.items():
        vkey = WitnessKey(name, key.public_key).vkey
        lines += ["[[witness]]", f"name = {json.dumps(name)}", f"key = {json.dumps(vkey)}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _verify(
    files: Path, doc: Any, capsys: Any, *extra: str, witnesses: bool = True
) -> tuple[int, dict[str, Any]]:
    path = files / "report.json"
    path.write_text(json.dumps(doc))
    args = ["verify-proof", str(path), "--trusted-key", format_public_key(KEY.public_key)]
    if witnesses:
        args += ["--witnesses", str(files / "witnesses.toml")]
    capsys.readouterr()
    code = main([*args, "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def _codes(summary: dict[str, Any]) -> dict[int, list[str]]:
    return {r["line"]: r["codes"] for r in summary["results"] if r["codes"]}


def _witnessed_doc(view: str = "access") -> dict[str, Any]:
    return _export(GENUINE, [_cosigned(_note(GENUINE, BLOCKS), W1, W2, W3)], view)


# --------------------------------------------------------------------------- verified


def test_witnessed_report_verifies_offline_exit_0(files: Path, capsys: Any) -> None:
    doc = _witnessed_doc()
    assert [c["size"] for c in doc["checkpoints"]] == [BLOCKS]
    assert all("block_inclusion" in line["proof"] for line in doc["lines"])
    code, summary = _verify(files, doc, capsys)
    assert code == 0, summary
    assert summary["result"] == "verified"
    w = summary["witnessing"]
    assert (w["status"], w["quorum"], w["of"]) == ("witnessed", 2, 3)
    assert w["witnessed_lines"] == len(doc["lines"]) and w["not_witnessed_lines"] == []
    for r in summary["results"]:
        assert r["status"] == "content-verified"
        assert r["witnessing"]["status"] == "witnessed"
        assert r["witnessing"]["cosigned_by"] == [W1, W2, W3]
    # human output: said on every line and in the summary
    path = files / "report.json"
    assert main(["verify-proof", str(path), "--trusted-key", format_public_key(KEY.public_key),
                 "--witnesses", str(files / "witnesses.toml")]) == 0  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert all("; witnessed: in the checkpoint of size 4 cosigned by" in x for x in out[:-1])
    assert out[-1].startswith("VERIFIED: ") and "quorum 2 of 3" in out[-1]


def test_table_says_how_many_checkpoints_are_attached() -> None:
    doc = _witnessed_doc()
    doc["witness_policy"] = {"quorum": 2, "of": 3, "not_witnessed_lines": [3]}
    table = render_table(doc)
    assert "Witnesses: quorum 2 of 3; 1 cosigned checkpoint(s) attached" in table
    assert "NOT YET WITNESSED: line(s) 3" in table


def test_redacted_gdpr_report_keeps_its_witness_proofs(files: Path, capsys: Any) -> None:
    doc = _witnessed_doc("gdpr")
    assert all(line["proof"]["form"] == "redacted" for line in doc["lines"])
    code, summary = _verify(files, doc, capsys)
    assert code == 0, summary
    assert {r["witnessing"]["status"] for r in summary["results"]} == {"witnessed"}


def test_cosignatures_are_merged_over_copies_and_forged_lines_never_copied(
    files: Path, capsys: Any
) -> None:
    note = _note(GENUINE, BLOCKS)
    body = split_note(note)[0]
    forged = _forged_line(body, W3)
    # each copy carries one valid cosignature (as each witness serves its own)
    copies = [_cosigned(note, W1), attach_cosignatures(_cosigned(note, W2), [forged])]
    doc = _export(GENUINE, copies)
    assert doc["checkpoints"][0]["cosigned_by"] == [W1, W2]
    assert forged not in doc["checkpoints"][0]["note"]
    assert _verify(files, doc, capsys)[0] == 0


def test_without_a_policy_the_witness_part_is_not_checked(files: Path, capsys: Any) -> None:
    doc = _export(GENUINE, [_note(GENUINE, BLOCKS)])  # not cosigned at all
    code, summary = _verify(files, doc, capsys, witnesses=False)
    assert code == 0 and summary["witnessing"] == {"status": "no_policy"}


# --------------------------------------------------------------------------- attacks


def _forged_line(body: str, name: str) -> str:
    """A line with witness ``name``'s name and key id, signed by another key."""
    fake = cosign(body, name, ATTACKER, NOW)
    real_id = WitnessKey(name, WKEYS[name].public_key).key_hash
    blob = real_id + fake.timestamp.to_bytes(8, "big") + fake.signature
    return f"{SIGNATURE_DASH} {name} {base64.b64encode(blob).decode()}"


def test_forged_cosignature_of_a_policy_witness_is_tampered_exit_1(
    files: Path, capsys: Any
) -> None:
    doc = _witnessed_doc()
    note = doc["checkpoints"][0]["note"]
    body, lines = split_note(note)
    w3 = next(line for line in lines if f" {W3} " in line)
    doc["checkpoints"][0]["note"] = note.replace(w3, _forged_line(body, W3))
    code, summary = _verify(files, doc, capsys)
    assert code == 1, summary
    assert summary["result"] == "tampered"
    assert all("COSIGNATURE_INVALID" in codes for codes in _codes(summary).values())
    assert len(_codes(summary)) == len(doc["lines"])
    assert summary["witnessing"]["checkpoints"][0]["codes"] == ["COSIGNATURE_INVALID"]


def test_forged_cosignature_added_to_reach_the_quorum_is_tampered(files: Path, capsys: Any) -> None:
    doc = _export(GENUINE, [_cosigned(_note(GENUINE, BLOCKS), W1, W2)])
    note = doc["checkpoints"][0]["note"]
    lines = split_note(note)[1]
    keep = [line for line in lines if f" {W2} " not in line]  # only W1 stays genuine
    body = split_note(note)[0]
    doc["checkpoints"][0]["note"] = (
        body + "\n" + "".join(f"{line}\n" for line in [*keep, _forged_line(body, W3)])
    )
    code, summary = _verify(files, doc, capsys)
    assert code == 1 and summary["result"] == "tampered", summary


def test_missing_cosignature_quorum_not_met_is_not_witnessed_exit_3(
    files: Path, capsys: Any
) -> None:
    doc = _witnessed_doc()
    note = doc["checkpoints"][0]["note"]
    body, lines = split_note(note)
    doc["checkpoints"][0]["note"] = (
        body
        + "\n"
        + "".join(f"{line}\n" for line in lines if f" {W2} " not in line and f" {W3} " not in line)
    )
    code, summary = _verify(files, doc, capsys)
    assert code == 3, summary
    assert summary["result"] == "not_witnessed" and summary["failed"] == 0
    assert summary["witnessing"]["not_witnessed_lines"] == list(range(len(doc["lines"])))
    reason = summary["results"][0]["witnessing"]["reason"]
    assert "1 of the 2 valid cosignatures needed" in reason


def test_cosignature_by_a_witness_outside_the_policy_does_not_count(
    files: Path, capsys: Any
) -> None:
    doc = _witnessed_doc()
    outsider = _key("outsider")
    note = doc["checkpoints"][0]["note"]
    body, lines = split_note(note)
    mine = [line for line in lines if f" {W2} " not in line and f" {W3} " not in line]
    extra = cosign(body, "outsider.example/w", outsider, NOW).line
    doc["checkpoints"][0]["note"] = body + "\n" + "".join(f"{x}\n" for x in [*mine, extra])
    assert _verify(files, doc, capsys)[0] == 3


def test_edited_block_inclusion_proof_is_tampered_exit_1(files: Path, capsys: Any) -> None:
    doc = _witnessed_doc()
    target = next(
        i for i, x in enumerate(doc["lines"]) if x["proof"]["block_inclusion"]["audit_path"]
    )
    path = doc["lines"][target]["proof"]["block_inclusion"]["audit_path"]
    path[0] = path[0][:-1] + ("0" if path[0][-1] != "0" else "1")
    code, summary = _verify(files, doc, capsys)
    assert code == 1, summary
    assert _codes(summary) == {target: ["BLOCK_PROOF_INVALID"]}


@pytest.mark.parametrize(
    "edit",
    ["tree_size_changed", "proof_moved_to_another_block", "garbage", "stripped"],
)
def test_block_inclusion_proof_tampering_is_detected(files: Path, capsys: Any, edit: str) -> None:
    doc = _witnessed_doc()
    proof = doc["lines"][0]["proof"]
    if edit == "tree_size_changed":
        proof["block_inclusion"]["tree_size"] = BLOCKS + 1
    elif edit == "proof_moved_to_another_block":
        proof["block_inclusion"] = doc["lines"][-1]["proof"]["block_inclusion"]
    elif edit == "garbage":
        proof["block_inclusion"] = {"tree_size": "4", "audit_path": [None, 7]}
    else:
        del proof["block_inclusion"]
    code, summary = _verify(files, doc, capsys)
    assert code == 1, summary
    expected = "BLOCK_PROOF_MISSING" if edit == "stripped" else "BLOCK_PROOF_INVALID"
    assert _codes(summary) == {0: [expected]}


def test_fork_checkpoint_swapped_in_with_the_original_proofs_is_tampered(
    files: Path, capsys: Any
) -> None:
    fork = _chain(first=100, on=GENUINE[:2])  # the key holder's other history from block 2
    doc = _witnessed_doc()
    doc["checkpoints"][0]["note"] = _note(fork, BLOCKS)  # signed by KEY, never cosigned
    code, summary = _verify(files, doc, capsys)
    assert code == 1, summary
    assert {c for codes in _codes(summary).values() for c in codes} == {"BLOCK_PROOF_INVALID"}


def test_fork_checkpoint_with_the_genuine_cosignatures_moved_over_is_tampered(
    files: Path, capsys: Any
) -> None:
    fork = _chain(first=100, on=GENUINE[:2])
    doc = _export(fork, [_note(fork, BLOCKS)])  # the fork's own report: not cosigned
    genuine = _cosigned(_note(GENUINE, BLOCKS), W1, W2)
    stolen = [line for line in split_note(genuine)[1] if f" {W1} " in line or f" {W2} " in line]
    doc["checkpoints"] = [
        {
            "chain_id": CHAIN,
            "size": BLOCKS,
            "note": attach_cosignatures(_note(fork, BLOCKS), stolen),
        }
    ]
    code, summary = _verify(files, doc, capsys)
    assert code == 1, summary
    assert summary["witnessing"]["checkpoints"][0]["codes"] == ["COSIGNATURE_INVALID"]


def test_fork_report_signed_by_the_processor_key_but_not_cosigned_is_not_witnessed(
    files: Path, capsys: Any
) -> None:
    # Everything the key holder can make is consistent: blocks, proofs, checkpoint. Only
    # the witnesses' cosignatures are missing: the verifier cannot vouch for it.
    fork = _chain(first=100, on=GENUINE[:2])
    doc = _report(fork)
    tree = MerkleTree([block_leaf_hash(b.block_hash) for b in fork])
    for line in doc["lines"]:
        height = line["proof"]["height"]
        line["proof"]["block_inclusion"] = {
            "tree_size": BLOCKS,
            "audit_path": [p.hex() for p in tree.inclusion_proof(height)],
        }
    doc["checkpoints"] = [{"chain_id": CHAIN, "size": BLOCKS, "note": _note(fork, BLOCKS)}]
    code, summary = _verify(files, doc, capsys)
    assert code == 3, summary
    assert summary["failed"] == 0 and summary["result"] == "not_witnessed"


def test_checkpoint_signed_by_an_untrusted_key_is_tampered(files: Path, capsys: Any) -> None:
    doc = _witnessed_doc()
    body = split_note(doc["checkpoints"][0]["note"])[0]
    doc["checkpoints"][0]["note"] = _cosigned(sign_note(body, CHAIN, ATTACKER), W1, W2)
    code, summary = _verify(files, doc, capsys)
    assert code == 1, summary
    assert summary["witnessing"]["checkpoints"][0]["codes"] == ["CHECKPOINT_KEY_UNKNOWN"]


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        ("root_changed_without_resigning", "CHECKPOINT_SIGNATURE_INVALID"),
        ("size_claim_changed", "CHECKPOINT_INVALID"),
        ("chain_claim_changed", "CHECKPOINT_INVALID"),
        ("listed_twice", "CHECKPOINT_INVALID"),
        ("not_a_note", "CHECKPOINT_INVALID"),
        ("legacy_checkpoint", "CHECKPOINT_INVALID"),
    ],
)
def test_tampered_checkpoint_entry(files: Path, capsys: Any, edit: str, code: str) -> None:
    doc = _witnessed_doc()
    entry = doc["checkpoints"][0]
    if edit == "root_changed_without_resigning":
        body, lines = split_note(entry["note"])
        root = body.split("\n")[2]
        other = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
        entry["note"] = body.replace(root, other) + "\n" + "".join(f"{x}\n" for x in lines)
    elif edit == "size_claim_changed":
        entry["size"] = BLOCKS + 10
    elif edit == "chain_claim_changed":
        entry["chain_id"] = CHAIN[:-1] + "9"
    elif edit == "listed_twice":
        doc["checkpoints"].append(copy.deepcopy(entry))
    elif edit == "not_a_note":
        entry["note"] = 12
    else:
        head = GENUINE[-1]
        body = f"{CHAIN}\n{BLOCKS}\n{base64.b64encode(head.block_hash).decode()}\n"
        entry["note"] = _cosigned(sign_note(body, CHAIN, KEY), W1, W2)
    result, summary = _verify(files, doc, capsys)
    assert result == 1, summary
    assert len(_codes(summary)) == len(doc["lines"])
    assert all(code in codes for codes in _codes(summary).values()), _codes(summary)


def test_checkpoints_that_are_not_a_list_never_crash(files: Path, capsys: Any) -> None:
    doc = _witnessed_doc()
    doc["checkpoints"] = "all witnessed, trust me"
    code, summary = _verify(files, doc, capsys)
    assert code == 1 and summary["witnessing"]["status"] == "tampered"


# --------------------------------------------------------------------------- not yet witnessed


def test_report_exported_before_the_cosigner_ran_is_not_witnessed_then_verifies(
    files: Path, capsys: Any
) -> None:
    # the newest quorum checkpoint covers blocks 0 and 1; blocks 2 and 3 are newer
    early = _export(GENUINE, [_cosigned(_note(GENUINE, 2), W1, W3), _note(GENUINE, BLOCKS)])
    code, summary = _verify(files, early, capsys)
    assert code == 3, summary
    late = list(range(2 * PER_BLOCK, BLOCKS * PER_BLOCK))
    assert summary["witnessing"]["not_witnessed_lines"] == late
    assert (
        "newer than the report's checkpoint" in summary["results"][late[0]]["witnessing"]["reason"]
    )
    assert summary["results"][0]["witnessing"]["status"] == "witnessed"
    key = format_public_key(KEY.public_key)
    path, policy = str(files / "report.json"), str(files / "witnesses.toml")
    assert main(["verify-proof", path, "--trusted-key", key, "--witnesses", policy]) == 3
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("NOT YET WITNESSED: ")
    assert f"line(s) {', '.join(map(str, late))} (re-export later)" in last
    # re-exported once the cosigner has run
    again = _export(GENUINE, [_cosigned(_note(GENUINE, BLOCKS), W2, W3)])
    assert _verify(files, again, capsys)[0] == 0


def test_report_without_checkpoints_is_not_witnessed(files: Path, capsys: Any) -> None:
    doc = _report(GENUINE)  # exported without a policy
    code, summary = _verify(files, doc, capsys)
    assert code == 3 and summary["failed"] == 0, summary
    assert "carries no checkpoint" in summary["results"][0]["witnessing"]["reason"]


# --------------------------------------------------------------------------- cannot tell


def test_missing_witnesses_file_is_exit_2_naming_the_flag(files: Path, capsys: Any) -> None:
    path = files / "report.json"
    path.write_text(json.dumps(_witnessed_doc()))
    key = format_public_key(KEY.public_key)
    assert main(["verify-proof", str(path), "--trusted-key", key, "--witnesses", "nope.toml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--witnesses nope.toml" in err[0]


def test_missing_witnesses_file_is_exit_2_naming_the_setting(
    files: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = files / "report.json"
    path.write_text(json.dumps(_witnessed_doc()))
    monkeypatch.setenv("CARELEDGER_WITNESSES_FILE", str(files / "gone.toml"))
    key = format_public_key(KEY.public_key)
    assert main(["verify-proof", str(path), "--trusted-key", key]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"CARELEDGER_WITNESSES_FILE={files / 'gone.toml'}" in err[0]
    # a witness without a key in the file: the file is wrong, never "tampered"
    (files / "gone.toml").write_text('quorum = 1\n[[witness]]\nname = "a.example/witness"\n')
    assert main(["verify-proof", str(path), "--trusted-key", key]) == 2
    err = capsys.readouterr().err
    assert "'key' is missing" in err and "CARELEDGER_WITNESSES_FILE" in err


def test_no_trusted_key_is_exit_2(files: Path, capsys: Any) -> None:
    path = files / "report.json"
    path.write_text(json.dumps(_witnessed_doc()))
    assert main(["verify-proof", str(path), "--witnesses", str(files / "witnesses.toml")]) == 2
    assert "CARELEDGER_TRUSTED_KEYS" in capsys.readouterr().err


def test_witness_key_rotated_but_not_in_the_witnesses_file_is_cannot_tell(
    files: Path, capsys: Any
) -> None:
    # W2 now cosigns with a new key; this verifier's file still has the old one
    rotated = _key("w2 rotated")
    note = _note(GENUINE, BLOCKS)
    body = split_note(note)[0]
    cosigned = attach_cosignatures(
        note, [cosign(body, W1, WKEYS[W1], NOW).line, cosign(body, W2, rotated, NOW).line]
    )
    doc = _export(GENUINE, [_cosigned(note, W1, W3)])
    doc["checkpoints"][0]["note"] = cosigned
    code, summary = _verify(files, doc, capsys)
    assert code == 2, summary
    assert summary["result"] == "cannot_tell" and summary["failed"] == 0
    assert "--witnesses" in summary["results"][0]["witnessing"]["reason"]
    # with the new key in the file it verifies
    _witnesses_file(files / "witnesses.toml", {**WKEYS, W2: rotated})
    assert _verify(files, doc, capsys)[0] == 0


# --------------------------------------------------------------------------- exporter


def test_exporter_falls_back_below_a_checkpoint_the_store_does_not_reproduce() -> None:
    fork = _chain(first=100, on=GENUINE[:2])
    doc = _report(GENUINE)
    collector = QuorumCheckpoints([KEY.public_key], POLICY, cited_chains(doc))
    for note in (_cosigned(_note(fork, BLOCKS), W1, W2), _cosigned(_note(GENUINE, 3), W1, W2)):
        assert collector.add(note)
    assert not collector.add(_note(GENUINE, BLOCKS, key=ATTACKER))  # untrusted: ignored
    assert [c.size for c in collector.candidates(CHAIN)] == [BLOCKS, 3]
    chosen, problems = select_checkpoint(
        CHAIN, collector.candidates(CHAIN), [b.block_hash for b in GENUINE]
    )
    assert chosen is not None and chosen.size == 3
    assert len(problems) == 1 and "do not reproduce the root" in problems[0]
    # a store that lost its newest blocks
    chosen, problems = select_checkpoint(
        CHAIN, collector.candidates(CHAIN), [b.block_hash for b in GENUINE[:2]]
    )
    assert chosen is None and len(problems) == 2 and "has 4" in problems[0]


def test_exporter_gives_no_proof_for_a_line_whose_block_is_not_the_chains() -> None:
    doc = _report(GENUINE)
    doc["lines"][0]["proof"]["block_hash"] = "ee" * 32
    collector = QuorumCheckpoints([KEY.public_key], POLICY, cited_chains(doc))
    collector.add(_cosigned(_note(GENUINE, BLOCKS), W1, W2))
    cp = collector.candidates(CHAIN)[0]
    problems = attach_witnessing(
        doc, {CHAIN: cp}, {CHAIN: [b.block_hash for b in GENUINE]}, {"quorum": 2}
    )
    assert len(problems) == 1 and "block_inclusion" not in doc["lines"][0]["proof"]
    assert all("block_inclusion" in line["proof"] for line in doc["lines"][1:])
