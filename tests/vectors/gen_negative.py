"""Negative vectors (``negative/``): one file per thing an attacker (or a bug) can break,
each naming the error a verifier must raise."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable
from typing import Any

from careledger_core import (
    EVENT_SCHEMA,
    GENESIS_PREV_HASH,
    SIGNING_CONTEXT,
    BlockHeader,
    MerkleTree,
    format_public_key,
    header_bytes,
    node_hash,
    sign_note,
)
from tests.vectors.gen_chain import checkpoint_note, genesis_header
from tests.vectors.gen_common import (
    NOTE_NAME,
    OTHER_KEY,
    TEST_KEY,
    Doc,
    _hex_list,
    _wire,
    merkle_leaves,
)
from tests.vectors.gen_events import ASCII_EVENT


def _flip(hex_text: str, byte: int = 0, bit: int = 0) -> str:
    raw = bytearray(bytes.fromhex(hex_text))
    raw[byte] ^= 1 << bit
    return raw.hex()


def _neg(description: str, check: str, error: str, code: str, **inputs: Any) -> Doc:
    return {"description": description, "check": check, "error": error, "code": code, **inputs}


def _event_neg(description: str, data: bytes, field: str, reason: str) -> Doc:
    doc = _neg(description, "decode_event", "EventValidationError", "EVENT_INVALID")
    doc["input_hex"] = data.hex()
    with contextlib.suppress(UnicodeDecodeError):
        doc["input"] = data.decode("utf-8")
    doc["field"] = field
    doc["reason_contains"] = reason
    return doc


def _header_neg(description: str, data: bytes, field: str) -> Doc:
    doc = _neg(description, "decode_header", "HeaderValidationError", "BLOCK_HEADER_INVALID")
    doc["header_bytes"] = data.decode("utf-8")
    doc["header_hex"] = data.hex()
    doc["field"] = field
    return doc


def negative_docs() -> dict[str, Doc]:
    tree = MerkleTree(merkle_leaves(9))
    idx = 5
    proof = _hex_list(tree.inclusion_proof(idx))
    inc: Doc = {
        "leaf_index": idx,
        "tree_size": 9,
        "leaf_hash": tree.leaf(idx).hex(),
        "proof": proof,
        "root": tree.root.hex(),
    }
    pe = "ProofError"
    pc = "PROOF_INVALID"
    vi = "verify_inclusion"
    out: dict[str, Doc] = {
        "wrong-leaf": _neg(
            "a different leaf hash with the right proof",
            vi,
            pe,
            pc,
            **dict(inc, leaf_hash=tree.leaf(idx + 1).hex()),
        ),
        "wrong-index": _neg(
            "the right proof presented for a neighbouring index",
            vi,
            pe,
            pc,
            **dict(inc, leaf_index=idx - 1),
        ),
        "index-beyond-tree-size": _neg(
            "leaf index >= tree size",
            vi,
            pe,
            pc,
            **dict(inc, leaf_index=9),
        ),
        "flipped-bit-in-proof": _neg(
            "one bit of one proof hash flipped",
            vi,
            pe,
            pc,
            **dict(inc, proof=[proof[0], _flip(proof[1], 7, 3), *proof[2:]]),
        ),
        "truncated-proof": _neg(
            "last proof hash removed",
            vi,
            pe,
            pc,
            **dict(inc, proof=proof[:-1]),
        ),
        "extended-proof": _neg(
            "an extra hash appended to a valid proof",
            vi,
            pe,
            pc,
            **dict(inc, proof=[*proof, proof[0]]),
        ),
        "wrong-root": _neg(
            "valid proof against another tree's root",
            vi,
            pe,
            pc,
            **dict(inc, root=MerkleTree(merkle_leaves(8)).root.hex()),
        ),
        "wrong-tree-size": _neg(
            "valid proof with a tree size whose audit path has another shape (sizes whose "
            "paths have the same shape cannot be told apart by the proof: the size must be "
            "authenticated together with the root, as block headers and checkpoints do)",
            vi,
            pe,
            pc,
            **dict(inc, tree_size=8),
        ),
    }
    # second preimage: present the two children of an interior node as one leaf
    two = merkle_leaves(2)
    out["second-preimage-node-as-leaf"] = _neg(
        "leaf data = left || right of the root of a 2-leaf tree, claimed as the single "
        "leaf of a 1-leaf tree with that root; the 0x00/0x01 prefixes make it fail",
        vi,
        pe,
        pc,
        leaf_data_hex=(two[0] + two[1]).hex(),
        leaf_index=0,
        tree_size=1,
        proof=[],
        root=node_hash(two[0], two[1]).hex(),
    )
    # CVE-2012-2459: a duplicated last leaf must not give the same root
    three = merkle_leaves(3)
    out["duplicated-last-leaf"] = _neg(
        "the 4-leaf list [l0, l1, l2, l2] must not share the root of [l0, l1, l2] "
        "(odd node promoted, not duplicated: CVE-2012-2459)",
        vi,
        pe,
        pc,
        leaf_index=3,
        tree_size=4,
        leaf_hash=three[2].hex(),
        proof=_hex_list(MerkleTree([*three, three[2]]).inclusion_proof(3)),
        root=MerkleTree(three).root.hex(),
    )

    big = MerkleTree(merkle_leaves(9))
    cons: Doc = {
        "old_size": 6,
        "new_size": 9,
        "old_root": MerkleTree(merkle_leaves(6)).root.hex(),
        "new_root": big.root.hex(),
        "proof": _hex_list(big.consistency_proof(6)),
    }
    vc = "verify_consistency"
    out["consistency-flipped-bit-in-proof"] = _neg(
        "one bit of a consistency proof hash flipped",
        vc,
        pe,
        pc,
        **dict(cons, proof=[_flip(cons["proof"][0], 0, 0), *cons["proof"][1:]]),
    )
    out["consistency-truncated-proof"] = _neg(
        "last consistency proof hash removed", vc, pe, pc, **dict(cons, proof=cons["proof"][:-1])
    )
    out["consistency-wrong-old-root"] = _neg(
        "old root of a different tree (history rewritten)",
        vc,
        pe,
        pc,
        **dict(cons, old_root=MerkleTree(merkle_leaves(7)[1:]).root.hex()),
    )
    out["consistency-wrong-new-root"] = _neg(
        "new root of a different tree", vc, pe, pc, **dict(cons, new_root=_flip(cons["new_root"]))
    )
    out["consistency-shrinking-tree"] = _neg(
        "new size smaller than old size (truncation)",
        vc,
        pe,
        pc,
        **dict(cons, old_size=9, new_size=6, old_root=cons["new_root"], new_root=cons["old_root"]),
    )

    # block signatures
    gh = genesis_header()
    hb = header_bytes(gh)
    sig = TEST_KEY.sign_header(gh).hex()
    trusted = [format_public_key(TEST_KEY.public_key)]
    vb = "verify_block_signature"
    se, sc = "SignatureError", "SIGNATURE_INVALID"
    other_header = genesis_header(OTHER_KEY)
    out["signature-by-unknown-key"] = _neg(
        "a well-formed block signed by a key the verifier does not trust",
        vb,
        "UnknownKeyError",
        "KEY_UNKNOWN",
        header_hex=header_bytes(other_header).hex(),
        signature=OTHER_KEY.sign_header(other_header).hex(),
        trusted_keys=trusted,
    )
    out["signature-by-other-key-claiming-test-key-id"] = _neg(
        "header names the trusted key id but was signed by another key",
        vb,
        se,
        sc,
        header_hex=hb.hex(),
        signature=OTHER_KEY.sign(SIGNING_CONTEXT + hb).hex(),
        trusted_keys=trusted,
    )
    out["flipped-bit-in-signature"] = _neg(
        "one bit of the signature flipped",
        vb,
        se,
        sc,
        header_hex=hb.hex(),
        signature=_flip(sig, 10, 1),
        trusted_keys=trusted,
    )
    out["truncated-signature"] = _neg(
        "signature missing its last byte",
        vb,
        se,
        sc,
        header_hex=hb.hex(),
        signature=sig[:-2],
        trusted_keys=trusted,
    )
    out["signature-without-context"] = _neg(
        "signature over the header bytes without the 'careledger-block-v1\\n' prefix",
        vb,
        se,
        sc,
        header_hex=hb.hex(),
        signature=TEST_KEY.sign(hb).hex(),
        trusted_keys=trusted,
    )
    changed = BlockHeader(**{**_fields(gh), "created_at": "2024-06-15T08:00:02.000001Z"})
    out["header-field-changed"] = _neg(
        "created_at moved by one microsecond after signing; the header is still valid",
        vb,
        se,
        sc,
        header_hex=header_bytes(changed).hex(),
        signature=sig,
        trusted_keys=trusted,
    )
    changed_root = BlockHeader(**{**_fields(gh), "merkle_root": _flip(gh.merkle_root)})
    out["header-merkle-root-changed"] = _neg(
        "merkle_root changed after signing (events swapped)",
        vb,
        se,
        sc,
        header_hex=header_bytes(changed_root).hex(),
        signature=sig,
        trusted_keys=trusted,
    )

    # header decoding
    text = hb.decode("utf-8")
    out["non-canonical-header"] = _header_neg(
        "the signed header with a space after each colon: same JSON, other bytes",
        text.replace('":', '": ').encode(),
        "$",
    )
    out["header-members-reordered"] = _header_neg(
        "members in declaration instead of sorted order",
        json.dumps(_fields(gh), separators=(",", ":")).encode(),
        "$",
    )
    out["header-duplicate-member"] = _header_neg(
        "a second 'height' member (parsers disagree on which wins)",
        text.replace('"height":0,', '"height":0,"height":0,').encode(),
        "$",
    )
    out["header-unknown-field"] = _header_neg(
        "an extra member",
        text.replace('{"absent_offsets"', '{"a":1,"absent_offsets"').encode(),
        "a",
    )
    out["header-offsets-unaccounted"] = _header_neg(
        "last_offset one higher: an offset that is neither event, dead letter nor absent",
        text.replace('"last_offset":5', '"last_offset":6').encode(),
        "event_count",
    )
    out["header-genesis-with-prev-hash"] = _header_neg(
        "height 0 with a non-zero prev_hash",
        text.replace(GENESIS_PREV_HASH, "1" * 64).encode(),
        "prev_hash",
    )
    out["header-uppercase-hex"] = _header_neg(
        "merkle_root in uppercase hex",
        text.replace(gh.merkle_root, gh.merkle_root.upper()).encode(),
        "merkle_root",
    )
    out["header-float-height"] = _header_neg(
        "height written as 0.0",
        text.replace('"height":0', '"height":0.0').encode(),
        "height",
    )

    # events
    base = _wire(ASCII_EVENT)

    def mutate(fn: Callable[[Doc], None]) -> bytes:
        doc = json.loads(base)
        fn(doc)
        return _wire(doc)

    out["event-with-unknown-field"] = _event_neg(
        "an extra member in actor",
        mutate(lambda d: d["actor"].update(badge="x")),
        "actor.badge",
        "unknown field",
    )
    out["event-with-null-optional-field"] = _event_neg(
        "null instead of omitting an optional field",
        mutate(lambda d: d.update(session_ref=None)),
        "session_ref",
        "null",
    )
    out["event-with-duplicate-member"] = _event_neg(
        "patient appears twice (first one is what a different parser would see)",
        base.replace(b'"patient":', b'"patient":{"id":"p-other"},"patient":'),
        "patient",
        "duplicate",
    )
    out["event-missing-required-field"] = _event_neg(
        "no patient",
        mutate(lambda d: d.pop("patient")),
        "patient",
        "missing",
    )
    out["event-bad-uuid"] = _event_neg(
        "uppercase UUID",
        mutate(lambda d: d.update(event_id=d["event_id"].upper())),
        "event_id",
        "UUID",
    )
    out["event-timestamp-without-microseconds"] = _event_neg(
        "3 fraction digits",
        mutate(lambda d: d.update(occurred_at="2024-03-01T12:34:56.123Z")),
        "occurred_at",
        "6 fraction digits",
    )
    out["event-impossible-date"] = _event_neg(
        "February 30th",
        mutate(lambda d: d.update(occurred_at="2024-02-30T00:00:00.000000Z")),
        "occurred_at",
        "calendar",
    )
    out["event-bad-outcome"] = _event_neg(
        "outcome 1 is not an audit-event-outcome code",
        mutate(lambda d: d.update(outcome=1)),
        "outcome",
        "0, 4, 8, 12",
    )
    out["event-float-outcome"] = _event_neg(
        "outcome 0.0 (no floats anywhere)",
        base.replace(b'"outcome":0', b'"outcome":0.0'),
        "outcome",
        "int",
    )
    out["event-source-type-out-of-range"] = _event_neg(
        "source.type 10",
        mutate(lambda d: d["source"].update(type=10)),
        "source.type",
        "range",
    )
    out["event-wrong-schema"] = _event_neg(
        "schema of another version",
        mutate(lambda d: d.update(schema="careledger.access-event/2")),
        "schema",
        EVENT_SCHEMA,
    )
    out["event-lone-surrogate"] = _event_neg(
        "a lone UTF-16 surrogate escape in actor.name",
        base.replace(b"Dr. Jane Roe", b"Dr. \\ud800 Roe"),
        "actor.name",
        "surrogate",
    )
    out["event-invalid-utf8"] = _event_neg(
        "a byte that is not UTF-8 inside a string",
        base.replace(b"Jane", b"J\xffne"),
        "$",
        "UTF-8",
    )
    out["event-not-an-object"] = _event_neg(
        "a JSON array at the top level",
        b"[" + base + b"]",
        "$",
        "object",
    )

    # checkpoints
    _, note = checkpoint_note()
    verifiers = {NOTE_NAME: format_public_key(TEST_KEY.public_key)}
    on = "open_note"
    body, sigline = note.split("\n\n")
    name_part, blob = sigline.rstrip("\n").rsplit(" ", 1)
    raw_blob = bytearray(base64.b64decode(blob))
    raw_blob[20] ^= 0x04
    out["checkpoint-flipped-bit-in-signature"] = _neg(
        "one bit of the note signature flipped",
        on,
        se,
        sc,
        note=f"{body}\n\n{name_part} {base64.b64encode(bytes(raw_blob)).decode()}\n",
        verifiers=verifiers,
    )
    lines = body.split("\n")
    older = "\n".join([lines[0], str(int(lines[1]) - 1), *lines[2:]])
    out["checkpoint-size-changed"] = _neg(
        "size decremented after signing (truncation hidden)",
        on,
        se,
        sc,
        note=f"{older}\n\n{sigline}",
        verifiers=verifiers,
    )
    out["checkpoint-signed-by-unknown-key"] = _neg(
        "same checkpoint signed by another key under the same name",
        on,
        "NoteUnverifiedError",
        "NOTE_UNVERIFIED",
        note=sign_note(body + "\n", NOTE_NAME, OTHER_KEY),
        verifiers=verifiers,
    )
    out["checkpoint-missing-blank-line"] = _neg(
        "no blank line between text and signatures",
        on,
        "CheckpointError",
        "CHECKPOINT_INVALID",
        note=f"{body}\n{sigline}",
        verifiers=verifiers,
    )
    return out


def _fields(h: BlockHeader) -> Doc:
    # event_offsets (ADR 0014), the append times (ADR 0015) and event_records (ADR 0020)
    # are absent from headers that do not carry them
    optional = ("event_offsets", "first_append_time", "last_append_time", "event_records")
    return {
        f: getattr(h, f)
        for f in h.__struct_fields__
        if f not in optional or getattr(h, f) is not None
    }
