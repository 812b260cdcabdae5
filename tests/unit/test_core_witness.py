"""careledger_core.witness: C2SP tlog-cosignature/v1 and tlog-witness, against published
vectors, against litewitness's own answers, and against the attacks a witness exists for.

Fixtures (tests/fixtures/witness): ``spec-examples.json`` (examples of the C2SP specs and
sigsum-go, byte for byte) and ``litewitness-v0.6.1-add-checkpoint.json`` (torchwood's
litewitness test requests with the answers an unmodified litewitness v0.6.1 gave).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from careledger_core.checkpoint import open_note, sign_note
from careledger_core.errors import CheckpointError, KeyFormatError, SignatureError
from careledger_core.hashing import EMPTY_ROOT
from careledger_core.signing import SigningKey
from careledger_core.witness import (
    AddCheckpointRefused,
    CosignedState,
    EvidenceKind,
    Status,
    WitnessKey,
    WitnessPolicy,
    WitnessRequestError,
    attach_cosignatures,
    check_quorum,
    cosign,
    cosignature_message,
    decide,
    examine,
    format_add_checkpoint,
    log_key_from_vkey,
    parse_add_checkpoint,
    parse_cosignature_lines,
    read_add_checkpoint_response,
    split_note,
    verify_cosignature,
    verify_fork,
)
from tests.witness_support import TestLog, leaves, seeded_key

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "witness"
SPEC = json.loads((FIXTURES / "spec-examples.json").read_text(encoding="utf-8"))
LITE = json.loads((FIXTURES / "litewitness-v0.6.1-add-checkpoint.json").read_text("utf-8"))
NOW = 1_700_000_000
ORIGIN = "careledger.test/careledger.access-events/0"


def lite_key() -> SigningKey:
    return SigningKey.from_seed(bytes.fromhex(LITE["witness_seed"]))


def lite_logs() -> dict[str, Any]:
    name, key = log_key_from_vkey(LITE["log_vkey"])
    return {LITE["log_origin"]: {name: key}}


class MemoryWitness:
    """decide() over an in-memory history: the witness without its database."""

    def __init__(self, logs: Any, name: str = "w.example/w", key: SigningKey | None = None):
        self.logs, self.name = logs, name
        self.key = key or seeded_key("memory witness")
        self.history: dict[str, dict[int, CosignedState]] = {}
        self.evidence: list[Any] = []

    def submit(self, data: bytes) -> tuple[int, str]:
        try:
            sub = examine(data, self.logs)
        except AddCheckpointRefused as exc:
            return exc.status, ""
        hist = self.history.setdefault(sub.origin, {})
        latest = hist[max(hist)] if hist else None
        d = decide(sub, latest, hist.get(sub.checkpoint.size))
        if d.evidence is not None:
            self.evidence.append(d.evidence)
        if d.new_state is not None:
            hist[d.new_state.size] = d.new_state
            return d.status, cosign(sub.body, self.name, self.key, NOW).line
        return d.status, str(d.latest_size) if d.latest_size is not None else ""


# --------------------------------------------------------------- published vectors


def test_cosignatures_are_byte_for_byte_those_of_litewitness() -> None:
    key = lite_key()
    witness = WitnessKey(LITE["witness_name"], key.public_key)
    assert witness.vkey == LITE["witness_vkey"]  # the vkey litewitness printed
    cosigned = [c for c in LITE["cases"] if c["litewitness_status"] == 200]
    assert len(cosigned) == 3
    for case in cosigned:
        body, _ = split_note(case["request"].split("\n\n", 1)[1])
        line = case["litewitness_body"][:-1]
        theirs = verify_cosignature(body, line, witness)
        ours = cosign(body, LITE["witness_name"], key, theirs.timestamp)
        assert ours.line == line
        assert ours == theirs


def test_log_and_witness_vkeys_match_litewitness_and_the_signed_note_example() -> None:
    name, key = log_key_from_vkey(LITE["log_vkey"])
    assert name == LITE["log_origin"]
    example = SPEC["signed_note_vkey"]
    name, key = log_key_from_vkey(example["vkey"])
    assert open_note(example["note"], {name: key}) == "This is an example message.\n"
    with pytest.raises(KeyFormatError):  # a log vkey is not a witness vkey
        WitnessKey.from_vkey(example["vkey"])
    with pytest.raises(KeyFormatError):  # and the key id must match
        log_key_from_vkey(example["vkey"].replace("+530d903a+", "+530d903b+"))


@pytest.mark.parametrize("which", ["cosignature_message_c2sp", "cosignature_message_sigsum"])
def test_cosigned_message_is_the_published_layout(which: str) -> None:
    vector = SPEC[which]
    assert cosignature_message(vector["body"], vector["timestamp"]) == vector["message"].encode()


def test_the_spec_example_request_and_response_parse() -> None:
    example = SPEC["tlog_witness_request"]
    req = parse_add_checkpoint(example["body"].encode())
    assert req.old_size == example["old_size"] and len(req.proof) == example["proof_lines"]
    assert format_add_checkpoint(req.old_size, req.proof, req.note) == example["body"].encode()
    response = SPEC["tlog_witness_response"]
    answer = read_add_checkpoint_response(200, "text/plain", response["body"].encode())
    assert answer.cosigned and len(answer.cosignatures) == response["lines"]


def test_litewitness_test_requests_get_the_answers_of_the_spec() -> None:
    witness = MemoryWitness(lite_logs())
    got = [witness.submit(c["request"].encode()) for c in LITE["cases"]]
    assert [s for s, _ in got] == [c["careledger_status"] for c in LITE["cases"]]
    # the 409 bodies are the latest cosigned size, as litewitness answered
    for (status, body), case in zip(got, LITE["cases"], strict=True):
        if status == 409:
            assert body + "\n" == case["litewitness_body"]


# ---------------------------------------------------------------- cosignatures


def _log(extensions: tuple[str, ...] = ()) -> TestLog:
    lg = TestLog(ORIGIN, extensions=extensions)
    lg.grow(10)
    return lg


@pytest.mark.parametrize(
    "tamper",
    [
        lambda b: b.replace("\n10\n", "\n11\n"),
        lambda b: b.replace(b.split("\n")[2], base64.b64encode(EMPTY_ROOT).decode()),
        lambda b: b.replace("careledger-head 00", "careledger-head 01"),
    ],
    ids=["size", "root", "extension-line"],
)
def test_cosignature_moved_to_another_checkpoint_does_not_verify(tamper: Any) -> None:
    lg = _log(extensions=("careledger-head " + "00" * 32,))
    key = seeded_key("w")
    body = lg.body(10)
    line = cosign(body, "w.example/w", key, NOW).line
    witness = WitnessKey("w.example/w", key.public_key)
    assert verify_cosignature(body, line, witness).timestamp == NOW
    with pytest.raises(SignatureError):
        verify_cosignature(tamper(body), line, witness)


def test_cosignature_with_a_rewritten_timestamp_does_not_verify() -> None:
    key, body = seeded_key("w"), _log().body(10)
    blob = bytearray(base64.b64decode(cosign(body, "w.example/w", key, NOW).line.split(" ")[2]))
    blob[11] ^= 1
    line = "\u2014 w.example/w " + base64.b64encode(bytes(blob)).decode()
    with pytest.raises(SignatureError):
        verify_cosignature(body, line, WitnessKey("w.example/w", key.public_key))


def test_cosignature_dated_in_the_future_is_refused_when_the_time_is_known() -> None:
    key, body = seeded_key("w"), _log().body(10)
    line = cosign(body, "w.example/w", key, NOW + 3600).line
    witness = WitnessKey("w.example/w", key.public_key)
    verify_cosignature(body, line, witness)
    with pytest.raises(SignatureError):
        verify_cosignature(body, line, witness, now=NOW)


def test_a_witness_never_signs_with_timestamp_zero() -> None:
    with pytest.raises(CheckpointError):
        cosign(_log().body(10), "w.example/w", seeded_key("w"), 0)


# ---------------------------------------------------------------- quorum


def _policy(n: int, quorum: int) -> tuple[WitnessPolicy, list[SigningKey]]:
    keys = [seeded_key(f"witness {i}") for i in range(n)]
    witnesses = tuple(WitnessKey(f"w{i}.example/w", k.public_key) for i, k in enumerate(keys))
    return WitnessPolicy(witnesses, quorum), keys


def _cosigned(note: str, keys: list[SigningKey], which: list[int]) -> str:
    body, _ = split_note(note)
    return attach_cosignatures(
        note, [cosign(body, f"w{i}.example/w", keys[i], NOW + i).line for i in which]
    )


def test_quorum_counts_each_witness_once() -> None:
    policy, keys = _policy(3, 2)
    note = _log().note(10)
    one = _cosigned(note, keys, [0])
    body, lines = split_note(one)
    duplicated = body + "\n" + "".join(f"{ln}\n" for ln in (*lines, lines[-1]))
    assert not check_quorum(duplicated, policy).met  # the same line twice is one witness
    assert check_quorum(_cosigned(note, keys, [0, 2]), policy).met
    result = check_quorum(_cosigned(note, keys, [1]), policy)
    assert not result.met and set(result.missing) == {"w0.example/w", "w2.example/w"}


def test_forged_cosignature_under_a_witness_name_and_key_id_is_invalid() -> None:
    policy, keys = _policy(3, 2)
    note = _log().note(10)
    body, _ = split_note(note)
    forger = seeded_key("forger")
    real = cosign(body, "w1.example/w", keys[1], NOW)
    forged = cosign(body, "w1.example/w", forger, NOW)
    line = "\u2014 w1.example/w " + base64.b64encode(
        real.key_hash + NOW.to_bytes(8, "big") + forged.signature
    ).decode("ascii")
    result = check_quorum(attach_cosignatures(_cosigned(note, keys, [0, 2]), [line]), policy)
    assert result.invalid == ("w1.example/w",) and not result.met
    # a line by an unknown witness (another name or key id) is ignored, not counted
    stranger = cosign(body, "stranger.example/w", forger, NOW).line
    assert check_quorum(attach_cosignatures(_cosigned(note, keys, [0, 2]), [stranger]), policy).met


def test_one_key_under_two_names_is_not_two_witnesses() -> None:
    key = seeded_key("one")
    with pytest.raises(KeyFormatError):
        WitnessPolicy((WitnessKey("a/w", key.public_key), WitnessKey("b/w", key.public_key)), 2)
    with pytest.raises(KeyFormatError):
        WitnessPolicy((WitnessKey("a/w", key.public_key),), 2)


def test_split_view_cannot_reach_a_quorum_of_honest_witnesses() -> None:
    """The log shows branch A to witnesses 0 and 1 and branch B (same size, other root) to
    all three: honest witnesses that cosigned A refuse B, so B gets one cosignature."""
    policy, keys = _policy(3, 2)
    lg = _log()
    branch_b = lg.leaves[:6] + leaves("other", 4)
    witnesses = [
        MemoryWitness({ORIGIN: {ORIGIN: lg.key.public_key}}, f"w{i}.example/w", k)
        for i, k in enumerate(keys)
    ]
    a_lines = [w.submit(lg.request(0, 10))[1] for w in witnesses[:2]]
    b_answers = [w.submit(lg.request(0, 10, branch_b)) for w in witnesses]
    assert [s for s, _ in b_answers] == [409, 409, 200]
    assert check_quorum(attach_cosignatures(lg.note(10), a_lines), policy).met
    b_note = attach_cosignatures(lg.note(10, branch_b), [ln for s, ln in b_answers if s == 200])
    assert not check_quorum(b_note, policy).met
    # the two witnesses that saw both keep the fork as evidence that proves itself
    for w in witnesses[:2]:
        [ev] = w.evidence
        assert ev.kind is EvidenceKind.FORK
        assert verify_fork(ev.cosigned_note, ev.presented_note, {ORIGIN: lg.key.public_key}) == 10


# ---------------------------------------------------------------- the witness's checks


@pytest.fixture
def lg() -> TestLog:
    log = TestLog(ORIGIN)
    log.grow(40)
    return log


@pytest.fixture
def mw(lg: TestLog) -> MemoryWitness:
    w = MemoryWitness({ORIGIN: {ORIGIN: lg.key.public_key}})
    assert w.submit(lg.request(0, 8))[0] == 200
    assert w.submit(lg.request(8, 20))[0] == 200
    return w


def test_rollback_to_a_smaller_checkpoint_is_refused(lg: TestLog, mw: MemoryWitness) -> None:
    assert mw.submit(lg.request(20, 20)[:0] + format_add_checkpoint(20, (), lg.note(8))) == (
        400,
        "",
    )
    assert mw.submit(lg.request(0, 8)) == (409, "20")
    assert mw.evidence == []  # an old checkpoint of the same history proves nothing


def test_replayed_old_checkpoint_is_refused_with_the_latest_size(
    lg: TestLog, mw: MemoryWitness
) -> None:
    assert mw.submit(lg.request(8, 20))[0] == 409  # the exact request cosigned before
    assert mw.submit(lg.request(0, 8)) == (409, "20")
    assert mw.history[ORIGIN][max(mw.history[ORIGIN])].size == 20


def test_fork_at_the_latest_size_is_refused_and_kept(lg: TestLog, mw: MemoryWitness) -> None:
    fork = lg.leaves[:15] + leaves("fork", 5)
    status, _ = mw.submit(format_add_checkpoint(20, (), lg.note(20, fork)))
    assert status == 422
    [ev] = mw.evidence
    assert ev.kind is EvidenceKind.FORK and ev.origin == ORIGIN
    assert verify_fork(ev.cosigned_note, ev.presented_note, {ORIGIN: lg.key.public_key}) == 20


def test_fork_at_an_older_cosigned_size_is_kept(lg: TestLog, mw: MemoryWitness) -> None:
    fork = lg.leaves[:5] + leaves("fork", 3)
    assert mw.submit(lg.request(0, 8, fork)) == (409, "20")
    [ev] = mw.evidence
    assert ev.kind is EvidenceKind.FORK and "size 8" in ev.reason


def test_bad_proof_is_refused_and_kept_as_inconsistent(lg: TestLog, mw: MemoryWitness) -> None:
    rewritten = lg.leaves[:12] + leaves("rewrite", 20)
    status, _ = mw.submit(lg.request(20, 32, rewritten))  # a proof from the rewritten tree
    assert status == 422
    [ev] = mw.evidence
    assert ev.kind is EvidenceKind.INCONSISTENT and ev.old_size == 20
    assert mw.submit(lg.request(20, 32))[0] == 200  # the real history still goes on


def test_same_checkpoint_again_is_cosigned_again(lg: TestLog, mw: MemoryWitness) -> None:
    assert mw.submit(format_add_checkpoint(20, (), lg.note(20)))[0] == 200


def test_size_zero_and_proof_rules(lg: TestLog) -> None:
    w = MemoryWitness({ORIGIN: {ORIGIN: lg.key.public_key}})
    bad_zero = sign_note(f"{ORIGIN}\n0\n{base64.b64encode(b'x' * 32).decode()}\n", ORIGIN, lg.key)
    assert w.submit(format_add_checkpoint(0, (), bad_zero))[0] == 422
    assert w.submit(format_add_checkpoint(0, lg.proof(4, 8), lg.note(8)))[0] == 422
    assert w.submit(lg.request(0, 0))[0] == 200  # the empty tree, with its empty root


def test_unknown_origin_and_forged_log_signature(lg: TestLog) -> None:
    w = MemoryWitness({ORIGIN: {ORIGIN: lg.key.public_key}})
    other = TestLog("elsewhere.example/log", key=lg.key)
    other.grow(4)
    assert w.submit(other.request(0, 4))[0] == 404
    impostor = TestLog(ORIGIN, key=seeded_key("impostor"), leaves=list(lg.leaves))
    assert w.submit(impostor.request(0, 8))[0] == 403  # another key, the log's name
    body = lg.body(8)
    real = sign_note(body, ORIGIN, lg.key)
    sig = bytearray(base64.b64decode(real.rsplit(" ", 1)[1]))
    sig[10] ^= 0xFF  # the log's name and key id, a broken signature
    forged = real.rsplit(" ", 1)[0] + " " + base64.b64encode(bytes(sig)).decode() + "\n"
    assert w.submit(format_add_checkpoint(0, (), forged))[0] == 403
    assert w.history == {}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"old 0\n",
        b"old 01\n\nx",
        b"old -1\n\nx",
        b"old 0\nAAAA\n\nx",
        b"old 9223372036854775808\n\nx",
        b"old 1\n" + b"".join([base64.b64encode(b"\0" * 32) + b"\n"] * 64) + b"\nx",
        b"old 0\n\n\xff\xfe",
        b"old 0\n\nno signature\n",
    ],
    ids=[
        "empty",
        "no-note",
        "leading-zero",
        "negative",
        "short-hash",
        "too-big",
        "64-proof-lines",
        "not-utf8",
        "unsigned",
    ],
)
def test_malformed_requests_are_400(body: bytes) -> None:
    with pytest.raises(AddCheckpointRefused) as info:
        examine(body, {ORIGIN: {}})
    assert info.value.status == Status.BAD_REQUEST


def test_client_side_response_reading() -> None:
    assert read_add_checkpoint_response(409, "text/x.tlog.size", b"42\n").latest_size == 42
    with pytest.raises(WitnessRequestError):
        read_add_checkpoint_response(409, "text/plain", b"42\n")
    with pytest.raises(WitnessRequestError):
        read_add_checkpoint_response(409, "text/x.tlog.size", b"042\n")
    with pytest.raises(WitnessRequestError):
        parse_cosignature_lines(b"- w.example/w AAAA\n")
    refused = read_add_checkpoint_response(422, "text/plain", b"anything")
    assert not refused.cosigned and refused.cosignatures == ()
