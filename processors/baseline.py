"""The benchmark baseline (``Processor.handle_baseline``): a record's events stored as
bytes, found without validating anything."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor

import msgspec

from careledger.storage.store import ChainStore
from careledger_core.batch_record import looks_batch
from processors.metrics import ProcessorMetrics
from processors.records import Record

__all__ = ["split_batch", "store_baseline"]


class _EventsOnly(msgspec.Struct):
    """The events of a batch record, unvalidated (the benchmark baseline)."""

    events: list[msgspec.Raw]


_EVENTS_ONLY = msgspec.json.Decoder(_EventsOnly)


def split_batch(value: bytes) -> list[bytes]:
    """A batch record's events as bytes, else ``[value]`` (the baseline validates nothing)."""
    if looks_batch(value):
        try:
            return [bytes(e) for e in _EVENTS_ONLY.decode(value).events] or [value]
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            pass
    return [value]


async def store_baseline(
    executor: Executor, store: ChainStore, metrics: ProcessorMetrics, records: list[Record]
) -> None:
    """Store the records' events without validating, chaining or signing them.

    A batch record (ADR 0020) is split into its events' bytes (one unvalidated msgspec
    pass) and each event is inserted as a row, as the chained mode stores a row per
    event; any other record is inserted as it is."""
    rows: list[tuple[int, int, bytes]] = []
    samples: list[tuple[float, int]] = []
    for r in records:
        value = r.value or b""
        events = split_batch(value)
        rows.extend((r.partition, r.offset, e) for e in events)
        samples.append((r.timestamp, len(events)))
    await asyncio.get_running_loop().run_in_executor(
        executor,
        store.backend.insert,
        f"{store.db}.baseline_events",
        ("partition", "kafka_offset", "value"),
        rows,
    )
    stored_at = time.time()
    metrics.events_chained += len(rows)
    metrics._window_events += len(rows)
    metrics.observe_latencies(stored_at, samples)
