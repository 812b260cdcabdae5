"""``careledger alerts forward`` on real Kafka: at least once, in order, position kept.

Records published to the alerts topic (alerts, a verifier finding, and bytes that are
not JSON) reach a TLS syslog receiver and an HTTPS webhook on loopback; the webhook's
first answer is a 503, which must be retried, not skipped. A second forwarder of the
same name starts where the first committed. A forwarder that dies after a sink took a
record but before the commit delivers that record again: at least once, nothing lost.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger.stack.acls import ensure_acls
from tests.unit.test_alert_forward import ALERT, SECRET, _client, pki, syslog_server, webhook
from verifiers.auditor.forward import Delivery, SyslogTlsSink, WebhookSink
from verifiers.auditor.forward_cli import forward

pytestmark = pytest.mark.integration
__all__ = ["pki", "syslog_server", "webhook"]  # fixtures shared with the unit tests


def _publish(settings: Settings, values: list[bytes]) -> None:
    producer = Producer(kafka_config(settings, ADMIN, {"acks": "all"}))
    for value in values:
        producer.produce(settings.topic_alerts, value=value, key=b"k")
    assert producer.flush(30) == 0


class _Recorder:
    name = "recorder"

    def __init__(self, die_on: int | None = None) -> None:
        self.got: list[str] = []
        self.die_on = die_on

    def deliver(self, delivery: Delivery, record: Mapping[str, Any]) -> None:
        self.got.append(delivery.delivery_id)
        if self.die_on is not None and len(self.got) == self.die_on:
            raise RuntimeError("killed between delivery and commit")

    def close(self) -> None:
        pass


def test_alerts_reach_syslog_and_a_webhook_at_least_once_from_the_kept_position(
    isolated: Settings,
    pki: dict[str, Path],
    syslog_server: tuple[int, list[bytes]],
    webhook: tuple[str, Any],
) -> None:
    ensure_acls(isolated)  # the forwarder's group (ADR 0033)
    alerts = [json.dumps(dict(ALERT, alert_id=f"a{n}")).encode() for n in range(3)]
    finding = json.dumps({"code": "HEIGHT_FORK", "severity": "critical", "message": "m"})
    _publish(isolated, [*alerts, finding.encode(), b"\x00not json"])

    port, received = syslog_server
    url, hook = webhook
    sinks = [
        SyslogTlsSink("localhost", port, _client(pki)),
        WebhookSink(url, SECRET, _client(pki)),
    ]
    stats = forward(isolated, sinks, name="t", max_messages=5, timeout_s=60)
    assert stats.forwarded == 5 and stats.bad_records == 1 and stats.retries >= 1
    posted = [json.loads(body)["record"] for _headers, body in hook.got]
    # the 503 was retried: every record posted, in order, the first one twice
    assert [r.get("alert_id") or r["code"] for r in posted[1:]] == [
        "a0",
        "a1",
        "a2",
        "HEIGHT_FORK",
        "BAD_ALERT_RECORD",
    ]

    # a second forwarder of the same name starts after what the first committed
    _publish(isolated, [json.dumps(dict(ALERT, alert_id="a9")).encode()])
    later = _Recorder()
    assert forward(isolated, [later], name="t", max_messages=1, timeout_s=60).forwarded == 1
    assert len(later.got) == 1 and later.got[0].endswith("/5")

    # killed after the sink took record 2 of a new forwarder, before its commit
    dying = _Recorder(die_on=2)
    with pytest.raises(RuntimeError):
        forward(isolated, [dying], name="crash", timeout_s=60)
    again = _Recorder()
    forward(isolated, [again], name="crash", max_messages=5, timeout_s=60)
    assert dying.got[1] == again.got[0], "the record not committed was not delivered again"
    assert set(dying.got) | set(again.got) == {f"{isolated.topic_alerts}/0/{n}" for n in range(6)}
    # the syslog receiver got the five records of the first forwarder, in order
    for sink in sinks:
        sink.close()
    deadline = time.monotonic() + 10
    while len(received) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    ids = [re.search(rb"externalId=(\S+)", m) for m in received]
    assert [m[1] for m in ids if m][:3] == [b"a0", b"a1", b"a2"], received
