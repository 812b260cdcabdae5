"""Merkle, block, checkpoint and test-key vectors: RFC 6962 roots and proofs, block
headers, hashes and signatures, the C2SP checkpoint of the chain head, the test key."""

from __future__ import annotations

import json

from careledger_core import (
    EMPTY_ROOT,
    GENESIS_PREV_HASH,
    SIGNING_CONTEXT,
    BlockHeader,
    ChainTree,
    Checkpoint,
    MerkleTree,
    SigningKey,
    block_hash,
    block_leaf_hash,
    checkpoint_for,
    decode_and_canonicalize,
    format_checkpoint,
    format_consistency,
    format_private_key,
    format_public_key,
    header_bytes,
    leaf_hash,
    sign_note,
)
from tests.vectors.gen_common import (
    BIG,
    CHAIN_ID,
    MERKLE_SIZES,
    NOTE_NAME,
    OTHER_KEY,
    TEST_KEY,
    TEST_SEED,
    Doc,
    _hex_list,
    _wire,
    merkle_leaves,
)
from tests.vectors.gen_events import POSITIVE_EVENTS

# --------------------------------------------------------------------------- merkle


def merkle_roots_doc() -> Doc:
    return {
        "description": "RFC 6962 Merkle Tree Hash of the first n test leaves "
        "(leaf i = ASCII 'leaf-<i>'); n = 0 is SHA-256('')",
        "leaf_data_rule": "leaf-<i>",
        "leaf_hashes": _hex_list(merkle_leaves(9)),
        "cases": [
            {"tree_size": n, "root": MerkleTree(merkle_leaves(n)).root.hex()} for n in MERKLE_SIZES
        ],
    }


def inclusion_cases() -> list[Doc]:
    cases: list[Doc] = []
    for n in MERKLE_SIZES:
        if n == 0:
            continue
        tree = MerkleTree(merkle_leaves(n))
        indexes = range(n) if n < 10 else (0, 1, 2, 511, 512, 767, 998, 999)
        for i in indexes:
            cases.append(
                {
                    "leaf_index": i,
                    "tree_size": n,
                    "leaf_hash": tree.leaf(i).hex(),
                    "proof": _hex_list(tree.inclusion_proof(i)),
                    "root": tree.root.hex(),
                }
            )
    return cases


def consistency_cases() -> list[Doc]:
    cases: list[Doc] = []
    pairs = [(m, n) for n in range(1, 10) for m in range(0, n + 1)]
    pairs += [(m, BIG) for m in (1, 2, 7, 511, 512, 513, 999, 1000)]
    for m, n in pairs:
        leaves = merkle_leaves(n)
        tree = MerkleTree(leaves)
        cases.append(
            {
                "old_size": m,
                "new_size": n,
                "old_root": MerkleTree(leaves[:m]).root.hex(),
                "new_root": tree.root.hex(),
                "proof": _hex_list(tree.consistency_proof(m)),
            }
        )
    return cases


# --------------------------------------------------------------------------- blocks


def event_leaf_hashes() -> list[bytes]:
    return [leaf_hash(decode_and_canonicalize(_wire(d))[1]) for d in POSITIVE_EVENTS.values()]


def genesis_header(key: SigningKey = TEST_KEY) -> BlockHeader:
    leaves = event_leaf_hashes()
    return BlockHeader(
        chain_id=CHAIN_ID,
        height=0,
        prev_hash=GENESIS_PREV_HASH,
        merkle_root=MerkleTree(leaves).root.hex(),
        event_count=len(leaves),
        first_offset=0,
        last_offset=5,
        dead_lettered=1,
        absent_offsets=1,
        first_event_time="2024-01-01T00:00:00.000000Z",
        last_event_time="2024-06-15T08:00:00.500000Z",
        created_at="2024-06-15T08:00:02.000000Z",
        key_id=key.key_id,
    )


def second_header() -> BlockHeader:
    return BlockHeader(
        chain_id=CHAIN_ID,
        height=1,
        prev_hash=block_hash(genesis_header()).hex(),
        merkle_root=EMPTY_ROOT.hex(),
        event_count=0,
        first_offset=6,
        last_offset=7,
        dead_lettered=2,
        absent_offsets=0,
        first_event_time="2024-06-15T08:00:03.000000Z",
        last_event_time="2024-06-15T08:00:03.000000Z",
        created_at="2024-06-15T08:00:03.000000Z",
        key_id=TEST_KEY.key_id,
    )


def _block_vector(name: str, description: str, h: BlockHeader) -> Doc:
    hb = header_bytes(h)
    return {
        "name": name,
        "description": description,
        "header": json.loads(hb),
        "header_bytes": hb.decode("utf-8"),
        "header_hex": hb.hex(),
        "block_hash": block_hash(h).hex(),
        "signed_message_hex": (SIGNING_CONTEXT + hb).hex(),
        "signature": TEST_KEY.sign_header(h).hex(),
    }


def blocks_doc() -> Doc:
    return {
        "description": "Block headers -> canonical bytes -> block hash SHA-256(header bytes); "
        "signature = Ed25519 over SIGNING_CONTEXT || header bytes with the test key",
        "signing_context": SIGNING_CONTEXT.decode("ascii"),
        "trusted_keys": [format_public_key(TEST_KEY.public_key)],
        "cases": [
            _block_vector(
                "genesis",
                "height 0 over the four positive events (events.json order); offsets 0..5 "
                "= 4 events + 1 dead-lettered + 1 absent",
                genesis_header(),
            ),
            _block_vector(
                "no-events",
                "height 1, only dead-lettered offsets: merkle_root is SHA-256('')",
                second_header(),
            ),
        ],
    }


def chain_headers() -> list[BlockHeader]:
    """The two-block chain of blocks.json: 'genesis' then 'no-events'."""
    return [genesis_header(), second_header()]


def checkpoint_note(size: int = 2) -> tuple[Checkpoint, str]:
    headers = chain_headers()[:size]
    tree = ChainTree.of_blocks(block_hash(h) for h in headers)
    cp = checkpoint_for(headers[-1], tree)
    return cp, sign_note(format_checkpoint(cp), NOTE_NAME, TEST_KEY)


def checkpoint_doc() -> Doc:
    cp, note = checkpoint_note()
    old, old_note = checkpoint_note(1)
    hashes = [block_hash(h) for h in chain_headers()]
    leaves = [block_leaf_hash(h) for h in hashes]
    proof = ChainTree.of_leaf_hashes(leaves[:1]).consistency_proof(leaves[1:])
    return {
        "description": "C2SP signed-note checkpoint of the chain of blocks.json (ADR 0012): "
        "origin = chain id, size = number of blocks, root = base64 RFC 6962 Merkle Tree Hash "
        "over the block hashes (leaf hash = SHA-256(0x00 || 32-byte block hash)), extension "
        "line 'careledger-head <hex block hash of block size-1>'; 'previous' is the "
        "checkpoint at size 1 and 'consistency' the RFC 9162 proof from it, in the text "
        "form of the careledger-consistency record header",
        "name": NOTE_NAME,
        "public_key": format_public_key(TEST_KEY.public_key),
        "origin": cp.origin,
        "size": cp.size,
        "block_hashes": _hex_list(hashes),
        "leaf_hashes": _hex_list(leaves),
        "root_hash": cp.root_hash.hex(),
        "head_hash": cp.head_hash.hex(),
        "body": format_checkpoint(cp),
        "note": note,
        "previous": {
            "size": old.size,
            "root_hash": old.root_hash.hex(),
            "body": format_checkpoint(old),
            "note": old_note,
        },
        "consistency": {
            "old_size": old.size,
            "new_size": cp.size,
            "proof": _hex_list(proof),
            "header": format_consistency(old.size, proof),
        },
    }


def test_key_doc() -> Doc:
    return {
        "description": "The fixed test key. NEVER use it for anything but tests.",
        "seed_rule": "SHA-256(b'careledger test key')",
        "seed": TEST_SEED.hex(),
        "public_key_raw": TEST_KEY.public_key.raw.hex(),
        "public_key": format_public_key(TEST_KEY.public_key),
        "key_id": TEST_KEY.key_id,
        "private_key_text": format_private_key(TEST_KEY),
        "other_key": {
            "seed_rule": "SHA-256(b'careledger other key')",
            "public_key": format_public_key(OTHER_KEY.public_key),
            "key_id": OTHER_KEY.key_id,
        },
    }
