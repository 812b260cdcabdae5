"""Where `careledger benchmark` runs: the machine, its load, and a process's CPU and memory.

Linux only (``/proc``); on another system the readers answer None and the benchmark
reports the figure as unknown. The parsers take the files' text, so they are tested
without a process to read.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "cpu_seconds",
    "find_pid",
    "is_clickhouse_server",
    "is_kafka",
    "load_average",
    "machine",
    "parse_cpu_model",
    "parse_mem_total_bytes",
    "parse_stat_cpu_ticks",
    "parse_stat_parent",
    "parse_stat_reaped_ticks",
    "parse_status_kib",
    "peak_rss_bytes",
    "tree_cpu_seconds",
    "tree_peak_rss_bytes",
]

_PROC = Path("/proc")


def _clock_ticks() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError, AttributeError):  # not POSIX: the usual value
        return 100


CLOCK_TICKS = _clock_ticks()


def parse_stat_cpu_ticks(text: str) -> int:
    """``utime + stime`` (clock ticks, every thread of the process) from the text of
    ``/proc/<pid>/stat``. The command name (field 2) may hold spaces and parentheses, so
    the fields are counted from its last ``)``. Raises ValueError on other text."""
    end = text.rfind(")")
    if end < 0:
        raise ValueError("not a /proc/<pid>/stat line")
    rest = text[end + 1 :].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15
    if len(rest) < 13:
        raise ValueError("not a /proc/<pid>/stat line")
    return int(rest[11]) + int(rest[12])


def parse_stat_reaped_ticks(text: str) -> int:
    """``cutime + cstime`` (clock ticks of the children the process waited for: a worker
    that exited) from the text of ``/proc/<pid>/stat``. Raises ValueError."""
    rest = _stat_fields(text)
    return int(rest[13]) + int(rest[14])


def parse_stat_parent(text: str) -> int:
    """The parent's pid (field 4) from the text of ``/proc/<pid>/stat``."""
    return int(_stat_fields(text)[1])


def _stat_fields(text: str) -> list[str]:
    end = text.rfind(")")
    rest = text[end + 1 :].split() if end >= 0 else []
    if len(rest) < 15:
        raise ValueError("not a /proc/<pid>/stat line")
    return rest


def parse_status_kib(text: str, name: str) -> int | None:
    """The value of ``name`` (e.g. ``VmHWM``) in ``/proc/<pid>/status``, in KiB."""
    prefix = name + ":"
    for line in text.splitlines():
        if line.startswith(prefix):
            parts = line[len(prefix) :].split()
            if parts and parts[0].isdigit():
                return int(parts[0])
    return None


def parse_cpu_model(text: str) -> str | None:
    """The first ``model name`` of ``/proc/cpuinfo`` (x86; ``Model`` or ``CPU part`` on
    some ARM kernels)."""
    for key in ("model name", "Model", "cpu model"):
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key and value.strip():
                return value.strip()
    return None


def parse_mem_total_bytes(text: str) -> int | None:
    kib = parse_status_kib(text, "MemTotal")
    return None if kib is None else kib * 1024


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:  # gone (the process exited) or not Linux
        return None


def _stat(pid: int | None) -> str | None:
    """The text of ``/proc/<pid>/stat`` (None: no pid, or the process is gone)."""
    return None if pid is None else _read(_PROC / str(pid) / "stat")


def cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds (user + system, all threads) the process has used so far."""
    text = _stat(pid)
    if text is None:
        return None
    try:
        return parse_stat_cpu_ticks(text) / CLOCK_TICKS
    except ValueError:
        return None


def _process_dirs() -> list[Path]:
    """``/proc/<pid>`` of every process (none if ``/proc`` cannot be read)."""
    try:
        return [entry for entry in _PROC.iterdir() if entry.name.isdigit()]
    except OSError:
        return []


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    found: list[int] = []
    for entry in _process_dirs():
        text = _read(entry / "stat")
        try:
            if text is not None and parse_stat_parent(text) == pid:
                found.append(int(entry.name))
        except ValueError:
            continue
    return found


def tree_cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds of the process and of its children, live or exited (a processor's
    opening workers, ADR 0039: their work is the processor's)."""
    text = _stat(pid)
    if pid is None or text is None:
        return None
    try:
        ticks = parse_stat_cpu_ticks(text) + parse_stat_reaped_ticks(text)
    except ValueError:
        return None
    total = ticks / CLOCK_TICKS
    for child in _children(pid):
        total += tree_cpu_seconds(child) or 0.0
    return total


def tree_peak_rss_bytes(pid: int | None) -> int | None:
    """The peak resident set of the process plus those of its live children (each its
    own peak: an upper bound of the peak they held together)."""
    own = peak_rss_bytes(pid)
    if pid is None or own is None:
        return own
    return own + sum(tree_peak_rss_bytes(child) or 0 for child in _children(pid))


def peak_rss_bytes(pid: int | None) -> int | None:
    """The process's peak resident set size so far (``VmHWM``), bytes."""
    if pid is None:
        return None
    text = _read(_PROC / str(pid) / "status")
    kib = None if text is None else parse_status_kib(text, "VmHWM")
    return None if kib is None else kib * 1024


def is_kafka(argv: list[str]) -> bool:
    """A Kafka broker's command line (``java ... kafka.Kafka server.properties``)."""
    return "kafka.Kafka" in argv


def is_clickhouse_server(argv: list[str]) -> bool:
    """A ClickHouse server's command line (``clickhouse server ...`` or
    ``clickhouse-server ...``)."""
    if not argv:
        return False
    name = Path(argv[0]).name
    return name == "clickhouse-server" or (name == "clickhouse" and "server" in argv[1:2])


def find_pid(matches: Callable[[list[str]], bool]) -> int | None:
    """The one process whose command line ``matches`` (None if none or several): the
    stack's services when another checkout started them (no pid file of ours)."""
    found = []
    for entry in _process_dirs():
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        argv = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
        if matches(argv):
            found.append(int(entry.name))
    return found[0] if len(found) == 1 else None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine(**extra: Any) -> dict[str, Any]:
    """Cores, CPU model, memory, kernel and Python: what a figure was measured on."""
    cpuinfo = _read(_PROC / "cpuinfo")
    meminfo = _read(_PROC / "meminfo")
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    return {
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "cpu_model": (parse_cpu_model(cpuinfo) if cpuinfo else None) or platform.processor(),
        "memory_bytes": parse_mem_total_bytes(meminfo) if meminfo else None,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        **extra,
    }
