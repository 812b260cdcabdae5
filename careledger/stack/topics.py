"""The careledger Kafka topics: their partition counts and settings, creating and deleting them."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from careledger.config import Settings
from careledger.raw_record import MAX_ENVELOPE_BYTES

from .model import StackError
from .readiness import _admin_config

# Every part of the stack logs as "careledger.stack", like the single module it was.
log = logging.getLogger("careledger.stack")


def default_topics(settings: Settings) -> dict[str, int]:
    """The careledger topics and their partition counts."""
    return {
        settings.topic_events: settings.partitions,
        settings.topic_dead_letter: 1,
        settings.topic_alerts: 1,
        settings.topic_checkpoints: 1,
        settings.topic_consents: settings.reference_partitions,
        settings.topic_care_relationships: settings.reference_partitions,
        settings.topic_workforce: settings.reference_partitions,
        settings.topic_patients: settings.reference_partitions,
        settings.topic_sources: settings.reference_partitions,
        settings.topic_quarantine: 1,
        settings.topic_raw: settings.partitions,
    }


def topic_config(settings: Settings, name: str) -> dict[str, str]:
    """Per-topic settings. Dead letters and checkpoints are evidence: keep them forever.

    Dead-lettered offsets are counted in block headers, so their records must stay
    available for review and replay; checkpoints are what truncation is detected against.
    Raw records (what the ingest gateway received) are kept forever too; they and dead
    letters may be as large as a received record allows
    (``careledger.raw_record.MAX_ENVELOPE_BYTES``).
    """
    if name in (settings.topic_raw, settings.topic_dead_letter):
        return {
            "retention.ms": "-1",
            "retention.bytes": "-1",
            "max.message.bytes": str(MAX_ENVELOPE_BYTES + 65536),
        }
    if name in (
        settings.topic_dead_letter,
        settings.topic_checkpoints,
        settings.topic_consents,
        settings.topic_care_relationships,
        settings.topic_workforce,
        settings.topic_patients,
        settings.topic_sources,
        settings.topic_quarantine,
    ):
        # Reference data must stay replayable: the state any decision used is
        # rebuilt from it.
        return {"retention.ms": "-1", "retention.bytes": "-1"}
    return {}


def ensure_topics(settings: Settings, topics: dict[str, int], timeout: float = 30.0) -> None:
    """Create the missing topics (replication factor 1) and wait until they have leaders.

    Existing topics are left as they are; a partition count different from the one
    asked for is logged as a warning, not changed.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient(_admin_config(settings))
    deadline = time.monotonic() + timeout
    pending = dict(topics)
    last_error: Exception | None = None
    while pending and time.monotonic() < deadline:
        existing = admin.list_topics(timeout=max(1.0, deadline - time.monotonic())).topics
        for name in list(pending):
            if name in existing and not existing[name].error:
                have = len(existing[name].partitions)
                if have != pending[name]:
                    log.warning(
                        "topic %s has %d partitions, settings ask for %d", name, have, pending[name]
                    )
                del pending[name]
        if not pending:
            break
        futures = admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=n,
                    replication_factor=1,
                    config=topic_config(settings, name),
                )
                for name, n in pending.items()
            ],
            operation_timeout=10,
            request_timeout=15,
        )
        for name, fut in futures.items():
            try:
                fut.result()
                log.debug("created topic %s (%d partitions)", name, pending[name])
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                last_error = exc
                if not err.retriable():
                    raise StackError(f"cannot create topic {name}: {err.str()}") from exc
        time.sleep(0.1)
    if pending:
        raise StackError(f"timed out creating topics {sorted(pending)}: {last_error}")
    _wait_for_leaders(admin, list(topics), deadline)


def _wait_for_leaders(admin: Any, names: list[str], deadline: float) -> None:
    while True:
        md = admin.list_topics(timeout=5)
        missing = [
            n
            for n in names
            if n not in md.topics
            or md.topics[n].error is not None
            or any(p.leader < 0 for p in md.topics[n].partitions.values())
        ]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise StackError(f"topics {missing} have no partition leader yet")
        time.sleep(0.1)


def delete_topics(settings: Settings, names: Sequence[str], timeout: float = 30.0) -> None:
    """Delete topics (missing ones are ignored)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    if not names:
        return
    admin = AdminClient(_admin_config(settings))
    futures = admin.delete_topics(list(names), operation_timeout=timeout, request_timeout=timeout)
    for name, fut in futures.items():
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise StackError(f"cannot delete topic {name}: {exc.args[0].str()}") from exc
