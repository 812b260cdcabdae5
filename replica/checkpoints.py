"""The signed checkpoints a restore trusts: read from Kafka, verified, per chain and size.

``read_checkpoints`` reads every record of ``Settings.topic_checkpoints`` (assigned from
each partition's start to its end when the read began; no group membership, no
commits) and keeps each C2SP checkpoint note (ADR 0012) that

* is signed by one of the trusted processor keys under the note name the processor
  uses (the chain id, the checkpoint's origin; or ``Settings.origin`` for notes
  published before witnesses), and
* with a witness policy (``witnesses_file``, ADR 0018), carries a quorum of valid
  cosignatures of the policy's witnesses: a checkpoint only the operator's key signed
  proves nothing against the key holder.

A note with a trusted key's signature line that does not verify is counted as
``invalid`` (someone forges checkpoints); notes of other keys are ``unverified``, notes
below the quorum ``below_quorum``. Two kept checkpoints of one chain and size with
different roots mean the log signed two histories: ``conflicting`` names the chain and
size, and a restore refuses to use that chain. Records missing from the topic's start
(``log_start``) are reported: the topic keeps everything.

Pure reading and verification (``careledger_core.checkpoint``/``cosignature``); the
replica imports no verifier.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger_core.checkpoint import Checkpoint, open_note, parse_checkpoint
from careledger_core.cosignature import WitnessPolicy, check_quorum, split_note
from careledger_core.errors import (
    CheckpointError,
    InfrastructureError,
    NoteUnverifiedError,
    SignatureError,
)
from careledger_core.signing import PublicKey

__all__ = ["CheckpointsUnavailable", "SignedCheckpoints", "accept_note", "read_checkpoints"]


class CheckpointsUnavailable(InfrastructureError):
    """The checkpoints topic cannot be read: a restore cannot tell what is genuine."""

    code = "CHECKPOINTS_UNAVAILABLE"


@dataclass
class SignedCheckpoints:
    """The checkpoints kept, per chain and size (the first note read at each size)."""

    by_chain: dict[str, dict[int, Checkpoint]] = field(default_factory=dict)
    notes: int = 0
    kept: int = 0
    unverified: int = 0
    invalid: int = 0
    below_quorum: int = 0
    #: (chain, size) signed with two different roots or heads
    conflicting: list[tuple[str, int]] = field(default_factory=list)
    log_start: dict[int, int] = field(default_factory=dict)
    witnessed: bool = False

    def add(self, cp: Checkpoint) -> None:
        sizes = self.by_chain.setdefault(cp.origin, {})
        known = sizes.get(cp.size)
        if known is None:
            sizes[cp.size] = cp
            self.kept += 1
        elif (known.root_hash, known.head_hash) != (cp.root_hash, cp.head_hash) and (
            cp.origin,
            cp.size,
        ) not in self.conflicting:
            self.conflicting.append((cp.origin, cp.size))

    def to_json(self) -> dict[str, Any]:
        return {
            "notes": self.notes,
            "kept": self.kept,
            "witnessed": self.witnessed,
            "unverified": self.unverified,
            "invalid": self.invalid,
            "below_quorum": self.below_quorum,
            "conflicting": [{"chain_id": c, "size": n} for c, n in self.conflicting],
            "log_start_offsets": {str(p): o for p, o in sorted(self.log_start.items())},
        }


def accept_note(
    note: str,
    keys: Sequence[PublicKey],
    origin: str,
    policy: WitnessPolicy | None,
    into: SignedCheckpoints,
) -> Checkpoint | None:
    """Verify one note as described in the module doc; keep it in ``into`` if it counts."""
    into.notes += 1
    try:
        body, _lines = split_note(note)
        cp = parse_checkpoint(body)
    except CheckpointError:
        into.unverified += 1
        return None
    verified = False
    for key in keys:
        for name in dict.fromkeys((cp.origin, origin)):
            try:
                open_note(note, {name: key})
            except NoteUnverifiedError:
                continue
            except (SignatureError, CheckpointError):
                into.invalid += 1
                return None
            verified = True
    if not verified:
        into.unverified += 1
        return None
    if policy is not None:
        try:
            met = check_quorum(note, policy).met
        except CheckpointError:
            met = False
        if not met:
            into.below_quorum += 1
            return None
    if not cp.is_tree:
        into.unverified += 1  # a legacy checkpoint names a head, not a tree: not usable
        return None
    into.add(cp)
    return cp


def read_checkpoints(
    settings: Any,
    keys: Sequence[PublicKey],
    policy: WitnessPolicy | None = None,
    timeout_s: float = 10.0,
) -> SignedCheckpoints:
    """Read and verify the whole checkpoints topic; raises :class:`CheckpointsUnavailable`."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    topic_name: str = settings.topic_checkpoints
    out = SignedCheckpoints(witnessed=policy is not None)
    consumer = Consumer(
        kafka_config(
            settings,
            ADMIN,
            {
                "group.id": f"careledger-restore-checkpoints-{uuid.uuid4().hex}",
                "client.id": "careledger-restore",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": False,
                "auto.offset.reset": "earliest",
                "allow.auto.create.topics": False,
            },
        )
    )
    try:
        try:
            topic = consumer.list_topics(topic_name, timeout=timeout_s).topics.get(topic_name)
            if topic is None or topic.error is not None:
                raise CheckpointsUnavailable(f"the checkpoints topic {topic_name} cannot be read")
            ends: dict[int, int] = {}
            assign = []
            for p in sorted(topic.partitions):
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic_name, p), timeout=timeout_s, cached=False
                )
                if low > 0:
                    out.log_start[p] = low
                if high > low:
                    ends[p] = high
                    assign.append(TopicPartition(topic_name, p, low))
            consumer.assign(assign)
            position = {p: 0 for p in ends}
            idle = 0.0
            while any(position[p] < end for p, end in ends.items()):
                msg = consumer.poll(0.5)
                if msg is None:
                    idle += 0.5
                    if idle > timeout_s * 3:
                        raise CheckpointsUnavailable(
                            f"the checkpoints topic {topic_name} stopped answering"
                        )
                    continue
                idle = 0.0
                if msg.error() is not None:
                    continue
                partition, offset = int(msg.partition() or 0), int(msg.offset() or 0)
                position[partition] = offset + 1
                if offset >= ends.get(partition, 0):
                    continue
                try:
                    note = (msg.value() or b"").decode("utf-8")
                except UnicodeDecodeError:
                    out.notes += 1
                    out.unverified += 1
                    continue
                accept_note(note, keys, settings.origin, policy, out)
        except KafkaException as exc:
            raise CheckpointsUnavailable(f"cannot read {topic_name}: {exc}") from exc
    finally:
        consumer.close()
    return out
