"""A command run as a child process of a benchmark and measured: its wall and CPU time,
its peak RSS (``wait4``: the largest of it and its own children) and, when asked, its
RSS sampled over time. What ``benchmark-verify`` measures ``careledger verify`` with."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from careledger.config import Settings

__all__ = ["Measured", "run_measured"]


@dataclass(frozen=True, slots=True)
class Measured:
    exit: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    stdout: str
    stderr: str
    #: (seconds since the start, RSS in MB) every ``sample_every_s`` (empty: not sampled)
    rss_mb: Sequence[tuple[float, float]]


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def run_measured(
    cmd: Sequence[str], settings: Settings, *, sample_every_s: float | None = None
) -> Measured:
    """Run ``cmd`` in the project's root with ``settings``' environment, wait for it and
    measure it; its RSS sampled every ``sample_every_s`` seconds if given."""
    from careledger.config import PROJECT_ROOT
    from careledger.processes import child_env

    samples: list[tuple[float, float]] = []
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd), cwd=PROJECT_ROOT, env=child_env(settings), stdout=out, stderr=err
        )
        if sample_every_s is None:
            _pid, status, usage = os.wait4(proc.pid, 0)
        else:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                rss = _rss_mb(proc.pid)
                if rss is not None:
                    samples.append((time.perf_counter() - started, rss))
                time.sleep(sample_every_s)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(), err.read().decode()
    return Measured(
        exit=proc.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
        stdout=text,
        stderr=errors,
        rss_mb=samples,
    )
