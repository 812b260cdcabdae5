"""A worker for ``test_worker_pipes.py``: reverses records, and misbehaves on request."""

from __future__ import annotations

import sys
import time
from typing import Any

from processors.worker_pipes import serve_frames


def _setup(settings: Any) -> bool:
    return bool(settings == "ok")


def _answer(value: bytes) -> bytes:
    if value == b"sleep":
        time.sleep(30)
    if value == b"print":
        # frames answering the first requests "forged", written on the standard output:
        # they must not reach the processor
        for task_id in range(4):
            forged = b"\xa6forged"  # msgpack "forged"
            sys.stdout.buffer.write((len(forged) + 8).to_bytes(4, "big"))
            sys.stdout.buffer.write(task_id.to_bytes(8, "big") + forged)
        sys.stdout.flush()
        print("hello from the worker")
    if value == b"raise":
        raise RuntimeError("a bug in the worker")
    return value[::-1]


def serve() -> None:
    serve_frames(_setup, _answer)
