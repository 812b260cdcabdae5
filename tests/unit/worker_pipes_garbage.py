"""A worker for ``test_worker_pipes.py`` that misbehaves on the real answer channel:
with settings "nonsense" it answers with bytes that are not msgpack (0xc1 is never used
by msgpack); with "wrong-id" it first answers a request nobody made, then the right one.
"""

from __future__ import annotations

import sys

import msgspec

from processors.worker_pipes import read_frame, write_frame


def serve() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    settings = read_frame(stdin)
    assert settings is not None
    mode = msgspec.msgpack.decode(settings[1])
    write_frame(stdout, 0, b"\xc3")  # msgpack true: ready
    while (frame := read_frame(stdin)) is not None:
        if mode == "nonsense":
            write_frame(stdout, frame[0], b"\xc1")
        else:
            write_frame(stdout, frame[0] + 1000, msgspec.msgpack.encode(b"forged"))
            write_frame(stdout, frame[0], msgspec.msgpack.encode(frame[1][::-1]))
