"""RFC 6962 / RFC 9162 Merkle trees: published reference values, the classic attacks,
and properties of inclusion and consistency proofs."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careledger_core.errors import ProofError, ValidationError
from careledger_core.hashing import EMPTY_ROOT, leaf_hash, node_hash
from careledger_core.merkle import (
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    merkle_root,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

# Certificate Transparency / transparency-dev reference data (RFC 6962 test vectors).
CT_LEAF_DATA = [
    bytes.fromhex(x)
    for x in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_LEAVES = [leaf_hash(d) for d in CT_LEAF_DATA]


def leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def reference_mth(hashes: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, literally (recursive split at the largest power of two < n)."""
    if not hashes:
        return EMPTY_ROOT
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return node_hash(reference_mth(hashes[:k]), reference_mth(hashes[k:]))


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_empty_root_is_sha256_of_empty_string() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert merkle_root([]) == EMPTY_ROOT


@pytest.mark.parametrize("size", range(9))
def test_rfc6962_reference_roots(size: int) -> None:
    assert merkle_root(CT_LEAVES[:size]).hex() == CT_ROOTS[size]


@pytest.mark.parametrize(
    ("index", "proof"),
    [
        (
            0,
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ],
)
def test_rfc6962_reference_inclusion_proofs(index: int, proof: list[str]) -> None:
    assert [p.hex() for p in inclusion_proof(CT_LEAVES, index)] == proof
    verify_inclusion(
        CT_LEAVES[index], index, 8, [bytes.fromhex(p) for p in proof], bytes.fromhex(CT_ROOTS[8])
    )


def test_rfc6962_reference_consistency_proof_2_to_5() -> None:
    expected = [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ]
    proof = consistency_proof(CT_LEAVES[:5], 2)
    assert [p.hex() for p in proof] == expected
    verify_consistency(2, 5, bytes.fromhex(CT_ROOTS[2]), bytes.fromhex(CT_ROOTS[5]), proof)


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    data = b"x" * 64
    assert leaf_hash(data) == hashlib.sha256(b"\x00" + data).digest()
    assert node_hash(data[:32], data[32:]) == hashlib.sha256(b"\x01" + data).digest()
    assert leaf_hash(data) != node_hash(data[:32], data[32:])


def test_second_preimage_leaf_as_node_rejected() -> None:
    """An attacker offers the 64 bytes left||right of an interior node as a leaf."""
    two = leaves(2)
    root = merkle_root(two)
    forged_leaf = leaf_hash(two[0] + two[1])
    assert merkle_root([forged_leaf]) != root
    with pytest.raises(ProofError):
        verify_inclusion(forged_leaf, 0, 1, [], root)
    # ... nor can an interior node pass as a leaf at the authenticated tree size
    four = leaves(4)
    with pytest.raises(ProofError):
        verify_inclusion(
            node_hash(four[0], four[1]), 0, 4, [node_hash(four[2], four[3])], merkle_root(four)
        )


def test_odd_node_promoted_not_duplicated_cve_2012_2459() -> None:
    three = leaves(3)
    assert merkle_root(three) == node_hash(node_hash(three[0], three[1]), three[2])
    assert merkle_root(three) != merkle_root([*three, three[2]])
    five = leaves(5)
    assert merkle_root(five) != merkle_root([*five, five[4]])
    assert merkle_root(five) != merkle_root([*five, five[4], *five[4:]])


@given(st.integers(min_value=0, max_value=300))
def test_root_equals_rfc6962_recursive_definition(n: int) -> None:
    hashes = leaves(n)
    assert merkle_root(hashes) == reference_mth(hashes) == MerkleTree(hashes).root


@settings(max_examples=200)
@given(st.data())
def test_inclusion_proof_for_every_index_verifies_and_any_bit_flip_fails(
    data: st.DataObject,
) -> None:
    n = data.draw(st.integers(min_value=1, max_value=200), label="size")
    hashes = leaves(n)
    tree = MerkleTree(hashes)
    root = tree.root
    for index in range(n) if n <= 40 else data.draw(st.lists(st.integers(0, n - 1), max_size=8)):
        path = tree.inclusion_proof(index)
        assert path == inclusion_proof(hashes, index)
        verify_inclusion(hashes[index], index, n, path, root)
    index = data.draw(st.integers(0, n - 1), label="index")
    proof = list(tree.inclusion_proof(index))
    if proof:
        which = data.draw(st.integers(0, len(proof) - 1), label="which")
        bit = data.draw(st.integers(0, 255), label="bit")
        bad = [*proof[:which], flip(proof[which], bit), *proof[which + 1 :]]
        with pytest.raises(ProofError):
            verify_inclusion(hashes[index], index, n, bad, root)
        with pytest.raises(ProofError):
            verify_inclusion(hashes[index], index, n, proof[:which], root)  # truncated
    with pytest.raises(ProofError):
        verify_inclusion(flip(hashes[index], data.draw(st.integers(0, 255))), index, n, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(hashes[index], index, n, proof, flip(root, data.draw(st.integers(0, 255))))
    with pytest.raises(ProofError):
        verify_inclusion(hashes[index], index, n, [*proof, hashes[0]], root)  # extended


@given(st.integers(min_value=2, max_value=64), st.data())
def test_proof_for_one_index_does_not_verify_another(n: int, data: st.DataObject) -> None:
    hashes = leaves(n)
    i = data.draw(st.integers(0, n - 1))
    j = data.draw(st.integers(0, n - 1).filter(lambda x: x != i))
    with pytest.raises(ProofError):
        verify_inclusion(hashes[i], j, n, inclusion_proof(hashes, i), merkle_root(hashes))


@settings(max_examples=200)
@given(st.data())
def test_consistency_proofs_verify_and_any_bit_flip_fails(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=1, max_value=200), label="new size")
    m = data.draw(st.integers(min_value=0, max_value=n), label="old size")
    hashes = leaves(n)
    old_root, new_root = merkle_root(hashes[:m]), merkle_root(hashes)
    proof = consistency_proof(hashes, m)
    verify_consistency(m, n, old_root, new_root, proof)
    if proof:
        which = data.draw(st.integers(0, len(proof) - 1), label="which")
        bit = data.draw(st.integers(0, 255), label="bit")
        bad = [*proof[:which], flip(proof[which], bit), *proof[which + 1 :]]
        with pytest.raises(ProofError):
            verify_consistency(m, n, old_root, new_root, bad)
        with pytest.raises(ProofError):
            verify_consistency(m, n, old_root, new_root, proof[:-1])
        with pytest.raises(ProofError):
            verify_consistency(m, n, old_root, new_root, [*proof, proof[0]])
    if 0 < m < n:  # (every tree extends the empty one)
        with pytest.raises(ProofError):
            verify_consistency(m, n, old_root, flip(new_root, 3), proof)
        with pytest.raises(ProofError):
            verify_consistency(m, n, flip(old_root, 3), new_root, proof)


@given(st.integers(min_value=2, max_value=100), st.data())
def test_rewritten_history_is_not_consistent(n: int, data: st.DataObject) -> None:
    """A log that changed one old leaf cannot prove its new tree extends the old one."""
    m = data.draw(st.integers(1, n - 1))
    changed = data.draw(st.integers(0, m - 1))
    hashes = leaves(n)
    rewritten = list(hashes)
    rewritten[changed] = leaf_hash(b"forged")
    with pytest.raises(ProofError):
        verify_consistency(
            m, n, merkle_root(hashes[:m]), merkle_root(rewritten), consistency_proof(rewritten, m)
        )


def test_consistency_edge_cases() -> None:
    hashes = leaves(5)
    root = merkle_root(hashes)
    verify_consistency(5, 5, root, root, [])
    verify_consistency(0, 5, EMPTY_ROOT, root, [])
    with pytest.raises(ProofError):
        verify_consistency(5, 5, root, merkle_root(hashes[:4]), [])
    with pytest.raises(ProofError):
        verify_consistency(0, 5, root, root, [])  # the empty tree's root is SHA-256('')
    with pytest.raises(ProofError):
        verify_consistency(5, 4, root, root, [])  # truncation
    with pytest.raises(ProofError):
        verify_consistency(2, 5, merkle_root(hashes[:2]), root, [])


def test_inclusion_edge_cases() -> None:
    one = leaves(1)
    verify_inclusion(one[0], 0, 1, [], one[0])
    assert root_from_inclusion_proof(one[0], 0, 1, []) == one[0]
    with pytest.raises(ProofError):
        verify_inclusion(one[0], 0, 0, [], EMPTY_ROOT)
    with pytest.raises(ProofError):
        verify_inclusion(one[0], -1, 1, [], one[0])
    with pytest.raises(ProofError, match="32-byte"):
        verify_inclusion(one[0][:31], 0, 1, [], one[0])
    with pytest.raises(ProofError, match="32-byte"):
        verify_inclusion(one[0], 0, 2, [b"short"], one[0])


def test_generation_rejects_bad_input() -> None:
    with pytest.raises(ValidationError):
        merkle_root([b"too short"])
    with pytest.raises(ValidationError):
        inclusion_proof(leaves(3), 3)
    with pytest.raises(ValidationError):
        consistency_proof(leaves(3), 4)


def test_thousand_leaf_tree_is_fast_enough_for_one_block() -> None:
    hashes = leaves(1000)
    tree = MerkleTree(hashes)
    assert tree.root == merkle_root(hashes) == reference_mth(hashes)
    for i in (0, 511, 512, 999):
        verify_inclusion(hashes[i], i, 1000, tree.inclusion_proof(i), tree.root)
