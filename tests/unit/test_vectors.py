"""The checked-in test vectors (tests/vectors) are current, and careledger_core agrees
with every one of them: positive vectors verify, negative ones raise the named error."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

import careledger_core as core
from careledger_core import errors

VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors"


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("careledger_vectors", VECTOR_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_generator()


def load(rel: str) -> Any:
    return json.loads((VECTOR_DIR / rel).read_text(encoding="utf-8"))


def h(text: str) -> bytes:
    return bytes.fromhex(text)


NEGATIVE = sorted(p.stem for p in (VECTOR_DIR / "negative").glob("*.json"))


def test_checked_in_vectors_are_not_stale() -> None:
    expected = {rel: generate.render(doc) for rel, doc in generate.build_vectors().items()}
    on_disk = {p.relative_to(VECTOR_DIR).as_posix() for p in VECTOR_DIR.rglob("*.json")}
    assert on_disk == set(expected), "run: python tests/vectors/generate.py"
    for rel, text in expected.items():
        assert (VECTOR_DIR / rel).read_text(encoding="utf-8") == text, (
            f"{rel} is stale; run: python tests/vectors/generate.py"
        )


def test_test_key_vector() -> None:
    doc = load("test-key.json")
    key = core.parse_private_key(doc["private_key_text"])
    assert key.seed == h(doc["seed"])
    assert key.public_key.raw == h(doc["public_key_raw"])
    assert core.format_public_key(key.public_key) == doc["public_key"]
    assert core.key_id(key.public_key.raw) == doc["key_id"]


@pytest.mark.parametrize("case", load("events.json")["cases"], ids=lambda c: c["name"])
def test_event_vector_canonical_bytes_and_leaf_hash(case: dict[str, Any]) -> None:
    event, canonical = core.decode_and_canonicalize(h(case["input_hex"]))
    assert canonical == h(case["canonical_hex"]) == case["canonical"].encode("utf-8")
    assert core.canonical_event_bytes(event) == canonical
    assert core.canonicalize(core.event_to_dict(event)) == canonical
    assert core.leaf_hash(canonical).hex() == case["leaf_hash"]
    # canonical input is a fixed point
    assert core.decode_and_canonicalize(canonical)[1] == canonical


def test_equivalent_event_encodings_share_canonical_bytes() -> None:
    cases = {c["name"]: c for c in load("events.json")["cases"]}
    for case in cases.values():
        if "same_canonical_as" in case:
            assert case["canonical_hex"] == cases[case["same_canonical_as"]]["canonical_hex"]


def test_merkle_root_vectors() -> None:
    doc = load("merkle-roots.json")
    leaves = generate.merkle_leaves(1000)
    assert [x.hex() for x in leaves[:9]] == doc["leaf_hashes"]
    for case in doc["cases"]:
        assert core.merkle_root(leaves[: case["tree_size"]]).hex() == case["root"]


def _inclusion_args(case: dict[str, Any]) -> tuple[bytes, int, int, list[bytes], bytes]:
    leaf = (
        core.leaf_hash(h(case["leaf_data_hex"]))
        if "leaf_data_hex" in case
        else h(case["leaf_hash"])
    )
    proof = [h(p) for p in case["proof"]]
    return leaf, case["leaf_index"], case["tree_size"], proof, h(case["root"])


def _consistency_args(case: dict[str, Any]) -> tuple[int, int, bytes, bytes, list[bytes]]:
    proof = [h(p) for p in case["proof"]]
    return case["old_size"], case["new_size"], h(case["old_root"]), h(case["new_root"]), proof


def test_inclusion_proof_vectors() -> None:
    leaves = generate.merkle_leaves(1000)
    for case in load("inclusion-proofs.json")["cases"]:
        n, i = case["tree_size"], case["leaf_index"]
        assert [p.hex() for p in core.inclusion_proof(leaves[:n], i)] == case["proof"]
        core.verify_inclusion(*_inclusion_args(case))


def test_consistency_proof_vectors() -> None:
    leaves = generate.merkle_leaves(1000)
    for case in load("consistency-proofs.json")["cases"]:
        m, n = case["old_size"], case["new_size"]
        assert [p.hex() for p in core.consistency_proof(leaves[:n], m)] == case["proof"]
        core.verify_consistency(*_consistency_args(case))


def test_block_vectors() -> None:
    doc = load("blocks.json")
    trusted = core.TrustedKeys.from_literals(doc["trusted_keys"])
    prev: core.BlockHeader | None = None
    for case in doc["cases"]:
        header = core.decode_header(h(case["header_hex"]))
        assert core.header_bytes(header) == case["header_bytes"].encode("utf-8")
        assert json.loads(core.header_bytes(header)) == case["header"]
        assert core.block_hash(header).hex() == case["block_hash"]
        assert core.SIGNING_CONTEXT + core.header_bytes(header) == h(case["signed_message_hex"])
        trusted.verify_header(header, h(case["signature"]))
        if prev is not None:
            assert header.prev_hash == core.block_hash(prev).hex()
        prev = header
    genesis = core.decode_header(h(doc["cases"][0]["header_hex"]))
    leaf_hashes = [core.leaf_hash(h(c["canonical_hex"])) for c in load("events.json")["cases"][:4]]
    assert core.merkle_root(leaf_hashes).hex() == genesis.merkle_root


def test_checkpoint_vector() -> None:
    doc = load("checkpoint.json")
    verifiers = {doc["name"]: core.parse_public_key(doc["public_key"])}
    cp = core.verify_checkpoint(doc["note"], verifiers)
    assert (cp.origin, cp.size, cp.root_hash.hex()) == (
        doc["origin"],
        doc["size"],
        doc["root_hash"],
    )
    assert core.format_checkpoint(cp) == doc["body"]
    headers = [core.decode_header(h(c["header_hex"])) for c in load("blocks.json")["cases"]]
    hashes = [core.block_hash(x) for x in headers]
    assert [x.hex() for x in hashes] == doc["block_hashes"]
    assert [core.block_leaf_hash(x).hex() for x in hashes] == doc["leaf_hashes"]
    assert core.merkle_root([h(x) for x in doc["leaf_hashes"]]).hex() == doc["root_hash"]
    tree = core.ChainTree.of_blocks(hashes)
    assert core.checkpoint_for(headers[-1], tree) == cp
    assert cp.is_tree and cp.head_hash.hex() == doc["head_hash"] == hashes[-1].hex()
    old = core.verify_checkpoint(doc["previous"]["note"], verifiers)
    assert (old.size, old.root_hash.hex()) == (
        doc["previous"]["size"],
        doc["previous"]["root_hash"],
    )
    c = doc["consistency"]
    old_size, proof = core.parse_consistency(c["header"])
    assert (old_size, [x.hex() for x in proof]) == (c["old_size"], c["proof"])
    core.verify_consistency(old.size, cp.size, old.root_hash, cp.root_hash, proof)


def run_check(doc: dict[str, Any]) -> None:
    check = doc["check"]
    if check == "verify_inclusion":
        core.verify_inclusion(*_inclusion_args(doc))
    elif check == "verify_consistency":
        core.verify_consistency(*_consistency_args(doc))
    elif check == "verify_block_signature":
        trusted = core.TrustedKeys.from_literals(doc["trusted_keys"])
        trusted.verify_header(core.decode_header(h(doc["header_hex"])), h(doc["signature"]))
    elif check == "decode_header":
        core.decode_header(h(doc["header_hex"]))
    elif check == "decode_event":
        core.decode_event(h(doc["input_hex"]))
    elif check == "open_note":
        verifiers = {k: core.parse_public_key(v) for k, v in doc["verifiers"].items()}
        core.verify_checkpoint(doc["note"], verifiers)
    else:  # pragma: no cover - a vector with an unknown check is a bug in generate.py
        raise AssertionError(f"unknown check {check!r}")


@pytest.mark.parametrize("name", NEGATIVE)
def test_negative_vector_raises_named_error(name: str) -> None:
    doc = load(f"negative/{name}.json")
    error_class = getattr(errors, doc["error"])
    with pytest.raises(error_class) as info:
        run_check(doc)
    assert info.value.code == doc["code"]
    if "field" in doc:
        assert info.value.field == doc["field"]
    if "reason_contains" in doc:
        assert doc["reason_contains"] in info.value.reason


def test_negative_vectors_cover_the_named_attacks() -> None:
    required = {
        "wrong-leaf",
        "flipped-bit-in-proof",
        "truncated-proof",
        "wrong-root",
        "signature-by-unknown-key",
        "flipped-bit-in-signature",
        "header-field-changed",
        "non-canonical-header",
        "event-with-unknown-field",
    }
    assert required <= set(NEGATIVE)
