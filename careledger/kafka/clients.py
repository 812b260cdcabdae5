"""The one place a confluent-kafka client's configuration is made.

Every ``Producer``, ``Consumer`` and ``AdminClient`` of careledger (and of its tests) is
built from :func:`client_config` (or :func:`kafka_config` or
:func:`careledger.kafka.producer.producer_config`, which call it);
``tests/unit/test_kafka_clients.py`` reads every source file and holds us to it.

**Logins** (issue 12). Each client logs in as its component's principal
(:mod:`careledger.kafka.security`, whose module doc says which component is which):
``client_config`` takes the ``login`` and merges its librdkafka properties
(``security.protocol``, ``sasl.*``, ``ssl.*``; none for PLAINTEXT), and a caller's own
settings may set none of those keys. :func:`kafka_config` makes the login from
``Settings`` and a principal. ``login=None`` (no security properties at all) is for
unit tests whose clients never reach a broker; no product file passes it.

**Logging.** Left alone, librdkafka prints its log lines (``%3|...|FAIL|rdkafka#producer-1|
... Connection refused``) straight to the process's stderr from its own threads, even
after the stack has stopped, for clients nobody closed. With ``logger`` set, the client
hands them to a Python logger instead (served by ``poll``; a client that is never
polled never logs), where logging's configuration decides, and repeated lines (a
broker that is down is retried every few hundred ms) are let through once per
``LOG_REPEAT_INTERVAL_S`` per kind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from careledger.kafka.security import KafkaLogin, kafka_login

if TYPE_CHECKING:
    from careledger.config import Settings

__all__ = [
    "DEFAULT_LOG_LEVEL",
    "LOG_REPEAT_INTERVAL_S",
    "RDKAFKA_LOGGER",
    "RateLimit",
    "client_config",
    "kafka_config",
    "rdkafka_logger",
]

#: Repeated client errors are logged once per this many seconds per kind.
LOG_REPEAT_INTERVAL_S = 10.0
#: The Python logger librdkafka's lines go to unless the caller names another.
RDKAFKA_LOGGER = "careledger.kafka.rdkafka"
#: librdkafka's own default (syslog 6, info): which lines it hands to the logger at all;
#: the logger's level decides what is shown. A caller may lower it (``log_level: 3``).
DEFAULT_LOG_LEVEL = 6
#: keys ``client_config`` sets itself
_OWN_KEYS = frozenset({"bootstrap.servers", "logger"})
#: key prefixes only a login sets (``KafkaLogin.confluent``)
_LOGIN_PREFIXES = ("sasl.", "ssl.")
_LOGIN_KEYS = frozenset({"security.protocol"})


class RateLimit(logging.Filter):
    """Lets one record per kind (level and first argument: librdkafka's facility, e.g.
    ``FAIL``) through every LOG_REPEAT_INTERVAL_S seconds."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[tuple[int, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        kind = (record.levelno, str(args[0]) if args else str(record.msg))
        now = time.monotonic()
        if now - self._last.get(kind, -1e9) < LOG_REPEAT_INTERVAL_S:
            return False
        self._last[kind] = now
        return True


def rdkafka_logger(name: str = RDKAFKA_LOGGER) -> logging.Logger:
    """The logger ``name`` with one :class:`RateLimit` filter (added once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RateLimit) for f in logger.filters):
        logger.addFilter(RateLimit())
    return logger


def client_config(
    bootstrap: str,
    settings: Mapping[str, Any] | None = None,
    /,
    *,
    login: KafkaLogin | None,
    logger: logging.Logger | None = None,
) -> dict[str, Any]:
    """The configuration of a confluent-kafka client of ``bootstrap``: ``settings``
    (librdkafka properties and callbacks, e.g. ``{"group.id": ...}``) plus
    ``bootstrap.servers``, ``log_level`` (``DEFAULT_LOG_LEVEL`` unless ``settings`` sets
    it), ``login``'s security properties (``login.confluent()``; ``None``: none, for a
    unit test's client that never connects) and ``logger``: ``logger`` or the
    rate-limited ``careledger.kafka.rdkafka``, so that librdkafka writes nothing to
    stderr. Raises ValueError when ``settings`` sets a key of its own or a login's
    (``security.protocol``, ``sasl.*``, ``ssl.*``)."""
    extra = dict(settings or {})
    clash = sorted(_OWN_KEYS & extra.keys())
    if clash:
        raise ValueError(f"client_config sets {', '.join(clash)} itself")
    security = sorted(k for k in extra if k in _LOGIN_KEYS or k.startswith(_LOGIN_PREFIXES))
    if security:
        raise ValueError(f"{', '.join(security)}: set by the client's login, not its settings")
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "log_level": DEFAULT_LOG_LEVEL}
    config.update(extra)
    if login is not None:
        config.update(login.confluent())
    config["logger"] = logger if logger is not None else rdkafka_logger()
    return config


def kafka_config(
    settings: Settings,
    principal: str,
    extra: Mapping[str, Any] | None = None,
    *,
    logger: logging.Logger | None = None,
) -> dict[str, Any]:
    """:func:`client_config` of ``settings.kafka_bootstrap`` for a client that logs in
    as ``principal`` (one of :data:`careledger.kafka.security.PRINCIPALS`)."""
    return client_config(
        settings.kafka_bootstrap, extra, login=kafka_login(settings, principal), logger=logger
    )
