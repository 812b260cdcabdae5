"""Interoperability: an unmodified litewitness (filippo.io/torchwood v0.6.1, built by
deploy/bootstrap.sh) and ``careledger witness`` cosign the same checkpoints of a log
built with careledger_core (RFC 6962 tree, consistency proofs, C2SP signed notes), our
verifier code accepts both cosignatures, and both refuse the same attacks.

No Kafka or ClickHouse: real processes on loopback only. Both witnesses run with the
same checks; where they answer differently the spec and the difference are named
(an unknown origin: 404 per C2SP tlog-witness, 403 from litewitness v0.6.1).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from careledger_core.checkpoint import sign_note
from careledger_core.signing import SigningKey
from careledger_core.witness import (
    WitnessKey,
    WitnessPolicy,
    attach_cosignatures,
    check_quorum,
    cosign,
    format_add_checkpoint,
    read_add_checkpoint_response,
    split_note,
    verify_cosignature,
    verify_fork,
)
from tests.witness_support import (
    Answer,
    LiteWitness,
    TestLog,
    WitnessProcess,
    careledger_witness,
    get,
    leaves,
    litewitness,
    litewitness_missing,
    post,
    seeded_key,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "witness"
OURS, THEIRS = "hospital-b.example/witness", "regulator.example/litewitness"


@dataclass
class Pair:
    log: TestLog
    ours: WitnessProcess
    theirs: LiteWitness
    our_key: SigningKey
    their_key: SigningKey

    def both(self, body: bytes) -> tuple[Answer, Answer]:
        return post(self.ours.port, body), post(self.theirs.port, body)

    @property
    def policy(self) -> WitnessPolicy:
        return WitnessPolicy(
            (
                WitnessKey(OURS, self.our_key.public_key),
                WitnessKey(THEIRS, self.their_key.public_key),
            ),
            2,
        )

    def evidence(self) -> list[dict[str, object]]:
        out = self.ours.cli("--evidence").stdout.splitlines()
        return [json.loads(line) for line in out if not line.startswith("#")]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    missing = litewitness_missing()
    assert missing is None, missing  # a missing tool is a failure, not a skip
    log = TestLog(
        "careledger.test/careledger.access-events/0",
        key=seeded_key("interop log"),
        extensions=("careledger-head " + "ab" * 32,),
    )
    log.grow(100)
    our_key, their_key = seeded_key("our witness"), seeded_key("their witness")
    with (
        careledger_witness(tmp_path / "ours", OURS, our_key, [log]) as ours,
        litewitness(tmp_path / "theirs", THEIRS, their_key, [log]) as theirs,
    ):
        yield Pair(log, ours, theirs, our_key, their_key)


def _lines(answer: Answer) -> tuple[str, ...]:
    return read_add_checkpoint_response(
        answer.status, answer.content_type, answer.body
    ).cosignatures


def test_both_witnesses_cosign_our_checkpoints_and_our_verifier_accepts_both(pair: Pair) -> None:
    log = pair.log
    sizes = [1, 2, 3, 8, 13, 64, 65, 100]
    old = 0
    for size in sizes:
        ours, theirs = pair.both(log.request(old, size))
        assert (ours.status, theirs.status) == (200, 200), (ours.body, theirs.body)
        note = attach_cosignatures(log.note(size), [*_lines(ours), *_lines(theirs)])
        result = check_quorum(note, pair.policy)
        assert result.met and set(result.cosigned) == {OURS, THEIRS}
        # litewitness's cosignature is exactly what our code makes with its key and time
        body, _ = split_note(note)
        their = result.cosigned[THEIRS]
        assert cosign(body, THEIRS, pair.their_key, their.timestamp).line == _lines(theirs)[0]
        old = size
    # the monitoring endpoint serves the latest cosigned checkpoint with both signatures
    served = get(pair.ours.port, f"/{hashlib.sha256(log.origin.encode()).hexdigest()}/checkpoint")
    assert served.status == 200
    assert served.body.decode().startswith(log.note(100).rsplit("\n", 2)[0])


def test_rollback_is_refused_by_both(pair: Pair) -> None:
    log = pair.log
    assert [a.status for a in pair.both(log.request(0, 40))] == [200, 200]
    # the log (or whoever replays its notes) shows an older, smaller checkpoint
    for old in (40, 0):
        ours, theirs = pair.both(format_add_checkpoint(old, (), log.note(20)))
        assert ours.status == theirs.status == (400 if old == 40 else 409)
    # a rolled-back log that rewrote from leaf 20 and grew past 40 has no proof from 40
    rewritten = log.leaves[:20] + leaves("rollback", 30)
    ours, theirs = pair.both(log.request(40, 50, rewritten))
    assert ours.status == theirs.status == 422
    [evidence] = pair.evidence()
    assert evidence["kind"] == "inconsistent" and evidence["status"] == "open"
    assert evidence["old_size"] == 40


def test_fork_is_refused_by_both_and_ours_keeps_the_evidence(pair: Pair) -> None:
    log = pair.log
    assert [a.status for a in pair.both(log.request(0, 30))] == [200, 200]
    fork = log.leaves[:25] + leaves("fork", 5)
    ours, theirs = pair.both(format_add_checkpoint(30, (), log.note(30, fork)))
    assert ours.status == theirs.status == 422
    [evidence] = pair.evidence()
    assert evidence["kind"] == "fork" and evidence["origin"] == log.origin
    keys = {log.origin: log.key.public_key}
    assert verify_fork(str(evidence["cosigned_note"]), str(evidence["presented_note"]), keys) == 30
    # ... and it survives a restart
    pair.ours.stop()
    pair.ours.start()
    assert [e["digest"] for e in pair.evidence()] == [evidence["digest"]]
    result = pair.ours.cli("--evidence")
    assert result.returncode == 1 and "1 open" in result.stdout


def test_split_view_gets_no_quorum(pair: Pair) -> None:
    """The log shows history A to our witness and history B (same size) to litewitness:
    each branch gets one cosignature, neither reaches the quorum of 2; then each witness
    refuses the other branch."""
    log = pair.log
    branch_b = log.leaves[:10] + leaves("split", 40)
    a, b = (
        post(pair.ours.port, log.request(0, 50)),
        post(pair.theirs.port, log.request(0, 50, branch_b)),
    )
    assert (a.status, b.status) == (200, 200)
    note_a = attach_cosignatures(log.note(50), _lines(a))
    note_b = attach_cosignatures(log.note(50, branch_b), _lines(b))
    assert not check_quorum(note_a, pair.policy).met
    assert not check_quorum(note_b, pair.policy).met
    ours = post(pair.ours.port, format_add_checkpoint(50, (), log.note(50, branch_b)))
    theirs = post(pair.theirs.port, format_add_checkpoint(50, (), log.note(50)))
    assert ours.status == theirs.status == 422
    assert [e["kind"] for e in pair.evidence()] == ["fork"]


def test_bad_proof_is_refused_by_both(pair: Pair) -> None:
    log = pair.log
    assert [a.status for a in pair.both(log.request(0, 16))] == [200, 200]
    proof = list(log.proof(16, 33))
    proof[-1] = bytes(32)
    ours, theirs = pair.both(format_add_checkpoint(16, proof, log.note(33)))
    assert ours.status == theirs.status == 422
    ours, theirs = pair.both(format_add_checkpoint(16, log.proof(16, 33)[:-1], log.note(33)))
    assert ours.status == theirs.status == 422
    assert [a.status for a in pair.both(log.request(16, 33))] == [200, 200]


def test_replayed_old_checkpoint_is_refused_by_both(pair: Pair) -> None:
    log = pair.log
    first = log.request(0, 10)
    assert [a.status for a in pair.both(first)] == [200, 200]
    assert [a.status for a in pair.both(log.request(10, 60))] == [200, 200]
    for replay in (first, log.request(10, 60)):
        ours, theirs = pair.both(replay)
        assert (ours.status, ours.body) == (theirs.status, theirs.body) == (409, b"60\n")
        assert ours.content_type == theirs.content_type == "text/x.tlog.size"
    assert pair.evidence() == []  # an old checkpoint of the same history is no evidence


def test_unknown_origin_is_refused_by_both(pair: Pair) -> None:
    stranger = TestLog("unknown.example/log", key=pair.log.key, leaves=pair.log.leaves)
    ours, theirs = pair.both(stranger.request(0, 5))
    assert ours.status == 404  # C2SP tlog-witness
    assert theirs.status == 403  # litewitness v0.6.1 ("unknown log")


def test_forged_log_signature_is_refused_by_both(pair: Pair) -> None:
    log = pair.log
    impostor = TestLog(log.origin, key=seeded_key("impostor"), leaves=log.leaves)
    ours, theirs = pair.both(impostor.request(0, 5))
    assert ours.status == theirs.status == 403
    # the log's name and key id, with a broken signature
    note = sign_note(log.body(5), log.origin, log.key)
    head, blob = note.rsplit(" ", 1)
    raw = bytearray(base64.b64decode(blob))
    raw[20] ^= 1
    forged = f"{head} {base64.b64encode(bytes(raw)).decode()}\n"
    ours, theirs = pair.both(format_add_checkpoint(0, (), forged))
    assert ours.status == theirs.status == 403
    assert [a.status for a in pair.both(log.request(0, 5))] == [200, 200]


def test_litewitness_test_vectors_against_careledger_witness(tmp_path: Path) -> None:
    """torchwood's own litewitness test requests, replayed over HTTP to our witness with
    the same witness key and log: the same answers as litewitness gave, and our
    cosignatures verify under litewitness's vkey."""
    doc = json.loads((FIXTURES / "litewitness-v0.6.1-add-checkpoint.json").read_text("utf-8"))
    key = SigningKey.from_seed(bytes.fromhex(doc["witness_seed"]))
    directory = tmp_path / "vectors"
    directory.mkdir()
    logs = directory / "logs.toml"
    logs.write_text(
        f'[[log]]\norigin = "{doc["log_origin"]}"\nkeys = ["{doc["log_vkey"]}"]\n', "utf-8"
    )
    w = WitnessProcess(directory, doc["witness_name"], key, logs)
    w.start()
    try:
        witness = WitnessKey.from_vkey(doc["witness_vkey"])
        for case in doc["cases"]:
            answer = post(w.port, case["request"].encode())
            assert answer.status == case["careledger_status"], case["request"][:40]
            if answer.status == 409:
                assert answer.body.decode() == case["litewitness_body"]
            if answer.status == 200:
                body, _ = split_note(case["request"].split("\n\n", 1)[1])
                verify_cosignature(body, answer.body.decode()[:-1], witness)
    finally:
        w.stop()
