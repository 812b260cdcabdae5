"""The processor's /health and /metrics on the real stack (issue 13, point 5): chained
events counted, the lag of every assigned partition labelled and back to 0 once
everything is chained, healthy while it chains."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from careledger.config import Settings
from careledger.kafka.producer import AccessEventProducer
from producers.simulator import HospitalModel, simulate
from tests.integration.pipeline import (
    committed_event_count,
    processor_settings,
    start_processor,
    stop,
    store_for,
    wait_until,
    with_keys,
)

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metrics(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        f.name: [(dict(s.labels), s.value) for s in f.samples]
        for f in text_string_to_metric_families(text)
    }


def test_the_processor_reports_chained_events_and_partition_lag(
    isolated: Settings, tmp_path: Path
) -> None:
    port = _free_port()
    settings = processor_settings(with_keys(isolated, tmp_path), block_max_events=100).replace(
        metrics_port=port
    )
    proc = start_processor(settings, tmp_path / "processor.log")
    store = store_for(settings)
    try:
        events = list(simulate(HospitalModel(seed=3), count=400, seed=3))
        with AccessEventProducer(settings) as producer:
            for e in events:
                producer.send(e)
            producer.flush()
        wait_until(lambda: committed_event_count(store) >= 400, 120, what="events chained")

        def settled() -> bool:
            try:
                m = _metrics(port)
            except OSError:
                return False
            lag = m.get("careledger_processor_partition_lag", [])
            chained = m.get("careledger_processor_events_chained", [({}, 0.0)])[0][1]
            access = [v for labels, v in lag if settings.topic_events in labels["partition"]]
            return chained >= 400 and bool(access) and not any(access)

        wait_until(settled, 60, what="the metrics caught up")
        m = _metrics(port)
        # a lag per partition whose chain is loaded (it carried records): the same
        # partitions as the chain heights
        lagged = {labels["partition"] for labels, _ in m["careledger_processor_partition_lag"]}
        chains = {labels["chain"] for labels, _ in m["careledger_processor_chain_heights"]}
        assert {
            settings.chain_id(*p.rsplit("/", 1)[:1], int(p.rsplit("/", 1)[1])) for p in lagged
        } == chains
        assert m["careledger_processor_refused_partitions"][0][1] == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            assert r.status == 200 and json.loads(r.read())["status"] == "ok"
    finally:
        stop(proc)
