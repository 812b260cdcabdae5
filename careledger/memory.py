"""How many malloc arenas a long-running multi-threaded service may use (ADR 0044).

glibc gives each thread that allocates its own *arena* (heap), up to eight per core, and
keeps their freed pages. A processor has about a dozen threads that allocate (the event
loop, the store thread, aiokafka's thread, librdkafka's threads of three clients, the
worker's pipe threads): each held its own high-water mark, and a 500,000-event drain
peaked 21-40 MB higher than with two arenas, and two 20-37 MB higher than one, at the
same throughput.

``limit_malloc_arenas`` sets glibc's ``M_ARENA_MAX`` through ``mallopt``: what the
``MALLOC_ARENA_MAX`` environment variable does, but from the process itself, so a
processor started any way (a service manager, a container, the CLI) gets it. glibc fixes
its limit for good once a process has more than eight arenas, so the processor calls this
first, before it starts a thread; an operator's ``MALLOC_ARENA_MAX`` wins. Elsewhere than
glibc nothing changes.
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

__all__ = ["PROCESSOR_ARENAS", "limit_malloc_arenas"]

#: glibc's ``M_ARENA_MAX`` (``malloc.h``)
_M_ARENA_MAX: Final = -8
#: the processor's arenas: its threads mostly take turns under the GIL, so one suffices
#: (measured against two: lower peaks, no slower; ADR 0044)
PROCESSOR_ARENAS: Final = 1


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas at ``arenas``; True if capped here. False when the
    C library is not glibc, or when ``MALLOC_ARENA_MAX`` is set (glibc read it)."""
    if arenas < 1:
        raise ValueError("at least one arena")
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    try:
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl's mallopt does nothing)
        mallopt = libc.mallopt
    except AttributeError:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas) == 1)
