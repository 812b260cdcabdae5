"""The chaining processor: validate, chain per partition, sign, store.

``Processor`` owns no Kafka consumer: processors.app feeds it faust's batches
and timer ticks and gives it seek/earliest/position callables.

Commit order (read this before changing anything; ADR 0003):

1. Records of a partition are validated and appended to that partition's open
   block (``PartitionChain``). Bad records become dead-letter records. A batch record's
   events (ADR 0020) go into one block together; an event refused alone out of it
   becomes a dead-letter record of its own.
2. When a block closes (``block_max_events`` events, or ``block_max_ms`` after
   its first record), it is hashed, Merkle-rooted and signed.
3. Persist, in this order: flush the dead-letter records of the closed ranges
   to Kafka (acks=all) -> insert the blocks' event rows (one batched insert) ->
   insert the header rows. A block exists only once its header row exists. Then
   publish the blocks to the blocks topic for replicas, flushed (ADR 0017,
   processors.replication), then the checkpoints.
4. Only then does faust ack the records, so its offset commits trail the store.

The consumer position is *not* trusted to Kafka's committed offsets: when a
chain is (re)loaded, the stored head (height, hash, last offset) is the source
of truth. Records at or below the head are skipped as already chained; a
record beyond the next expected offset makes the processor seek back. Event
rows a crash left without a header are deleted before the chain continues.
So a crash at any instant loses nothing and duplicates nothing.

Bad input never stops the processor; storage or Kafka failures make it drop
its in-memory state, back off and resume from the store (fail closed).

Replays (ADR 0015). The source gate's sequence numbers (``processors.seq_state``) are
rebuilt from the store: a snapshot when the first access-event chain is loaded, the rows
other writers committed since whenever a chain is (re)loaded and every
``seq_refresh_ms`` while another instance writes chains, and this process's own writes
after each successful write. Nothing of it is read per event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import KafkaException

from careledger.config import Settings
from careledger.storage.kinds import kind_for_topic
from careledger.storage.store import ChainStore, SealedBlock
from careledger_core.errors import CareledgerError
from careledger_core.signing import SigningKey
from processors.baseline import store_baseline
from processors.chainer import (
    KafkaBehindLedger,
    OffsetGap,
    PartitionChain,
    Rejected,
    check_partition_end,
)
from processors.checkpoint_trees import BlockTrees, chain_updates, loaded_tree
from processors.metrics import ProcessorMetrics
from processors.ownership import ChainOwnership
from processors.records import Part, Record
from processors.replication import publish_stored, republish_unpublished
from processors.seq_state import load_snapshot, read_increment
from processors.sources import RegistryStale, SourceGate

log = logging.getLogger("careledger.processor")

# How long records fetched before a seek may keep arriving before we ask Kafka
# whether the expected offsets still exist and seek again.
SEEK_PATIENCE_S = 5.0
# A seek no record has answered is asked again from the timer after SEEK_PATIENCE_S,
# then after twice as long each time, up to this: a seek can be lost (records fetched
# before it, drained after it) and a silent partition sends nothing that would reveal it.
SEEK_RETRY_MAX_S = 60.0
# How long after an assignment before the consumer's position is compared with
# the stored head: the fetcher must have its positions first.
ASSIGNMENT_SETTLE_S = 2.0


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
        seq_store: ChainStore | None = None,  # a connection of its own for the gate's reads
        end_offset: Any = None,  # async callable ((topic, partition)) -> its high watermark
    ) -> None:
        self.settings = settings
        #: source-signature checks of access events (ADR 0010); None: plain events only
        self.gate = gate
        self._position = position
        self._end_offset = end_offset
        #: partitions refused because Kafka ends before their stored head, with why
        self.refused: dict[Part, str] = {}
        #: called with the reason when a partition is refused (the worker stops on it)
        self.on_refused: Any = None
        self.key = key
        self.store = store
        self._seek = seek
        self._earliest = earliest
        self.outputs = outputs
        # Keyed by (topic, partition): access events and each reference stream
        # have chains of their own.
        self.chains: dict[Part, PartitionChain] = {}
        self.seek_targets: dict[Part, tuple[int, float]] = {}
        self._seek_waits: dict[Part, float] = {}  # the timer's next patience per target
        self.metrics = ProcessorMetrics()
        self.lock = asyncio.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="careledger-store")
        self.max_age_s = settings.block_max_ms / 1000.0
        self._backoff_s = 0.0
        # At most one write in flight: batch N+1 is validated and sealed while
        # batch N is being written. Anything that reads the store (loading a
        # chain head) or gives a partition away waits for it first (``drain``).
        self._inflight: asyncio.Task[bool] | None = None
        # Blocks the timer closed while a write was in flight, with the epoch they were
        # sealed in: they go out with the next write instead of a write of their own
        # (each write has fixed statements, ~50 ms on 18.16), and ``drain`` writes them.
        self._queued: list[SealedBlock] = []
        self._queued_epoch = 0
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
        # The chain tree before and after each sealed block not yet published, by block
        # hash: a write's checkpoints are made from them (``chain_updates``).
        self._trees: BlockTrees = {}
        # Broker times of the records in each chain's open block, and of each sealed block
        # not yet stored, with the number of events each carried: latency is measured
        # per event from the broker's append to the store write of the event's block.
        self._open_times: dict[str, list[tuple[float, int]]] = {}
        self._block_times: dict[bytes, list[tuple[float, int]]] = {}
        # The gate's periodic reads of other writers' sequence numbers (ADR 0015) use a
        # connection and a thread of their own, so they never wait behind a write.
        self._seq_store = seq_store
        self._seq_executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="careledger-seqs")
            if seq_store is not None
            else None
        )
        self._seq_synced_at = -1e18
        self._seq_refresh_s = settings.seq_refresh_ms / 1000.0
        self._access_prefix = settings.chain_id(settings.topic_events, 0)[:-1]
        # one writer per chain, enforced by the store (ADR 0031)
        self.ownership = ChainOwnership(settings.processor_app_id)

    async def drain(self) -> None:
        """Wait until every block sealed so far has been written (or its write failed):
        the in-flight write, then the blocks queued behind it."""
        while True:
            await self._settle()
            queued = self._take_queued(self._epoch)
            if not queued:
                return
            self._inflight = asyncio.create_task(self._persist(queued, []))

    async def _settle(self) -> None:
        """Wait until no write is in flight (one may start while we wait: wait again)."""
        while (task := self._inflight) is not None:
            await task
            if self._inflight is task:
                self._inflight = None

    def _take_queued(self, epoch: int) -> list[SealedBlock]:
        """The queued blocks, if sealed in ``epoch`` (older ones were built on state
        that never reached the store: dropped, as ``_submit`` drops its own)."""
        queued, self._queued = self._queued, []
        if queued and self._queued_epoch != epoch:
            self._drop_unwritten(queued)
            return []
        return queued

    def _queue(self, epoch: int, blocks: list[SealedBlock]) -> None:
        if not blocks:
            return
        if self._queued_epoch != epoch:
            self._take_queued(epoch)  # sealed in an older epoch: dropped
        self._queued += blocks
        self._queued_epoch = epoch

    def _drop_unwritten(self, blocks: list[SealedBlock]) -> None:
        for block in blocks:
            self._trees.pop(block.block_hash, None)
            self._block_times.pop(block.block_hash, None)

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
            self._seek_waits.pop(p, None)
            self._open_times.pop(self.settings.chain_id(*p), None)
        if self.gate is not None:
            # their unwritten records will be read again: not replays of themselves
            self.gate.seqs.forget(self.settings.chain_id(*p) for p in partitions)

    def assigned(self, partitions: set[Part]) -> None:
        """Partitions assigned: forget old state and check positions once settled."""
        self.forget(partitions)
        for p in partitions:
            self.refused.pop(p, None)  # checked again when loaded
        self.ownership.assigned(partitions)
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

    async def _retry_seeks(self) -> None:
        """Seek again where no record has arrived from the target offset since the last
        seek (ADR 0027): without this a lost seek waited for new traffic on the partition
        (``handle`` re-seeks only when a record past the target shows up)."""
        now = time.monotonic()
        for p, (expected, since) in sorted(self.seek_targets.items()):
            if p in self._deferred_seeks:
                continue
            wait = self._seek_waits.get(p, SEEK_PATIENCE_S)
            if now - since < wait:
                continue
            self._seek_waits[p] = min(wait * 2, SEEK_RETRY_MAX_S)
            self.seek_targets[p] = (expected, now)
            self.metrics.seeks += 1
            log.info(
                "chain %s: no record from offset %d yet; seeking again",
                self.settings.chain_id(*p),
                expected,
            )
            await self._request_seek(p, expected)

    def _refuse(self, part: Part, exc: KafkaBehindLedger) -> None:
        """Never chain ``part`` (until it is assigned again): Kafka lost what we chained."""
        self.refused[part] = exc.message
        self.metrics.refused_partitions = len(self.refused)
        log.error("%s", exc.message)
        if self.on_refused is not None:
            self.on_refused(exc.message)

    def revoked(self, partitions: set[Part]) -> None:
        self.ownership.revoked(partitions, [self.settings.chain_id(*p) for p in partitions])
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
        # the claim comes before the head is read (ADR 0031)
        claim_then_head = self.ownership.claim_then_head
        head = await loop.run_in_executor(self.executor, claim_then_head, self.store, chain_id)
        in_flight = self.ownership.check_head(chain_id, head)  # ADR 0030 addendum
        if head is not None and self._end_offset is not None:
            try:
                end = await self._end_offset(part)
            except KafkaException as exc:
                raise CareledgerError(str(exc), code="KAFKA_UNAVAILABLE") from exc
            check_partition_end(chain_id, part, head.last_offset + 1, end)
        # Only a new chain needs the partition's earliest offset; asking Kafka costs a
        # round trip through the consumer thread (up to a fetch wait), so skip it otherwise.
        earliest = 0 if head is not None else await self._earliest(part)

        if self.gate is not None and kind.signed:
            # before this chain's records are admitted, learn what was chained meanwhile
            await self._sync_seqs(self.executor, self.store, others_only=False)

        def load() -> PartitionChain:
            height = None if head is None else head.height
            removed = self.store.discard_uncommitted(chain_id, height, in_flight=in_flight)
            self.ownership.discarded(chain_id)
            if removed:
                log.warning(
                    "chain %s: deleted %d uncommitted event rows left by an interrupted write",
                    chain_id,
                    removed,
                )
            # ADR 0017: what a crash kept from the blocks topic goes there now
            republish_unpublished(self.store, self.outputs, chain_id, head)
            chain = PartitionChain.resume(
                chain_id,
                head,
                self.settings.max_event_bytes,
                earliest_offset=earliest,
                kind=kind,
                max_batch_record_bytes=self.settings.max_batch_record_bytes,
            )
            chain.gate = self.gate
            if head is not None:
                chain.tree = loaded_tree(self.store, chain_id, head.block_hash, head.height + 1)
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

    async def _sync_seqs(self, executor: Any, store: ChainStore, *, others_only: bool) -> None:
        """Bring the gate's chained sequence numbers up to date from the store (ADR 0015).

        The first time: the snapshot of every committed number. Then the rows committed
        above the heights already known: of every access-event chain (when a chain is
        loaded: its previous writer may have added some), or only of the chains this
        process does not write (the periodic refresh). Raises what the store raises.
        """
        assert self.gate is not None
        seqs = self.gate.seqs
        loop = asyncio.get_running_loop()
        if not seqs.loaded:
            started = time.monotonic()
            snap = await loop.run_in_executor(executor, load_snapshot, store, self._access_prefix)
            seqs.install(snap)
            log.info(
                "source sequence numbers loaded from the store: %d (source, epoch), %d runs, "
                "%d buckets and %d rows read, %.2f s",
                len(seqs.committed),
                seqs.runs(),
                snap.buckets,
                snap.rows_read,
                time.monotonic() - started,
            )
        else:
            mine = {self.settings.chain_id(*p) for p in self.chains}
            known = {
                self.settings.chain_id(self.settings.topic_events, n): -1
                for n in range(self.settings.partitions)
            }
            known.update(seqs.heights)
            since = {c: h for c, h in known.items() if not (others_only and c in mine)}
            rows, heights = await loop.run_in_executor(executor, read_increment, store, since)
            seqs.apply(rows, heights)
            self.metrics.seq_rows_refreshed += len(rows)
        self._seq_synced_at = time.monotonic()

    async def _refresh_seqs(self, records: list[Record]) -> bool:
        """Every ``seq_refresh_ms`` while access events arrive: what other instances
        chained since. False if the store cannot be read (the batch is not admitted)."""
        if self.gate is None or self._seq_refresh_s <= 0:
            return True
        if time.monotonic() - self._seq_synced_at < self._seq_refresh_s or not any(
            (r.topic or self.settings.topic_events) == self.settings.topic_events for r in records
        ):
            return True
        if not self.gate.seqs.loaded:
            return True  # loaded with the first access-event chain
        try:
            if self._seq_store is not None and self._seq_executor is not None:
                await self._sync_seqs(self._seq_executor, self._seq_store, others_only=True)
            else:
                await self.drain()
                await self._sync_seqs(self.executor, self.store, others_only=True)
        except (CareledgerError, OSError) as exc:
            self._store_unavailable(
                exc, {(r.topic or self.settings.topic_events, r.partition) for r in records}
            )
            return False
        return True

    def _seal(self, chain: PartitionChain, now: float) -> SealedBlock | None:
        """Seal the open block, remembering the chain tree before and after it."""
        before = chain.tree
        block = chain.seal(self.key, now)
        if block is not None:
            self._block_times[block.block_hash] = self._open_times.pop(chain.chain_id, [])
            if before is not None and chain.tree is not None:
                self._trees[block.block_hash] = (before, chain.tree)
        return block

    # ------------------------------------------------------------- records
    async def handle(self, records: list[Record]) -> None:
        started = time.monotonic()
        gate = self.gate
        if gate is not None:  # batch records read ahead by a worker (ADR 0039, ADR 0042)
            events = self.settings.topic_events
            gate.prefetch([r.value for r in records if (r.topic or events) == events and r.value])
        try:
            await self._handle(records)
        finally:
            if gate is not None:
                gate.forget_ahead()
            self.metrics.handle_seconds_total += time.monotonic() - started
            self.metrics.takes += 1

    async def _handle(self, records: list[Record]) -> None:
        async with self.lock:
            epoch = self._epoch
            if self._backoff_s:
                await asyncio.sleep(self._backoff_s)
            if not await self._refresh_seqs(records):
                return
            sealed: list[SealedBlock] = []
            rejected: list[tuple[Part, Rejected]] = []
            now_mono = time.monotonic()
            now = time.time()
            blocked: set[Part] = set()
            for rec in records:
                p = (rec.topic or self.settings.topic_events, rec.partition)
                if p in blocked or p in self.refused or not self.ownership.may_load(p):
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
                    except KafkaBehindLedger as exc:
                        self._refuse(p, exc)
                        blocked.add(p)
                        continue
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
                    self._seek_waits.pop(p, None)
                chained_before = len(chain.pending)
                try:
                    taken = await self._take(p, chain, rec, now_mono, epoch)
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
                if taken is None:  # revoked or reset while waiting: read again later
                    blocked.add(p)
                    continue
                bad = taken
                if bad:
                    rejected += [(p, r) for r in bad]
                if len(chain.pending) == chained_before:
                    continue
                # a batch record's events share its broker time: one sample, weighted
                self._open_times.setdefault(chain.chain_id, []).append(
                    (rec.timestamp, len(chain.pending) - chained_before)
                )
                if len(chain.pending) >= self.settings.block_max_events:
                    block = self._seal(chain, now)
                    if block is not None:
                        sealed.append(block)
            for chain in self.chains.values():
                if chain.due(now_mono, self.settings.block_max_events, self.max_age_s):
                    block = self._seal(chain, now)
                    if block is not None:
                        sealed.append(block)
            self.metrics.duplicates_skipped = sum(
                c.duplicates_skipped for c in self.chains.values()
            )
            await self._submit(epoch, sealed, rejected)

    async def _take(
        self, p: Part, chain: PartitionChain, rec: Record, now_mono: float, epoch: int
    ) -> list[Rejected] | None:
        """``chain.take``; a record naming a key id the source registry has not been read
        far enough to know waits for one incremental read, off the event loop (ADR 0027).
        None: the partition was revoked or the state reset meanwhile (nothing taken)."""
        args = (rec.offset, rec.value, rec.key, rec.timestamp, now_mono, rec.timestamp_type)
        try:
            return chain.take(*args)
        except RegistryStale as stale:
            assert self.gate is not None
            self.metrics.registry_waits += 1
            await asyncio.to_thread(self.gate.wait_for_registry, stale.appended_at)
            if self._epoch != epoch or self.chains.get(p) is not chain:
                return None
            return chain.take(*args)  # fresh now, or decided on the keys known

    async def flush_aged(self) -> None:
        """Timer: close blocks whose first record is older than ``block_max_ms``."""
        async with self.lock:
            if self._recover:
                await self._recover_positions()
            if self._deferred_seeks:
                await self._run_deferred_seeks()
            if self.seek_targets:
                await self._retry_seeks()
            if self._unchecked:
                await self._check_assigned()
            epoch = self._epoch
            now_mono = time.monotonic()
            now = time.time()
            sealed = []
            for chain in self.chains.values():
                if chain.due(now_mono, self.settings.block_max_events, self.max_age_s):
                    block = self._seal(chain, now)
                    if block is not None:
                        sealed.append(block)
            if self._inflight is not None and not self._inflight.done():
                # a write is in flight: these go out with the next one, which the
                # next take (or tick) starts, not in a write of their own after it
                self._queue(epoch, sealed)
                return
            if sealed or self._queued:
                await self._submit(epoch, sealed, [])

    @property
    def recovering(self) -> bool:
        """Partitions wait to be re-read from the store after it failed."""
        return bool(self._recover)

    def _store_unavailable(self, exc: BaseException, partitions: set[Part]) -> None:
        """The store cannot be read or written: drop state, remember what to re-read."""
        self.metrics.store_failures += 1
        self._backoff_s = min(max(self._backoff_s * 2, 0.5), 10.0)
        self._epoch += 1
        self._recover |= set(self.chains) | partitions
        self.forget(set(self.chains))
        self._trees.clear()
        self._block_times.clear()
        self._open_times.clear()
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
            if p in self.refused or not self.ownership.may_load(p):  # not ours (ADR 0031)
                self._recover.discard(p)
                continue
            await self.drain()
            try:
                chain = await self._load(p)
            except KafkaBehindLedger as exc:
                self._recover.discard(p)
                self._refuse(p, exc)
                continue
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
            except KafkaException as exc:  # not positioned yet (e.g. mid-rebalance): retry
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
            except KafkaBehindLedger as exc:
                self._unchecked.pop(p, None)
                self._refuse(p, exc)
                continue
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
    ) -> None:
        """Start writing after the previous write succeeded; never two at once. The
        blocks the timer queued meanwhile go first, in the same write.

        If the previous write failed, what was sealed on top of it is dropped with
        the rest of the in-memory state; those records are read again from Kafka.
        """
        waited = time.monotonic()
        await self._settle()
        self.metrics.write_wait_seconds_total += time.monotonic() - waited
        if self._epoch != epoch:
            self.forget(set(self.chains))
            self._drop_unwritten(self._take_queued(epoch) + sealed)  # queued ones too
            return
        # the blocks the timer queued were sealed before these: written first
        sealed = self._take_queued(epoch) + sealed
        if sealed or rejected:
            self._inflight = asyncio.create_task(self._persist(sealed, rejected))

    async def _persist(
        self,
        sealed: list[SealedBlock],
        rejected: list[tuple[Part, Rejected]],
    ) -> bool:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            fenced = await loop.run_in_executor(self.executor, self._persist_sync, sealed, rejected)
        except (CareledgerError, OSError, RuntimeError) as exc:
            # Fail closed: forget everything in memory (sealed blocks included) and
            # resume from what the store really holds.
            log.error("persisting %d blocks failed", len(sealed))
            self.ownership.failed(b.header.chain_id for b in sealed)
            self._store_unavailable(exc, set())
            return False
        self._backoff_s = 0.0
        if fenced:  # another processor owns these chains now: drop them, write nothing
            sealed = self._fenced_off(sealed, fenced)
        if self.gate is not None:
            self.gate.seqs.commit(sealed)  # stored: their sequence numbers are chained
        if sealed:
            self.outputs.publish_checkpoints(chain_updates(self._trees, sealed), self.key)
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
        m.writes += 1
        m.write_seconds_total += elapsed
        for block in sealed:  # produce -> stored in a signed block, per event
            m.observe_latencies(stored_at, self._block_times.pop(block.block_hash, ()))
        return True

    async def handle_baseline(self, records: list[Record]) -> None:
        """Benchmark baseline: store the same events without validating, chaining or
        signing (``processors.baseline.store_baseline``)."""
        await store_baseline(self.executor, self.store, self.metrics, records)

    def _fenced_off(self, sealed: list[SealedBlock], fenced: set[str]) -> list[SealedBlock]:
        parts = {p for p, c in self.chains.items() if c.chain_id in fenced}
        written = [(b.header.chain_id, b.block_hash.hex()) for b in sealed]
        self.ownership.lost(parts, sorted(fenced), written)
        self.metrics.fenced_writes += len(fenced)
        self.forget(parts)
        self._drop_unwritten([b for b in sealed if b.header.chain_id in fenced])
        return [b for b in sealed if b.header.chain_id not in fenced]

    def _persist_sync(
        self, sealed: list[SealedBlock], rejected: list[tuple[Part, Rejected]]
    ) -> set[str]:
        """Dead letters, then the blocks; returns the chains whose write was fenced."""
        if rejected:
            self.outputs.send_dead_letters(rejected)  # flushes; raises on any failed delivery
        if not sealed:
            return set()
        self.ownership.settle({b.header.chain_id for b in sealed})
        if self.gate is not None:  # ADR 0037: the keys, all at once
            for sealer in (self.gate.reference_sealer, self.gate.raw_sealer):
                if sealer is not None:
                    sealer.complete(sealed)
        fenced = self.store.write_blocks(sealed, owner=self.ownership.owner)
        placed = [b for b in sealed if b.header.chain_id not in fenced] if fenced else sealed
        self.ownership.stored((b.header.chain_id, b.header.height) for b in placed)
        # ADR 0017: in the blocks topic (flushed) before any checkpoint covers them
        publish_stored(self.store, self.outputs, placed)
        return fenced
