"""The processor's malloc arenas (ADR 0044), counted by glibc itself (``malloc_info``) in
a fresh interpreter whose threads each allocate while all are alive."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from careledger.memory import PROCESSOR_ARENAS, limit_malloc_arenas

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="glibc's arenas",
)

#: six threads allocate (100 kB: glibc's heap, below its mmap threshold) and wait for one
#: another, so none hands its arena back before glibc is asked how many heaps it has
_PROGRAM = textwrap.dedent(
    """
    import ctypes, os, sys, tempfile, threading
    {setup}
    barrier = threading.Barrier(7)
    held = []
    def work():
        held.append([bytes(100_000) for _ in range(20)])
        barrier.wait()
        barrier.wait()
    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    barrier.wait()
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
    libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
    libc.fclose.argtypes = (ctypes.c_void_p,)
    path = os.path.join(tempfile.mkdtemp(), "info.xml")
    f = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, f)
    libc.fclose(f)
    barrier.wait()
    print(open(path).read().count("<heap nr="))
    """
)


def _heaps(setup: str, env: dict[str, str] | None = None) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM.format(setup=setup)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | (env or {}),
    )
    return int(out.stdout.strip())


def test_without_a_cap_each_allocating_thread_gets_its_own_arena() -> None:
    # the control: what the processor's threads did before ADR 0044
    assert _heaps("") > PROCESSOR_ARENAS + 2


def test_the_processor_interpreter_settings_cap_the_arenas() -> None:
    # what ``careledger process`` runs first, before it imports faust or starts a thread
    setup = "from processors.app import tune_interpreter; tune_interpreter()"
    assert _heaps(setup) == PROCESSOR_ARENAS


def test_an_operators_malloc_arena_max_wins() -> None:
    setup = "from careledger.memory import limit_malloc_arenas; assert not limit_malloc_arenas(2)"
    assert _heaps(setup, {"MALLOC_ARENA_MAX": "3"}) == 3


def test_no_arena_is_refused() -> None:
    with pytest.raises(ValueError):
        limit_malloc_arenas(0)
