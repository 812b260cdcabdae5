"""The careledger Kafka topics: their partition counts and settings, creating and deleting them."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN, PROCESSOR, Principal
from careledger.raw_record import MAX_ENVELOPE_BYTES

from .model import StackError
from .readiness import ADMIN_SETTINGS

# Every part of the stack logs as "careledger.stack", like the single module it was.
log = logging.getLogger("careledger.stack")

TIMESTAMP_TYPE = "message.timestamp.type"
LOG_APPEND_TIME = "LogAppendTime"
#: topic settings an existing topic is brought to by ``ensure_topics`` (the others, such
#: as retention, are the operator's to change)
ENFORCED_CONFIGS = frozenset({TIMESTAMP_TYPE})


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
        # stored blocks for replicas (ADR 0017), key = chain id
        settings.topic_blocks: settings.partitions,
    }


def topic_config(settings: Settings, name: str) -> dict[str, str]:
    """Per-topic settings. Dead letters and checkpoints are evidence: keep them forever.

    Dead-lettered offsets are counted in block headers, so their records must stay
    available for review and replay; checkpoints are what truncation is detected against.
    Raw records (what the ingest gateway received) are kept forever too; they and dead
    letters (and quarantined records: a whole batch record, ADR 0020) may be as large as
    a received record allows
    (``careledger.raw_record.MAX_ENVELOPE_BYTES``).
    The blocks topic (ADR 0017) is what replicas are fed and restored from: kept
    forever, and one of its records may carry one such record. The events topic is
    stamped by the broker (``LogAppendTime``): a source key's status is decided at that
    time, which no producer can choose (ADR 0015).
    """
    config = _topic_config(settings, name)
    if settings.kafka_min_insync_replicas > 1:
        # a cluster (ADR 0030): an acks=all write is on this many brokers before it is
        # acknowledged, and refused (not accepted on fewer) when they are not in sync
        config["min.insync.replicas"] = str(settings.kafka_min_insync_replicas)
    return config


def _topic_config(settings: Settings, name: str) -> dict[str, str]:
    if name == settings.topic_events:
        return {TIMESTAMP_TYPE: LOG_APPEND_TIME}
    if name in (
        settings.topic_raw,
        settings.topic_dead_letter,
        settings.topic_blocks,
        settings.topic_quarantine,  # a quarantined batch record may be ~1 MiB (ADR 0020)
    ):
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


def ensure_topics(
    settings: Settings,
    topics: dict[str, int],
    timeout: float = 30.0,
    *,
    acls: bool = True,
    principal: Principal = ADMIN,
) -> None:
    """Create the missing topics (``kafka_replication_factor`` replicas each) and wait
    until they have leaders; with ``acls``, then the ACLs of ``settings``' topics
    (``careledger.stack.acls``: as the admin principal, a SASL_SSL broker only).

    ``principal`` is the login that creates them: ``ADMIN`` for the stack; a
    component that creates its own topic logs in as itself (``alerts ack``, the
    auditor, which ``acl_matrix`` lets create the alert-status topic and nothing
    else) and never needs the admin's password. Only the admin sets ACLs.

    Existing topics are left as they are; a partition count different from the one
    asked for is logged as a warning, not changed.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    if acls and principal != ADMIN:
        raise ValueError("only the admin principal sets ACLs")
    admin = AdminClient(kafka_config(settings, principal, ADMIN_SETTINGS))
    deadline = time.monotonic() + timeout
    pending = dict(topics)
    created: set[str] = set()
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
                    replication_factor=settings.kafka_replication_factor,
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
                created.add(name)
                del pending[name]  # made with its settings: nothing to list or enforce
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                last_error = exc
                if not err.retriable():
                    raise StackError(f"cannot create topic {name}: {err.str()}") from exc
        if pending:
            time.sleep(0.1)
    if pending:
        raise StackError(f"timed out creating topics {sorted(pending)}: {last_error}")
    _wait_for_leaders(admin, list(topics), deadline)
    _enforce_configs(settings, admin, [n for n in topics if n not in created])
    if acls:
        from .acls import ensure_acls

        # the same connection: a SASL_SSL login costs a TLS handshake and a SCRAM exchange
        ensure_acls(settings, timeout=max(5.0, deadline - time.monotonic()), admin=admin)


def _describe(admin: Any, name: str) -> dict[str, str]:
    from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]

    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    entries = admin.describe_configs([resource], request_timeout=15)[resource].result()
    return {k: str(v.value) for k, v in entries.items()}


def _enforce_configs(settings: Settings, admin: Any, names: list[str]) -> None:
    """Bring existing topics to the settings that must hold (``ENFORCED_CONFIGS``): an
    events topic created before ADR 0015 gets ``LogAppendTime`` (it applies to records
    appended from then on)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
    )

    for name in names:
        wanted = {k: v for k, v in topic_config(settings, name).items() if k in ENFORCED_CONFIGS}
        if not wanted:
            continue
        try:
            have = _describe(admin, name)
            changes = {k: v for k, v in wanted.items() if have.get(k) != v}
            if not changes:
                continue
            resource = ConfigResource(
                ConfigResource.Type.TOPIC,
                name,
                incremental_configs=[
                    ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                    for k, v in changes.items()
                ],
            )
            admin.incremental_alter_configs([resource], request_timeout=15)[resource].result()
        except KafkaException as exc:
            raise StackError(f"cannot set {sorted(wanted)} on topic {name}: {exc}") from exc
        log.warning("topic %s: set %s (was %s)", name, changes, {k: have.get(k) for k in changes})


def events_topic_time_problem(settings: Settings) -> str | None:
    """Why the events topic's timestamps cannot be trusted (one line naming the fix), or
    None: the topic uses LogAppendTime, or cannot be described now (then the processor
    still refuses every record the producer stamped, ``UNTRUSTED_TIME``).

    Asked as the processor (``acl_matrix`` grants it DESCRIBE_CONFIGS on the events
    topic): a deployed processor holds its own password only, never the admin's."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    name = settings.topic_events
    try:
        have = _describe(AdminClient(kafka_config(settings, PROCESSOR, ADMIN_SETTINGS)), name).get(
            TIMESTAMP_TYPE
        )
    except KafkaException as exc:
        log.warning("cannot describe topic %s: %s", name, exc)
        return None
    if have is None or have == LOG_APPEND_TIME:
        return None
    return (
        f"topic {name} has {TIMESTAMP_TYPE}={have}: record times come from the producers' "
        f"clocks, so a signer could choose when its key is judged (ADR 0015); run "
        f"`careledger up` (it sets {TIMESTAMP_TYPE}={LOG_APPEND_TIME}) or kafka-configs.sh "
        f"--alter --entity-type topics --entity-name {name} --add-config "
        f"{TIMESTAMP_TYPE}={LOG_APPEND_TIME}"
    )


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
    admin = AdminClient(kafka_config(settings, ADMIN, ADMIN_SETTINGS))
    futures = admin.delete_topics(list(names), operation_timeout=timeout, request_timeout=timeout)
    for name, fut in futures.items():
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise StackError(f"cannot delete topic {name}: {exc.args[0].str()}") from exc
