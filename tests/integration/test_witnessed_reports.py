"""Witnessed access reports end to end (issue 9 item 3, ADR 0019): real Kafka, real
ClickHouse, three real witnesses (two ``careledger witness``, one unmodified litewitness),
quorum 2.

The chains are those of ``test_checkpoints.py`` (two chains of five blocks of simulated
events, one checkpoint per block); ``careledger cosign --once`` has the witnesses cosign
them. ``careledger access-report`` exports the accesses of the patient with the most
events under the witness policy; ``careledger verify-proof`` then checks the file
**offline**: Kafka unreachable, a witnesses file with keys only (no URLs), the
processor's public key. The attacker edits the file, writes to ClickHouse, and in the
key-holder tests holds the processor's key.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from careledger.config import Settings
from careledger.cosigned_checkpoints import CheckpointNotes
from careledger.witnesses import load_witnesses
from careledger_core.chain_tree import ChainTree
from careledger_core.checkpoint import SIGNATURE_DASH, checkpoint_for, format_checkpoint, sign_note
from careledger_core.cosignature import WitnessKey, attach_cosignatures, cosign, split_note
from careledger_core.event import decode_and_canonicalize
from tests.integration.test_checkpoints import BLOCKS, KEY, PER_BLOCK, setup
from tests.integration.test_witnessed import A, B, L, Trio, rewrite_from, trio
from tests.witness_support import seeded_key
from verifiers.reports.access_report import build_report, parse_range
from verifiers.reports.report_witnesses import witness_report

pytestmark = pytest.mark.integration

__all__ = ["setup", "trio"]

FROM, TO = "2026-11-01", "2026-11-03"


def _patient(trio: Trio) -> str:
    """The patient with the most accesses in the chains (on both chains)."""
    counts: Counter[str] = Counter()
    for blocks in trio.setup.blocks.values():
        for block in blocks:
            for e in block.events:
                counts[decode_and_canonicalize(e.canonical)[0].patient.id] += 1
    del counts["-"]
    return counts.most_common(1)[0][0]


def export(
    trio: Trio, name: str, *extra: str, settings: Settings | None = None, view: str = "access"
) -> tuple[int, str, Path]:
    """``careledger access-report`` under the witness policy (with the witnesses' URLs)."""
    s = (settings or trio.setup.settings).replace(witnesses_file=trio.witnesses_file())
    path = trio.directory / f"{name}.json"
    proc = trio.cli(
        s,
        "access-report",
        "--patient",
        _patient(trio),
        "--from",
        FROM,
        "--to",
        TO,
        "--view",
        view,
        "--format",
        "json",
        "--out",
        str(path),
        *extra,
    )
    return proc.returncode, proc.stderr, path


def verify_proof(trio: Trio, doc: dict[str, Any] | Path, name: str = "x") -> tuple[int, Any]:
    """``careledger verify-proof`` offline: no Kafka, witnesses' keys without URLs."""
    path = doc if isinstance(doc, Path) else trio.directory / f"edited-{name}.json"
    if not isinstance(doc, Path):
        path.write_text(json.dumps(doc))
    offline = trio.setup.settings.replace(kafka_port=1, clickhouse_port=1)
    proc = trio.cli(
        offline,
        "verify-proof",
        str(path),
        "--trusted-key",
        str(trio.setup.key_file),
        "--witnesses",
        str(trio.witnesses_file(urls=False, name="offline")),
        "--json",
    )
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def failing(summary: dict[str, Any]) -> dict[int, list[str]]:
    return {r["line"]: r["codes"] for r in summary["results"] if r["codes"]}


def witnessed_report(trio: Trio, view: str = "access") -> dict[str, Any]:
    assert trio.cosign().returncode == 0
    code, err, path = export(trio, f"witnessed-{view}", view=view)
    assert code == 0, err
    return load(path)


# --------------------------------------------------------------------------- happy path


def test_report_exported_after_cosigning_verifies_offline_with_only_public_keys(
    trio: Trio,
) -> None:
    doc = witnessed_report(trio)
    chains = {line["proof"]["chain_id"] for line in doc["lines"]}
    assert len(doc["lines"]) >= 5 and chains == set(trio.setup.chains)
    assert {c["chain_id"]: c["size"] for c in doc["checkpoints"]} == dict.fromkeys(chains, BLOCKS)
    for cp in doc["checkpoints"]:
        assert len(cp["cosigned_by"]) >= 2 and set(cp["cosigned_by"]) <= {A, B, L}
        assert cp["note"].count(SIGNATURE_DASH) == 1 + len(cp["cosigned_by"])
    assert all("block_inclusion" in line["proof"] for line in doc["lines"])
    assert doc["witness_policy"]["status_at_export"] == "witnessed"
    code, summary = verify_proof(trio, doc)
    assert code == 0, summary
    assert summary["result"] == "verified" and summary["witnessing"]["status"] == "witnessed"
    assert {r["witnessing"]["status"] for r in summary["results"]} == {"witnessed"}
    assert {r["status"] for r in summary["results"]} == {"content-verified"}


def test_redacted_gdpr_report_is_witnessed_too(trio: Trio) -> None:
    doc = witnessed_report(trio, view="gdpr")
    assert all(line["proof"]["form"] == "redacted" for line in doc["lines"])
    code, summary = verify_proof(trio, doc)
    assert code == 0, summary
    assert {r["status"] for r in summary["results"]} == {"inclusion-verified"}


def test_one_witness_down_the_report_is_still_witnessed(trio: Trio) -> None:
    trio.b.stop()
    assert trio.cosign().returncode == 0
    code, err, path = export(trio, "b-down")
    assert code == 0, err
    assert f"witness {B} could not be asked" in err
    assert verify_proof(trio, path)[0] == 0


# --------------------------------------------------------------------------- not yet witnessed


def test_report_exported_before_the_cosigner_ran_verifies_once_reexported(trio: Trio) -> None:
    code, err, path = export(trio, "before")
    assert code == 3, err
    doc = load(path)
    n = len(doc["lines"])
    assert doc["checkpoints"] == [] and doc["witness_policy"]["not_witnessed_lines"] == list(
        range(n)
    )
    said = [x for x in err.splitlines() if "not witnessed: line " in x]
    assert len(said) == n, err
    code, summary = verify_proof(trio, path)
    assert code == 3, summary
    assert summary["result"] == "not_witnessed" and summary["failed"] == 0
    assert summary["witnessing"]["not_witnessed_lines"] == list(range(n))
    # the cosigner runs; the same export now vouches for every line
    assert trio.cosign().returncode == 0
    code, err, path = export(trio, "after")
    assert code == 0, err
    assert verify_proof(trio, path)[0] == 0


def test_two_witnesses_down_the_report_is_not_yet_witnessed_never_tampered(trio: Trio) -> None:
    trio.a.stop()
    trio.lite.stop()
    assert trio.cosign().returncode == 3  # only B cosigned
    code, err, path = export(trio, "two-down")
    assert code == 3, err
    code, summary = verify_proof(trio, path)
    assert code == 3 and summary["failed"] == 0, summary


# --------------------------------------------------------------------------- attacks on the file


def test_forged_cosignature_in_the_report_is_tampered(trio: Trio) -> None:
    doc = witnessed_report(trio)
    entry = doc["checkpoints"][0]
    body, lines = split_note(entry["note"])
    victim = entry["cosigned_by"][0]
    fake = cosign(body, victim, seeded_key("not the witness"), 1_900_000_000)
    real_id = WitnessKey(victim, trio.keys[victim].public_key).key_hash
    forged = f"{SIGNATURE_DASH} {victim} " + base64.b64encode(
        real_id + fake.timestamp.to_bytes(8, "big") + fake.signature
    ).decode("ascii")
    genuine = next(line for line in lines if f" {victim} " in line)
    entry["note"] = entry["note"].replace(genuine, forged)
    code, summary = verify_proof(trio, doc, "forged-cosignature")
    assert code == 1, summary
    assert summary["result"] == "tampered"
    mine = [i for i, x in enumerate(doc["lines"]) if x["proof"]["chain_id"] == entry["chain_id"]]
    assert sorted(failing(summary)) == mine
    assert all("COSIGNATURE_INVALID" in c for c in failing(summary).values())


def test_missing_cosignatures_in_the_report_are_not_witnessed(trio: Trio) -> None:
    doc = witnessed_report(trio)
    entry = doc["checkpoints"][0]
    body, lines = split_note(entry["note"])
    keep = [line for line in lines if not any(f" {w} " in line for w in entry["cosigned_by"][1:])]
    entry["note"] = body + "\n" + "".join(f"{line}\n" for line in keep)
    code, summary = verify_proof(trio, doc, "missing-cosignature")
    assert code == 3, summary
    mine = [i for i, x in enumerate(doc["lines"]) if x["proof"]["chain_id"] == entry["chain_id"]]
    assert summary["witnessing"]["not_witnessed_lines"] == mine and summary["failed"] == 0


def test_edited_block_inclusion_proof_fails_that_line(trio: Trio) -> None:
    doc = witnessed_report(trio)
    i, line = next(
        (i, x) for i, x in enumerate(doc["lines"]) if x["proof"]["block_inclusion"]["audit_path"]
    )
    path = line["proof"]["block_inclusion"]["audit_path"]
    path[-1] = path[-1][:-1] + ("0" if path[-1][-1] != "0" else "1")
    code, summary = verify_proof(trio, doc, "edited-inclusion")
    assert code == 1, summary
    assert failing(summary) == {i: ["BLOCK_PROOF_INVALID"]}


def _fork_note(trio: Trio, chain: str) -> str:
    """The key holder's checkpoint of another history of ``chain`` (blocks 2.. replaced),
    signed with the processor's key; no witness would cosign it."""
    setup = trio.setup
    forked = list(setup.blocks[chain][:2])
    for h in range(2, BLOCKS):
        forked.append(setup.next_block(chain, forked[-1], KEY, setup.spare[h : h + PER_BLOCK]))
    tree = ChainTree.of_blocks(b.block_hash for b in forked)
    body = format_checkpoint(checkpoint_for(forked[-1].header, tree))
    return sign_note(body, chain, KEY)


def test_fork_checkpoint_signed_by_the_processor_key_swapped_into_the_report(
    trio: Trio,
) -> None:
    doc = witnessed_report(trio)
    entry = doc["checkpoints"][0]
    chain = entry["chain_id"]
    mine = [i for i, x in enumerate(doc["lines"]) if x["proof"]["chain_id"] == chain]
    fork = _fork_note(trio, chain)
    # 1. swapped bare: the proofs of the genuine blocks do not lead to the fork's root
    entry["note"] = fork
    code, summary = verify_proof(trio, doc, "fork-bare")
    assert code == 1, summary
    assert sorted(failing(summary)) == mine
    assert {c for codes in failing(summary).values() for c in codes} == {"BLOCK_PROOF_INVALID"}
    # 2. with the genuine cosignature lines moved over: they do not sign the fork
    stolen = split_note(load(trio.directory / "witnessed-access.json")["checkpoints"][0]["note"])
    entry["note"] = attach_cosignatures(
        fork, [x for x in stolen[1] if not x.startswith(f"{SIGNATURE_DASH} {chain} ")]
    )
    code, summary = verify_proof(trio, doc, "fork-cosigned")
    assert code == 1, summary
    assert summary["witnessing"]["checkpoints"][0]["codes"] == ["COSIGNATURE_INVALID"]


# --------------------------------------------------------------------------- attacks on the store


def test_key_holder_rewrite_is_never_vouched_for_by_a_report(trio: Trio) -> None:
    setup = trio.setup
    assert trio.cosign().returncode == 0  # the genuine history is witnessed
    chain = setup.chains[0]
    rewrite_from(setup, chain, 2)  # store rewritten and re-signed, its checkpoints published
    code, err, path = export(trio, "rewritten")
    assert code == 1, err
    assert f"the stored blocks of {chain} do not reproduce the root" in err
    doc = load(path)
    assert [c["chain_id"] for c in doc["checkpoints"]] == [setup.chains[1]]
    code, summary = verify_proof(trio, path)
    assert code == 3, summary  # no line of the rewritten chain is vouched for
    late = summary["witnessing"]["not_witnessed_lines"]
    assert late and {doc["lines"][i]["proof"]["chain_id"] for i in late} == {chain}


# --------------------------------------------------------------------------- cannot tell


def test_checkpoints_unreadable_and_witnesses_down_is_cannot_tell(trio: Trio) -> None:
    for w in (trio.a, trio.b, trio.lite):
        w.stop()
    code, err, _path = export(
        trio, "unreachable", settings=trio.setup.settings.replace(kafka_port=1)
    )
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cannot tell" in lines[0] and "Kafka" in lines[0], err


def test_witness_policy_without_a_trusted_key_is_a_configuration_error(trio: Trio) -> None:
    s = trio.setup.settings.replace(witnesses_file=trio.witnesses_file())
    proc = trio.cli(
        s,
        "access-report",
        "--patient",
        _patient(trio),
        "--from",
        FROM,
        "--to",
        TO,
        CARELEDGER_TRUSTED_KEYS="",
    )
    assert proc.returncode == 2, proc.stderr
    assert "CARELEDGER_TRUSTED_KEYS" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- the topic, backwards


def test_exporter_reads_the_checkpoints_topic_backwards_until_covered(trio: Trio) -> None:
    """Witnesses unreachable: the cosigned notes are found in the topic, read window by
    window from its end, behind newer uncosigned ones."""
    setup = trio.setup
    assert trio.cosign().returncode == 0
    for w in (trio.a, trio.b, trio.lite):
        w.stop()
    for chain in setup.chains:  # newer records after the cosigned ones
        setup.publish(setup.blocks[chain][-2:])
    witnesses = load_witnesses(setup.settings.replace(witnesses_file=trio.witnesses_file()))
    assert witnesses is not None
    start, end = parse_range(FROM, TO)
    doc = build_report(setup.store, _patient(trio), start, end)
    out = witness_report(
        doc, setup.store, setup.settings, [KEY.public_key], witnesses, {}, window=1, timeout_s=5
    )
    assert out.unavailable is None and out.problems == [], out
    assert len(out.warnings) == 3  # every witness unreachable, said
    assert {c["chain_id"]: c["size"] for c in doc["checkpoints"]} == dict.fromkeys(
        setup.chains, BLOCKS
    )
    assert all("block_inclusion" in line["proof"] for line in doc["lines"])
    # every record is read exactly once going backwards, one per partition per window
    notes = CheckpointNotes(setup.settings, timeout_s=5)
    with notes:
        windows = list(notes.windows(1))
    total = sum(high - low for low, high in notes.bounds.values())
    assert sum(len(w) for w in windows) == total and all(
        len(w) <= len(notes.bounds) for w in windows
    )
