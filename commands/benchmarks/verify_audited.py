"""``careledger benchmark-verify --ledger``: the whole ``careledger verify`` (every chain
and the auditor's decisions, alerts and status changes, ADR 0016) over the configured
ledger as it stands, run once as a child process: its wall and CPU time, its peak RSS and
its RSS over time (what ADR 0045 measures), with the ledger's counts from verify's own
JSON. Nothing is built or changed; nothing is recorded (``--no-record``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from careledger.config import Settings

__all__ = ["figures_of", "run_on_ledger", "shown", "timeline"]

#: RSS samples kept in the figures (evenly spaced over the run)
_POINTS = 40


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def timeline(samples: Sequence[tuple[float, float]], points: int = _POINTS) -> list[list[float]]:
    """At most ``points`` of the (seconds, MB) samples, evenly spaced, the last one and
    the highest kept."""
    if len(samples) <= points:
        return [[round(t, 1), round(m, 1)] for t, m in samples]
    step = len(samples) / points
    picked = {int(i * step) for i in range(points)} | {len(samples) - 1}
    peak = max(range(len(samples)), key=lambda i: samples[i][1])
    picked.add(peak)
    return [[round(samples[i][0], 1), round(samples[i][1], 1)] for i in sorted(picked)]


def figures_of(doc: dict[str, Any]) -> dict[str, Any]:
    """What the figures take from verify's JSON document."""
    audit = doc.get("audit") or {}
    totals = doc.get("totals") or {}
    return {
        "result": doc.get("result"),
        "events": totals.get("events"),
        "verify_elapsed_s": doc.get("elapsed_s"),
        "decisions": audit.get("decisions"),
        "alerts": audit.get("alerts"),
        "audit_result": audit.get("result"),
        "audit_elapsed_s": audit.get("elapsed_s"),
        "findings": totals.get("findings"),
    }


def _every(points: Sequence[Sequence[float]], n: int) -> Sequence[Sequence[float]]:
    return points[:: max(1, len(points) // n)]


def run_on_ledger(settings: Settings, interval_s: float = 1.0) -> dict[str, Any]:
    """Run ``careledger verify --json --no-record`` once and measure it."""
    from careledger.config import PROJECT_ROOT
    from careledger.processes import child_env

    cmd = [sys.executable, "-m", "commands.cli", "verify", "--json", "--no-record"]
    samples: list[tuple[float, float]] = []
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=PROJECT_ROOT, env=child_env(settings), stdout=out, stderr=err
        )
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss = _rss_mb(proc.pid)
            if rss is not None:
                samples.append((time.perf_counter() - started, rss))
            time.sleep(interval_s)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(), err.read().decode()
    result: dict[str, Any] = {
        "exit": proc.returncode,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        # the largest of verify and its worker processes
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "rss_mb_over_time": timeline(samples),
    }
    try:
        doc = json.loads(text)
    except ValueError:
        lines = (errors or text).strip().splitlines()
        result["error"] = lines[-1][-500:] if lines else "no output"
        return result
    result.update(figures_of(doc))
    return result


def shown(figures: dict[str, Any]) -> str:
    """The figures as lines for a terminal."""
    m = figures["machine"]
    r = figures["run"]
    head = (
        f"careledger benchmark-verify --ledger on {m['cores']} cores (load average at start "
        f"{' '.join(str(x) for x in m['loadavg_at_start'])}): the configured ledger"
    )
    lines = [
        f"{head}: {r['events'] or 0:,} events, {r['decisions'] or 0:,} decisions, "
        f"{r['alerts'] or 0:,} alerts",
        f"  verify: {r['result']} (exit {r['exit']}, {r['findings'] or 0} findings) in "
        f"{r['wall_s']:.1f} s wall, "
        f"{r['cpu_s']:.1f} s CPU; the auditor's rows {r['audit_elapsed_s'] or 0:.1f} s",
        f"  peak RSS {r['peak_rss_mb']:.0f} MB; RSS over time (s: MB): "
        + ", ".join(f"{t:.0f}: {mb:.0f}" for t, mb in _every(r["rss_mb_over_time"], 10)),
    ]
    return "\n".join(lines)
