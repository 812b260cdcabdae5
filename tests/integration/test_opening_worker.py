"""The processor's worker process on the real stack (Kafka, ClickHouse, SoftHSM2): a
sealed ledger's opening worker (ADR 0039) opens what sources sealed, a ledger in clear's
checking worker (ADR 0042) checks its batch records; killed mid-stream, the processor
opens or checks records itself, starts it again, and loses and duplicates nothing;
killed itself, it leaves no worker behind (an opening worker holds the ingest key)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from careledger.config import Settings
from careledger.kafka.producer import AccessEventProducer
from careledger_core.event import AccessEvent
from tests.integration.pipeline import (
    committed_event_count,
    processor_settings,
    start_processor,
    stop,
    store_for,
    wait_until,
    with_keys,
    with_source,
)
from tests.integration.test_sealed_pipeline import _events, _identifiers, _sealed_settings, _verify

pytestmark = pytest.mark.integration


def _children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid``: their command lines."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry)] = cmdline
    return found


def _workers(pid: int) -> list[int]:
    """The processor's opening (checking) workers: its children, each one running
    ``processors.opening_ahead.serve``, and no other child (ADR 0044: multiprocessing's
    resource tracker, a 13 MB interpreter, is gone with the pool that needed it)."""
    children = _children(pid)
    assert all("processors.opening_ahead import serve" in cmd for cmd in children.values()), (
        children
    )
    return sorted(children)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _metrics(settings: Settings) -> dict[str, Any]:
    path = settings.run_dir / "metrics" / f"processor-{settings.processor_app_id}.json"
    try:
        found: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found


def _send(settings: Settings, events: list[AccessEvent]) -> None:
    with AccessEventProducer(settings) as producer:
        for e in events:
            producer.send(e)
        producer.flush()


@pytest.mark.parametrize("ledger", ["sealed", "in clear"])
def test_the_worker_killed_mid_stream_loses_and_duplicates_nothing(
    isolated: Settings, tmp_path: Path, ledger: str
) -> None:
    sealed = ledger == "sealed"
    if sealed:
        settings = _sealed_settings(isolated, tmp_path)
    else:
        settings = processor_settings(
            with_source(with_keys(isolated, tmp_path), tmp_path, source_id="ehr-main"),
            require_source_signatures=True,
        )
    ahead = "events_opened_ahead" if sealed else "events_checked_ahead"
    worker_name = "opening" if sealed else "checking"
    events = _events(2400, seed=47)
    first, second, third = events[:800], events[800:1600], events[1600:]
    _send(settings, first)
    log_path = tmp_path / "processor.log"
    proc = start_processor(settings, log_path)
    try:
        store = store_for(settings)
        wait_until(lambda: committed_event_count(store) >= len(first), 120, what="chained")
        # the worker opened (checked) them, and the loop found nothing amiss in what it sent
        wait_until(
            lambda: _metrics(settings).get(ahead, 0) >= len(first),
            30,
            what="the metrics of the events read ahead",
        )
        assert _metrics(settings)["opening_disagreements"] == 0
        (worker,) = _workers(proc.pid)

        # killed: the processor opens records itself meanwhile
        os.kill(worker, signal.SIGKILL)
        _send(settings, second)
        wait_until(
            lambda: committed_event_count(store) >= len(first) + len(second),
            120,
            what="chained with the worker killed",
        )
        wait_until(
            lambda: _metrics(settings).get("opening_worker_restarts", 0) >= 1,
            30,
            what="the worker's failure counted",
        )
        assert proc.poll() is None, "the processor stopped with its worker"
        # after the back-off, a new worker is started (the loop does not wait for it:
        # the take that starts it is opened in the loop) and opens the next records
        time.sleep(6)
        ahead_before = _metrics(settings)[ahead]
        chunks = [third[i : i + 100] for i in range(0, len(third), 100)]
        sent = len(first) + len(second)
        served = False
        for chunk in chunks:
            _send(settings, chunk)
            sent += len(chunk)
            wait_until(lambda n=sent: committed_event_count(store) >= n, 120, what="chained")
            if not served:
                deadline = time.monotonic() + 7  # the metrics file is written every 5 s
                while time.monotonic() < deadline and not served:
                    served = _metrics(settings).get(ahead, 0) > ahead_before
                    time.sleep(0.5)
        assert served, "the restarted worker read nothing"
        assert committed_event_count(store) == len(events)
        (new_worker,) = _workers(proc.pid)
        assert new_worker != worker

        # the processor killed outright: its worker does not outlive it
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while _alive(new_worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(new_worker), "the worker outlived its processor"
    finally:
        stop(proc)
    # nothing lost, nothing twice, every sealed part opens
    assert committed_event_count(store) == len(events)
    report = _verify(settings)
    assert report["result"] == "intact", report["findings"]
    if sealed:
        assert report["sealed"]["opened"] == len(events)  # type: ignore[index]
    # the worker's failure is one line in the log, naming no one and no traceback
    text = log_path.read_text(errors="replace")
    assert f"the {worker_name} worker stopped" in text, text[-3000:]
    assert "Traceback" not in text
    assert not [i for i in _identifiers(events) if i.decode() in text]
