"""The processor fails closed: a failed write never leaves a gap, a fork or a duplicate.

Drives ``processors.app.Processor`` directly (no faust) over the real ClickHouse
store, with one injected write failure, and replays Kafka's behaviour: records
arrive in batches, and after a seek they arrive again from the asked offset.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from careledger.config import Settings
from careledger.storage.backend import StorageError
from careledger.storage.store import (
    EVENT_COLUMNS,
    ChainHead,
    ChainStore,
    SealedBlock,
    event_rows,
)
from careledger_core.event import canonical_event_bytes
from careledger_core.signing import SigningKey, TrustedKeys
from processors.app import Processor, Record
from producers.simulator import HospitalModel, simulate
from tests.integration.pipeline import committed_event_count, store_for, stored_event_ids
from verifiers.integrity.fsck import verify_chain

KEY = SigningKey.from_seed(hashlib.sha256(b"careledger failure test key").digest())


class FlakyStore(ChainStore):
    """The real store, except that chosen write calls fail (after a partial write)."""

    def __init__(
        self, inner: ChainStore, fail_calls: set[int], fail_head_calls: set[int] = frozenset()
    ) -> None:
        super().__init__(inner.backend, inner.db)
        self.calls = 0
        self.fail_calls = fail_calls
        self.head_calls = 0
        self.fail_head_calls = fail_head_calls

    def head(self, chain_id: str) -> Any:
        self.head_calls += 1
        if self.head_calls in self.fail_head_calls:
            raise StorageError("injected: ClickHouse unreachable while reading the head")
        return super().head(chain_id)

    def write_blocks(self, blocks: list[SealedBlock], *, owner: str | None = None) -> set[str]:  # type: ignore[override]
        self.calls += 1
        if self.calls in self.fail_calls:
            # Worst case: the event rows reached ClickHouse, the headers did not.
            self.backend.insert(f"{self.db}.access_events", EVENT_COLUMNS, event_rows(blocks))
            raise StorageError("injected: connection lost before the header insert")
        return super().write_blocks(blocks, owner=owner)


class NoKafka:
    def send_dead_letters(self, rejected: list[Any]) -> None:
        pass

    def publish_checkpoints(self, heads: list[Any], key: Any) -> None:
        pass

    def publish_blocks(self, blocks: list[Any]) -> None:
        pass


def _run(settings: Settings, store: ChainStore, payloads: list[bytes]) -> list[tuple[int, int]]:
    """Feed records like a consumer would, honouring seeks. Returns the seeks made."""
    seeks: list[tuple[int, int]] = []
    partition = 0
    position = {"next": 0}  # the consumer position Kafka would have

    async def seek(p: int, offset: int) -> None:
        seeks.append((p, offset))
        position["next"] = offset

    async def earliest(p: int) -> int:
        return 0

    async def main() -> None:
        proc = Processor(settings, KEY, store, seek, earliest, NoKafka())
        for _ in range(500):
            proc._backoff_s = 0.0  # no need to wait in a test
            start = position["next"]
            if start < len(payloads):
                batch = payloads[start : start + 250]
                position["next"] = start + len(batch)
                await proc.handle(
                    [Record(partition, start + i, b"k", v, 0.0) for i, v in enumerate(batch)]
                )
                continue
            # Kafka is drained: the timer closes open blocks and re-reads what a
            # failure made the processor forget (a seek moves the position back).
            for chain in proc.chains.values():
                if chain.opened_at is not None:
                    chain.opened_at = -1e9
            await proc.flush_aged()
            await proc.drain()
            if (
                position["next"] >= len(payloads)
                and not proc._recover
                and all(c.opened_at is None for c in proc.chains.values())
            ):
                return
        raise AssertionError("the processor did not settle")

    asyncio.run(main())
    return seeks


@pytest.mark.parametrize(
    ("fail_calls", "fail_head_calls"),
    [
        ({3, 7}, set()),  # writes fail mid-stream
        ({1}, set()),  # the very first write fails
        ({6}, set()),  # the last write of the stream fails: no record will come after it
        (set(), {1, 2}),  # the head cannot be read when a chain is first loaded
        ({4}, {3}),  # a write fails, then the store is still down when resuming
    ],
    ids=["mid-stream", "first-write", "last-write", "head-unreadable", "still-down"],
)
def test_a_failed_write_is_resumed_from_the_store_without_gap_or_duplicate(
    isolated: Settings, fail_calls: set[int], fail_head_calls: set[int]
) -> None:
    settings = isolated.replace(block_max_events=100, block_max_ms=60_000)
    events = list(simulate(HospitalModel(seed=4), count=1_500, seed=4))
    payloads = [canonical_event_bytes(e) for e in events]
    store = FlakyStore(store_for(settings), fail_calls, fail_head_calls)
    seeks = _run(settings, store, payloads)

    assert max(fail_calls, default=0) <= store.calls, "the injected failure did not happen"
    if fail_calls:
        assert seeks, "after a failed write the processor must seek back to the stored head"
    assert committed_event_count(store) == len(events)
    stored = stored_event_ids(store)
    assert sorted(stored) == sorted(e.event_id for e in events)
    report = verify_chain(
        store, settings.chain_id(settings.topic_events, 0), TrustedKeys([KEY.public_key])
    )
    assert report.result == "intact", [f.to_dict() for f in report.findings]
    assert report.uncommitted_events == 0


class BehindStore(FlakyStore):
    """A write fails after its rows and header were stored on one replica, and the
    replica read next has not fetched that write yet: for ``lag_reads`` head reads it
    answers the head below (ADR 0030 addendum)."""

    def __init__(self, inner: ChainStore, fail_call: int, lag_reads: int) -> None:
        super().__init__(inner, set())
        self.fail_call, self.lag_reads, self.stale_heads = fail_call, lag_reads, 0
        self.below = -1  # the head before the failed write

    def write_blocks(self, blocks: list[SealedBlock], *, owner: str | None = None) -> set[str]:  # type: ignore[override]
        self.calls += 1
        fenced = ChainStore.write_blocks(self, blocks, owner=owner)
        if self.calls == self.fail_call:
            self.below = min(b.header.height for b in blocks) - 1
            raise StorageError("injected: the replica died before answering")
        return fenced

    def head(self, chain_id: str) -> Any:
        head = super().head(chain_id)
        if self.calls >= self.fail_call and self.lag_reads and head is not None:
            self.lag_reads -= 1
            self.stale_heads += 1
            rows = self.backend.execute(
                f"SELECT height, block_hash, last_offset FROM {self.db}.blocks "
                "WHERE chain_id = %(c)s AND height <= %(h)s ORDER BY height DESC LIMIT 1",
                {"c": chain_id, "h": self.below},
            )
            if not rows:
                return None
            height, block_hash, last_offset = rows[0]
            text = block_hash.decode() if isinstance(block_hash, bytes) else block_hash
            return ChainHead(chain_id, int(height), text, int(last_offset))
        return head


def test_a_replica_read_behind_a_write_this_processor_stored_is_waited_for_not_forked(
    isolated: Settings,
) -> None:
    """Without the wait the processor resumed below its own stored blocks and wrote those
    heights again: the fence refused the second header, and the chain stopped as if
    another processor had taken it."""
    settings = isolated.replace(block_max_events=100, block_max_ms=60_000)
    events = list(simulate(HospitalModel(seed=6), count=1_500, seed=6))
    payloads = [canonical_event_bytes(e) for e in events]
    store = BehindStore(store_for(settings), fail_call=2, lag_reads=3)
    _run(settings, store, payloads)

    assert committed_event_count(store) == len(events)
    assert sorted(stored_event_ids(store)) == sorted(e.event_id for e in events)
    report = verify_chain(
        store, settings.chain_id(settings.topic_events, 0), TrustedKeys([KEY.public_key])
    )
    assert report.result == "intact", [f.to_dict() for f in report.findings]
    assert store.stale_heads == 3, "the stale reads did not happen"
