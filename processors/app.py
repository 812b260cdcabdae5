"""The faust-streaming processor: validate, chain per partition, sign, store.

Commit order (read this before changing anything; ADR 0003):

1. Records of a partition are validated and appended to that partition's open
   block (``PartitionChain``). Bad records become dead-letter records.
2. When a block closes (``block_max_events`` events, or ``block_max_ms`` after
   its first record), it is hashed, Merkle-rooted and signed.
3. Persist, in this order: flush the dead-letter records of the closed ranges
   to Kafka (acks=all) -> insert the blocks' event rows (one batched insert) ->
   insert the header rows. A block exists only once its header row exists.
4. Only then does faust ack the records, so its offset commits trail the store.

The consumer position is *not* trusted to Kafka's committed offsets: when a
chain is (re)loaded, the stored head (height, hash, last offset) is the source
of truth. Records at or below the head are skipped as already chained; a
record beyond the next expected offset makes the processor seek back. Event
rows a crash left without a header are deleted before the chain continues.
So a crash at any instant loses nothing and duplicates nothing.

Bad input never stops the processor; storage or Kafka failures make it drop
its in-memory state, back off and resume from the store (fail closed).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from careledger.config import Settings
from careledger.keys import default_key_path, load_public_keys, load_signing_key
from careledger.storage.backend import ClickHouseBackend
from careledger.storage.kinds import kind_for_topic, raw_topics, reference_topics
from careledger.storage.store import ChainStore, SealedBlock
from careledger_core.block import BlockHeader
from careledger_core.checkpoint import checkpoint_for, format_checkpoint, sign_note
from careledger_core.errors import CareledgerError
from careledger_core.signing import SigningKey
from processors.chainer import OffsetGap, PartitionChain, Rejected
from processors.sources import SourceGate

log = logging.getLogger("careledger.processor")

# How long records fetched before a seek may keep arriving before we ask Kafka
# whether the expected offsets still exist and seek again.
SEEK_PATIENCE_S = 5.0
# How long after an assignment before the consumer's position is compared with
# the stored head: the fetcher must have its positions first.
ASSIGNMENT_SETTLE_S = 2.0

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
    heights: dict[str, int] = field(default_factory=dict)
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(_LATENCY_BOUNDS) + 1))
    block_write_seconds_total: float = 0.0
    _window_start: float = field(default_factory=time.monotonic)
    _window_events: int = 0

    def observe_latencies(self, stored_at: float, kafka_timestamps: list[float]) -> None:
        buckets = self.latency_buckets
        for ts in kafka_timestamps:
            buckets[bisect.bisect_left(_LATENCY_BOUNDS, stored_at - ts)] += 1

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
            "events_per_s_recent": round(rate, 1),
            "block_write_ms_avg": round(
                1000 * self.block_write_seconds_total / self.blocks_written, 2
            )
            if self.blocks_written
            else None,
            "latency_p50_s": self.percentile(0.50),
            "latency_p99_s": self.percentile(0.99),
            "latency_bucket_bounds_s": _LATENCY_BOUNDS,
            "latency_buckets": self.latency_buckets,
            "chain_heights": dict(self.heights),
        }

    def roll_window(self) -> None:
        self._window_start = time.monotonic()
        self._window_events = 0


Part = tuple[str, int]  # (topic, partition): one chain each


@dataclass(frozen=True, slots=True)
class Record:
    """The parts of a Kafka record the chainer needs (decoupled from faust)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float
    topic: str = ""  # "" = the access-events topic


class Processor:
    """Chains records of the events topic; owns no Kafka consumer itself."""

    def __init__(
        self,
        settings: Settings,
        key: SigningKey,
        store: ChainStore,
        seek: Any,  # async callable ((topic, partition), offset)
        earliest: Any,  # async callable ((topic, partition)) -> earliest offset still in Kafka
        outputs: Any,  # KafkaOutputs
        position: Any = None,  # async callable ((topic, partition)) -> consumer position or None
        gate: SourceGate | None = None,
    ) -> None:
        self.settings = settings
        #: source-signature checks of access events (ADR 0010); None: plain events only
        self.gate = gate
        self._position = position
        self.key = key
        self.store = store
        self._seek = seek
        self._earliest = earliest
        self.outputs = outputs
        # Keyed by (topic, partition): access events and each reference stream
        # have chains of their own.
        self.chains: dict[Part, PartitionChain] = {}
        self.seek_targets: dict[Part, tuple[int, float]] = {}
        self.metrics = ProcessorMetrics()
        self.lock = asyncio.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="careledger-store")
        self.max_age_s = settings.block_max_ms / 1000.0
        self._backoff_s = 0.0
        # At most one write in flight: batch N+1 is validated and sealed while
        # batch N is being written. Anything that reads the store (loading a
        # chain head) or gives a partition away waits for it first (``drain``).
        self._inflight: asyncio.Task[bool] | None = None
        # Bumped whenever a failed write resets the in-memory state: blocks sealed
        # under an older epoch were built on state that never reached the store.
        self._epoch = 0
        self._recover: set[Part] = set()
        # Partitions assigned to us whose consumer position has not yet been
        # checked against the stored head (see ``_check_assigned``).
        self._unchecked: dict[Part, float] = {}
        # When each partition was last assigned, and seeks asked for too soon after it:
        # seeking before the fetcher has settled crashes aiokafka's fetcher (KeyError in
        # its record drain), so such seeks wait for the timer.
        self._assigned_at: dict[Part, float] = {}
        self._deferred_seeks: dict[Part, int] = {}

    async def drain(self) -> None:
        """Wait until the in-flight write (if any) has finished, successfully or not."""
        task = self._inflight
        if task is not None:
            await task
            if self._inflight is task:
                self._inflight = None

    # ------------------------------------------------------------- rebalance
    def release(self, partitions: set[Part]) -> None:
        """Partitions revoked: another worker resumes them from the store."""
        self._recover -= partitions
        self.forget(partitions)

    def forget(self, partitions: set[Part]) -> None:
        """Drop in-memory state; the chain reloads from the store when next seen."""
        for p in partitions:
            self.chains.pop(p, None)
            self.seek_targets.pop(p, None)

    def assigned(self, partitions: set[Part]) -> None:
        """Partitions assigned: forget old state and check positions once settled."""
        self.forget(partitions)
        now = time.monotonic()
        for p in partitions:
            self._assigned_at[p] = now
            self._deferred_seeks.pop(p, None)
            if self._position is not None:
                self._unchecked[p] = now

    async def _request_seek(self, p: Part, offset: int) -> None:
        """Seek now, or from the timer once the partition's assignment has settled.

        Records past ``offset`` are skipped meanwhile (``seek_targets``), so waiting
        costs time, never records.
        """
        since = self._assigned_at.get(p)
        if since is not None and time.monotonic() - since < ASSIGNMENT_SETTLE_S:
            self._deferred_seeks[p] = offset
            return
        self._deferred_seeks.pop(p, None)
        await self._seek(p, offset)

    async def _run_deferred_seeks(self) -> None:
        now = time.monotonic()
        for p, offset in sorted(self._deferred_seeks.items()):
            if now - self._assigned_at.get(p, 0.0) >= ASSIGNMENT_SETTLE_S:
                del self._deferred_seeks[p]
                if p in self.seek_targets:  # still wanted (not revoked or reset)
                    self.seek_targets[p] = (offset, time.monotonic())
                    await self._seek(p, offset)

    def revoked(self, partitions: set[Part]) -> None:
        for p in partitions:
            self._unchecked.pop(p, None)
            self._deferred_seeks.pop(p, None)
            self._assigned_at.pop(p, None)
        self.release(partitions)

    async def _load(self, part: Part) -> PartitionChain:
        topic, partition = part
        chain_id = self.settings.chain_id(topic, partition)
        kind = kind_for_topic(self.settings, topic)
        loop = asyncio.get_running_loop()
        head = await loop.run_in_executor(self.executor, self.store.head, chain_id)
        # Only a new chain needs the partition's earliest offset; asking Kafka costs a
        # round trip through the consumer thread (up to a fetch wait), so skip it otherwise.
        earliest = 0 if head is not None else await self._earliest(part)

        def load() -> PartitionChain:
            removed = self.store.discard_uncommitted(
                chain_id, None if head is None else head.height
            )
            if removed:
                log.warning(
                    "chain %s: deleted %d uncommitted event rows left by an interrupted write",
                    chain_id,
                    removed,
                )
            chain = PartitionChain.resume(
                chain_id, head, self.settings.max_event_bytes, earliest_offset=earliest, kind=kind
            )
            chain.gate = self.gate
            return chain

        chain = await loop.run_in_executor(self.executor, load)
        log.info(
            "chain %s resumes at height %d, next offset %s",
            chain_id,
            chain.height,
            chain.next_offset,
        )
        self.chains[part] = chain
        return chain

    # ------------------------------------------------------------- records
    async def handle(self, records: list[Record]) -> None:
        async with self.lock:
            epoch = self._epoch
            if self._backoff_s:
                await asyncio.sleep(self._backoff_s)
            sealed: list[SealedBlock] = []
            rejected: list[tuple[Part, Rejected]] = []
            timestamps: dict[str, list[float]] = {}
            now_mono = time.monotonic()
            now = time.time()
            blocked: set[Part] = set()
            for rec in records:
                p = (rec.topic or self.settings.topic_events, rec.partition)
                if p in blocked:
                    continue
                chain = self.chains.get(p)
                if chain is None:
                    # The head must include every block already sealed for it.
                    await self.drain()
                    if self._epoch != epoch:
                        self.forget(set(self.chains))
                        return
                    try:
                        chain = await self._load(p)
                    except (CareledgerError, OSError) as exc:
                        self._store_unavailable(
                            exc,
                            {(r.topic or self.settings.topic_events, r.partition) for r in records},
                        )
                        return
                target = self.seek_targets.get(p)
                if target is not None:
                    expected, since = target
                    if rec.offset > expected:
                        if now_mono - since < SEEK_PATIENCE_S:
                            continue  # records fetched before the seek are still draining
                        # Only Kafka can say whether offsets are really gone.
                        earliest = await self._earliest(p)
                        if earliest > expected:
                            log.warning(
                                "chain %s: offsets %d..%d are no longer in Kafka; "
                                "recorded as absent",
                                chain.chain_id,
                                expected,
                                earliest - 1,
                            )
                            chain.accept_gap(earliest)
                            expected = earliest
                        blocked.add(p)
                        self.seek_targets[p] = (expected, now_mono)
                        await self._request_seek(p, expected)
                        continue
                    self.seek_targets.pop(p, None)
                try:
                    bad = chain.add(rec.offset, rec.value, rec.key, rec.timestamp, now_mono)
                except OffsetGap as gap:
                    # The consumer is ahead of the stored head (e.g. faust committed
                    # offsets of records we had not stored yet): go back.
                    blocked.add(p)
                    self.seek_targets[p] = (gap.expected, now_mono)
                    self.metrics.seeks += 1
                    log.info(
                        "chain %s: seeking back to offset %d",
                        chain.chain_id,
                        gap.expected,
                    )
                    await self._request_seek(p, gap.expected)
                    continue
                if bad is not None:
                    rejected.append((p, bad))
                    continue
                timestamps.setdefault(chain.chain_id, []).append(rec.timestamp)
                if len(chain.pending) >= self.settings.block_max_events:
                    block = chain.seal(self.key, now)
                    if block is not None:
                        sealed.append(block)
            for chain in self.chains.values():
                if chain.due(now_mono, self.settings.block_max_events, self.max_age_s):
                    block = chain.seal(self.key, now)
                    if block is not None:
                        sealed.append(block)
            self.metrics.duplicates_skipped = sum(
                c.duplicates_skipped for c in self.chains.values()
            )
            await self._submit(epoch, sealed, rejected, timestamps)

    async def flush_aged(self) -> None:
        """Timer: close blocks whose first record is older than ``block_max_ms``."""
        async with self.lock:
            if self._recover:
                await self._recover_positions()
            if self._deferred_seeks:
                await self._run_deferred_seeks()
            if self._unchecked:
                await self._check_assigned()
            epoch = self._epoch
            now_mono = time.monotonic()
            now = time.time()
            sealed = []
            for chain in self.chains.values():
                if chain.due(now_mono, self.settings.block_max_events, self.max_age_s):
                    block = chain.seal(self.key, now)
                    if block is not None:
                        sealed.append(block)
            if sealed:
                await self._submit(epoch, sealed, [], {})

    def _store_unavailable(self, exc: BaseException, partitions: set[Part]) -> None:
        """The store cannot be read or written: drop state, remember what to re-read."""
        self.metrics.store_failures += 1
        self._backoff_s = min(max(self._backoff_s * 2, 0.5), 10.0)
        self._epoch += 1
        self._recover |= set(self.chains) | partitions
        self.forget(set(self.chains))
        log.error(
            "store unavailable (%s); will resume partitions %s from the store",
            getattr(exc, "code", type(exc).__name__),
            sorted(self._recover),
        )

    async def _recover_positions(self) -> None:
        """After a failure, seek each affected partition back to its stored head.

        Without this, records acked by the consumer but never stored would wait
        for the next record of their partition to be noticed.
        """
        for p in sorted(self._recover):
            await self.drain()
            try:
                chain = await self._load(p)
            except (CareledgerError, OSError) as exc:
                log.warning("still cannot read the store (%s)", getattr(exc, "code", exc))
                return
            self._recover.discard(p)
            if chain.next_offset is not None:
                self.seek_targets[p] = (chain.next_offset, time.monotonic())
                self.metrics.seeks += 1
                await self._request_seek(p, chain.next_offset)

    async def _check_assigned(self) -> None:
        """Seek newly assigned partitions back if the consumer starts past the stored head.

        The group's committed offset can be ahead of the store (a crash after a
        best-effort commit, before the write). When records keep arriving, the
        first one reveals the gap (``OffsetGap``); when none arrive, nothing
        would, and the unstored records would wait for new traffic on that
        partition. So compare the consumer's position with the stored head as
        soon as the assignment has settled: seeking earlier races the fetcher. The
        position compared is the group's committed offset (where the fetcher starts).
        """
        now = time.monotonic()
        for p, since in sorted(self._unchecked.items()):
            if now - since < ASSIGNMENT_SETTLE_S:
                continue
            if p in self.chains:  # records arrived: ``handle`` already compared
                self._unchecked.pop(p, None)
                continue
            try:
                position = await self._position(p)
            except Exception as exc:  # not positioned yet (e.g. mid-rebalance): retry
                log.debug("position of %s not available yet: %s", p, exc)
                continue
            if position is None:
                continue
            if position == 0:  # nothing can lie before the first offset
                self._unchecked.pop(p, None)
                continue
            await self.drain()
            try:
                chain = await self._load(p)
            except (CareledgerError, OSError) as exc:
                self._store_unavailable(exc, {p})
                self._unchecked.pop(p, None)
                return
            self._unchecked.pop(p, None)
            expected = chain.next_offset
            if expected is not None and position > expected:
                log.info(
                    "chain %s: consumer starts at offset %d past the stored head; "
                    "seeking back to offset %d",
                    chain.chain_id,
                    position,
                    expected,
                )
                self.seek_targets[p] = (expected, time.monotonic())
                self.metrics.seeks += 1
                await self._request_seek(p, expected)

    async def _submit(
        self,
        epoch: int,
        sealed: list[SealedBlock],
        rejected: list[tuple[Part, Rejected]],
        timestamps: dict[str, list[float]],
    ) -> None:
        """Start writing after the previous write succeeded; never two at once.

        If the previous write failed, what was sealed on top of it is dropped with
        the rest of the in-memory state; those records are read again from Kafka.
        """
        await self.drain()
        if self._epoch != epoch:
            self.forget(set(self.chains))
            return
        if sealed or rejected:
            self._inflight = asyncio.create_task(self._persist(sealed, rejected, timestamps))

    async def _persist(
        self,
        sealed: list[SealedBlock],
        rejected: list[tuple[Part, Rejected]],
        timestamps: dict[str, list[float]],
    ) -> bool:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            await loop.run_in_executor(self.executor, self._persist_sync, sealed, rejected)
        except (CareledgerError, OSError, RuntimeError) as exc:
            # Fail closed: forget everything in memory (sealed blocks included) and
            # resume from what the store really holds.
            log.error("persisting %d blocks failed", len(sealed))
            self._store_unavailable(exc, set())
            return False
        self._backoff_s = 0.0
        if sealed:
            newest: dict[str, BlockHeader] = {}
            for block in sealed:
                newest[block.header.chain_id] = block.header
            self.outputs.publish_checkpoints(list(newest.values()), self.key)
        stored_at = time.time()
        elapsed = time.monotonic() - started
        m = self.metrics
        m.dead_lettered += len(rejected)
        m.quarantined += sum(1 for _, r in rejected if r.quarantine)
        for block in sealed:
            h = block.header
            m.blocks_written += 1
            m.events_chained += h.event_count
            m._window_events += h.event_count
            m.heights[h.chain_id] = h.height
        m.block_write_seconds_total += elapsed * len(sealed)
        for ts_list in timestamps.values():
            m.observe_latencies(stored_at, ts_list)
        return True

    async def handle_baseline(self, records: list[Record]) -> None:
        """Benchmark baseline: consume and insert the same records, no chaining or signing."""
        rows = [(r.partition, r.offset, r.value or b"") for r in records]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self.executor,
            self.store.backend.insert,
            f"{self.store.db}.baseline_events",
            ("partition", "kafka_offset", "value"),
            rows,
        )
        stored_at = time.time()
        self.metrics.events_chained += len(rows)
        self.metrics._window_events += len(rows)
        self.metrics.observe_latencies(stored_at, [r.timestamp for r in records])

    def _persist_sync(
        self, sealed: list[SealedBlock], rejected: list[tuple[Part, Rejected]]
    ) -> None:
        if rejected:
            self.outputs.send_dead_letters(rejected)  # flushes; raises on any failed delivery
        if sealed:
            self.store.write_blocks(sealed)


def quarantine_alerts(quarantined: list[tuple[Part, Rejected]]) -> list[dict[str, Any]]:
    """One integrity alert per (reason, claimed source, claimed key) of a write batch.

    Quarantined records are well-formed events that cannot be attributed to a
    registered source: forged, replayed or signed with a revoked key. The alert names
    the reason, the claim and where the records are; never their content.
    """
    groups: dict[tuple[str, str, str], list[tuple[Part, Rejected]]] = {}
    for part, r in quarantined:
        claim = dict(r.claim)
        key = (r.code, claim.get("source_id", ""), claim.get("key_id", ""))
        groups.setdefault(key, []).append((part, r))
    docs = []
    for (code, source_id, key_id), items in sorted(groups.items()):
        _first_part, first = items[0]
        positions = [f"{t}/{p}@{r.offset}" for (t, p), r in items]
        digest = hashlib.sha256(
            "\x00".join(("careledger-quarantine/1", code, *positions[:1])).encode()
        ).hexdigest()[:32]
        docs.append(
            {
                "schema": "careledger.alert/1",
                "source": "processor",
                "alert_id": digest,
                "rule": f"SOURCE_{code}",
                "severity": "critical" if code in _FORGERY_CODES else "high",
                "status": "open",
                "evidence": {
                    "reason": first.reason,
                    "claimed_source_id": source_id or None,
                    "claimed_key_id": key_id or None,
                    "records": len(items),
                    "positions": positions[:50],
                    "quarantine_topic_note": "original bytes are in the quarantine topic",
                },
            }
        )
    return docs


#: reasons that mean someone produced records they could not have signed
_FORGERY_CODES: Final = frozenset({"BAD_SIGNATURE", "BAD_PROOF", "REPLAYED", "KEY_NOT_FOR_SOURCE"})


class KafkaOutputs:
    """What the processor writes to Kafka: dead letters and chain-head checkpoints."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        self.settings = settings
        self.topic = settings.topic_dead_letter
        self.checkpoint_failures = 0
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.max.bytes": max(settings.max_event_bytes * 20, 1_000_000),
            }
        )

    def send_dead_letters(self, rejected: list[tuple[Part, Rejected]]) -> None:
        """Send and flush: a dead letter must be in Kafka before its offset is in a block."""
        failures: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        quarantined: list[tuple[Part, Rejected]] = []
        for (source_topic, partition), r in rejected:
            headers: list[tuple[str, str | bytes | None]] = [
                ("careledger-error-code", r.code.encode()),
                ("careledger-error", r.reason.encode("utf-8", errors="replace")),
                ("careledger-error-field", r.field.encode("utf-8", errors="replace")),
                ("careledger-source-topic", source_topic.encode()),
                ("careledger-source-partition", str(partition).encode()),
                ("careledger-source-offset", str(r.offset).encode()),
            ]
            topic = self.topic
            if r.quarantine:
                topic = self.settings.topic_quarantine
                quarantined.append(((source_topic, partition), r))
            self._producer.produce(
                topic, value=r.value, key=r.key, headers=headers, on_delivery=on_delivery
            )
        for doc in quarantine_alerts(quarantined):
            self._producer.produce(
                self.settings.topic_alerts,
                value=json.dumps(doc, sort_keys=True).encode(),
                key=doc["alert_id"].encode(),
                on_delivery=on_delivery,
            )
        remaining = self._producer.flush(30.0)
        if remaining or failures:
            raise RuntimeError(
                f"dead-letter delivery failed: {len(failures)} errors, {remaining} not flushed"
            )

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for everything produced (checkpoints included) to be
        delivered; returns how many messages are still undelivered."""
        return int(self._producer.flush(timeout))

    def publish_checkpoints(self, heads: list[BlockHeader], key: SigningKey) -> None:
        """Publish a C2SP signed-note checkpoint of each new chain head (not flushed here).

        Checkpoints live outside ClickHouse, so someone who can only rewrite the
        store cannot hide a truncation from a verifier that reads them. A lost
        checkpoint is harmless: the next block's checkpoint supersedes it.
        """

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                self.checkpoint_failures += 1

        for head in heads:
            note = sign_note(format_checkpoint(checkpoint_for(head)), self.settings.origin, key)
            self._producer.produce(
                self.settings.topic_checkpoints,
                value=note.encode("utf-8"),
                key=head.chain_id.encode("utf-8"),
                on_delivery=on_delivery,
            )
        self._producer.poll(0)


def _quiet_monitor() -> Any:
    """faust's Monitor without its per-event bookkeeping.

    The default Monitor updates several counters and timestamps for every
    message and every stream event; at tens of thousands of events per second
    that is a measurable share of a core. Our own metrics are per block.
    """
    from faust.sensors.monitor import Monitor

    class QuietMonitor(Monitor):
        def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
            pass

        def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
            return None

        def on_stream_event_out(
            self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None
        ) -> None:
            pass

        def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
            pass

    return QuietMonitor


def source_gate(settings: Settings) -> SourceGate:
    """The processor's source checks: the registry is read from the sources topic
    (registrar-signed key events, checked against ``trusted_registrar_keys``)."""
    registrars = {k.key_id: k for k in load_public_keys(settings.trusted_registrar_keys)}

    def load() -> Any:
        from careledger.sources import read_registry

        registry, problems = read_registry(settings, registrars)
        for problem in problems:
            log.warning("source registry: skipped a key event: %s", problem)
        return registry

    gate = SourceGate(
        require_signatures=settings.require_source_signatures,
        load_registry=load if registrars else None,
        max_skew_s=settings.source_max_skew_s,
    )
    if registrars:
        gate.refresh(force=True)
    elif settings.require_source_signatures:
        log.warning("no trusted registrar key: every access event will be quarantined")
    return gate


def create_app(
    settings: Settings, key: SigningKey, store: ChainStore, *, baseline: bool = False
) -> Any:
    import faust
    from faust.types import TP

    web_enabled = settings.processor_web_port > 0
    datadir = settings.run_dir / "faust" / settings.processor_app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.processor_app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=web_enabled,
        web_port=settings.processor_web_port if web_enabled else 6066,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.processor_session_timeout_s,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=16384,
        broker_max_poll_records=5000,
        producer_acks=-1,
        Monitor=_quiet_monitor(),
        # faust's default is "<app id>-data" in the working directory.
        datadir=str(datadir),
    )
    chained = (
        settings.topic_events,
        *sorted(reference_topics(settings)),
        *sorted(raw_topics(settings)),  # the gateway's raw records (issue 4)
    )
    topic = app.topic(
        *chained,
        value_type=bytes,
        key_type=bytes,
        value_serializer="raw",
        key_serializer="raw",
    )

    async def seek(part: Part, offset: int) -> None:
        await app.consumer.seek(TP(*part), offset)

    async def earliest(part: Part) -> int:
        tp = TP(*part)
        offsets = await app.consumer.earliest_offsets(tp)
        return int(offsets.get(tp) or 0)

    committed_reader: list[Any] = []

    def committed_offset(part: Part) -> int | None:
        # The group's committed offset, read by a consumer of our own that never
        # joins the group: asking aiokafka for its position from here raced its
        # fetcher (KeyError in the record drain, a crashed worker).
        from confluent_kafka import Consumer, TopicPartition

        if not committed_reader:
            committed_reader.append(
                Consumer(
                    {
                        "bootstrap.servers": settings.kafka_bootstrap,
                        "group.id": settings.processor_app_id,
                        "enable.auto.commit": False,
                    }
                )
            )
        [tp] = committed_reader[0].committed([TopicPartition(*part)], timeout=10)
        return max(int(tp.offset), 0)  # no commit yet (negative): nothing to compare

    async def position(part: Part) -> int | None:
        tp = TP(*part)
        if app.rebalancing or tp not in app.consumer.assignment():
            return None
        return await asyncio.get_running_loop().run_in_executor(
            processor.executor, committed_offset, part
        )

    processor = Processor(
        settings,
        key,
        store,
        seek,
        earliest,
        KafkaOutputs(settings),
        position=None if baseline else position,  # the baseline keeps no chains
        gate=None if baseline else source_gate(settings),
    )
    app.careledger_processor = processor  # type: ignore[attr-defined]  # for tests
    take_max = max(1000, settings.block_max_events * min(settings.partitions, 4))
    within = max(settings.block_max_ms / 2000.0, 0.01)

    @app.agent(topic, name="chain-events")
    async def chain_events(stream: Any) -> None:
        async for events in stream.take_events(take_max, within=within):
            records = [
                Record(
                    e.message.partition,
                    e.message.offset,
                    e.message.key,
                    e.message.value,
                    e.message.timestamp,
                    e.message.topic,
                )
                for e in events
            ]
            if baseline:
                await processor.handle_baseline(records)
            else:
                await processor.handle(records)

    @app.timer(interval=max(settings.block_max_ms / 2000.0, 0.01))  # type: ignore[untyped-decorator]
    async def close_aged_blocks() -> None:
        await processor.flush_aged()

    metrics_path = settings.run_dir / "metrics" / f"processor-{settings.processor_app_id}.json"

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def report_metrics() -> None:
        snap = processor.metrics.snapshot()
        processor.metrics.roll_window()
        log.info(
            "chained=%d blocks=%d dead_lettered=%d rate=%.0f/s p50=%s p99=%s",
            snap["events_chained"],
            snap["blocks_written"],
            snap["dead_lettered"],
            snap["events_per_s_recent"],
            snap["latency_p50_s"],
            snap["latency_p99_s"],
        )
        write_metrics(metrics_path, snap)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        # Finish our write before anyone else may resume these chains from the store,
        # and hand the checkpoints of what we wrote to Kafka (also on shutdown).
        await processor.drain()
        await asyncio.get_running_loop().run_in_executor(None, processor.outputs.flush, 5.0)
        processor.revoked({(tp.topic, tp.partition) for tp in revoked if tp.topic in chained})

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
        await processor.drain()
        processor.assigned({(tp.topic, tp.partition) for tp in assigned if tp.topic in chained})

    if web_enabled:

        @app.page("/careledger/metrics/")
        async def metrics_page(self: Any, request: Any) -> Any:
            return self.json(processor.metrics.snapshot())

    return app


def write_metrics(path: Path, snapshot: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(snapshot), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write metrics file %s: %s", path, exc)


def configure_process(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loglevel", default="info", help="faust worker log level")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="benchmark baseline: consume and insert into baseline_events without chaining",
    )


def command_process(args: argparse.Namespace, settings: Settings) -> int:
    import faust

    try:  # a faster event loop when available (Linux wheels on PyPI)
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    try:
        key = load_signing_key(default_key_path(settings))
    except CareledgerError as exc:
        print(f"careledger process: {exc}")
        return 2
    store = ChainStore.for_settings(ClickHouseBackend.from_settings(settings), settings)
    app = create_app(settings, key, store, baseline=args.baseline)
    log.info(
        "processor %s: topic %s, blocks of <= %d events or %d ms, signing key %s",
        settings.processor_app_id,
        settings.topic_events,
        settings.block_max_events,
        settings.block_max_ms,
        key.key_id,
    )
    worker = faust.Worker(app, loglevel=args.loglevel, quiet=True, redirect_stdouts=False)
    # Runs the worker until it stops, then exits the process itself (typed NoReturn).
    worker.execute_from_commandline()
