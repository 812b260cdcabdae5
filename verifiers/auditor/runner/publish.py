"""Alerts out: to ``Settings.topic_alerts`` as JSON (key = alert id) with an idempotent
producer; only alerts not already stored with the same content are published.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from careledger.kafka.clients import kafka_config
from careledger.kafka.security import AUDITOR

from .rows import dumps

log = logging.getLogger("careledger.auditor")


class AlertPublisher(Protocol):
    def publish(self, alert_id: str, document: dict[str, Any]) -> None: ...

    def flush(self, timeout: float) -> int: ...


class KafkaAlertPublisher:
    """JSON alerts to ``Settings.topic_alerts``, key = alert id (idempotent producer)."""

    def __init__(self, settings: Any, topic: str | None = None) -> None:
        from confluent_kafka import Producer

        self.topic = topic or settings.topic_alerts
        self.failed = 0
        self._producer = Producer(
            kafka_config(
                settings,
                AUDITOR,
                {
                    "client.id": "careledger-auditor",
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 5,
                    "message.timeout.ms": 60_000,
                },
            )
        )

    def publish(self, alert_id: str, document: dict[str, Any]) -> None:
        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                self.failed += 1
                log.error("alert %s not delivered to %s: %s", alert_id, self.topic, err)

        payload = dumps(document).encode("utf-8")
        while True:
            try:
                self._producer.produce(
                    self.topic, key=alert_id.encode(), value=payload, on_delivery=delivered
                )
                break
            except BufferError:
                self._producer.poll(0.5)
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> int:
        return int(self._producer.flush(timeout))
