"""``careledger witness`` SIGKILLed mid-stream, again and again: it keeps what it
acknowledged and never cosigns two conflicting checkpoints at one size.

Writers race to grow the log's checkpoints while an attacker keeps offering a fork of
the same log (same key, other leaves from leaf 5 on). The witness process is SIGKILLed
at random moments (inside request handling, inside the state transaction, between
requests) and restarted on the same state directory. Afterwards:

* every cosignature any client ever received verifies and is over the true history;
  none is over the fork, and no two are over different roots of one size;
* the witness's state is at least the largest size it ever acknowledged (it persisted
  before answering), and holds exactly one root per size, each the true one;
* the fork attempts it saw at sizes it had cosigned are kept as evidence, across
  restarts.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from pathlib import Path

from careledger_core.merkle import merkle_root
from careledger_core.witness import (
    WitnessKey,
    format_add_checkpoint,
    split_note,
    verify_cosignature,
    verify_fork,
)
from tests.witness_support import TestLog, WitnessProcess, leaves, seeded_key, write_logs_file
from witness.store import WitnessStore

NAME = "crash.example/witness"
ROUNDS = 12
TRUE_SIZE = 3000


def _post(port: int, body: bytes) -> tuple[int, bytes] | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/add-checkpoint", body=body)
        r = conn.getresponse()
        return r.status, r.read()
    except (OSError, http.client.HTTPException):
        return None  # killed under us


def test_sigkill_mid_stream_keeps_state_and_never_cosigns_two_roots_at_one_size(
    tmp_path: Path,
) -> None:
    log = TestLog("careledger.test/careledger.access-events/3", key=seeded_key("crash log"))
    log.grow(TRUE_SIZE)
    fork = log.leaves[:5] + leaves("fork", TRUE_SIZE - 5)
    key = seeded_key("crash witness")
    witness = WitnessKey(NAME, key.public_key)
    w = WitnessProcess(tmp_path, NAME, key, write_logs_file(tmp_path / "logs.toml", [log]))

    acked: list[tuple[int, str]] = []  # (size, cosignature line) of every 200
    fork_acks: list[int] = []
    latest = [0]
    lock = threading.Lock()
    stop = threading.Event()
    rng = random.Random(20241203)

    def writer(seed: int) -> None:
        r = random.Random(seed)
        while not stop.is_set():
            with lock:
                old = latest[0]
            if old >= TRUE_SIZE:
                return
            new = min(TRUE_SIZE, old + r.randint(0, 3))
            answer = _post(w.port, log.request(old, new))
            if answer is None:
                time.sleep(0.02)
                continue
            status, body = answer
            with lock:
                if status == 200:
                    acked.append((new, body.decode()[:-1]))
                    latest[0] = max(latest[0], new)
                elif status == 409:
                    latest[0] = max(latest[0], int(body))

    def attacker() -> None:
        r = random.Random(7)
        while not stop.is_set():
            with lock:
                old = latest[0]
            if old <= 5:
                time.sleep(0.01)
                continue
            size = r.randint(6, old)
            attempts = [
                format_add_checkpoint(old, (), log.note(old, fork)),  # same size, other root
                format_add_checkpoint(0, (), log.note(size, fork)),  # as if new to the witness
            ]
            for body in attempts:
                answer = _post(w.port, body)
                if answer is not None and answer[0] == 200:
                    fork_acks.append(size)

    w.start()
    try:
        for round_ in range(ROUNDS):
            stop.clear()
            threads = [threading.Thread(target=writer, args=(round_ * 10 + i,)) for i in range(4)]
            threads.append(threading.Thread(target=attacker))
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 1.2))
            w.kill()  # SIGKILL, wherever it is
            stop.set()
            for t in threads:
                t.join(30)
            w.start()
            with lock:
                latest[0] = 0  # the clients forget; the witness tells them (409)
    finally:
        w.stop()

    assert fork_acks == []
    assert len(acked) > 3 * ROUNDS, f"too few cosignatures to mean anything: {len(acked)}"
    roots = {n: merkle_root(log.leaves[:n]) for n, _ in acked}
    for size, line in acked:
        body, _ = split_note(log.note(size))
        verify_cosignature(body, line, witness)  # over the true history, nothing else
    state = WitnessStore(w.state_dir)
    try:
        cosigned = state.cosigned_roots(log.origin)
        assert max(cosigned) >= max(size for size, _ in acked)
        for size, root in cosigned.items():
            assert root == merkle_root(log.leaves[:size]), f"wrong root at size {size}"
        assert set(roots) <= set(cosigned)
        forks = [e for e in state.evidence() if e["kind"] == "fork"]
    finally:
        state.close()
    assert forks, "the fork attempts at cosigned sizes were not kept"
    keys = {log.origin: log.key.public_key}
    for e in forks:
        verify_fork(str(e["cosigned_note"]), str(e["presented_note"]), keys)
    result = w.cli("--evidence")
    assert result.returncode == 1
