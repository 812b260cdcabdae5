"""The processor's worker processes, fed over pipes (ADR 0039, ADR 0042, ADR 0044).

A worker is a child Python process (``python -c "...serve()"``: a new interpreter,
nothing of the processor's threads copied) that reads requests on its standard input
and writes answers on a private copy of its standard output, one frame each: a 4-byte
big-endian length of the rest, an 8-byte request id, then the payload. The first
request (id 0) is the worker's settings in msgpack (the ingest key of a sealed ledger,
or nothing); the worker answers it with whether it is ready, then each record (its bytes
as they are: the processor copies nothing) with its answer in msgpack, in order.

This replaced ``concurrent.futures.ProcessPoolExecutor``, whose ``spawn`` context needs
named semaphores and so starts multiprocessing's *resource tracker*, a third Python
process of 13 MB that only unlinks those semaphores should the processor die (ADR 0044:
issue 10's RSS budget of 300 MB counts the whole process tree).

What it keeps of the pool it replaced: ``submit`` returns a ``Future``; a worker that
dies (killed, or a bug in it: nothing there catches an unexpected error) fails its
pending futures and every later ``submit`` with ``BrokenProcessPool``; ``shutdown``
cancels what is pending and closes the pipes; ``processes`` lists the workers
(``pid``, ``is_alive``, ``kill``). A worker exits when its standard input closes, and
within half a second of its processor's death even in the middle of a record.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import IO, Any, Final

import msgspec

__all__ = ["PipePool", "read_frame", "write_frame"]

log = logging.getLogger("careledger.processor")

_LENGTH: Final = 4
_ID: Final = 8
#: the largest frame either side accepts (a batch record is at most a few MB)
MAX_FRAME_BYTES: Final = 256 * 1024 * 1024
_ENCODER: Final = msgspec.msgpack.Encoder()
#: how often a worker checks that its processor still runs
PARENT_CHECK_S: Final = 0.5
#: where ``processors`` can be imported from, for the worker's interpreter
_ROOT: Final = str(Path(__file__).resolve().parent.parent)


def read_frame(stream: IO[bytes]) -> tuple[int, bytes] | None:
    """One frame's id and payload, or None at the end of the stream (or a truncated
    frame); raises ``ValueError`` for a frame too short or too large."""
    head = stream.read(_LENGTH + _ID)
    if len(head) < _LENGTH + _ID:
        return None
    size = int.from_bytes(head[:_LENGTH], "big") - _ID
    if not 0 <= size <= MAX_FRAME_BYTES:
        raise ValueError(f"frame of {size} bytes")
    data = stream.read(size)
    return (int.from_bytes(head[_LENGTH:], "big"), data) if len(data) == size else None


def write_frame(stream: IO[bytes], frame_id: int, payload: bytes) -> None:
    stream.write((len(payload) + _ID).to_bytes(_LENGTH, "big") + frame_id.to_bytes(_ID, "big"))
    stream.write(payload)
    stream.flush()


class _Worker:
    """One worker process, its writer and reader threads, and its pending futures."""

    def __init__(self, command: Sequence[str], settings: bytes) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self.pid = self.process.pid
        self.ready: Future[bool] = Future()
        self.broken = False
        self._pending: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()
        self._out: queue.SimpleQueue[tuple[int, bytes] | None] = queue.SimpleQueue()
        self._out.put((0, settings))
        threading.Thread(target=self._write, name="careledger-worker-in", daemon=True).start()
        threading.Thread(target=self._read, name="careledger-worker-out", daemon=True).start()

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()

    def submit(self, task_id: int, value: bytes) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self.broken:
                raise BrokenProcessPool("the worker stopped")
            self._pending[task_id] = future
        self._out.put((task_id, value))  # the record itself, not a copy
        return future

    def close(self) -> None:
        """Cancel what is pending and close the worker's input (it exits when idle)."""
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for future in pending:
            future.cancel()
        self._out.put(None)

    def _write(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            while (item := self._out.get()) is not None:
                write_frame(stdin, *item)
        except (BrokenPipeError, OSError, ValueError):  # the worker is gone
            self._broke()
        finally:
            with contextlib.suppress(BrokenPipeError, OSError):
                stdin.close()

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            ready = read_frame(stdout)
            if ready is not None:  # else it stopped before it could say
                _resolve(self.ready, msgspec.msgpack.decode(ready[1]) is True)
            while ready is not None and (frame := read_frame(stdout)) is not None:
                task_id, answer = frame
                value = msgspec.msgpack.decode(answer)  # before the future leaves pending
                with self._lock:
                    future = self._pending.pop(task_id, None)
                if future is not None:
                    _resolve(future, value)
        except (OSError, ValueError, msgspec.DecodeError, msgspec.ValidationError):
            pass  # a worker that says something else is as good as gone
        self._broke()
        stdout.close()
        self.process.wait()  # reaped here: no zombie

    def _broke(self) -> None:
        with self._lock:
            self.broken = True
            pending, self._pending = list(self._pending.values()), {}
        for future in [self.ready, *pending]:
            if not future.done():
                with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
                    future.set_exception(BrokenProcessPool("the worker stopped"))


def _resolve(future: Future[Any], value: Any) -> None:
    with contextlib.suppress(InvalidStateError):  # cancelled: the loop no longer wants it
        future.set_result(value)


class PipePool:
    """``workers`` worker processes running ``serve`` (the module-level function of
    ``module``), each first given ``settings`` (msgpack); requests go round the
    workers."""

    def __init__(self, workers: int, module: str, settings: Any) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        command = (sys.executable, "-c", f"from {module} import serve; serve()")
        payload = _ENCODER.encode(settings)
        self._workers: list[_Worker] = []
        try:
            for _ in range(workers):
                self._workers.append(_Worker(command, payload))
        except OSError:  # none left behind: those started are stopped
            self.shutdown()
            for worker in self._workers:
                worker.kill()
            raise
        self._ids = itertools.count(1)
        self._turn = itertools.cycle(self._workers)

    @property
    def processes(self) -> list[_Worker]:
        return list(self._workers)

    @property
    def ready(self) -> list[Future[bool]]:
        """Each worker's answer to its settings: True once it is ready."""
        return [w.ready for w in self._workers]

    def submit(self, value: bytes) -> Future[Any]:
        """Ask the next worker about ``value``; raises ``BrokenProcessPool`` if it stopped."""
        task_id = next(self._ids)
        return next(self._turn).submit(task_id, value)

    def shutdown(self) -> None:
        for worker in self._workers:
            worker.close()


def _exit_with(parent: int) -> None:
    """Exit when the processor is gone, even in the middle of a record."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def serve_frames(setup: Any, answer: Any) -> None:
    """The worker's side: ``setup(settings) -> bool`` once, then ``answer(record)`` for
    each request, until the processor closes the pipe. Answers go to a private copy of
    the standard output, which becomes the standard error: nothing else the worker
    prints can be taken for an answer. A worker busy with a record when its processor
    is killed exits too, within ``PARENT_CHECK_S`` (an opening worker holds the ingest
    key)."""
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()
    stdin = sys.stdin.buffer
    stdout = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    settings = read_frame(stdin)
    if settings is None:
        return
    write_frame(stdout, 0, _ENCODER.encode(bool(setup(msgspec.msgpack.decode(settings[1])))))
    while (frame := read_frame(stdin)) is not None:
        task_id, value = frame
        write_frame(stdout, task_id, _ENCODER.encode(answer(value)))
