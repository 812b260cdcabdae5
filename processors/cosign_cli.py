"""``careledger cosign``: the log's witness client as a service (ADR 0018).

Reads the checkpoints topic (from ``--lookback`` records before its end per partition:
only each chain's newest checkpoint matters), runs cosigning rounds
(``processors.cosigner``) every ``cosign_interval_s`` and publishes each cosigned note to
the checkpoints topic. ``--once`` reads to the end, runs one round and exits:
0 every checkpoint reached the quorum, 3 some did not ("not yet witnessed"),
2 Kafka, ClickHouse or the configuration cannot be used (one line saying which).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
import uuid
from typing import Any, Final

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.offsets import watermark_offsets
from careledger.kafka.security import COSIGNER
from careledger.service_health import ServiceHealth
from careledger.storage.backend import ClickHouseBackend, StorageError
from careledger.storage.store import ChainStore
from careledger.witnesses import WITNESSES_FILE_ENV, WitnessesConfigError, load_witnesses
from processors.cosigner import COSIGNED_HEADER, Cosigner, RoundResult

__all__ = ["command_cosign", "configure_cosign"]

log = logging.getLogger("careledger.cosigner")
_kafka_log = logging.getLogger("careledger.cosigner.kafka")

EXIT_OK: Final = 0
EXIT_ERROR: Final = 2
EXIT_NOT_WITNESSED: Final = 3


class _Unavailable(Exception):
    """Kafka or ClickHouse cannot be used (the message says which)."""


def configure_cosign(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--once",
        action="store_true",
        help="read the checkpoints topic to its end, run one round, publish and exit "
        "(0: every checkpoint reached the quorum, 3: some did not)",
    )
    parser.add_argument(
        "--lookback",
        type=int,
        default=10_000,
        help="records read back from the end of each checkpoints partition at start",
    )


def _error(message: str) -> int:
    print(f"careledger cosign: {message}", file=sys.stderr)
    return EXIT_ERROR


class _CheckpointFeed:
    """The checkpoints topic in and out: read new notes, publish cosigned ones."""

    def __init__(self, settings: Settings, lookback: int) -> None:
        from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

        self.topic = settings.topic_checkpoints
        self.failures = 0
        self._consumer = Consumer(
            kafka_config(
                settings,
                COSIGNER,
                {
                    "group.id": f"careledger-cosigner-{uuid.uuid4().hex}",  # assigned, never joined
                    "client.id": "careledger-cosigner",
                    "enable.auto.commit": False,
                    "enable.partition.eof": False,
                    "allow.auto.create.topics": False,
                },
                logger=_kafka_log,
            )
        )
        self._producer = Producer(
            kafka_config(
                settings,
                COSIGNER,
                {
                    "client.id": "careledger-cosigner",
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 5,
                },
                logger=_kafka_log,
            )
        )
        deadline = time.monotonic() + 15.0
        try:
            topic = self._consumer.list_topics(self.topic, timeout=10.0).topics.get(self.topic)
            if topic is None or topic.error is not None or not topic.partitions:
                raise _Unavailable(f"checkpoints topic {self.topic!r} does not exist")
            self.ends: dict[int, int] = {}
            assignment = []
            for partition in sorted(topic.partitions):
                tp = TopicPartition(self.topic, partition)
                low, high = watermark_offsets(self._consumer, tp, deadline)
                self.ends[partition] = high
                assignment.append(TopicPartition(self.topic, partition, max(low, high - lookback)))
            self._consumer.assign(assignment)
        except KafkaException as exc:
            reason = exc.args[0] if exc.args else exc
            raise _Unavailable(
                f"cannot reach Kafka at {settings.kafka_bootstrap}: {reason}"
            ) from exc

    def read(self, timeout: float) -> list[str]:
        notes = []
        for msg in self._consumer.consume(num_messages=1000, timeout=timeout):
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise _Unavailable(f"reading {self.topic}: {err.str()}")
                continue
            partition, offset = msg.partition(), msg.offset()
            if partition is None or offset is None:
                continue
            if offset + 1 >= self.ends.get(partition, 0):
                self.ends.pop(partition, None)
            try:
                notes.append(bytes(msg.value() or b"").decode("utf-8"))
            except UnicodeDecodeError:
                continue
        return notes

    def read_to_end(self, timeout: float) -> list[str]:
        """Every note up to the ends seen at start (``--once``)."""
        notes: list[str] = []
        deadline = time.monotonic() + timeout
        self.ends = {p: e for p, e in self.ends.items() if e > 0}
        while self.ends:
            if time.monotonic() > deadline:
                raise _Unavailable(f"no progress reading {self.topic} for {timeout:.0f}s")
            notes.extend(self.read(0.5))
        return notes

    def publish(self, result: RoundResult) -> None:
        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                self.failures += 1

        self._producer.produce(
            self.topic,
            value=result.note.encode("utf-8"),
            key=result.chain.encode("utf-8"),
            headers=[(COSIGNED_HEADER, ",".join(result.cosigned_by).encode("utf-8"))],
            on_delivery=on_delivery,
        )
        self._producer.poll(0)

    def close(self, timeout: float = 15.0) -> int:
        remaining = int(self._producer.flush(timeout))
        self._consumer.close()
        return remaining


def _report(result: RoundResult) -> None:
    status = "quorum" if result.quorum_met else "NO QUORUM"
    log.info(
        "%s size %d: %s, cosigned by %s%s (%.0f ms)",
        result.chain,
        result.size,
        status,
        ", ".join(result.cosigned_by) or "nobody",
        f"; refused by {', '.join(sorted(result.refused))}" if result.refused else "",
        result.seconds * 1000,
    )


def command_cosign(args: argparse.Namespace, settings: Settings) -> int:
    logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
    _kafka_log.setLevel(logging.CRITICAL)
    try:
        witnesses = load_witnesses(settings)
    except WitnessesConfigError as exc:
        return _error(exc.message)
    if witnesses is None:
        return _error(f"no witnesses to ask: set witnesses_file ({WITNESSES_FILE_ENV})")
    if not witnesses.reachable:
        return _error(f"{witnesses.source}: no [[witness]] has a 'url' to ask")
    if args.lookback < 1:
        return _error("--lookback must be >= 1")
    store = ChainStore.for_settings(ClickHouseBackend.from_settings(settings), settings)
    try:
        store.backend.execute("SELECT 1")
    except StorageError as exc:
        return _error(f"cannot reach ClickHouse: {exc.message}")
    try:
        feed = _CheckpointFeed(settings, args.lookback)
    except _Unavailable as exc:
        return _error(str(exc))
    cosigner = Cosigner(
        witnesses,
        store,
        timeout_s=settings.cosign_timeout_s,
        chain_prefix=f"{settings.origin}/",
    )
    stop = False

    def _stop(_signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    missed = 0
    try:
        if args.once:
            for note in feed.read_to_end(30.0):
                cosigner.offer(note)
            results = cosigner.round()
            for result in results:
                _report(result)
                feed.publish(result)
                missed += not result.quorum_met
            print(
                f"careledger cosign: {len(results)} checkpoint(s), "
                f"{len(results) - missed} with quorum {witnesses.quorum} of "
                f"{len(witnesses.witnesses)}"
            )
        else:
            log.info(
                "cosigning checkpoints of %s with %d witness(es), quorum %d",
                settings.origin,
                len(witnesses.reachable),
                witnesses.quorum,
            )
            seen = {"at": time.monotonic(), "rounds": 0, "cosigned": 0, "no_quorum": 0}

            def healthy() -> tuple[bool, str]:
                idle = time.monotonic() - float(seen["at"])
                if idle > max(120.0, 10 * settings.cosign_interval_s):
                    return False, f"no cosigning round for {idle:.0f} s"
                return True, f"{seen['rounds']} rounds"

            health = ServiceHealth.for_settings(
                settings,
                "cosigner",
                lambda: {f"{k}_total": v for k, v in seen.items() if k != "at"},
                healthy,
            )
            try:
                while not stop:
                    for note in feed.read(settings.cosign_interval_s):
                        cosigner.offer(note)
                    for result in cosigner.round():
                        _report(result)
                        feed.publish(result)
                        seen["cosigned"] += 1
                        seen["no_quorum"] += not result.quorum_met
                    seen["rounds"] += 1
                    seen["at"] = time.monotonic()
            finally:
                if health is not None:
                    health.stop()
    except _Unavailable as exc:
        return _error(str(exc))
    except StorageError as exc:
        return _error(f"cannot read ClickHouse: {exc.message}")
    finally:
        cosigner.close()
        remaining = feed.close()
    if remaining or feed.failures:
        return _error(f"{remaining + feed.failures} cosigned checkpoint(s) not delivered to Kafka")
    return EXIT_NOT_WITNESSED if missed else EXIT_OK
