"""The whole pipeline on the real broker and server: exactly once, crashes, poison.

Each test gets its own topics and ClickHouse database (fixture ``isolated``),
its own signing key and its own consumer group.
"""

from __future__ import annotations

import json
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.producer import AccessEventProducer
from careledger.kafka.security import ADMIN, PROCESSOR
from careledger.keys import load_public_keys
from careledger.storage.store import ChainStore
from careledger.storage.trees import stored_root
from careledger_core.batch_record import looks_batch
from careledger_core.block import decode_header
from careledger_core.checkpoint import Checkpoint, verify_checkpoint
from careledger_core.event import AccessEvent, canonical_event_bytes
from producers.simulator import HospitalModel, simulate
from tests.integration.pipeline import (
    accounted_offsets,
    committed_event_count,
    processor_settings,
    run_cli,
    start_processor,
    stop,
    store_for,
    stored_event_ids,
    wait_until,
    with_keys,
)

pytestmark = pytest.mark.integration


def _events(count: int, seed: int) -> list[AccessEvent]:
    return list(simulate(HospitalModel(seed=seed), count=count, seed=seed))


def accounted_records(
    store: ChainStore, where: str = "", params: dict[str, Any] | None = None
) -> int:
    """Kafka offsets the signed block headers account for (ADR 0003/0014/0020), summed over
    the blocks ``where`` selects: per block, the records carrying its events
    (``event_records``; ``event_count`` when each event came in a record of its own, the
    member then being absent) + the dead-lettered + the absent offsets. Equal to the sum of
    the high watermarks when every record of those topics is accounted for once."""
    rows = store.backend.execute(f"SELECT header FROM {store.db}.blocks{where}", params or {})
    total = 0
    for (raw,) in rows:
        h = decode_header(raw if isinstance(raw, bytes) else str(raw).encode())
        carrying = h.event_count if h.event_records is None else h.event_records
        total += carrying + h.dead_lettered + h.absent_offsets
    return total


def events_carried(value: bytes) -> int:
    """Events one record of the events topic carries: a batch record (ADR 0020) several."""
    return len(json.loads(value)["events"]) if looks_batch(value) else 1


def _assert_exactly_once(settings: Settings, produced_ids: list[str]) -> None:
    store = store_for(settings)
    stored = stored_event_ids(store)
    assert len(stored) == len(set(stored)), "an event is stored twice"
    assert sorted(stored) == sorted(produced_ids), "stored events differ from produced events"
    assert committed_event_count(store) == len(produced_ids), "events stored outside a signed block"


def _read_topic(settings: Settings, topic: str, idle_s: float) -> list[bytes]:
    consumer = Consumer(
        kafka_config(
            settings,
            ADMIN,
            {
                "group.id": f"reader-{time.monotonic_ns()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    last = time.monotonic()
    while time.monotonic() - last < idle_s:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        values.append(msg.value() or b"")
        last = time.monotonic()
    consumer.close()
    return values


def _verify_ok(settings: Settings) -> dict[str, Any]:
    result = run_cli(settings, "verify", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_simulated_traffic_is_chained_exactly_once_and_verifies(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = processor_settings(with_keys(isolated, tmp_path), block_max_events=500)
    events = _events(20_000, seed=7)
    proc = start_processor(settings, tmp_path / "processor.log")
    try:
        with AccessEventProducer(settings) as producer:
            for e in events:
                producer.send(e)
            producer.flush()
        store = store_for(settings)
        wait_until(
            lambda: committed_event_count(store) >= len(events), 180, what="20,000 chained events"
        )
        metrics_file = settings.run_dir / "metrics" / f"processor-{settings.processor_app_id}.json"

        def metrics_caught_up() -> bool:
            try:
                return bool(json.loads(metrics_file.read_text())["events_chained"] >= len(events))
            except (OSError, ValueError, KeyError):
                return False

        wait_until(metrics_caught_up, 15, what="the processor's metrics file")
        assert proc.poll() is None, "processor stopped"
    finally:
        stop(proc)
    _assert_exactly_once(settings, [e.event_id for e in events])
    all_heads = store.heads()
    heads = {c: h for c, h in all_heads.items() if f"/{settings.topic_events}/" in c}
    assert len(heads) == settings.partitions, "one chain per partition"
    # besides the access events: the test source's registration and heartbeats
    registry_records = accounted_offsets(store, settings.topic_sources)[0]
    assert set(all_heads) - set(heads) == (
        {settings.chain_id(settings.topic_sources, 0)} if registry_records else set()
    )
    metrics = json.loads(metrics_file.read_text())
    assert metrics["events_chained"] == len(events) + registry_records
    assert metrics["blocks_written"] == sum(h.height + 1 for h in all_heads.values())
    assert metrics["dead_lettered"] == 0
    assert metrics["chain_heights"] == {c: h.height for c, h in all_heads.items()}
    assert 0 < metrics["latency_p50_s"] <= metrics["latency_p99_s"]
    # Stored bytes are the canonical bytes the producer sent.
    row = store.backend.execute(
        f"SELECT event_id, canonical FROM {store.db}.access_events LIMIT 1"
    )[0]
    by_id = {e.event_id: e for e in events}
    assert row[1] == canonical_event_bytes(by_id[row[0].decode()])
    report = _verify_ok(settings)
    assert report["result"] == "intact"

    # Signed checkpoints of every chain head are published outside the store, each
    # signed under its chain id (the key name C2SP witnesses require, ADR 0018).
    trusted = load_public_keys(settings.trusted_keys)[0]
    latest: dict[str, Checkpoint] = {}
    for value in _read_topic(settings, settings.topic_checkpoints, idle_s=3.0):
        note = value.decode()
        chain = note.split("\n", 1)[0]
        cp = verify_checkpoint(note, {chain: trusted})
        assert cp.origin == chain
        latest[cp.origin] = cp
    assert set(latest) == set(all_heads)
    for chain_id, head in all_heads.items():
        assert latest[chain_id].height == head.height
        # ADR 0012: the root is the RFC 6962 tree over the chain's block hashes, built
        # incrementally by the processor; the head block is named in an extension line.
        assert latest[chain_id].is_tree
        assert latest[chain_id].head_hash.hex() == head.block_hash
        assert latest[chain_id].root_hash == stored_root(store, chain_id, head.height + 1)

    # Logs carry counts and chain ids, never patient identifiers.
    log_text = (tmp_path / "processor.log").read_text(errors="replace")
    assert "chained=" in log_text or "resumes at height" in log_text
    leaked = {e.patient.id for e in events if e.patient.id != "-" and e.patient.id in log_text}
    assert not leaked, f"patient identifiers in the processor log: {sorted(leaked)[:3]}"


def test_processor_killed_repeatedly_loses_and_duplicates_nothing(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = processor_settings(
        with_keys(isolated, tmp_path), block_max_events=300, block_max_ms=100
    )
    events = _events(20_000, seed=11)
    done = threading.Event()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            with AccessEventProducer(settings) as producer:
                for i, e in enumerate(events):
                    producer.send(e)
                    if i % 500 == 499:
                        producer.poll()
                        # ~600 events/s: the stream (~35 s) outlives four kill-and-rejoin
                        # cycles (each waits out the dead member's 6 s session)
                        time.sleep(0.8)
                producer.flush()
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            done.set()

    log = tmp_path / "processor.log"
    producer_thread = threading.Thread(target=produce)
    proc = start_processor(settings, log)
    producer_thread.start()
    rng = random.Random(3)
    kills = 0
    store = store_for(settings)
    try:
        while kills < 4:
            # Kill a processor that is really at work: wait until it has stored
            # something since it started (a fresh one first waits for the dead
            # member's session to expire), then strike at a random instant.
            before = committed_event_count(store)

            def progressed(b: int = before) -> bool:
                return committed_event_count(store) > b or committed_event_count(store) >= len(
                    events
                )

            wait_until(
                progressed,
                60,
                0.1,
                "processor progress",
            )
            time.sleep(rng.uniform(0.05, 1.0))
            stop(proc, signal.SIGKILL)
            kills += 1
            proc = start_processor(settings, log)
        producer_thread.join(timeout=120)
        assert done.is_set() and not errors, errors
        store = store_for(settings)
        wait_until(
            lambda: committed_event_count(store) >= len(events),
            240,
            what="all events chained after crashes",
        )
        time.sleep(2.0)
    finally:
        stop(proc)
    assert kills == 4
    resumed = re.findall(r"resumes at height (\d+)", log.read_text(errors="replace"))
    assert any(int(h) > 0 for h in resumed), "no restart resumed a chain mid-stream"
    _assert_exactly_once(settings, [e.event_id for e in events])
    doc = _verify_ok(settings)
    # Each restart rebuilt the chain trees from the stored block hashes (ADR 0012):
    # every checkpoint root matches the stored tree and every proof checks out.
    cp = doc["checkpoints"]
    assert cp["trees"]["matched"] > 0 and cp["trees"]["mismatched"] == 0, cp
    assert cp["proofs_verified"] > 0 and cp["proofs_unusable"] == 0 and cp["inconsistent"] == 0
    # ... and checkpoints kept coming after each restart, up to every stored head.
    assert all(c["known_height"] == c["head_height"] for c in doc["chains"]), doc["chains"]


def test_offsets_committed_ahead_of_the_store_do_not_skip_events(
    isolated: Settings, tmp_path: Path
) -> None:
    """Kafka's committed offsets are advisory: the stored chain head decides where to resume.

    Simulates the worst case of a crash after a best-effort offset commit but
    before the block reached ClickHouse: the group's committed offsets point
    past events that were never stored.
    """
    settings = processor_settings(with_keys(isolated, tmp_path))
    events = _events(2_000, seed=21)
    with AccessEventProducer(settings) as producer:
        for e in events:
            producer.send(e)
        producer.flush()
    committer = Consumer(
        kafka_config(
            settings,
            PROCESSOR,
            {
                "group.id": settings.processor_app_id,
                "enable.auto.commit": False,
            },
        )
    )
    ahead = [TopicPartition(settings.topic_events, p, 300) for p in range(settings.partitions)]
    committer.commit(offsets=ahead, asynchronous=False)
    committer.close()
    log = tmp_path / "processor.log"
    proc = start_processor(settings, log)
    try:
        store = store_for(settings)
        wait_until(
            lambda: committed_event_count(store) >= len(events), 120, what="all events chained"
        )
        time.sleep(1.0)
    finally:
        stop(proc)
    assert "seeking back to offset" in log.read_text(errors="replace")
    _assert_exactly_once(settings, [e.event_id for e in events])


def test_unstored_records_are_chained_even_when_no_new_record_arrives(
    isolated: Settings, tmp_path: Path
) -> None:
    """A crash after committing offsets of never-stored records, then silence.

    The group's committed offsets are at the end of every partition and no
    record is produced afterwards, so no record reaches the restarted processor
    to reveal the gap: it must compare its position with the stored head itself.
    """
    settings = processor_settings(with_keys(isolated, tmp_path))
    events = _events(1_000, seed=22)
    with AccessEventProducer(settings) as producer:
        for e in events:
            producer.send(e)
        producer.flush()
    committer = Consumer(
        kafka_config(
            settings,
            PROCESSOR,
            {
                "group.id": settings.processor_app_id,
                "enable.auto.commit": False,
            },
        )
    )
    at_end = []
    for p in range(settings.partitions):
        _low, high = committer.get_watermark_offsets(
            TopicPartition(settings.topic_events, p), timeout=10
        )
        at_end.append(TopicPartition(settings.topic_events, p, high))
    # the committed offsets are past every record: the records before them carry all the
    # events (a record per signed batch, ADR 0020)
    records = _read_topic(settings, settings.topic_events, idle_s=3.0)
    assert sum(tp.offset for tp in at_end) == len(records)
    assert sum(events_carried(v) for v in records) == len(events)
    committer.commit(offsets=at_end, asynchronous=False)
    committer.close()
    log = tmp_path / "processor.log"
    proc = start_processor(settings, log)
    try:
        store = store_for(settings)
        wait_until(
            lambda: committed_event_count(store) >= len(events), 120, what="all events chained"
        )
        time.sleep(1.0)
    finally:
        stop(proc)
    assert "past the stored head" in log.read_text(errors="replace")
    _assert_exactly_once(settings, [e.event_id for e in events])
    # every offset before the committed ones is accounted for in a signed header, once
    chains = {"chains": f"%/{settings.topic_events}/%"}
    chained = accounted_records(store, " WHERE chain_id LIKE %(chains)s", chains)
    assert chained == sum(tp.offset for tp in at_end)
    _verify_ok(settings)


def test_sigterm_stops_the_processor_cleanly(isolated: Settings, tmp_path: Path) -> None:
    settings = processor_settings(with_keys(isolated, tmp_path))
    proc = start_processor(settings, tmp_path / "processor.log")
    time.sleep(6.0)
    assert proc.poll() is None
    stop(proc, signal.SIGTERM, timeout=30)
    assert proc.returncode == 0, (tmp_path / "processor.log").read_text(errors="replace")[-3000:]


def test_poison_messages_are_dead_lettered_and_never_stop_the_processor(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = processor_settings(with_keys(isolated, tmp_path), block_max_events=400)
    valid = _events(9_000, seed=5)
    rng = random.Random(99)
    good = canonical_event_bytes(valid[0])
    poison_kinds: list[tuple[str, Callable[[int], bytes]]] = [
        ("EVENT_INVALID", lambda i: b"\xff\xfe not utf-8 " + bytes([i % 256])),
        ("EVENT_INVALID", lambda i: b'{"schema": "careledger.access-event/1", "event_id": '),
        ("EVENT_INVALID", lambda i: good.replace(b'"action":"', b'"action":"X', 1)),
        ("EVENT_INVALID", lambda i: good[:-1] + b',"unknown_field":' + str(i).encode() + b"}"),
        ("EVENT_INVALID", lambda i: b"[1,2,3]"),
        ("EVENT_TOO_LARGE", lambda i: b'{"pad":"' + b"x" * (settings.max_event_bytes + 10) + b'"}'),
    ]
    poison: list[tuple[str, bytes]] = []
    for i in range(1_000):
        code, make = poison_kinds[i % len(poison_kinds)]
        poison.append((code, make(i)))
    stream: list[tuple[str, object]] = [("ok", e) for e in valid] + [("bad", p) for p in poison]
    rng.shuffle(stream)

    proc = start_processor(settings, tmp_path / "processor.log")
    try:
        with AccessEventProducer(settings) as producer:
            for kind, item in stream:
                if kind == "ok":
                    producer.send(item)  # type: ignore[arg-type]
                else:
                    producer.send_raw(item[1], key=b"poison")  # type: ignore[index]
            producer.flush()
        store = store_for(settings)

        def all_accounted() -> bool:
            ev, dl, _ = accounted_offsets(store, settings.topic_events)
            return ev + dl >= len(stream)

        wait_until(all_accounted, 180, what="every offset accounted in a block")
        assert proc.poll() is None, "a poison message stopped the processor"
    finally:
        stop(proc)
    ev, dl, absent = accounted_offsets(store, settings.topic_events)
    assert (ev, dl, absent) == (len(valid), len(poison), 0)
    _assert_exactly_once(settings, [e.event_id for e in valid])

    consumer = Consumer(
        kafka_config(
            settings,
            ADMIN,
            {
                "group.id": f"dlq-check-{settings.processor_app_id}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    consumer.subscribe([settings.topic_dead_letter])
    seen: dict[tuple[int, int], tuple[bytes, dict[str, bytes]]] = {}
    deadline = time.monotonic() + 60
    while len(seen) < len(poison) and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        raw_headers = msg.headers() or []
        assert isinstance(raw_headers, list)
        headers = {k: v for k, v in raw_headers if isinstance(v, bytes)}
        source = (
            int(headers["careledger-source-partition"]),
            int(headers["careledger-source-offset"]),
        )
        seen[source] = (msg.value() or b"", headers)
    consumer.close()
    assert len(seen) == len(poison), "every malformed message is in the dead-letter topic once"
    expected_values = sorted(p[1] for p in poison)
    assert sorted(v for v, _ in seen.values()) == expected_values, "original bytes kept"
    codes = {h["careledger-error-code"].decode() for _, h in seen.values()}
    assert codes == {"EVENT_INVALID", "EVENT_TOO_LARGE"}
    assert all(h["careledger-error"] for _, h in seen.values()), "every record carries a reason"
    _verify_ok(settings)
