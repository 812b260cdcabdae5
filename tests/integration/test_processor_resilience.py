"""The processor recovers by itself from a ClickHouse outage (issue 12, ADR 0027).

The repro an operator ran: events flowing, ClickHouse stopped for 20 s, started again.
The processor died about 5 s after ClickHouse was back (aiokafka's ``KeyError
(TopicPartition(...))`` on the seek back, "Drain messages raised"), 2 runs of 2, and
chaining stopped until a manual restart.

The test stops a ClickHouse server of its own (private ports and run dir; the shared
broker, isolated topics), so that other sessions using the shared stack are untouched.
Nothing is mocked: the real processor (``careledger process``) on the real services.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from careledger import stack as stack_mod
from careledger.config import Settings
from careledger.kafka.producer import AccessEventProducer
from careledger.kafka.security import ADMIN
from careledger.keys import load_signing_key, write_keypair
from careledger.sources import register_key
from careledger.stack.paths import _paths
from careledger.stack.processes import _our_pid, _terminate
from producers.simulator import HospitalModel, simulate
from tests.integration.pipeline import (
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

OUTAGE_S = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop_clickhouse(settings: Settings) -> None:
    p = _paths(settings)
    pid = _our_pid(p.clickhouse_pid, str(p.clickhouse_config))
    assert pid is not None, "the test's own ClickHouse is not running"
    _terminate(pid, "ClickHouse")
    p.clickhouse_pid.unlink(missing_ok=True)


@pytest.fixture
def own_clickhouse(isolated: Settings, tmp_path: Path) -> Iterator[Settings]:
    """``isolated`` on a ClickHouse server of the test's own (the shared Kafka broker)."""
    own = isolated.replace(
        run_dir=tmp_path / "run",
        clickhouse_port=_free_port(),
        clickhouse_http_port=_free_port(),
    )
    # Kafka answers on its port (the shared broker): only ClickHouse is started
    status = stack_mod.up(own, quiet=True, topics=False)
    assert status.started == ("clickhouse",)
    try:
        yield own
    finally:
        p = _paths(own)
        pid = _our_pid(p.clickhouse_pid, str(p.clickhouse_config))
        if pid is not None:
            _terminate(pid, "ClickHouse")


class Flow:
    """Events produced steadily on a thread until stopped; their ids once acknowledged."""

    def __init__(self, settings: Settings, per_flush: int = 20, pause_s: float = 0.02) -> None:
        self.settings = settings
        self.per_flush = per_flush
        self.pause_s = pause_s
        self.ids: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flow", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Flow:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        events = iter(simulate(HospitalModel(seed=27), count=10**6, seed=27))
        try:
            with AccessEventProducer(self.settings) as producer:
                while not self._stop.is_set():
                    batch = [next(events) for _ in range(self.per_flush)]
                    for e in batch:
                        producer.send(e)
                    producer.flush()  # raises unless Kafka acknowledged every event
                    self.ids += [e.event_id for e in batch]
                    time.sleep(self.pause_s)  # many small records: a fetcher with a backlog
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc
            raise


def test_clickhouse_stopped_for_20s_while_events_flow_needs_no_operator(
    own_clickhouse: Settings, tmp_path: Path
) -> None:
    settings = processor_settings(with_keys(own_clickhouse, tmp_path), block_max_events=200)
    log = tmp_path / "processor.log"
    proc = start_processor(settings, log)
    store = store_for(settings)
    try:
        with Flow(settings) as flow:
            wait_until(lambda: committed_event_count(store) >= 300, 90, what="chaining started")
            _stop_clickhouse(settings)
            time.sleep(OUTAGE_S)
            stack_mod.up(settings, quiet=True, topics=False)  # ClickHouse again, same data
            # the processor died ~5 s after ClickHouse came back: events keep flowing
            # twice that long
            time.sleep(10.0)
            assert proc.poll() is None, "the processor died after ClickHouse came back"
        assert flow.error is None, flow.error
        produced = flow.ids
        store = store_for(settings)
        wait_until(
            lambda: committed_event_count(store) >= len(produced) or proc.poll() is not None,
            180,
            what="every acknowledged event chained",
        )
        time.sleep(2.0)
        assert proc.poll() is None, "the processor died"
    finally:
        stop(proc)
    text = log.read_text(errors="replace")
    assert "Drain messages raised" not in text
    assert "store unavailable" in text, "the outage was not noticed: no failure exercised"
    stored = stored_event_ids(store)
    assert len(stored) == len(set(stored)), "an event is stored twice"
    assert sorted(stored) == sorted(produced), "stored events differ from acknowledged events"
    assert committed_event_count(store) == len(produced), "events outside a signed block"
    result = run_cli(settings, "verify", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report


def test_a_source_registered_while_the_processor_runs_is_chained_not_quarantined(
    isolated: Settings, tmp_path: Path
) -> None:
    """The registry follower (ADR 0027): a key registered after the processor started,
    used at once, is found by one incremental read, off the event loop."""
    settings = processor_settings(with_keys(isolated, tmp_path), block_max_events=100)
    log = tmp_path / "processor.log"
    proc = start_processor(settings, log)
    store = store_for(settings)
    try:
        first = list(simulate(HospitalModel(seed=31), count=100, seed=31))
        with AccessEventProducer(settings) as producer:
            for e in first:
                producer.send(e)
            producer.flush()
        wait_until(lambda: committed_event_count(store) >= 100, 90, what="first events chained")
        # a new source, registered now by the registrar the processor trusts
        assert settings.registrar_key is not None
        source_path = tmp_path / "keys" / "late-source.key"
        source = write_keypair(source_path)
        register_key(
            settings,
            load_signing_key(settings.registrar_key, env={}),
            "late-source",
            source.public_key,
            principal=ADMIN,
        )
        late = settings.replace(source_id="late-source", source_key=source_path)
        second = list(simulate(HospitalModel(seed=32), count=300, seed=32))
        with AccessEventProducer(late) as producer:
            for e in second:
                producer.send(e)
            producer.flush()
        wait_until(lambda: committed_event_count(store) >= 400, 90, what="late source chained")
        assert proc.poll() is None
    finally:
        stop(proc)
    assert sorted(stored_event_ids(store)) == sorted(e.event_id for e in first + second)
    text = log.read_text(errors="replace")
    assert "UNKNOWN_KEY" not in text
