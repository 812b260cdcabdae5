"""The broker's ACLs for the local stack and tests: what ``careledger.kafka.security``'s
matrix grants each principal on ``settings``' topics, created as the admin principal
(a super user). Kafka creates an ACL that already exists as a no-op, so this runs on
every ``careledger up`` and every topic set-up; a plaintext stack has no authorizer and
gets none."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from confluent_kafka import KafkaException

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN, acl_bindings, acl_matrix

from .model import StackError
from .readiness import ADMIN_SETTINGS

log = logging.getLogger("careledger.stack")

__all__ = ["delete_acls", "ensure_acls"]


def ensure_acls(settings: Settings, timeout: float = 30.0, *, admin: Any = None) -> int:
    """Create the matrix's ACLs for ``settings``; returns how many were asked for.
    ``admin``: an admin client logged in as the admin principal to reuse."""
    if settings.kafka_security_protocol != "SASL_SSL":
        return 0
    from confluent_kafka.admin import AdminClient

    bindings = acl_bindings(acl_matrix(settings))
    if admin is None:
        admin = AdminClient(kafka_config(settings, ADMIN, ADMIN_SETTINGS))
    futures = admin.create_acls(bindings, request_timeout=timeout)
    for binding, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            raise StackError(f"cannot create the Kafka ACL {binding}: {exc.args[0].str()}") from exc
    log.debug("Kafka ACLs in place: %d", len(bindings))
    return len(bindings)


def delete_acls(settings: Settings, timeout: float = 30.0) -> None:
    """Delete the matrix's ACLs on ``settings``' own topics and processor group (a test's,
    when it ends); those on shared resources (the cluster, per-run group prefixes) stay."""
    if settings.kafka_security_protocol != "SASL_SSL":
        return
    from confluent_kafka.admin import AclBindingFilter, AdminClient  # type: ignore[attr-defined]

    topics = {
        getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name[:6] == "topic_"
    }
    own = {*topics, settings.processor_app_id, f"{settings.processor_app_id}-"}
    filters = [
        AclBindingFilter(
            b.restype,
            b.name,
            b.resource_pattern_type,
            b.principal,
            b.host,
            b.operation,
            b.permission_type,
        )
        for b in acl_bindings(acl_matrix(settings))
        if b.name in own
    ]
    admin = AdminClient(kafka_config(settings, ADMIN, ADMIN_SETTINGS))
    for binding, future in admin.delete_acls(filters, request_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            raise StackError(f"cannot delete the Kafka ACL {binding}: {exc.args[0].str()}") from exc
