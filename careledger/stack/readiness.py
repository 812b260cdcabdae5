"""Readiness probes: does the broker answer a metadata request, does ClickHouse answer?"""

from __future__ import annotations

import logging
from typing import Any

from clickhouse_driver import errors as ch_errors
from confluent_kafka import KafkaException

from careledger.config import Settings
from careledger.credentials import clickhouse_login
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from careledger.keys import KeyFileError

from .processes import _port_open

# Every part of the stack logs as "careledger.stack", like the single module it was.
log = logging.getLogger("careledger.stack")


def kafka_ready(settings: Settings, timeout: float = 2.0) -> bool:
    """True when the broker at ``settings.kafka_bootstrap`` answers a metadata request."""
    if not _port_open(settings.kafka_host, settings.kafka_port):
        return False
    try:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(kafka_config(settings, ADMIN, ADMIN_SETTINGS))
        md = admin.list_topics(timeout=timeout)
        return bool(md.brokers)
    except KafkaException as exc:
        log.debug("kafka not ready: %s", exc)
        return False
    except KeyFileError as exc:  # no admin password yet: not a broker we can use
        log.debug("kafka not ready: %s", exc)
        return False


def clickhouse_ready(settings: Settings, timeout: float = 2.0) -> bool:
    """True when ClickHouse answers ``SELECT 1`` on the native TCP port."""
    return _clickhouse_version(settings, timeout) is not None


def _clickhouse_version(settings: Settings, timeout: float = 2.0) -> str | None:
    # No bare TCP probe first: ClickHouse logs a warning for every connection that
    # sends nothing, and the driver fails just as fast on a closed port (its own
    # connection-failure log lines are silenced: "not up" is an answer here).
    driver_log = logging.getLogger("clickhouse_driver")
    saved_level = driver_log.level
    driver_log.setLevel(logging.CRITICAL)
    try:
        from clickhouse_driver import Client

        login = clickhouse_login(settings)
        client = Client(
            settings.clickhouse_host,
            port=settings.clickhouse_port,
            user=login.user,
            password=login.password,
            connect_timeout=timeout,
            send_receive_timeout=timeout,
            sync_request_timeout=timeout,
            **login.tls_options(),
        )
        try:
            rows = client.execute("SELECT 1, version()")
        finally:
            client.disconnect()
        return str(rows[0][1]) if rows and rows[0][0] == 1 else None
    except (ch_errors.Error, OSError, EOFError) as exc:
        log.debug("clickhouse not ready: %s", exc)
        return None
    finally:
        driver_log.setLevel(saved_level)


#: the stack's admin clients (probes, topic set-up): fail fast, and librdkafka hands only
#: real errors to the logger (refused connections are an answer here)
ADMIN_SETTINGS: dict[str, Any] = {
    "socket.connection.setup.timeout.ms": 2000,
    "log.connection.close": False,
    "log_level": 3,
}
