"""The processor's metrics: counters, the store-latency histogram and the JSON file.

The processor exposes them as a log line every few seconds, a JSON file under
``run_dir/metrics`` and (when the web port is set) a faust web page.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("careledger.processor")

# Latency histogram bucket upper bounds in seconds (1 ms .. ~2 min, log-spaced).
_LATENCY_BOUNDS = [0.001 * (1.25**i) for i in range(55)]


@dataclass
class ProcessorMetrics:
    """Counters the processor exposes (log line, JSON file, faust web page)."""

    started: float = field(default_factory=time.time)
    events_chained: int = 0
    blocks_written: int = 0
    dead_lettered: int = 0
    #: of which quarantined: well-formed events not attributable to a registered source
    quarantined: int = 0
    duplicates_skipped: int = 0
    seeks: int = 0
    store_failures: int = 0
    #: sequence-number rows other writers committed, read by the gate's refresh (ADR 0015)
    seq_rows_refreshed: int = 0
    #: records that waited for the source registry to be read past them (ADR 0027)
    registry_waits: int = 0
    #: writes the store refused because another processor owns the chain (ADR 0031)
    fenced_writes: int = 0
    #: partitions refused because Kafka ends before their stored head (recreated topic)
    refused_partitions: int = 0
    heights: dict[str, int] = field(default_factory=dict)
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(_LATENCY_BOUNDS) + 1))
    block_write_seconds_total: float = 0.0
    #: where a take's time goes: validating and sealing it, and waiting for the write
    #: before it (only one write is in flight) — is the processor CPU- or write-bound?
    handle_seconds_total: float = 0.0
    write_wait_seconds_total: float = 0.0
    #: takes handled, and writes to the store with their time (each write has fixed
    #: statements: event rows, batch rows, guarded headers, their read-back, the blocks
    #: topic; events per write says how far they are spread)
    takes: int = 0
    writes: int = 0
    write_seconds_total: float = 0.0
    #: a sealed ledger's events opened by the worker process ahead of the loop (ADR
    #: 0039), a ledger in clear's events checked by it (ADR 0042), the records whose
    #: worker results did not fit (taken in the loop), and the times the worker pool was
    #: started again after it broke
    events_opened_ahead: int = 0
    events_checked_ahead: int = 0
    opening_disagreements: int = 0
    opening_worker_restarts: int = 0
    _window_start: float = field(default_factory=time.monotonic)
    _window_events: int = 0

    def observe_latencies(self, stored_at: float, samples: Iterable[tuple[float, int]]) -> None:
        """``samples``: (Kafka timestamp of a record, events it carried) per record."""
        buckets = self.latency_buckets
        for ts, events in samples:
            buckets[bisect.bisect_left(_LATENCY_BOUNDS, stored_at - ts)] += events

    def percentile(self, q: float) -> float | None:
        total = sum(self.latency_buckets)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, n in enumerate(self.latency_buckets):
            seen += n
            if seen >= rank:
                return _LATENCY_BOUNDS[min(i, len(_LATENCY_BOUNDS) - 1)]
        return _LATENCY_BOUNDS[-1]

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        elapsed = max(now - self._window_start, 1e-9)
        rate = self._window_events / elapsed
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "events_chained": self.events_chained,
            "blocks_written": self.blocks_written,
            "dead_lettered": self.dead_lettered,
            "quarantined": self.quarantined,
            "duplicates_skipped": self.duplicates_skipped,
            "seeks": self.seeks,
            "store_failures": self.store_failures,
            "seq_rows_refreshed": self.seq_rows_refreshed,
            "registry_waits": self.registry_waits,
            "fenced_writes": self.fenced_writes,
            "refused_partitions": self.refused_partitions,
            "events_per_s_recent": round(rate, 1),
            "block_write_ms_avg": round(
                1000 * self.block_write_seconds_total / self.blocks_written, 2
            )
            if self.blocks_written
            else None,
            "handle_seconds_total": round(self.handle_seconds_total, 3),
            "write_wait_seconds_total": round(self.write_wait_seconds_total, 3),
            "takes": self.takes,
            "writes": self.writes,
            "events_per_write": round(self.events_chained / self.writes, 1)
            if self.writes
            else None,
            "write_ms_avg": round(1000 * self.write_seconds_total / self.writes, 2)
            if self.writes
            else None,
            "events_opened_ahead": self.events_opened_ahead,
            "events_checked_ahead": self.events_checked_ahead,
            "opening_disagreements": self.opening_disagreements,
            "opening_worker_restarts": self.opening_worker_restarts,
            "latency_p50_s": self.percentile(0.50),
            "latency_p99_s": self.percentile(0.99),
            "latency_bucket_bounds_s": _LATENCY_BOUNDS,
            "latency_buckets": self.latency_buckets,
            "chain_heights": dict(self.heights),
        }

    def roll_window(self) -> None:
        self._window_start = time.monotonic()
        self._window_events = 0


def write_metrics(path: Path, snapshot: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(snapshot), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write metrics file %s: %s", path, exc)
