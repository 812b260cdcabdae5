"""What the processor writes to Kafka: dead letters, quarantine alerts, checkpoints.

Dead letters (and quarantined records, with one integrity alert per reason and
claimed source) are sent and flushed before the offsets they stand for are in
a block. An event dead-lettered alone out of a batch record (ADR 0020) is a dead
letter of its own: the event's bytes, with the record's offset and the event's
index in the batch (``careledger-batch-index``) and the sequence number it was
signed under (``careledger-batch-seq``). A quarantined record larger than the
quarantine topic takes (Kafka's default message size: a batch record near the
events topic's own limit, plus headers) goes to the dead-letter topic, which takes
raw-record sizes, marked ``careledger-quarantined``: its bytes are kept either way
and the processor never stalls on it.

Checkpoints (the RFC 6962 root over each chain's block hashes, ADR 0012, with an RFC
9162 consistency proof from the previous one in a record header) are published after
each write, not flushed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any, Final

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import PROCESSOR
from careledger.raw_record import MAX_ENVELOPE_BYTES
from careledger.storage.block_records import BlockMaterial, BlockPublishError, encode_material
from careledger_core.checkpoint import (
    CONSISTENCY_HEADER,
    checkpoint_for,
    format_checkpoint,
    format_consistency,
    sign_note,
)
from careledger_core.signing import SigningKey
from processors.chainer import Rejected
from processors.records import ChainUpdate, Part


def quarantine_alerts(quarantined: list[tuple[Part, Rejected]]) -> list[dict[str, Any]]:
    """One integrity alert per (reason, claimed source, claimed key) of a write batch.

    Quarantined records are well-formed events that cannot be attributed to a
    registered source: forged, replayed or signed with a revoked key. The alert names
    the reason, the claim and where the records are; never their content.
    """
    groups: dict[tuple[str, str, str], list[tuple[Part, Rejected]]] = {}
    for part, r in quarantined:
        claim = dict(r.claim)
        key = (r.code, claim.get("source_id", ""), claim.get("key_id", ""))
        groups.setdefault(key, []).append((part, r))
    docs = []
    for (code, source_id, key_id), items in sorted(groups.items()):
        _first_part, first = items[0]
        positions = [f"{t}/{p}@{r.offset}" for (t, p), r in items]
        digest = hashlib.sha256(
            "\x00".join(("careledger-quarantine/1", code, *positions[:1])).encode()
        ).hexdigest()[:32]
        docs.append(
            {
                "schema": "careledger.alert/1",
                "source": "processor",
                "alert_id": digest,
                "rule": f"SOURCE_{code}",
                "severity": "critical" if code in _FORGERY_CODES else "high",
                "status": "open",
                "evidence": {
                    "reason": first.reason,
                    "claimed_source_id": source_id or None,
                    "claimed_key_id": key_id or None,
                    "records": len(items),
                    "positions": positions[:50],
                    "quarantine_topic_note": "original bytes are in the quarantine topic "
                    "(records over 1 MB: the dead-letter topic, marked careledger-quarantined)",
                },
            }
        )
    return docs


#: quarantined values above this go to the dead-letter topic (see the module)
QUARANTINE_MAX_VALUE_BYTES: Final = 1_000_000

#: reasons that mean someone produced records they could not have signed
_FORGERY_CODES: Final = frozenset({"BAD_SIGNATURE", "BAD_PROOF", "REPLAYED", "KEY_NOT_FOR_SOURCE"})


class KafkaOutputs:
    """What the processor writes to Kafka: dead letters and chain-head checkpoints."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        self.settings = settings
        self.topic = settings.topic_dead_letter
        self.checkpoint_failures = 0
        self._producer = Producer(
            kafka_config(
                settings,
                PROCESSOR,
                {
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 5,
                    # a whole batch record (ADR 0020) may be dead-lettered or quarantined
                    "message.max.bytes": max(
                        settings.max_event_bytes * 20,
                        settings.max_batch_record_bytes + 65536,
                        MAX_ENVELOPE_BYTES + 65536,
                    ),
                },
            )
        )

    def send_dead_letters(self, rejected: list[tuple[Part, Rejected]]) -> None:
        """Send and flush: a dead letter must be in Kafka before its offset is in a block."""
        failures: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        quarantined: list[tuple[Part, Rejected]] = []
        for (source_topic, partition), r in rejected:
            headers: list[tuple[str, str | bytes | None]] = [
                ("careledger-error-code", r.code.encode()),
                ("careledger-error", r.reason.encode("utf-8", errors="replace")),
                ("careledger-error-field", r.field.encode("utf-8", errors="replace")),
                ("careledger-source-topic", source_topic.encode()),
                ("careledger-source-partition", str(partition).encode()),
                ("careledger-source-offset", str(r.offset).encode()),
            ]
            if r.batch_index is not None:
                claim = dict(r.claim)
                headers.append(("careledger-batch-index", str(r.batch_index).encode()))
                if "seq" in claim:
                    headers.append(("careledger-batch-seq", claim["seq"].encode()))
            topic = self.topic
            if r.quarantine:
                quarantined.append(((source_topic, partition), r))
                if len(r.value) > QUARANTINE_MAX_VALUE_BYTES:
                    headers.append(("careledger-quarantined", b"1"))
                else:
                    topic = self.settings.topic_quarantine
            self._producer.produce(
                topic, value=r.value, key=r.key, headers=headers, on_delivery=on_delivery
            )
        for doc in quarantine_alerts(quarantined):
            self._producer.produce(
                self.settings.topic_alerts,
                value=json.dumps(doc, sort_keys=True).encode(),
                key=doc["alert_id"].encode(),
                on_delivery=on_delivery,
            )
        remaining = self._producer.flush(30.0)
        if remaining or failures:
            raise RuntimeError(
                f"dead-letter delivery failed: {len(failures)} errors, {remaining} not flushed"
            )

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for everything produced (checkpoints included) to be
        delivered; returns how many messages are still undelivered."""
        return int(self._producer.flush(timeout))

    def publish_checkpoints(self, updates: list[ChainUpdate], key: SigningKey) -> None:
        """Publish a C2SP signed-note checkpoint of each updated chain (not flushed here).

        The note's key name is the chain id (the checkpoint origin), as C2SP witnesses
        such as litewitness require. Key = chain id; header ``careledger-consistency`` =
        the RFC 9162 proof from the chain's previous checkpoint (``old <size>`` and
        base64 hashes, as in a C2SP tlog-witness request). Checkpoints live outside
        ClickHouse, so someone who can only rewrite the store cannot hide a truncation
        or a rewrite from a verifier that reads them. A lost checkpoint is harmless:
        the next one supersedes it.
        """

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                self.checkpoint_failures += 1

        for u in updates:
            cp = checkpoint_for(u.head, u.tree)
            note = sign_note(format_checkpoint(cp), cp.origin, key)
            proof = format_consistency(u.old_size, u.proof)
            self._producer.produce(
                self.settings.topic_checkpoints,
                value=note.encode("utf-8"),
                key=cp.origin.encode("utf-8"),
                headers=[(CONSISTENCY_HEADER, proof.encode("ascii"))],
                on_delivery=on_delivery,
            )
        self._producer.poll(0)

    def publish_blocks(self, blocks: Sequence[BlockMaterial]) -> None:
        """Publish stored blocks to the blocks topic for replicas (ADR 0017) and flush.

        Key = chain id, so a chain's blocks stay in height order in one partition; a
        large block goes as several parts, one after another. Its own idempotent
        producer (acks=all, lz4, records up to one raw record's size), flushed here: the
        caller records the blocks as published only after this returns. Raises
        ``BlockPublishError`` if any part is not delivered within 30 s.
        """
        from confluent_kafka import KafkaException, Producer

        producer = getattr(self, "_blocks_out", None)
        if producer is None:
            producer = self._blocks_out = Producer(
                kafka_config(
                    self.settings,
                    PROCESSOR,
                    {
                        "enable.idempotence": True,
                        "acks": "all",
                        "linger.ms": 5,
                        "compression.type": "lz4",
                        "message.max.bytes": MAX_ENVELOPE_BYTES + 65536,
                    },
                )
            )
        failures: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        topic = self.settings.topic_blocks
        try:
            for m in blocks:
                key = m.chain_id.encode("utf-8")
                for value in encode_material(m):
                    while True:
                        try:
                            producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                            break
                        except BufferError:  # local queue full: let deliveries drain
                            producer.poll(0.1)
        except KafkaException as exc:
            raise BlockPublishError(f"cannot publish blocks to {topic}: {exc}") from exc
        remaining = producer.flush(30.0)
        if remaining or failures:
            raise BlockPublishError(
                f"blocks not delivered to {topic}: {len(failures)} errors, {remaining} pending"
                + (f" (first: {failures[0]})" if failures else "")
            )

    def prepare_blocks(self, timeout: float = 10.0) -> None:
        """Create the blocks producer and fetch the blocks topic's metadata now (the
        processor calls this at start): a producer's first delivery (connection,
        idempotent producer id, metadata) takes up to half a second, which would
        otherwise land on the first write. Kafka unreachable: logged, retried on use."""
        from confluent_kafka import KafkaException

        self.publish_blocks([])
        try:
            self._blocks_out.list_topics(self.settings.topic_blocks, timeout=timeout)
        except KafkaException as exc:
            logging.getLogger("careledger.processor").warning(
                "blocks topic %s not reachable yet: %s", self.settings.topic_blocks, exc
            )
