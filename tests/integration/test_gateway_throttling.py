"""A source over its byte rate (issue 12, ADR 0025), against a real gateway and Kafka:
its HTTP requests get 429 with Retry-After and nothing is recorded for them (the retry
is recorded once); its syslog stream is read more slowly and loses nothing; another
source is not held up."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from careledger.config import Settings
from producers.gateway.framing import octet_counted
from tests.integration.pipeline import wait_until
from tests.integration.test_gateway import (
    Running,
    atna_xml,
    health_text,
    post,
    r4_event,
    read_topic,
    relaying_gateway,
    send_stream,
    syslog_message,
)

pytestmark = pytest.mark.integration

RATE = 16 * 1024  # bytes per second per source
BURST = 64 * 1024  # = gateway_max_record_bytes, the smallest burst allowed


@pytest.fixture
def throttled(isolated: Settings, tmp_path: Path) -> Iterator[Running]:
    with relaying_gateway(
        isolated,
        tmp_path,
        gateway_max_record_bytes=BURST,
        gateway_source_bytes_per_s=RATE,
        gateway_source_burst_bytes=BURST,
    ) as running:
        yield running


def _raw_by_source(settings: Settings, want: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for m in read_topic(settings, settings.topic_raw, want):
        source = json.loads(m.value())["transport"]["source_id"]
        counts[source] = counts.get(source, 0) + 1
    return counts


def test_an_http_source_over_its_rate_gets_429_and_its_retry_is_recorded_once(
    throttled: Running,
) -> None:
    accepted, refused = 0, None

    def padded(i: int) -> dict[str, object]:
        doc = r4_event("PAT-RATE-1")
        doc["outcomeDesc"] = f"request {i} " + "x" * 3000  # ~4 KB: the burst is ~16
        return doc

    size = len(json.dumps(padded(10)).encode())
    started = time.monotonic()
    for i in range(40):
        r = post(throttled, "/AuditEvent", padded(i))
        if r.status_code == 429:
            refused = r
            break
        assert r.status_code == 201, r.text
        accepted += 1
    elapsed = time.monotonic() - started
    assert refused is not None, "a source sending 40 x 4 KB at once was never throttled"
    # the burst, and what the rate refilled meanwhile (a slower machine takes longer to
    # send them, so more is refilled: the bound is the time it took, not a constant)
    assert BURST // size - 1 <= accepted <= (BURST + RATE * elapsed) // size + 1, (
        accepted,
        elapsed,
    )
    wait = int(refused.headers["retry-after"])
    assert wait >= 1
    issue = refused.json()["issue"][0]
    assert (issue["code"], issue["details"]["coding"][0]["code"]) == ("throttled", "THROTTLED")
    # another source (syslog, open by address) is not held up by this one's debt
    send_stream(throttled, "syslog-tcp", octet_counted(syslog_message(atna_xml(["MRN-R1"]))))
    # the refused request, sent again after Retry-After, is recorded once
    time.sleep(wait)
    again = post(throttled, "/AuditEvent", padded(accepted))  # the refused one
    assert again.status_code == 201, again.text
    counts = _raw_by_source(throttled.settings, accepted + 2)
    assert counts == {"ehr-east": accepted + 1, "pacs-net": 1}
    assert "1 requests refused" in health_text(throttled)


def test_a_syslog_stream_over_its_rate_is_slowed_and_loses_nothing(throttled: Running) -> None:
    frames = [
        octet_counted(syslog_message(atna_xml([f"MRN-S{i}"], filler=3000))) for i in range(30)
    ]
    stream = b"".join(frames)
    assert len(stream) > BURST + 2 * RATE  # at least ~2 s over the rate
    started = time.monotonic()
    send_stream(throttled, "syslog-tcp", stream)  # returns once all is processed
    elapsed = time.monotonic() - started
    counts = _raw_by_source(throttled.settings, len(frames))
    assert counts == {"pacs-net": len(frames)}  # every frame, once
    # read at the source's rate: (bytes over the burst) / rate, with a wide margin
    assert elapsed >= 0.5 * (len(stream) - BURST) / RATE
    wait_until(lambda: "streams slowed" in health_text(throttled), 10, what="health")
