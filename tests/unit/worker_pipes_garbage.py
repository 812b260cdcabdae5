"""A worker for ``test_worker_pipes.py`` that answers its first request with bytes that
are not msgpack (0xc1 is never used by msgpack), on the real answer channel."""

from __future__ import annotations

import sys

from processors.worker_pipes import read_frame, write_frame


def serve() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    read_frame(stdin)  # the settings
    write_frame(stdout, 0, b"\xc3")  # msgpack true: ready
    while (frame := read_frame(stdin)) is not None:
        write_frame(stdout, frame[0], b"\xc1")
