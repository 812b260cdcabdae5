"""Signed checkpoints from Kafka: chain heads the store cannot take back.

After each successful write the processor publishes a C2SP signed note naming the
new head of each chain (``careledger_core.checkpoint``) to
``Settings.topic_checkpoints``, key = chain id. Someone who can rewrite ClickHouse
cannot unpublish those notes nor sign new ones, so a verifier that reads them knows
how long each chain was, even on its very first run (no state directory yet):

* ``CheckpointLog`` (pure, no I/O) takes the notes one by one. A note is verified
  under each trusted public key with the note name ``Settings.origin``. A note signed
  by no trusted key (or not a note at all) is ignored, only counted; a note carrying
  a signature line of a trusted key that does *not* verify is an integrity finding
  (``SIGNATURE_INVALID``): someone forges checkpoints. Per chain the verified
  checkpoint with the greatest size is kept; two verified checkpoints of one size
  with different roots are a proof that the signing key signed two histories
  (``HEIGHT_FORK``, both hashes in the details; the first one seen is kept).
* ``CheckpointReader`` reads the topic with confluent-kafka: it assigns every
  partition from where it stopped (the beginning, the first time) up to the high
  watermark it saw when the read started, then stops: no consumer group
  membership, no commits, no idle timeout. Called again (``--follow``) it reads only
  what was published since. If Kafka cannot be reached (or the topic is missing),
  ``refresh`` says so in the snapshot instead of raising: the verifier goes on with
  the store alone and reports checkpoints as unavailable.
* ``merge_known`` combines the heads of the verifier state with those of the
  checkpoints: the higher one is compared with the store; at the same height a
  different block hash is itself a finding (``CHAIN_REWRITTEN``).

Order matters: the processor publishes a checkpoint only after the block is
stored, so the checkpoints must be read *before* the store. Then every checkpoint
names a block the store had when it was read, and a lower stored head is a
truncation, never a race.

A checkpoint names the head block's hash, not its Kafka offsets: the known head
built from it has ``last_offset=None`` and ``source="checkpoint"``.
"""

from __future__ import annotations

import binascii
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from careledger.storage.kinds import raw_topics, reference_topics
from careledger_core.checkpoint import Checkpoint, open_note, parse_checkpoint
from careledger_core.errors import CheckpointError, NoteUnverifiedError, SignatureError
from careledger_core.findings import Finding, FindingCode
from careledger_core.signing import PublicKey
from verifiers.integrity.fsck import VerifiedHead

__all__ = [
    "CheckpointLog",
    "CheckpointReader",
    "CheckpointSnapshot",
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
#: Findings kept (all are counted).
MAX_FINDINGS = 1000
_MAX_KEY_TEXT = 200


@dataclass(frozen=True, slots=True)
class SeenCheckpoint:
    """A verified checkpoint and where it was read."""

    checkpoint: Checkpoint
    partition: int
    offset: int

    @property
    def height(self) -> int:
        return self.checkpoint.size - 1

    @property
    def root_hex(self) -> str:
        return self.checkpoint.root_hash.hex()

    def head(self) -> VerifiedHead:
        return VerifiedHead(self.height, self.root_hex, None, "checkpoint")

    def location(self) -> dict[str, int]:
        return {"partition": self.partition, "offset": self.offset}


@dataclass
class CheckpointLog:
    """What the notes read so far prove: the highest verified checkpoint per chain."""

    origin: str  # the note name the processor signs under (Settings.origin)
    trusted: tuple[PublicKey, ...]
    topic: str = ""
    # Only chains of this deployment's events topic count: other pipelines (a
    # benchmark, a second topic) may publish to the same checkpoints topic.
    chain_prefix: str | tuple[str, ...] = ""
    best: dict[str, SeenCheckpoint] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    findings_total: int = 0
    notes: int = 0  # records read
    verified: int = 0  # verified under a trusted key
    untrusted: int = 0  # well-formed notes without a signature of a trusted key: ignored
    malformed: int = 0  # not a signed note, or a signed body that is not a checkpoint
    foreign: int = 0  # verified, but of a chain outside ``chain_prefix``: ignored
    invalid: int = 0  # a trusted key's signature line that fails: a finding each
    forks: int = 0
    _forks_seen: set[tuple[str, int, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.trusted = tuple(self.trusted)
        if not self.trusted:
            raise ValueError("no trusted key to verify checkpoints with")

    # ------------------------------------------------------------------ input
    def add(self, value: bytes | None, *, key: bytes | None, partition: int, offset: int) -> None:
        """Take one record of the checkpoints topic."""
        self.notes += 1
        where = {"topic": self.topic, "partition": partition, "offset": offset}
        try:
            note = (value or b"").decode("utf-8")
        except UnicodeDecodeError:
            self.malformed += 1
            return
        body: str | None = None
        for public_key in self.trusted:
            try:
                opened = open_note(note, {self.origin: public_key})
            except NoteUnverifiedError:
                continue  # no signature line by this key
            except SignatureError as exc:
                self.invalid += 1
                chain, height = _claimed(note, key)
                self._emit(
                    C.SIGNATURE_INVALID,
                    chain,
                    height,
                    f"checkpoint note at {self.topic}[{partition}]@{offset} carries a "
                    f"signature by trusted key {public_key.key_id} that does not verify",
                    {
                        "source": "checkpoint",
                        **where,
                        "key_id": public_key.key_id,
                        "reason": exc.message,
                    },
                )
                return
            except CheckpointError:
                self.malformed += 1
                return
            body = opened if body is None else body
        if body is None:
            self.untrusted += 1
            return
        try:
            cp = parse_checkpoint(body)
        except CheckpointError:
            self.malformed += 1  # signed by a trusted key, but not a checkpoint body
            return
        self.verified += 1
        if not cp.origin.startswith(self.chain_prefix):
            self.foreign += 1
            return
        if cp.size == 0:
            return  # an empty chain: nothing to compare
        self._keep(SeenCheckpoint(cp, partition, offset))

    def _keep(self, seen: SeenCheckpoint) -> None:
        chain = seen.checkpoint.origin
        best = self.best.get(chain)
        if best is None or seen.checkpoint.size > best.checkpoint.size:
            self.best[chain] = seen
            return
        if seen.checkpoint.size == best.checkpoint.size and seen.root_hex != best.root_hex:
            fork = (chain, best.checkpoint.size, seen.root_hex)
            if fork in self._forks_seen:
                return
            self._forks_seen.add(fork)
            self.forks += 1
            self._emit(
                C.HEIGHT_FORK,
                chain,
                seen.height,
                f"two checkpoints signed by a trusted key name different blocks at height "
                f"{seen.height}: {best.root_hex[:16]}… and {seen.root_hex[:16]}…",
                {
                    "source": "checkpoint",
                    "topic": self.topic,
                    "kept": best.root_hex,
                    "blocks": [
                        {"block_hash": best.root_hex, **best.location()},
                        {"block_hash": seen.root_hex, **seen.location()},
                    ],
                },
            )

    def _emit(
        self,
        code: FindingCode,
        chain: str,
        height: int | None,
        message: str,
        details: dict[str, Any],
    ) -> None:
        self.findings_total += 1
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(Finding.of(code, chain, message, height=height, details=details))

    # ------------------------------------------------------------------ output
    def heads(self) -> dict[str, VerifiedHead]:
        return {chain: seen.head() for chain, seen in self.best.items()}

    def counts(self) -> dict[str, int]:
        return {
            "notes": self.notes,
            "verified": self.verified,
            "untrusted": self.untrusted,
            "malformed": self.malformed,
            "foreign": self.foreign,
            "invalid": self.invalid,
            "forks": self.forks,
            "chains": len(self.best),
        }


def _claimed(note: str, key: bytes | None) -> tuple[str, int | None]:
    """Chain and height a note *claims* (unverified; for locating a finding only)."""
    split = note.rfind("\n\n")
    try:
        cp = parse_checkpoint(note[: split + 1]) if split > 0 else None
    except (CheckpointError, binascii.Error, ValueError):
        cp = None
    if cp is not None:
        return cp.origin, cp.size - 1
    text = (key or b"").decode("utf-8", errors="replace")[:_MAX_KEY_TEXT]
    return text or "?", None


# --------------------------------------------------------------------------- snapshot


@dataclass
class CheckpointSnapshot:
    """What one read of the checkpoints topic gave: for a verification run."""

    status: str  # "ok", "unavailable" (Kafka or the topic could not be read), "skipped"
    topic: str
    heads: dict[str, VerifiedHead] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    findings_total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    read: int = 0  # records read by this refresh (the counts are cumulative)
    error: str | None = None
    elapsed_s: float = 0.0

    @property
    def available(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "topic": self.topic,
            "error": self.error,
            **self.counts,
            "read": self.read,
            "findings": self.findings_total,
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
    ) -> None:
        self.settings = settings
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
        )
        self.positions: dict[int, int] = {}  # partition -> next offset to read

    def refresh(self) -> CheckpointSnapshot:
        """Read what was published since the last call (everything, the first time).

        Never raises for Kafka trouble: the snapshot's status says "unavailable" and
        carries what earlier reads proved.
        """
        started = time.perf_counter()
        before = self.log.notes
        status, error = "ok", None
        try:
            self._read()
        except _Unavailable as exc:
            status, error = "unavailable", str(exc)
        except Exception as exc:  # a client error must not stop verification
            status, error = "unavailable", f"{type(exc).__name__}: {exc}"
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
        )

    def _read(self) -> None:
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap,
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
                    start = low
                start = max(start, low)
                self.positions[partition] = start
                if start < high:
                    ends[partition] = high
                    assignment.append(TopicPartition(self.topic, partition, start))
            if not assignment:
                return
            consumer.assign(assignment)
            self._consume(consumer, ends)
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
                self.log.add(msg.value(), key=msg.key(), partition=partition, offset=offset)
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
    settings: Any, trusted: Iterable[PublicKey], *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> CheckpointSnapshot:
    """Read the whole checkpoints topic once (a one-shot ``careledger verify``)."""
    return CheckpointReader(settings, trusted, timeout_s=timeout_s).refresh()


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
