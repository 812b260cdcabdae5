"""Sending decisions to be ledgered: the record as a raw record, its hash in a signed
event; an answer is given only once Kafka acknowledged both.

One writer thread commits in groups: it takes every decision queued since its last
round, produces their raw records (``Settings.topic_raw``, key = decision id) and
events (``Settings.topic_events`` through the SDK, signed with the decision point's
source key), flushes both producers and then releases every waiting request with the
result. Under load many decisions share one round trip to Kafka. On a sealed ledger the
record is sealed to the processor's ingest key with the patient it names, and the event
by the SDK (ADR 0037).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from careledger.config import Settings
from careledger.ingest_keys import seal_raw_for_ingest
from careledger.raw_record import build_envelope
from careledger_core.errors import CareledgerError
from careledger_core.signing import SigningKey

from .model import DECISION_FORMAT, decision_event

__all__ = ["DecisionSink", "KafkaDecisionLedger", "MemoryDecisionLedger", "Pending"]

log = logging.getLogger("careledger.decision_point")


class DecisionSink(Protocol):
    """Where decisions go to be ledgered; ``ledger`` returns True once they are."""

    def ledger(
        self, record: Mapping[str, Any], data: bytes, sha256: str, timeout: float = ...
    ) -> bool: ...

    def close(self) -> None: ...


@dataclass
class Pending:
    record: Mapping[str, Any]
    data: bytes
    sha256: str
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False


class MemoryDecisionLedger:
    """Keeps decisions in memory (unit tests, the benchmark's pure figures)."""

    def __init__(self, *, fail: bool = False) -> None:
        self.records: list[tuple[Mapping[str, Any], bytes, str]] = []
        self.fail = fail

    def ledger(
        self, record: Mapping[str, Any], data: bytes, sha256: str, timeout: float = 10.0
    ) -> bool:
        if self.fail:
            return False
        self.records.append((record, data, sha256))
        return True

    def close(self) -> None:
        pass


class KafkaDecisionLedger:
    """Raw record + signed event per decision, group-committed by one thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        flush_timeout: float = 20.0,
        source_key: SigningKey | None = None,
        source_id: str | None = None,
    ) -> None:
        from confluent_kafka import Producer

        from careledger.kafka.batching import ingest_public_key_of
        from careledger.kafka.producer import AccessEventProducer, producer_config
        from careledger.kafka.security import PRODUCER, kafka_login

        self.settings = settings
        #: a sealed ledger's ingest key (ADR 0037): the records are sealed to it
        self._seal_to = ingest_public_key_of(settings)
        self._flush_timeout = flush_timeout
        config = producer_config(
            settings.kafka_bootstrap,
            login=kafka_login(settings, PRODUCER),
            extra_config={"client.id": "careledger-decision-raw"},
        )
        config["linger.ms"] = 0
        self._raw = Producer(config)
        self._events = AccessEventProducer(
            settings,
            principal=PRODUCER,
            extra_config={"linger.ms": 0},
            source_key=source_key,
            source_id=source_id,
        )
        self._queue: queue.Queue[Pending | None] = queue.Queue()
        self._thread = threading.Thread(
            target=self._run, name="careledger-decision-ledger", daemon=True
        )
        self._thread.start()

    def ledger(
        self, record: Mapping[str, Any], data: bytes, sha256: str, timeout: float = 30.0
    ) -> bool:
        item = Pending(record, data, sha256)
        self._queue.put(item)
        if not item.done.wait(timeout):
            return False
        return item.ok

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stop = False
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                group.append(more)
            ok = self._commit(group)
            for item in group:
                item.ok = ok
                item.done.set()
            if stop:
                return

    def _commit(self, group: list[Pending]) -> bool:
        from confluent_kafka import KafkaException

        failed: list[Any] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failed.append(err)

        try:
            for item in group:
                record = item.record
                _env, envelope = build_envelope(
                    record_id=str(record["decision_id"]),
                    data=item.data,
                    sha256=item.sha256,
                    format=DECISION_FORMAT,
                    received_at=str(record["decided_at"]),
                    transport={
                        "protocol": "decision-point",
                        "source_id": str(record["requester"]["institution"]),
                        "auth": str(record["requester"]["auth"]),
                    },
                )
                if self._seal_to is not None:  # it names the patient: sealed
                    patient = str(record["question"]["patient_id"])
                    envelope = seal_raw_for_ingest(
                        self._seal_to,
                        envelope,
                        [(self.settings.reference_patient_system, patient)],
                    )
                self._raw.produce(
                    self.settings.topic_raw,
                    key=str(record["decision_id"]).encode(),
                    value=envelope,
                    on_delivery=delivered,
                )
                self._events.send(decision_event(record, item.sha256))
            left = self._raw.flush(self._flush_timeout)
            report = self._events.flush(self._flush_timeout)
        except (CareledgerError, KafkaException, BufferError) as exc:
            log.error("decisions could not be sent to be ledgered: %s", exc)
            return False
        if left or failed or not report.ok:
            log.error(
                "decisions not acknowledged by Kafka (%d raw records pending, %d failed)",
                left,
                len(failed),
            )
            return False
        return True

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(self._flush_timeout + 5.0)
        self._events.close()
        self._raw.flush(self._flush_timeout)
