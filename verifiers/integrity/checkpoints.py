"""Signed checkpoints from Kafka: chain heads and tree roots the store cannot take back.

After each successful write the processor publishes a C2SP signed note of each chain
it extended (``careledger_core.checkpoint``, ADR 0012: size = blocks, root = RFC 6962
root over the block hashes, ``careledger-head`` = the head block hash) to
``Settings.topic_checkpoints``, key = chain id, with an RFC 9162 consistency proof from
the chain's previous checkpoint in the ``careledger-consistency`` record header.
Someone who can rewrite ClickHouse cannot unpublish those notes nor sign new ones, so
a verifier that reads them knows how long each chain was and what it held, even on its
very first run (no state directory yet):

* ``CheckpointLog`` (``verifiers.integrity.checkpoint_log``, pure) takes the notes one
  by one: signatures, the greatest size per chain, forks, consistency proofs.
* ``CheckpointReader`` reads the topic with confluent-kafka: it assigns every
  partition from where it stopped (the beginning, the first time) up to the high
  watermark it saw when the read started, then stops: no consumer group
  membership, no commits, no idle timeout. Called again (``--follow``) it reads only
  what was published since. If Kafka cannot be reached (or the topic is missing),
  ``refresh`` says so in the snapshot instead of raising: the verifier goes on with
  the store and its own memory and reports checkpoints as unavailable.
* Records gone from the topic are reported, not silently missing: the topic keeps
  its records forever, so a log-start offset above 0 means records were deleted
  (DeleteRecords) or expired (``CHECKPOINTS_MISSING``, status ``incomplete``). The
  reader also remembers, in the verifier's state directory, the newest checkpoint it
  read per chain (``verifiers.integrity.checkpoint_memory``): it stays a known head when
  the topic loses it, and its absence from the topic is itself a finding.
* ``merge_known`` combines the heads of the verifier state with those of the
  checkpoints: the higher one is compared with the store; at the same height a
  different block hash is itself a finding (``CHAIN_REWRITTEN``). The roots of every
  checkpoint are compared with the stored tree by ``verifiers.integrity.trees``.

Order matters: the processor publishes a checkpoint only after the block is
stored, so the checkpoints must be read *before* the store. Then every checkpoint
names a block the store had when it was read, and a lower stored head is a
truncation, never a race.

A checkpoint names the head block's hash, not its Kafka offsets: the known head
built from it has ``last_offset=None`` and ``source="checkpoint"``.

What this cannot see without witnesses (ADR 0012): a topic deleted and recreated
before a verifier ever read it, or an operator who holds the signing key and shows
one consistent history to this verifier and another to a second one. Witness
cosignatures close those (ADR 0018): with a ``WitnessSet`` the log counts the
cosignatures of the policy's witnesses, and the reader also asks each witness with a
``url`` for the latest checkpoint it cosigned per chain (every ``witness_interval_s``
in follow mode), so those checkpoints are compared with the store even when the topic
lost them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from careledger.kafka.clients import kafka_config
from careledger.kafka.security import VERIFIER
from careledger.storage.kinds import raw_topics, reference_topics
from careledger.witnesses import WitnessSet
from careledger_core.findings import Finding, FindingCode
from careledger_core.signing import PublicKey
from verifiers.integrity.checkpoint_log import CheckpointLog, SeenCheckpoint
from verifiers.integrity.checkpoint_memory import (
    CheckpointMemory,
    memory_for,
    remembered_now,
)
from verifiers.integrity.fsck import VerifiedHead
from verifiers.integrity.witnessing import expected_chains

__all__ = [
    "CheckpointLog",
    "CheckpointReader",
    "CheckpointSnapshot",
    "SeenCheckpoint",
    "merge_known",
    "read_checkpoints",
    "skipped_snapshot",
]

log = logging.getLogger("careledger.verifier.checkpoints")
#: librdkafka's own log lines (a dead broker logs one per reconnect attempt); the CLI
#: silences this logger unless --verbose, the warning it prints says it once.
kafka_log = logging.getLogger("careledger.verifier.checkpoints.kafka")

C = FindingCode

#: Seconds to wait for broker metadata and watermarks before calling Kafka unavailable.
DEFAULT_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------- snapshot


@dataclass
class CheckpointSnapshot:
    """What one read of the checkpoints topic gave: for a verification run."""

    #: "ok"; "incomplete" (read, but records are missing from the topic: see the
    #: CHECKPOINTS_MISSING findings); "unavailable" (Kafka or the topic could not be
    #: read); "skipped" (--no-checkpoints)
    status: str
    topic: str
    heads: dict[str, VerifiedHead] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    findings_total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    read: int = 0  # records read by this refresh (the counts are cumulative)
    error: str | None = None
    elapsed_s: float = 0.0
    #: partition -> log-start offset, where above 0 (records deleted or expired)
    log_start: dict[int, int] = field(default_factory=dict)
    #: per chain, the first tree checkpoint seen at each size (for the tree check)
    trees: dict[str, list[SeenCheckpoint]] = field(default_factory=dict)
    #: what ``verifiers.integrity.trees`` found comparing them with the store
    tree_summary: dict[str, Any] | None = None
    #: per chain, the largest quorum-cosigned checkpoint: (size, cosigners) (ADR 0018)
    witnessed: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)
    #: witness -> why it could not be asked for its checkpoints
    witness_errors: dict[str, str] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.status in ("ok", "incomplete")

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "topic": self.topic,
            "error": self.error,
            **self.counts,
            "read": self.read,
            "findings": self.findings_total,
            "log_start_offsets": {str(p): o for p, o in sorted(self.log_start.items())},
            "trees": self.tree_summary,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def skipped_snapshot(topic: str) -> CheckpointSnapshot:
    return CheckpointSnapshot("skipped", topic)


# --------------------------------------------------------------------------- Kafka


class _Unavailable(Exception):
    pass


class CheckpointReader:
    """Reads ``Settings.topic_checkpoints`` into a ``CheckpointLog``; see the module doc."""

    def __init__(
        self,
        settings: Any,
        trusted: Iterable[PublicKey],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory: CheckpointMemory | bool = True,
        witnesses: WitnessSet | None = None,
        witness_interval_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.witnesses = witnesses
        self.witness_interval_s = witness_interval_s
        self._witnesses_asked_at: float | None = None
        self._witness_errors: dict[str, str] = {}
        self.topic: str = settings.topic_checkpoints
        self.timeout_s = timeout_s
        self.log = CheckpointLog(
            settings.origin,
            tuple(trusted),
            topic=self.topic,
            chain_prefix=tuple(
                f"{settings.origin}/{t}/"
                for t in (
                    settings.topic_events,
                    *sorted(reference_topics(settings)),
                    *sorted(raw_topics(settings)),
                )
            ),
            policy=None if witnesses is None else witnesses.policy,
        )
        self.positions: dict[int, int] = {}  # partition -> next offset to read
        self.log_start: dict[int, int] = {}  # partition -> log-start offset, if above 0
        self.memory: CheckpointMemory | None = (
            memory_for(settings) if memory is True else memory or None
        )
        self._recalled = False
        self._remembered_checked = False

    def refresh(self) -> CheckpointSnapshot:
        """Read what was published since the last call (everything, the first time).

        Never raises for Kafka trouble: the snapshot's status says "unavailable" and
        carries what earlier reads (and the verifier's memory) proved. Raises
        ``StateError`` if the verifier's memory of checkpoints cannot be read or written.
        """
        # imported here: a verify without checkpoints (--no-checkpoints) does not load
        # the Kafka client
        from confluent_kafka import KafkaException

        started = time.perf_counter()
        if not self._recalled:
            self._recall()
        before = self.log.notes
        status, error = "ok", None
        try:
            self._read()
        except _Unavailable as exc:
            status, error = "unavailable", str(exc)
        except KafkaException as exc:  # a client error must not stop verification
            status, error = "unavailable", f"{type(exc).__name__}: {exc}"
        if status == "ok" and self.log.missing:
            status = "incomplete"
        self._ask_witnesses()
        self._memorise()
        return CheckpointSnapshot(
            status,
            self.topic,
            heads=self.log.heads(),
            findings=list(self.log.findings),
            findings_total=self.log.findings_total,
            counts=self.log.counts(),
            read=self.log.notes - before,
            error=error,
            elapsed_s=time.perf_counter() - started,
            log_start=dict(self.log_start),
            trees=self.log.tree_checkpoints(),
            witnessed={
                chain: (seen.size, tuple(names))
                for chain, (seen, names) in self.log.witnessed().items()
            },
            witness_errors=dict(self._witness_errors),
        )

    def _ask_witnesses(self) -> None:
        """The latest checkpoint each reachable witness cosigned, per chain (at most
        every ``witness_interval_s``)."""
        if self.witnesses is None or not self.witnesses.reachable:
            return
        now = time.monotonic()
        if (
            self._witnesses_asked_at is not None
            and now - self._witnesses_asked_at < self.witness_interval_s
        ):
            return
        self._witnesses_asked_at = now
        chains = set(self.log.best) | set(expected_chains(self.settings))
        from careledger.cosigned_checkpoints import fetch_from_witnesses

        fetched = fetch_from_witnesses(self.witnesses, chains, self.timeout_s)
        for name, note in fetched.notes:
            self.log.add_witnessed(note, name)
        self._witness_errors = fetched.errors
        for name, error in sorted(fetched.errors.items()):
            log.warning("witness %s could not be asked for its checkpoints: %s", name, error)

    def _recall(self) -> None:
        """Take the checkpoints remembered by earlier runs (before the topic's)."""
        if self.memory is None:
            self._recalled = True
            return
        remembered = self.memory.load()  # StateError: retried on the next refresh
        self._recalled = True
        for chain, entry in sorted(remembered.items()):
            if not self.log.remember(entry.note, partition=entry.partition, offset=entry.offset):
                log.warning(
                    "a remembered checkpoint of %s no longer verifies under the trusted "
                    "keys: ignored",
                    chain,
                )

    def _memorise(self) -> None:
        if self.memory is None:
            return
        newest = {
            chain: remembered_now(chain, seen.size, seen.note, seen.partition, seen.offset)
            for chain, seen in self.log.best.items()
            if seen.source == "topic"
        }
        if newest:
            self.memory.save(newest)

    def _read(self) -> None:
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        consumer = Consumer(
            kafka_config(
                self.settings,
                VERIFIER,
                {
                    # Required by the client; never joined (assign, not subscribe) nor committed.
                    "group.id": f"careledger-verifier-checkpoints-{uuid.uuid4().hex}",
                    "client.id": "careledger-verifier",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "enable.partition.eof": False,
                    "auto.offset.reset": "earliest",
                    "allow.auto.create.topics": False,
                    "socket.timeout.ms": max(1000, int(self.timeout_s * 1000)),
                },
                logger=kafka_log,
            )
        )
        try:
            try:
                metadata = consumer.list_topics(timeout=self.timeout_s)
            except KafkaException as exc:
                raise _Unavailable(
                    f"cannot reach Kafka at {self.settings.kafka_bootstrap}: {_kafka_error(exc)}"
                ) from exc
            topic = metadata.topics.get(self.topic)
            if topic is None or topic.error is not None:
                raise _Unavailable(
                    f"checkpoints topic {self.topic!r} does not exist"
                    if topic is None
                    else f"checkpoints topic {self.topic!r}: {topic.error}"
                )
            ends: dict[int, int] = {}
            lows: dict[int, tuple[int, int]] = {}
            assignment = []
            for partition in sorted(topic.partitions):
                tp = TopicPartition(self.topic, partition)
                try:
                    low, high = consumer.get_watermark_offsets(
                        tp, timeout=self.timeout_s, cached=False
                    )
                except KafkaException as exc:
                    raise _Unavailable(
                        f"cannot read the offsets of {self.topic}[{partition}]: {_kafka_error(exc)}"
                    ) from exc
                if low > 0 and self.log_start.get(partition) != low:
                    self.log_start[partition] = low
                    self.log.records_missing(partition, low)
                ends[partition] = high
                start = self.positions.get(partition, low)
                if start > high:
                    log.warning(
                        "%s[%d] ends at %d, before offset %d read earlier: "
                        "the topic was recreated or truncated; reading it again",
                        self.topic,
                        partition,
                        high,
                        start,
                    )
                    self.log.topic_restarted(partition, high, start)
                    start = low
                start = max(start, low)
                self.positions[partition] = start
                lows[partition] = (low, high)
                if start < high:
                    assignment.append(TopicPartition(self.topic, partition, start))
                else:
                    del ends[partition]
            if assignment:
                consumer.assign(assignment)
                self._consume(consumer, ends)
            if not self._remembered_checked:
                # Only after a complete first read: each remembered checkpoint must
                # have been seen where it was read.
                self._remembered_checked = True
                self.log.check_remembered(lows)
        finally:
            consumer.close()

    def _consume(self, consumer: Any, ends: dict[int, int]) -> None:
        from confluent_kafka import KafkaError

        pending = dict(ends)
        last_progress = time.monotonic()
        while pending:
            messages = consumer.consume(num_messages=1000, timeout=0.5)
            if messages:
                last_progress = time.monotonic()
            for msg in messages:
                err = msg.error()
                if err is not None:
                    if err.fatal() or err.code() == KafkaError._ALL_BROKERS_DOWN:
                        raise _Unavailable(f"reading {self.topic}: {err.str()}")
                    log.warning("reading %s: %s", self.topic, err.str())
                    continue
                partition, offset = msg.partition(), msg.offset()
                if partition not in pending or offset < self.positions.get(partition, 0):
                    continue
                self.log.add(
                    msg.value(),
                    key=msg.key(),
                    partition=partition,
                    offset=offset,
                    headers=msg.headers(),
                )
                self.positions[partition] = offset + 1
                if offset + 1 >= pending[partition]:
                    del pending[partition]
                    consumer.pause([_tp(self.topic, partition)])
            if pending and time.monotonic() - last_progress > self.timeout_s:
                # Records may end before the watermark (e.g. transaction markers):
                # trust the consumer's position if it is past the end.
                for partition in list(pending):
                    pos = consumer.position([_tp(self.topic, partition)])[0].offset
                    if pos >= pending[partition]:
                        self.positions[partition] = pos
                        del pending[partition]
                if pending:
                    behind = {p: f"{self.positions.get(p)}..{end}" for p, end in pending.items()}
                    raise _Unavailable(
                        f"no progress reading {self.topic} for {self.timeout_s:.0f}s "
                        f"(still to read: {behind})"
                    )


def _tp(topic: str, partition: int) -> Any:
    from confluent_kafka import TopicPartition

    return TopicPartition(topic, partition)


def _kafka_error(exc: Exception) -> str:
    err = exc.args[0] if exc.args else None
    text = getattr(err, "str", None)
    return str(text()) if callable(text) else str(exc)


def read_checkpoints(
    settings: Any,
    trusted: Iterable[PublicKey],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    witnesses: WitnessSet | None = None,
) -> CheckpointSnapshot:
    """Read the whole checkpoints topic once (a one-shot ``careledger verify``), with the
    checkpoints remembered in the verifier's state directory and, with ``witnesses``,
    those the witnesses serve. Raises ``StateError``."""
    return CheckpointReader(settings, trusted, timeout_s=timeout_s, witnesses=witnesses).refresh()


# --------------------------------------------------------------------------- merging


def merge_known(
    state: Mapping[str, VerifiedHead],
    checkpoints: Mapping[str, VerifiedHead],
    *,
    report_disagreement: bool = True,
) -> tuple[dict[str, VerifiedHead], list[Finding]]:
    """The head to compare each chain with: the higher of the state's and the
    checkpoints'. At the same height the state's is kept (it has the offsets); if
    the block hashes differ that is a ``CHAIN_REWRITTEN`` finding naming both."""
    merged = dict(state)
    findings: list[Finding] = []
    for chain, cp in checkpoints.items():
        mine = merged.get(chain)
        if mine is None or cp.height > mine.height:
            merged[chain] = cp
        elif cp.height == mine.height and cp.block_hash != mine.block_hash and report_disagreement:
            findings.append(
                Finding.of(
                    C.CHAIN_REWRITTEN,
                    chain,
                    f"a signed checkpoint names another block at height {cp.height} than "
                    "the one this verifier verified there before",
                    height=cp.height,
                    details={
                        "source": "checkpoint",
                        "state_hash": mine.block_hash,
                        "checkpoint_hash": cp.block_hash,
                    },
                )
            )
    return merged, findings
