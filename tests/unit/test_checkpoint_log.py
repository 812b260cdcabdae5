"""Checkpoint notes as the verifier takes them (no Kafka: ``CheckpointLog`` directly),
merging them with the verifier state, and fsck against a checkpoint's head (which has
no Kafka offsets). Reading the real topic: tests/integration/test_checkpoints.py."""

from __future__ import annotations

import base64
import hashlib

import pytest

from careledger_core.chain_tree import ChainTree, block_leaf_hash
from careledger_core.checkpoint import (
    CONSISTENCY_HEADER,
    Checkpoint,
    checkpoint_for,
    format_checkpoint,
    format_consistency,
    sign_note,
)
from careledger_core.findings import FindingCode
from careledger_core.signing import SigningKey
from producers.simulator import HospitalModel, simulate
from tests.unit.test_fsck import FakeReader, build_blocks, verify, where
from verifiers.integrity.checkpoints import CheckpointLog, merge_known
from verifiers.integrity.fsck import VerifiedHead

ORIGIN = "careledger.local"
KEY = SigningKey.from_seed(hashlib.sha256(b"careledger fsck test key").digest())  # = test_fsck
ROTATED = SigningKey.from_seed(hashlib.sha256(b"next year's key").digest())
STRANGER = SigningKey.from_seed(hashlib.sha256(b"a stranger").digest())
CHAIN = "careledger.local/careledger.access-events/0"
C = FindingCode


def note(
    size: int, root: bytes, key: SigningKey = KEY, chain: str = CHAIN, name: str | None = None
) -> bytes:
    """A checkpoint note signed under the chain id (as the processor signs them)."""
    body = format_checkpoint(Checkpoint(chain, size, root))
    return sign_note(body, chain if name is None else name, key).encode()


def root(n: int) -> bytes:
    return hashlib.sha256(b"block %d" % n).digest()


def new_log(*keys: SigningKey) -> CheckpointLog:
    return CheckpointLog(ORIGIN, tuple(k.public_key for k in keys or (KEY,)), topic="cp")


def feed(log: CheckpointLog, *values: bytes) -> CheckpointLog:
    for offset, value in enumerate(values, start=log.notes):
        log.add(value, key=CHAIN.encode(), partition=0, offset=offset)
    return log


def test_the_greatest_size_wins_whatever_the_order() -> None:
    log = feed(new_log(), note(3, root(2)), note(7, root(6)), note(5, root(4)))
    assert log.heads() == {CHAIN: VerifiedHead(6, root(6).hex(), None)}
    assert log.heads()[CHAIN].source == "checkpoint"
    assert log.counts()["verified"] == 3 and log.findings == []


def test_chains_are_kept_apart_and_an_empty_chain_names_no_head() -> None:
    other = "careledger.local/careledger.access-events/1"
    log = feed(new_log(), note(2, root(1)), note(4, root(3), chain=other), note(0, b"\0" * 32))
    assert {c: h.height for c, h in log.heads().items()} == {CHAIN: 1, other: 3}


def test_notes_named_after_the_deployment_origin_before_witnesses_still_count() -> None:
    log = feed(new_log(), note(2, root(1), name=ORIGIN), note(4, root(3)))
    assert log.heads()[CHAIN].height == 3
    assert log.counts()["verified"] == 2 and log.findings == []


def test_a_note_named_after_another_chain_is_not_trusted() -> None:
    other = "careledger.local/careledger.access-events/1"
    log = feed(new_log(), note(2, root(1)), note(9, root(8), name=other))
    assert log.heads()[CHAIN].height == 1
    assert log.counts()["untrusted"] == 1


def test_notes_without_a_trusted_signature_are_ignored_but_counted() -> None:
    log = feed(
        new_log(),
        note(2, root(1)),
        note(9, root(8), key=STRANGER),  # claims a longer chain
        b"not a note",
        b"\xff\xfe",
        sign_note(format_checkpoint(Checkpoint(CHAIN, 9, root(8))), "other.origin", KEY).encode(),
    )
    assert log.heads()[CHAIN].height == 1
    counts = log.counts()
    assert (counts["notes"], counts["verified"], counts["untrusted"], counts["malformed"]) == (
        5,
        1,
        2,
        2,
    )
    assert log.findings == []


def test_any_trusted_key_counts() -> None:
    log = feed(new_log(KEY, ROTATED), note(2, root(1)), note(3, root(2), key=ROTATED))
    assert log.heads()[CHAIN].height == 2 and log.counts()["verified"] == 2


def _break_signature(value: bytes) -> bytes:
    text = value.decode()
    body, _, line = text[:-1].rpartition("\n")
    name, blob = line.rsplit(" ", 1)
    raw = bytearray(base64.b64decode(blob))
    raw[-1] ^= 0x01
    return f"{body}\n{name} {base64.b64encode(bytes(raw)).decode()}\n".encode()


def test_a_failing_signature_by_a_trusted_key_is_a_finding_and_not_used() -> None:
    log = feed(new_log(), note(2, root(1)), _break_signature(note(9, root(8))))
    assert log.heads()[CHAIN].height == 1
    assert [(f.code, f.chain_id, f.height) for f in log.findings] == [
        (C.SIGNATURE_INVALID, CHAIN, 8)
    ]
    details = log.findings[0].details
    assert (details["source"], details["offset"], details["key_id"]) == (
        "checkpoint",
        1,
        KEY.key_id,
    )
    assert log.counts()["invalid"] == 1


def test_a_good_signature_does_not_excuse_a_failing_one() -> None:
    """Two lines, one verifies and one of another trusted key fails: not accepted."""
    good = note(4, root(3)).decode()
    bad_line = _break_signature(note(4, root(3), key=ROTATED)).decode().rsplit("\n", 2)[-2]
    both = f"{good}{bad_line}\n".encode()
    log = feed(new_log(KEY, ROTATED), both)
    assert log.heads() == {}
    assert [f.code for f in log.findings] == [C.SIGNATURE_INVALID]


def test_two_roots_at_one_size_are_a_fork_proof() -> None:
    log = feed(new_log(), note(5, root(4)), note(5, b"\x07" * 32), note(5, b"\x07" * 32))
    assert log.heads()[CHAIN].block_hash == root(4).hex()  # the first one seen is kept
    assert [(f.code, f.height) for f in log.findings] == [(C.HEIGHT_FORK, 4)]  # reported once
    fork = log.findings[0].details
    assert [b["block_hash"] for b in fork["blocks"]] == [root(4).hex(), "07" * 32]  # type: ignore[index]
    # Re-publishing the same checkpoint is not a fork.
    assert feed(new_log(), note(5, root(4)), note(5, root(4))).findings == []


def test_no_trusted_key_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        CheckpointLog(ORIGIN, ())


# --------------------------------------------------------------------------- merging


def test_merge_takes_the_higher_head_and_reports_a_disagreement() -> None:
    state = {
        "a": VerifiedHead(5, "aa" * 32, 100),
        "b": VerifiedHead(9, "bb" * 32, 200),
        "c": VerifiedHead(3, "cc" * 32, 50),
    }
    checkpoints = {
        "a": VerifiedHead(7, "a7" * 32, None, "checkpoint"),
        "b": VerifiedHead(4, "b4" * 32, None, "checkpoint"),
        "c": VerifiedHead(3, "c3" * 32, None, "checkpoint"),
        "d": VerifiedHead(0, "dd" * 32, None, "checkpoint"),
    }
    merged, findings = merge_known(state, checkpoints)
    assert merged["a"].source == "checkpoint" and merged["a"].height == 7
    assert merged["b"] is state["b"] and merged["c"] is state["c"]
    assert merged["d"] is checkpoints["d"]
    assert [(f.code, f.chain_id, f.height) for f in findings] == [(C.CHAIN_REWRITTEN, "c", 3)]
    assert findings[0].details == {
        "source": "checkpoint",
        "state_hash": "cc" * 32,
        "checkpoint_hash": "c3" * 32,
    }
    assert merge_known(state, checkpoints, report_disagreement=False)[1] == []


# --------------------------------------------------------------------------- fsck


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    from careledger_core.event import canonical_event_bytes

    model = HospitalModel(seed=3, staff=60, patients=300)
    return [canonical_event_bytes(e) for e in simulate(model, count=400, seed=3)]


def _checkpoint_head(blocks, height: int) -> VerifiedHead:  # type: ignore[no-untyped-def]
    tree = ChainTree.of_blocks(b.block_hash for b in blocks[: height + 1])
    cp = checkpoint_for(blocks[height].header, tree)
    return VerifiedHead(cp.height, cp.head_hash.hex(), None, "checkpoint")


def test_fsck_against_a_checkpoint_head(payloads: list[bytes]) -> None:
    blocks = build_blocks(payloads)
    known = _checkpoint_head(blocks, 4)
    report = verify(FakeReader(blocks), known_head=known)
    assert report.findings == [] and report.known == known
    # The head it reports is the stored one, with its offsets.
    assert report.head is not None and report.head.last_offset == 99
    truncated = verify(FakeReader(blocks[:3]), known_head=known)
    assert where(truncated) == {("CHAIN_TRUNCATED", 3, None)}
    finding = truncated.findings[0]
    assert finding.details["known_source"] == "checkpoint"
    assert "signed checkpoint" in finding.message


def test_fsck_links_on_from_a_checkpoint_head_without_offsets(payloads: list[bytes]) -> None:
    """A rewritten block at the checkpoint's height: the next block is linked to the
    checkpoint's hash (it matches: the genuine successor) but offsets are not checked."""
    blocks = build_blocks(payloads)
    other = build_blocks(payloads[:40] + payloads[200:], blocks=5)
    known = _checkpoint_head(blocks, 2)
    mixed = [*blocks[:2], other[2], *blocks[3:]]
    report = verify(FakeReader(mixed), known_head=known)
    assert where(report) == {("CHAIN_REWRITTEN", 2, None)}
    # Incremental from the checkpoint's height: only the new blocks are read.
    report = verify(FakeReader(blocks), from_height=3, known_head=known)
    assert report.findings == [] and report.blocks == 2


def test_checkpoints_of_another_pipeline_sharing_the_topic_are_ignored() -> None:
    # A benchmark or a second events topic may publish to the same checkpoints
    # topic with the same key: its chains are not ours and must not be reported
    # as truncated here.
    log = CheckpointLog(
        ORIGIN, (KEY.public_key,), topic="cp", chain_prefix=f"{ORIGIN}/careledger.access-events/"
    )
    feed(log, note(3, root(2)), note(9, root(8), chain=f"{ORIGIN}/bench-events/0"))
    assert set(log.heads()) == {CHAIN}
    assert log.counts()["foreign"] == 1 and log.findings == []


# --------------------------------------------------------------------------- trees (ADR 0012)


def block_hashes(n: int, salt: bytes = b"") -> list[bytes]:
    return [hashlib.sha256(salt + b"block %d" % i).digest() for i in range(n)]


def tree_note(hashes: list[bytes], size: int, key: SigningKey = KEY, chain: str = CHAIN) -> bytes:
    tree = ChainTree.of_blocks(hashes[:size])
    cp = Checkpoint(chain, size, tree.root, (f"careledger-head {hashes[size - 1].hex()}",))
    return sign_note(format_checkpoint(cp), ORIGIN, key).encode()


def proof_header(hashes: list[bytes], old: int, new: int) -> list[tuple[str, bytes]]:
    tree = ChainTree.of_blocks(hashes[:old])
    proof = tree.consistency_proof([block_leaf_hash(h) for h in hashes[old:new]])
    return [(CONSISTENCY_HEADER, format_consistency(old, proof).encode())]


def feed_tree(log: CheckpointLog, hashes: list[bytes], sizes: list[int]) -> CheckpointLog:
    """Checkpoints at ``sizes`` in order, each with a proof from the one before."""
    previous = 0
    for size in sizes:
        log.add(
            tree_note(hashes, size),
            key=CHAIN.encode(),
            partition=0,
            offset=log.notes,
            headers=proof_header(hashes, previous, size),
        )
        previous = size
    return log


def test_tree_checkpoints_with_proofs_from_the_previous_one_verify() -> None:
    hashes = block_hashes(12)
    log = feed_tree(new_log(), hashes, [1, 2, 5, 8, 12])
    assert log.findings == []
    counts = log.counts()
    assert (counts["proofs_verified"], counts["proofs_unusable"], counts["legacy"]) == (5, 0, 0)
    assert log.heads() == {CHAIN: VerifiedHead(11, hashes[11].hex(), None)}
    assert [s.size for s in log.tree_checkpoints()[CHAIN]] == [1, 2, 5, 8, 12]


def test_forged_checkpoint_not_consistent_with_the_previous_is_a_finding() -> None:
    """The key holder signs a size-9 checkpoint of a history rewritten from block 3 and
    attaches the honest proof of *its* tree from size 5: it leads to its root, from
    another root at size 5 than the one signed before."""
    hashes = block_hashes(9)
    forged = hashes[:3] + block_hashes(6, b"forged")
    log = feed_tree(new_log(), hashes, [2, 5])
    log.add(
        tree_note(forged, 9),
        key=CHAIN.encode(),
        partition=0,
        offset=2,
        headers=proof_header(forged, 5, 9),
    )
    assert [(f.code, f.chain_id, f.height) for f in log.findings] == [
        (C.CHECKPOINT_INCONSISTENT, CHAIN, 8)
    ]
    details = log.findings[0].details
    assert details["older"]["size"] == 5 and details["newer"]["size"] == 9  # type: ignore[index]
    assert details["newer_tree_root_at_older_size"] == ChainTree.of_blocks(forged[:5]).root.hex()
    assert log.counts()["inconsistent"] == 1


def test_a_proof_that_does_not_reach_the_new_root_proves_nothing() -> None:
    """The header is not signed: anyone who can write to the topic can attach garbage to a
    copy of a genuine note. That must not become a finding."""
    hashes = block_hashes(9)
    log = feed_tree(new_log(), hashes, [5])
    garbage = [(CONSISTENCY_HEADER, format_consistency(5, [b"\x01" * 32] * 3).encode())]
    for headers in (garbage, [(CONSISTENCY_HEADER, b"old x\n")], [(CONSISTENCY_HEADER, b"\xff")]):
        log.add(tree_note(hashes, 9), key=None, partition=0, offset=log.notes, headers=headers)
    assert log.findings == []
    assert log.counts()["proofs_unusable"] == 3


def test_a_proof_waits_for_a_late_checkpoint_at_its_old_size() -> None:
    """After a rebalance a late checkpoint of the old owner can land after the new
    owner's first one, whose proof starts from it."""
    hashes = block_hashes(10)
    log = new_log()
    log.add(
        tree_note(hashes, 4), key=None, partition=0, offset=0, headers=proof_header(hashes, 0, 4)
    )
    log.add(
        tree_note(hashes, 10), key=None, partition=0, offset=1, headers=proof_header(hashes, 7, 10)
    )
    assert log.counts()["proofs_pending"] == 1
    log.add(
        tree_note(hashes, 7), key=None, partition=0, offset=2, headers=proof_header(hashes, 4, 7)
    )
    counts = log.counts()
    assert (counts["proofs_pending"], counts["proofs_verified"]) == (0, 3)
    assert log.findings == [] and log.heads()[CHAIN].height == 9


def test_two_tree_roots_at_one_size_are_a_fork() -> None:
    hashes, other = block_hashes(6), block_hashes(6, b"other")
    log = new_log()
    for i, note_bytes in enumerate((tree_note(hashes, 6), tree_note(other, 6))):
        log.add(note_bytes, key=None, partition=0, offset=i)
    assert [(f.code, f.height) for f in log.findings] == [(C.HEIGHT_FORK, 5)]
    assert log.findings[0].details["kept_root"] == ChainTree.of_blocks(hashes).root.hex()


def test_a_legacy_checkpoint_and_a_tree_checkpoint_of_one_head_agree() -> None:
    """Upgrading: the chain's old notes name the head by its hash, new ones by the tree."""
    hashes = block_hashes(6)
    log = feed(new_log(), note(6, hashes[5]))
    log.add(tree_note(hashes, 6), key=None, partition=0, offset=1)
    assert log.findings == [] and log.counts()["legacy"] == 1
    assert log.heads()[CHAIN].block_hash == hashes[5].hex()
    assert [s.size for s in log.tree_checkpoints()[CHAIN]] == [6]


def test_a_remembered_checkpoint_is_a_head_and_its_absence_a_finding() -> None:
    hashes = block_hashes(8)
    remembered = tree_note(hashes, 8).decode()
    log = new_log()
    assert log.remember(remembered, partition=0, offset=7)
    assert not log.remember("not a note", partition=0, offset=8)
    assert not log.remember(tree_note(hashes, 8, key=STRANGER).decode(), partition=0, offset=9)
    log.records_missing(0, 8)
    log.check_remembered({0: (8, 8)})  # DeleteRecords up to offset 8: the topic is empty
    assert log.heads()[CHAIN].height == 7
    assert [(f.code, f.chain_id, f.height) for f in log.findings] == [
        (C.CHECKPOINTS_MISSING, "cp", None),
        (C.CHECKPOINTS_MISSING, CHAIN, 7),
    ]
    assert "below the log start offset 8" in log.findings[1].message
    counts = log.counts()
    assert (counts["remembered"], counts["missing"], counts["notes"]) == (1, 2, 0)


def test_a_remembered_checkpoint_still_in_the_topic_is_no_finding() -> None:
    hashes = block_hashes(8)
    log = new_log()
    log.remember(tree_note(hashes, 8).decode(), partition=0, offset=1)
    log.add(tree_note(hashes, 4), key=None, partition=0, offset=0)
    log.add(tree_note(hashes, 8), key=None, partition=0, offset=1)
    log.check_remembered({0: (0, 2)})
    assert log.findings == []
    # The same position holding another note: the topic was recreated and refilled.
    other = new_log()
    other.remember(tree_note(hashes, 8).decode(), partition=0, offset=1)
    other.add(tree_note(hashes, 4), key=None, partition=0, offset=1)
    other.check_remembered({0: (0, 2)})
    assert [f.code for f in other.findings] == [C.CHECKPOINTS_MISSING]
    assert "replaced by another record" in other.findings[0].message
