"""A recreated events topic stops the processor in one line (issue 12).

Seen while upgrading a development run directory by removing only Kafka's data: the
new topics' offsets start again at 0, below the heads the ledger stored, so the
processor took every new record for one it had chained, skipped it, and the demo
waited silently at "chained 0 / 1,000,000". The same happens to a partition truncated
by an unclean leader election. The attack here: chain events, delete and recreate the
events topic, send new events, start the processor again. It must refuse in one line
naming the chain and the offsets, exit 2, and chain nothing on top of the old chain.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from careledger import stack as stack_mod
from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.producer import AccessEventProducer
from careledger.kafka.security import ADMIN
from careledger.stack.readiness import ADMIN_SETTINGS
from careledger.stack.topics import delete_topics
from producers.simulator import HospitalModel, simulate
from tests.integration.pipeline import (
    committed_event_count,
    processor_settings,
    start_processor,
    stop,
    store_for,
    wait_until,
)

pytestmark = pytest.mark.integration


def _send(settings: Settings, count: int, seed: int, per_flush: int) -> None:
    """Events in flushes of ``per_flush``: the SDK sends a flush as one batch record per
    partition (ADR 0020), so many flushes put several records in each partition."""
    events = list(simulate(HospitalModel(seed=seed), count=count, seed=seed))
    with AccessEventProducer(settings) as producer:
        for at in range(0, count, per_flush):
            for e in events[at : at + per_flush]:
                producer.send(e)
            producer.flush()


def _recreate_events_topic(settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient

    name = settings.topic_events
    delete_topics(settings, [name])
    admin = AdminClient(kafka_config(settings, ADMIN, ADMIN_SETTINGS))
    wait_until(lambda: name not in admin.list_topics(timeout=5).topics, 30, what="topic deleted")
    stack_mod.ensure_topics(settings, {name: settings.partitions})


def test_a_recreated_events_topic_is_refused_in_one_line(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = processor_settings(isolated, block_max_events=20, block_max_ms=200)
    first = tmp_path / "first.log"
    proc = start_processor(settings, first)
    store = store_for(settings)
    try:
        _send(settings, 60, seed=41, per_flush=4)  # heads at offsets well above 0
        wait_until(lambda: committed_event_count(store) >= 60, 90, what="first events chained")
    finally:
        stop(proc)
    chained = committed_event_count(store)
    assert chained == 60

    _recreate_events_topic(settings)
    _send(settings, 12, seed=42, per_flush=12)  # offsets from 0 again, below the heads

    second = tmp_path / "second.log"
    proc = start_processor(settings, second)
    try:
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert proc.poll() is not None, "the processor waits silently on a recreated topic"
    finally:
        stop(proc)
    text = second.read_text(errors="replace")
    assert proc.returncode == 2, text[-3000:]
    said = [line for line in text.splitlines() if line.startswith("careledger process: ")]
    assert len(said) == 1, text[-3000:]
    line = said[0]
    assert settings.chain_id(settings.topic_events, 0)[:-1] in line  # names the chain
    assert "ends at offset" in line and "recreated or truncated" in line
    assert "Traceback" not in text
    assert "\x1b" not in text, "a terminal escape sequence in the processor's log"
    assert committed_event_count(store) == chained, "records chained on top of the old chain"
