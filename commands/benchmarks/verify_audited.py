"""``careledger benchmark-verify --ledger``: the whole ``careledger verify`` (every chain
and the auditor's decisions, alerts and status changes, ADR 0016) over the configured
ledger as it stands, run once as a child process: its wall and CPU time, its peak RSS and
its RSS over time (what ADR 0045 measures), with the ledger's counts from verify's own
JSON. Nothing is built or changed; nothing is recorded (``--no-record``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from careledger.config import Settings

from .child import run_measured

__all__ = ["figures_of", "run_on_ledger", "shown", "timeline"]

#: RSS samples kept in the figures (evenly spaced over the run)
_POINTS = 40


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
    cmd = [sys.executable, "-m", "commands.cli", "verify", "--json", "--no-record"]
    run = run_measured(cmd, settings, sample_every_s=interval_s)
    result: dict[str, Any] = {
        "exit": run.exit,
        "wall_s": round(run.wall_s, 2),
        "cpu_s": round(run.cpu_s, 2),
        # the largest of verify and its worker processes
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "rss_mb_over_time": timeline(run.rss_mb),
    }
    try:
        doc = json.loads(run.stdout)
    except ValueError:
        lines = (run.stderr or run.stdout).strip().splitlines()
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
