"""Hostile input never crashes the witness or its clients (hypothesis).

Whatever bytes arrive, ``examine`` answers with a C2SP status (it raises only
AddCheckpointRefused), ``decide`` then answers too, and the client-side readers raise
only their documented errors.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from careledger_core.errors import CareledgerError, CheckpointError
from careledger_core.witness import (
    AddCheckpointRefused,
    CosignedState,
    Status,
    WitnessKey,
    WitnessPolicy,
    WitnessRequestError,
    check_quorum,
    decide,
    examine,
    read_add_checkpoint_response,
)
from tests.witness_support import TestLog, seeded_key

ORIGIN = "careledger.test/careledger.access-events/1"
LOG = TestLog(ORIGIN)
LOG.grow(64)
LOGS = {ORIGIN: {ORIGIN: LOG.key.public_key}}
LATEST = CosignedState(16, bytes(32), LOG.note(16))
VALID = [LOG.request(0, 16), LOG.request(16, 40), LOG.request(3, 5)]
POLICY = WitnessPolicy((WitnessKey("w.example/w", seeded_key("p").public_key),), 1)


def _answer(data: bytes) -> int:
    try:
        sub = examine(data, LOGS)
    except AddCheckpointRefused as exc:
        assert exc.status in {Status.BAD_REQUEST, Status.FORBIDDEN, Status.NOT_FOUND}
        # a short fixed message: nothing of the request is echoed (to the client or a log)
        assert len(exc.message) < 120 and exc.message.isprintable()
        return int(exc.status)
    for latest in (None, LATEST):
        decision = decide(sub, latest, None)
        assert decision.status in set(Status)
    return 200


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_get_a_status_never_an_exception(data: bytes) -> None:
    _answer(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup-line"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[i:]
        else:
            line_end = data.find(b"\n", i)
            if line_end >= 0:
                start = data.rfind(b"\n", 0, i) + 1
                data[line_end + 1 : line_end + 1] = data[start : line_end + 1]
    return bytes(data)


@settings(max_examples=600, deadline=None)
@given(mutated())
def test_mutated_requests_get_a_status_never_an_exception(data: bytes) -> None:
    _answer(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 600), st.one_of(st.none(), st.text(max_size=40)), st.binary(max_size=512))
def test_client_reads_any_answer_without_crashing(
    status: int, content_type: str | None, body: bytes
) -> None:
    try:
        answer = read_add_checkpoint_response(status, content_type, body)
    except WitnessRequestError:
        assert status in (200, 409)
        return
    assert answer.status == status


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=600))
def test_quorum_check_of_any_note_raises_only_careledger_errors(text: str) -> None:
    try:
        check_quorum(text, POLICY)
    except CareledgerError as exc:
        assert isinstance(exc, CheckpointError)


def test_the_generators_reach_every_refusal() -> None:
    """The property tests above are not vacuous: the inputs they start from are cosigned,
    and single defects reach each refusal."""
    assert [_answer(v) for v in VALID] == [200, 200, 200]
    other = TestLog("nowhere.example/log", key=LOG.key, leaves=LOG.leaves)
    impostor = TestLog(ORIGIN, key=seeded_key("impostor"), leaves=LOG.leaves)
    assert _answer(other.request(0, 3)) == 404
    assert _answer(impostor.request(0, 3)) == 403
    assert _answer(VALID[0].replace(b"old 0", b"old 00")) == 400


@pytest.mark.parametrize("size", [0, 1, 2, 3, 7, 8, 9, 63, 64])
def test_every_proof_our_merkle_code_makes_is_accepted(size: int) -> None:
    new = 64
    sub = examine(LOG.request(size, new), LOGS)
    latest = CosignedState(size, LOG_ROOTS[size], LOG.note(size)) if size else None
    assert decide(sub, latest, None).status == Status.OK


LOG_ROOTS = {n: examine(LOG.request(0, n), LOGS).checkpoint.root_hash for n in range(65)}
