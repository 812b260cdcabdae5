"""A follower that dies between the stages of a cycle loses and duplicates nothing.

ADR 0029's commit order: a cycle's alert rows, then its alerts published, then its
decision rows (one INSERT, the commit point); a restarted follower resumes after the
highest block decided. The ledger is written with the real chainer into ClickHouse, the
alerts are published to a real Kafka topic; the crash is an exception no code of the
auditor catches (``Crash``, a BaseException) raised at one stage, after which the dead
follower's memory is dropped and a new one (another token, as a new process) takes over.
Run both ways: ``Follower.cycle`` and the threaded ``FollowPipeline``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger.storage.backend import ClickHouseBackend
from careledger.storage.kinds import ACCESS, REFERENCE
from careledger.storage.store import ChainStore, SealedBlock
from careledger_core.event import canonical_event_bytes
from careledger_core.reference import canonical_reference_bytes
from careledger_core.signing import SigningKey
from processors.chainer import PartitionChain
from tests.integration.pipeline import REPO, cli_env, wait_until
from tests.unit.test_auditor_rules import at, event, hospital
from verifiers.auditor.runner import AuditStore, Follower, KafkaAlertPublisher
from verifiers.auditor.runner.pipeline import FollowPipeline

pytestmark = pytest.mark.integration

KEY = SigningKey.from_seed(hashlib.sha256(b"careledger follow crash test").digest())
EVENTS = "o/careledger.access-events/0"
DIRECTORY = "o/careledger.workforce/0"
SALT = "follow-crash-test-salt"
STAGES = ("read", "alerts", "publish", "decisions", "done")
ALERTING = ("alerts", "publish")


class Crash(BaseException):
    """The process dies here (nothing of the auditor catches a BaseException)."""


class Faulty:
    """A store and publisher that die at ``stage`` of the second cycle that stores
    decisions: ``read`` (its read), ``alerts``, ``publish``, ``decisions`` (before each),
    ``done`` (just after its decisions are stored)."""

    def __init__(self, store: AuditStore, publisher: KafkaAlertPublisher, stage: str) -> None:
        self.store = store
        self.publisher = publisher
        self.stage = stage
        self.stored = 0  # cycles whose decisions were stored
        self.dead = False

    def _maybe(self, stage: str) -> None:
        # only the second cycle flags accesses: it alone stores and publishes alerts
        if self.dead or (stage == self.stage and (self.stored == 1 or stage in ALERTING)):
            self.dead = True
            raise Crash(stage)

    def __getattr__(self, name: str) -> Any:
        self._maybe("")
        return getattr(self.store, name)

    def events_of_chains(self, ranges: Any) -> Any:
        if ranges:
            self._maybe("read")
        return self.store.events_of_chains(ranges)

    def insert_alerts(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self._maybe("alerts")
        self.store.insert_alerts(rows)

    def publish(self, alert_id: str, document: dict[str, Any]) -> None:
        self._maybe("publish")
        self.publisher.publish(alert_id, document)

    def flush(self, timeout: float) -> int:
        return self.publisher.flush(timeout)

    def insert_decisions(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self._maybe("decisions")
        self.store.insert_decisions(rows)
        self.stored += 1
        if self.stored == 2 and self.stage == "done":
            self.dead = True
            raise Crash("done")


def _chain(
    chain_id: str, payloads: list[bytes], per_block: int, reference: bool
) -> list[SealedBlock]:
    chain = PartitionChain.resume(
        chain_id, None, 65536, earliest_offset=0, kind=REFERENCE if reference else ACCESS
    )
    blocks: list[SealedBlock] = []
    for offset, value in enumerate(payloads):
        chain.add(offset, value, None, 0.0, 0.0)
        if len(chain.pending) == per_block:
            block = chain.seal(KEY, now=1_800_000_000.0 + offset)
            assert block is not None
            blocks.append(block)
    return blocks


def _read_alerts(settings: Settings, topic: str, timeout: float = 10.0) -> list[tuple[str, Any]]:
    consumer = Consumer(
        kafka_config(
            settings,
            ADMIN,
            {
                "group.id": f"test-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    consumer.subscribe([topic])
    out: list[tuple[str, Any]] = []
    deadline = time.monotonic() + timeout
    quiet = 0
    try:
        while time.monotonic() < deadline and quiet < 6:
            msg = consumer.poll(0.5)
            if msg is None:
                quiet += 1 if out else 0
                continue
            if msg.error():
                continue
            quiet = 0
            key, value = msg.key(), msg.value()
            assert key is not None and value is not None
            out.append((key.decode(), json.loads(value)))
    finally:
        consumer.close()
    return out


def _decision_counts(store: AuditStore) -> Counter[str]:
    rows = store.backend.execute(
        f"SELECT event_id FROM {store.db}.access_decisions WHERE amends = 0"
    )
    return Counter(r[0].decode() for r in rows)


def _alerts(store: AuditStore) -> dict[str, tuple[str, list[str]]]:
    """alert id -> (rule, event ids), the stored version of each alert."""
    rows = store.backend.execute(f"SELECT alert_id, rule, event_ids FROM {store.db}.alerts FINAL")
    return {r[0].decode(): (r[1].decode(), json.loads(r[2])) for r in rows}


def _no_flag_twice(alerts: dict[str, tuple[str, list[str]]]) -> set[str]:
    """The events alerted; asserts none is in two alerts of the same rule."""
    per_rule = Counter((rule, eid) for rule, ids in alerts.values() for eid in ids)
    twice = [key for key, n in per_rule.items() if n > 1]
    assert not twice, f"flags in two alerts of one rule: {twice}"
    return {eid for _rule, eid in per_rule}


@pytest.mark.parametrize("threads", [False, True], ids=["cycle", "pipeline"])
@pytest.mark.parametrize("stage", STAGES)
def test_a_follower_killed_between_stages_loses_and_duplicates_nothing(
    isolated: Settings, stage: str, threads: bool
) -> None:
    backend = ClickHouseBackend.from_settings(isolated)
    topics = frozenset({"careledger.workforce"})
    chains = ChainStore(backend, isolated.clickhouse_database, topics)
    store = AuditStore(backend, isolated.clickhouse_database, topics)
    try:
        refs = [canonical_reference_bytes(r) for r in hospital()]
        chains.write_blocks(_chain(DIRECTORY, refs, len(refs), reference=True))
        # cycle 1: explained accesses; cycle 2 (the one that dies): M1 snoops on two
        # patients nobody's team treats, and billing clerk B1 opens the VIP's record
        first = [event("N1", "P1", at(i)) for i in range(3)]
        second = [event("M1", f"P{2 + i % 2}", at(10 + i)) for i in range(4)]
        second.append(event("B1", "P3", at(20)))
        events = first + second
        blocks = _chain(EVENTS, [canonical_event_bytes(e) for e in events], 1, reference=False)
        chains.write_blocks(blocks[: len(first)])

        publisher = KafkaAlertPublisher(isolated)
        faulty = Faulty(store, publisher, stage)

        def run(source: Any, pub: Any) -> Follower:
            follower = Follower(source, salt=SALT, publisher=pub)
            if not threads:
                for _ in range(3):
                    follower.cycle()
                return follower
            pipeline = FollowPipeline(follower, interval_s=0.05)
            pipeline.start()
            try:
                for _ in range(6):
                    pipeline.step(5.0)
            finally:
                pipeline.close(5.0)
            return follower

        # the first run: its first cycle is stored, then it dies at ``stage`` of the next
        first_run = Follower(faulty, salt=SALT, publisher=faulty)
        first_run.cycle()
        assert _decision_counts(store) == Counter(e.event_id for e in first)
        chains.write_blocks(blocks[len(first) :])
        if threads:
            pipeline = FollowPipeline(first_run, interval_s=0.05)
            pipeline.start()
            with pytest.raises((Crash, RuntimeError)):
                for _ in range(6):
                    pipeline.step(5.0)
            pipeline.close(1.0)
        else:
            with pytest.raises(Crash):
                for _ in range(3):
                    first_run.cycle()
        assert faulty.dead, f"the first run died at {stage}"

        # a new process takes over
        second_run = run(store, publisher)
        counts = _decision_counts(store)
        assert counts == Counter(e.event_id for e in events), "each event decided once"
        alerts = _alerts(store)
        assert _no_flag_twice(alerts) == {e.event_id for e in second}, "every flag alerted"
        assert second_run.decided == (0 if stage == "done" else len(second))
        publisher.flush(10.0)
        published: dict[str, Any] = {}
        for alert_id, doc in _read_alerts(isolated, isolated.topic_alerts):
            published[alert_id] = doc  # the last published version of each alert
        assert {aid: sorted(d["event_ids"]) for aid, d in published.items()} == {
            aid: sorted(ids) for aid, (_rule, ids) in alerts.items()
        }, "every stored alert published as stored"
    finally:
        backend.close()


def test_audit_follow_killed_mid_stream_resumes_without_loss_or_duplicates(
    isolated: Settings, tmp_path: Path
) -> None:
    """``careledger audit --follow`` (threads) SIGKILLed while blocks keep landing."""
    settings = isolated.replace(audit_salt=SALT, audit_poll_interval_s=0.2)
    backend = ClickHouseBackend.from_settings(settings)
    topics = frozenset({"careledger.workforce"})
    chains = ChainStore(backend, settings.clickhouse_database, topics)
    store = AuditStore(backend, settings.clickhouse_database, topics)

    def follow(log: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "commands.cli", "audit", "--follow", "--stop-after", "120"],
            cwd=REPO,
            env=cli_env(settings),
            stdout=open(tmp_path / log, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    try:
        refs = [canonical_reference_bytes(r) for r in hospital()]
        chains.write_blocks(_chain(DIRECTORY, refs, len(refs), reference=True))
        actors = ("N1", "M1", "N2", "B1")
        events = [event(actors[i % 4], f"P{1 + (i // 4) % 3}", at(i / 60)) for i in range(4000)]
        blocks = _chain(EVENTS, [canonical_event_bytes(e) for e in events], 50, reference=False)
        proc = follow("audit-1.log")
        try:
            for i, block in enumerate(blocks):
                chains.write_blocks([block])
                if i == len(blocks) // 2:
                    wait_until(lambda: sum(_decision_counts(store).values()) > 0, 60)
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                    proc = follow("audit-2.log")
                time.sleep(0.02)
            wait_until(
                lambda: sum(_decision_counts(store).values()) >= len(events), 90, what="decided"
            )
            time.sleep(1.0)  # nothing more arrives
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        counts = _decision_counts(store)
        assert counts == Counter(e.event_id for e in events), "each event decided once"
        _no_flag_twice(_alerts(store))
    finally:
        backend.close()
