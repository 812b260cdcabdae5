"""`careledger dead-letters`: see and replay what the processor could not chain.

Each dead-letter record keeps the original bytes and says why it was refused
and where it came from (source topic, partition, offset). Listing prints the
metadata, a size and a SHA-256 of the bytes, never the bytes themselves: they
may hold patient identifiers. ``--show-bytes`` prints them for an operator who
asks explicitly. ``--replay`` sends the original bytes back to the events topic
(e.g. after the size limit was raised or a producer fixed); a replayed record
is a new record at a new offset, and is chained or dead-lettered again.

An event dead-lettered alone out of a batch record (ADR 0020) is listed at its
record's position followed by ``#<index in the batch>`` (``--replay`` takes
``PARTITION@OFFSET`` for every dead letter of a record, or ``PARTITION@OFFSET#INDEX``
for one); its bytes are the event's. Its batch's other events were chained; its
bytes alone are not signed, so replaying it needs the source to send it again.

Copies. The processor sends and flushes a record's dead letter *before* the block
holding its offset range is stored (processors.outputs); a processor killed between
the two re-reads the range on restart and sends the dead letter again. Kafka offers
no transaction spanning a topic and ClickHouse, so the topic is at-least-once and
the reader is idempotent: dead letters with the same source position (topic,
partition, offset, batch index), the same reason code and the same bytes are one
refused input, listed once with ``copies`` and replayed once. Gateway dead letters
carry no Kafka position (offset -1) and are never merged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from confluent_kafka import KafkaException

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger_core.errors import CareledgerError


@dataclass(frozen=True)
class DeadLetter:
    dlq_partition: int
    dlq_offset: int
    source_topic: str
    source_partition: int
    source_offset: int
    code: str
    reason: str
    field: str
    key: bytes | None
    value: bytes
    #: an event dead-lettered alone out of a batch record: its index in the batch and
    #: the sequence number it was signed under
    batch_index: int | None = None
    batch_seq: int | None = None
    #: a quarantined record too large for the quarantine topic (processors.outputs)
    quarantined: bool = False
    #: how many times the topic holds this dead letter (a processor killed after
    #: sending it and before storing its block sends it again on restart)
    copies: int = 1

    @property
    def identity(self) -> tuple[object, ...] | None:
        """What makes two dead-letter records one refused input; ``None`` for a
        record with no Kafka source position (the gateway's), never merged."""
        if self.source_offset < 0 or self.source_partition < 0:
            return None
        return (
            self.source_topic,
            self.source_partition,
            self.source_offset,
            self.batch_index,
            self.code,
            self.quarantined,
            hashlib.sha256(self.value).digest(),
        )

    @property
    def position(self) -> str:
        """``PARTITION@OFFSET``, with ``#INDEX`` for an event out of a batch record."""
        at = f"{self.source_partition}@{self.source_offset}"
        return at if self.batch_index is None else f"{at}#{self.batch_index}"

    def summary(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "source": f"{self.source_topic}/{self.position}",
            "code": self.code,
            "field": self.field,
            "reason": self.reason,
            "bytes": len(self.value),
            "sha256": hashlib.sha256(self.value).hexdigest(),
            "dead_letter_position": f"{self.dlq_partition}@{self.dlq_offset}",
        }
        if self.batch_index is not None:
            item["batch_index"] = self.batch_index
            item["batch_seq"] = self.batch_seq
        if self.quarantined:
            item["quarantined"] = True
        if self.copies > 1:
            item["copies"] = self.copies
        return item


def collapse_copies(records: list[DeadLetter]) -> list[DeadLetter]:
    """Each refused input once, at its first dead-letter position, in topic order,
    with the number of records that carry it (see the module doc: copies)."""
    first: dict[tuple[object, ...], int] = {}
    out: list[DeadLetter] = []
    for r in records:
        ident = r.identity
        if ident is None:
            out.append(r)
            continue
        at = first.get(ident)
        if at is None:
            first[ident] = len(out)
            out.append(r)
        else:
            out[at] = replace(out[at], copies=out[at].copies + 1)
    return out


def _int_or(text: str | None, default: int) -> int:
    """A header's number; ``default`` when it is missing or not a number."""
    value = _int_or_none(text)
    return default if value is None else value


def _int_or_none(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


class DeadLettersUnreadable(CareledgerError):
    """The topic cannot be read to its end now: Kafka unreachable, the topic missing,
    or Kafka stopped answering midway. Never an empty list (a false all-clear)."""

    code = "DEAD_LETTERS_UNREADABLE"


@dataclass(frozen=True)
class DeadLetterRead:
    """What one read of a dead-letter (or quarantine) topic found."""

    records: list[DeadLetter]
    #: records the topic held when the read began (copies included)
    total: int
    #: whether ``records`` stops at the limit before the topic's end
    truncated: bool


def _kafka_text(exc: KafkaException) -> str:
    from confluent_kafka import KafkaError

    err = exc.args[0] if exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc)


def read_dead_letter_topic(
    settings: Settings,
    limit: int | None = None,
    *,
    topic: str | None = None,
    stall_s: float = 5.0,
) -> DeadLetterRead:
    """Read the dead-letter topic (or ``topic``, e.g. quarantine) from its beginning to
    the end it had when the read began, without joining a group or committing: each
    refused input once (:func:`collapse_copies`), at most ``limit`` of them. Raises
    ``DeadLettersUnreadable`` (one line) rather than returning less than is there."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    name = topic or settings.topic_dead_letter
    where = settings.kafka_bootstrap
    consumer = Consumer(
        kafka_config(
            settings,
            ADMIN,
            {
                "group.id": f"careledger-dlq-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            },
        )
    )
    found: list[DeadLetter] = []
    distinct: set[object] = set()  # identities, or the record's own position if none
    try:
        try:
            # a broker that answers at all answers this in well under a second
            meta = consumer.list_topics(name, timeout=stall_s).topics.get(name)
            if meta is None or meta.error is not None:
                raise DeadLettersUnreadable(
                    f"topic {name} does not exist on Kafka at {where} (run `careledger up`, "
                    "or `careledger kafka-setup` on a cluster)"
                )
            ends: dict[int, tuple[int, int]] = {}
            for p in sorted(meta.partitions):
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(name, p), timeout=stall_s, cached=False
                )
                if high > low:
                    ends[p] = (low, high)
        except KafkaException as exc:
            raise DeadLettersUnreadable(
                f"cannot reach Kafka at {where}: {_kafka_text(exc)}"
            ) from exc
        total = sum(high - low for low, high in ends.values())
        remaining = {p: high for p, (_low, high) in ends.items()}
        consumer.assign([TopicPartition(name, p, low) for p, (low, _high) in ends.items()])
        progress = time.monotonic()
        while remaining and (limit is None or len(distinct) < limit):
            msg = consumer.poll(0.5)
            if msg is None:
                if time.monotonic() - progress > stall_s:
                    raise DeadLettersUnreadable(
                        f"Kafka at {where} stopped answering while {name} was read "
                        f"({len(found)} of {total} records read)"
                    )
                continue
            progress = time.monotonic()
            part = msg.partition() or 0
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    remaining.pop(part, None)
                    continue
                raise DeadLettersUnreadable(
                    f"cannot read {name} from Kafka at {where}: {err.str()}"
                )
            offset = msg.offset() or 0
            if offset + 1 >= remaining.get(part, 0):
                remaining.pop(part, None)  # what was there when the read began: all read
            raw_headers: Any = msg.headers() or []
            h = {
                k: v.decode("utf-8", "replace") if isinstance(v, bytes) else (v or "")
                for k, v in raw_headers
            }
            record = DeadLetter(
                part,
                offset,
                h.get("careledger-source-topic", "?"),
                _int_or(h.get("careledger-source-partition"), -1),
                _int_or(h.get("careledger-source-offset"), -1),
                h.get("careledger-error-code", "?"),
                h.get("careledger-error", ""),
                h.get("careledger-error-field", ""),
                msg.key(),
                msg.value() or b"",
                _int_or_none(h.get("careledger-batch-index")),
                _int_or_none(h.get("careledger-batch-seq")),
                h.get("careledger-quarantined") == "1",
            )
            found.append(record)
            distinct.add(record.identity or (record.dlq_partition, record.dlq_offset))
    finally:
        consumer.close()
    return DeadLetterRead(collapse_copies(found), total, truncated=bool(remaining))


def read_dead_letters(
    settings: Settings, limit: int | None = None, *, topic: str | None = None
) -> list[DeadLetter]:
    """:func:`read_dead_letter_topic`'s records."""
    return read_dead_letter_topic(settings, limit, topic=topic).records


def configure_dead_letters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=100, help="read at most N records")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--show-bytes", action="store_true", help="also print the original bytes")
    parser.add_argument(
        "--quarantine",
        action="store_true",
        help="the quarantine topic instead: well-formed events that could not be attributed "
        "to a registered source (bad signature, unknown or revoked key, replay; ADR 0010)",
    )
    parser.add_argument(
        "--replay",
        nargs="*",
        metavar="PARTITION@OFFSET",
        help="send the original bytes of these source records (all listed if none given) "
        "back; PARTITION@OFFSET#INDEX: one event dead-lettered out of a batch record",
    )


def _sealed_opener(settings: Settings) -> Callable[[bytes], tuple[bytes, bytes] | None] | None:
    """Opens the gateway's sealed dead letters (a sealed ledger, ADR 0037) where the
    ingest key is; None elsewhere."""
    from careledger.ingest_keys import load_ingest_key, open_sealed_dead_letter
    from careledger.keys import KeyFileError

    if not settings.seal_events:
        return None
    try:
        key = load_ingest_key(settings.ingest_key)
    except KeyFileError:
        return None
    return lambda value: open_sealed_dead_letter(key.private, value)


def _shown(
    value: bytes, opener: Callable[[bytes], tuple[bytes, bytes] | None] | None
) -> dict[str, Any]:
    """What ``--show-bytes`` adds for one dead letter: its bytes, opened if sealed."""
    from careledger.ingest_keys import SEALED_DEAD_LETTER_LINE

    if not value.startswith(SEALED_DEAD_LETTER_LINE):
        return {"value": value.decode("utf-8", "backslashreplace")}
    opened = opener(value) if opener is not None else None
    if opened is None:
        return {
            "value": None,
            "sealed": "sealed to the ingest key: run where the processor's ingest key is "
            "to see the bytes",
        }
    transport, data = opened
    return {
        "value": data.decode("utf-8", "backslashreplace"),
        "transport": transport.decode("utf-8", "backslashreplace"),
    }


def command_dead_letters(args: argparse.Namespace, settings: Settings) -> int:
    topic = settings.topic_quarantine if args.quarantine else settings.topic_dead_letter
    try:
        read = read_dead_letter_topic(settings, args.limit, topic=topic)
    except DeadLettersUnreadable as exc:
        print(f"careledger dead-letters: {exc.message}", file=sys.stderr)
        return 2
    records = read.records
    opener = _sealed_opener(settings) if args.show_bytes else None
    for r in records:
        item = r.summary()
        if args.show_bytes:
            item.update(_shown(r.value, opener))
        if args.json:
            print(json.dumps(item))
        else:
            print(
                f"{item['source']:<45} {r.code:<16} {len(r.value):>7} B  "
                f"{item['sha256'][:16]}  {r.field}: {r.reason}"
                + (f"  [{r.copies} copies]" if r.copies > 1 else "")
            )
    what = "quarantined" if args.quarantine else "dead-letter"
    summary = f"{len(records)} {what} record(s) in {topic}"
    if read.truncated:  # never a partial list that reads as the whole
        summary = (
            f"first {len(records)} {what} record(s) of {topic}, which holds {read.total:,} "
            f"records (copies included): --limit N to see more"
        )
    # with --json the list is machine-read: the summary goes to stderr
    print(summary, file=sys.stderr if args.json else sys.stdout)
    if args.replay is None:
        return 0
    wanted = set(args.replay)
    chosen = [
        r
        for r in records
        if not wanted or f"{r.source_partition}@{r.source_offset}" in wanted or r.position in wanted
    ]
    from careledger.kafka.producer import AccessEventProducer

    with AccessEventProducer(settings, principal=ADMIN) as producer:
        for r in chosen:
            producer.send_raw(r.value, key=r.key)
        producer.flush()
    print(f"replayed {len(chosen)} record(s) to {settings.topic_events}")
    return 0
