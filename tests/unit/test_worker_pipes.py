"""The processor's worker processes over pipes (ADR 0044): answers reach the right
futures, a worker that dies or talks nonsense fails what it had and nothing else, a
worker whose processor is gone exits, and no process but the workers is started (the
resource tracker of the pool they replaced was a 13 MB interpreter)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest

from processors.worker_pipes import MAX_FRAME_BYTES, PipePool, read_frame, write_frame

#: a worker module for these tests: echoes, reverses, prints to stdout, or dies
_MODULE = "tests.unit.worker_pipes_fixture"


def _pool(workers: int = 1, settings: object = "ok") -> PipePool:
    pool = PipePool(workers, _MODULE, settings)
    assert all(f.result(timeout=30) for f in pool.ready)
    return pool


def test_answers_reach_their_own_futures_across_workers() -> None:
    pool = _pool(workers=2)
    try:
        futures = {bytes([i]) * (i + 1): pool.submit(bytes([i]) * (i + 1)) for i in range(40)}
        for value, future in futures.items():
            assert future.result(timeout=30) == value[::-1]
        assert len({w.pid for w in pool.processes}) == 2
    finally:
        pool.shutdown()


def test_a_large_record_crosses_the_pipes_whole() -> None:
    pool = _pool()
    try:
        value = os.urandom(3_000_000)  # beyond any pipe's buffer, both ways
        assert pool.submit(value).result(timeout=30) == value[::-1]
    finally:
        pool.shutdown()


def test_what_a_worker_prints_is_never_taken_for_an_answer() -> None:
    pool = _pool()
    try:
        # the fixture prints a frame-shaped line to stdout before answering
        assert pool.submit(b"print").result(timeout=30) == b"tnirp"
        assert pool.submit(b"abc").result(timeout=30) == b"cba"
    finally:
        pool.shutdown()


def test_a_worker_that_dies_fails_its_pending_futures_and_later_submits() -> None:
    pool = _pool()
    try:
        slow = pool.submit(b"sleep")
        (worker,) = pool.processes
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            slow.result(timeout=30)
        with pytest.raises(BrokenProcessPool):
            pool.submit(b"x")
        assert _gone(worker)  # reaped by the pool's reader thread
    finally:
        pool.shutdown()


def test_a_worker_crashing_on_a_record_breaks_only_its_pool() -> None:
    pool = _pool()
    try:
        with pytest.raises(BrokenProcessPool):
            pool.submit(b"raise").result(timeout=30)
    finally:
        pool.shutdown()


def test_a_worker_answering_what_is_not_msgpack_is_taken_for_gone() -> None:
    pool = PipePool(1, "tests.unit.worker_pipes_garbage", "nonsense")
    try:
        assert pool.ready[0].result(timeout=30) is True
        with pytest.raises(BrokenProcessPool):
            pool.submit(b"abc").result(timeout=30)
        with pytest.raises(BrokenProcessPool):
            pool.submit(b"abc")
    finally:
        pool.shutdown()
        for worker in pool.processes:
            worker.kill()


def test_an_answer_to_a_request_nobody_made_is_ignored() -> None:
    pool = PipePool(1, "tests.unit.worker_pipes_garbage", "wrong-id")
    try:
        assert pool.ready[0].result(timeout=30) is True
        assert [pool.submit(v).result(timeout=30) for v in (b"ab", b"cd")] == [b"ba", b"dc"]
    finally:
        pool.shutdown()


def test_a_worker_not_ready_says_so() -> None:
    pool = PipePool(1, _MODULE, "refuse")
    try:
        assert pool.ready[0].result(timeout=30) is False
    finally:
        pool.shutdown()


def test_a_worker_that_cannot_start_fails_its_readiness() -> None:
    pool = PipePool(1, "tests.unit.no_such_module_here", "ok")
    try:
        with pytest.raises(BrokenProcessPool):
            pool.ready[0].result(timeout=30)
    finally:
        pool.shutdown()


def test_a_hung_worker_is_killed_not_waited_for() -> None:
    pool = _pool()
    try:
        (worker,) = pool.processes
        os.kill(worker.pid, signal.SIGSTOP)
        with pytest.raises(FutureTimeout):
            pool.submit(b"x").result(timeout=0.5)
        pool.shutdown()
        worker.kill()
        assert _gone(worker)
    finally:
        pool.shutdown()


def test_a_shut_down_pool_cancels_what_it_had() -> None:
    pool = _pool()
    slow = pool.submit(b"sleep")
    pool.shutdown()
    assert slow.cancelled()
    for worker in pool.processes:
        worker.kill()


def test_an_idle_worker_exits_when_its_pool_shuts_down() -> None:
    pool = _pool()
    assert pool.submit(b"abc").result(timeout=30) == b"cba"
    pool.shutdown()
    (worker,) = pool.processes
    assert worker.process.wait(timeout=30) == 0  # its input closed


def test_hostile_frames_are_refused_not_allocated() -> None:
    huge = (MAX_FRAME_BYTES + 9).to_bytes(4, "big") + bytes(8)
    with pytest.raises(ValueError):
        read_frame(io.BytesIO(huge))
    with pytest.raises(ValueError):  # shorter than its own id
        read_frame(io.BytesIO((7).to_bytes(4, "big") + bytes(8)))
    assert read_frame(io.BytesIO(b"\x00\x00")) is None  # truncated length
    truncated = (13).to_bytes(4, "big") + bytes(8) + b"abc"
    assert read_frame(io.BytesIO(truncated)) is None  # truncated payload
    out = io.BytesIO()
    write_frame(out, 7, b"hello")
    write_frame(out, 2**64 - 1, b"")
    stream = io.BytesIO(out.getvalue())
    assert read_frame(stream) == (7, b"hello")
    assert read_frame(stream) == (2**64 - 1, b"")
    assert read_frame(stream) is None


def test_workers_outlive_neither_their_processor_nor_need_another_process() -> None:
    """A processor started with workers has them as its only children, and when it is
    killed outright they exit, the one busy with a record too."""
    program = textwrap.dedent(
        f"""
        import sys, time
        from processors.worker_pipes import PipePool
        pool = PipePool(2, {_MODULE!r}, "ok")
        assert all(f.result(timeout=30) for f in pool.ready)
        pool.submit(b"sleep")  # one of them busy for 30 s when the processor dies
        print(" ".join(str(w.pid) for w in pool.processes), flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", program], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert proc.stdout is not None
        pids = {int(p) for p in proc.stdout.readline().split()}
        assert len(pids) == 2
        assert _children(proc.pid) == pids  # no resource tracker, nothing else
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while any(_running(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_running(p) for p in pids), "workers outlived their processor"
    finally:
        proc.kill()


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.add(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


def _gone(worker: Any) -> bool:
    """The worker has exited, within 10 s."""
    deadline = time.monotonic() + 10
    while worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not worker.is_alive()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_pool_that_cannot_start_every_worker_leaves_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from processors import worker_pipes

    real = worker_pipes._Worker
    made: list[worker_pipes._Worker] = []

    def second_fails(*args: object) -> worker_pipes._Worker:
        if made:
            raise OSError("no more processes")  # what fork refuses with
        made.append(real(*args))  # type: ignore[arg-type]
        return made[-1]

    monkeypatch.setattr(worker_pipes, "_Worker", second_fails)
    with pytest.raises(OSError):
        PipePool(2, _MODULE, "ok")
    (first,) = made
    assert _gone(first)
