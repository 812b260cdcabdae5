"""Where the cosigned checkpoints of a chain can be read: the checkpoints topic, from its
end backwards, and the witnesses themselves (ADR 0018, ADR 0019).

Who needs only the *newest* cosigned checkpoints of some chains (``careledger
access-report`` attaches each cited chain's newest quorum-cosigned checkpoint) should
not read a topic that keeps every checkpoint forever from its beginning. The newest
cosigned notes are near the end: the processor publishes a checkpoint after each write
and the cosigner republishes the newest one with the witnesses' cosignatures.

* :class:`CheckpointNotes` yields the records of ``[end - window, end)`` of every
  partition, then of the window before, and so on down to the log-start offset; the
  caller stops as soon as it has what it needs. Nothing is joined or committed
  (``assign``, not ``subscribe``). The ends are fixed when the reader opens, so a busy
  topic does not move the windows under it. Kafka that cannot be reached, a missing
  topic or a stalled read raise :class:`CheckpointsUnavailable` ("cannot tell").
* :func:`fetch_from_witnesses` asks every witness with a ``url`` for the latest
  checkpoint it cosigned per chain (``GET /<sha256(origin)>/checkpoint``, served by
  ``careledger witness``; litewitness does not serve it); a witness that cannot be
  reached is named, never an error.

Notes come back as text, **unverified** (anyone who can produce to the topic or answer
as a witness can write one): the caller verifies each under its trusted keys and counts
cosignatures under its witness policy. A record that is not UTF-8 is skipped.

(``verifiers.integrity.checkpoints.CheckpointReader`` reads the whole topic forward, as
``careledger verify`` must; ``processors.cosign_cli`` reads it forward from a lookback;
``fetch_from_witnesses`` is ``verifiers.integrity.witnessing.fetch_witnessed`` one floor
down, so the reports wing can use it.)
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from careledger.kafka.clients import kafka_config
from careledger.kafka.offsets import watermark_offsets
from careledger.kafka.security import VERIFIER
from careledger.witness_client import WitnessUnreachable, latest_checkpoint
from careledger.witnesses import WitnessSet
from careledger_core.errors import InfrastructureError

__all__ = [
    "DEFAULT_WINDOW",
    "CheckpointNotes",
    "CheckpointsUnavailable",
    "WitnessFetch",
    "fetch_from_witnesses",
]

#: Records read per partition and window.
DEFAULT_WINDOW: Final = 5_000
kafka_log = logging.getLogger("careledger.cosigned_checkpoints.kafka")


class CheckpointsUnavailable(InfrastructureError):
    """The checkpoints topic cannot be read (Kafka unreachable, topic missing, stalled)."""

    code = "CHECKPOINTS_UNAVAILABLE"


def _kafka_error(exc: Exception) -> str:
    err = exc.args[0] if exc.args else None
    text = getattr(err, "str", None)
    return str(text()) if callable(text) else str(exc)


class CheckpointNotes:
    """``with CheckpointNotes(settings) as notes: for window in notes.windows(): ...``"""

    def __init__(self, settings: Any, *, timeout_s: float = 10.0) -> None:
        self.topic: str = settings.topic_checkpoints
        self.timeout_s = timeout_s
        self._consumer = Consumer(
            kafka_config(
                settings,
                VERIFIER,
                {
                    # required by the client; never joined (assign) nor committed
                    "group.id": f"careledger-checkpoint-notes-{uuid.uuid4().hex}",
                    "client.id": "careledger-checkpoint-notes",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "enable.partition.eof": False,
                    "allow.auto.create.topics": False,
                    "socket.timeout.ms": max(1000, int(timeout_s * 1000)),
                },
                logger=kafka_log,
            )
        )
        #: partition -> (log-start offset, end offset when opened)
        self.bounds: dict[int, tuple[int, int]] = {}
        opened = False
        try:
            try:
                metadata = self._consumer.list_topics(self.topic, timeout=timeout_s)
            except KafkaException as exc:
                raise CheckpointsUnavailable(
                    f"cannot reach Kafka at {settings.kafka_bootstrap}: {_kafka_error(exc)}"
                ) from exc
            topic = metadata.topics.get(self.topic)
            if topic is None or topic.error is not None or not topic.partitions:
                raise CheckpointsUnavailable(f"checkpoints topic {self.topic!r} does not exist")
            deadline = time.monotonic() + timeout_s
            for partition in sorted(topic.partitions):
                try:
                    low, high = watermark_offsets(
                        self._consumer, TopicPartition(self.topic, partition), deadline
                    )
                except KafkaException as exc:
                    raise CheckpointsUnavailable(
                        f"cannot read the offsets of {self.topic}[{partition}]: {_kafka_error(exc)}"
                    ) from exc
                self.bounds[partition] = (low, high)
            opened = True
        finally:
            if not opened:
                self._consumer.close()

    def __enter__(self) -> CheckpointNotes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._consumer.close()

    def windows(self, window: int = DEFAULT_WINDOW) -> Iterator[list[str]]:
        """The notes of each window, newest window first, oldest record of a window
        first. Raises :class:`CheckpointsUnavailable` if reading stalls."""
        if window < 1:
            raise ValueError("window must be positive")
        cursors = {p: high for p, (_low, high) in self.bounds.items()}
        while True:
            spans = {
                p: (max(self.bounds[p][0], end - window), end)
                for p, end in cursors.items()
                if end > self.bounds[p][0]
            }
            if not spans:
                return
            yield self._read(spans)
            cursors = {p: start for p, (start, _end) in spans.items()}

    def _read(self, spans: dict[int, tuple[int, int]]) -> list[str]:
        self._consumer.assign([TopicPartition(self.topic, p, s) for p, (s, _e) in spans.items()])
        pending = {p: end for p, (_s, end) in spans.items()}
        notes: list[str] = []
        last_progress = time.monotonic()
        while pending:
            messages = self._consumer.consume(num_messages=1000, timeout=0.5)
            if messages:
                last_progress = time.monotonic()
            for msg in messages:
                err = msg.error()
                if err is not None:
                    if err.fatal() or err.code() == KafkaError._ALL_BROKERS_DOWN:
                        raise CheckpointsUnavailable(f"reading {self.topic}: {err.str()}")
                    continue
                partition, offset = msg.partition(), msg.offset()
                if partition is None or offset is None:
                    continue
                end = pending.get(partition)
                if end is None or offset >= end:
                    continue
                with contextlib.suppress(UnicodeDecodeError):  # not a note: skipped
                    notes.append(bytes(msg.value() or b"").decode("utf-8"))
                if offset + 1 >= end:
                    del pending[partition]
            if pending and time.monotonic() - last_progress > self.timeout_s:
                # records may end before the offset (transaction markers): trust the
                # consumer's position if it is past the end
                for partition in list(pending):
                    tp = TopicPartition(self.topic, partition)
                    position = self._consumer.position([tp])[0].offset
                    if position >= pending[partition]:
                        del pending[partition]
                if pending:
                    raise CheckpointsUnavailable(
                        f"no progress reading {self.topic} for {self.timeout_s:.0f}s"
                    )
        self._consumer.unassign()
        return notes


@dataclass
class WitnessFetch:
    """What the witnesses served: (witness, note) pairs and who could not be asked."""

    notes: list[tuple[str, str]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    asked: int = 0  # witnesses with a url

    @property
    def answered(self) -> int:
        """How many witnesses could be asked (whether or not they had a checkpoint)."""
        return self.asked - len(self.errors)


def fetch_from_witnesses(
    witnesses: WitnessSet, chains: Iterable[str], timeout: float
) -> WitnessFetch:
    """The latest checkpoint each witness with a ``url`` cosigned for each chain (one
    thread per witness, the chains one after the other)."""
    wanted = sorted(set(chains))
    out = WitnessFetch()

    def ask(url: str) -> tuple[list[str], str | None]:
        notes: list[str] = []
        for chain in wanted:
            try:
                note = latest_checkpoint(url, chain, timeout=timeout)
            except WitnessUnreachable as exc:
                return notes, exc.message
            if note is not None:
                notes.append(note)
        return notes, None

    reachable = witnesses.reachable
    if not reachable or not wanted:
        return out
    out.asked = len(reachable)
    with ThreadPoolExecutor(max_workers=len(reachable)) as pool:
        answers = [(w.name, pool.submit(ask, str(w.url))) for w in reachable]
        for name, future in answers:
            notes, error = future.result()
            out.notes.extend((name, n) for n in notes)
            if error is not None:
                out.errors[name] = error
    return out
