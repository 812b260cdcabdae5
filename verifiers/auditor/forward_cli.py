"""``careledger alerts forward``: the Kafka side of the forwarder (verifiers.auditor.forward).

Commit order (at least once): poll a record -> every sink takes it (each retried with
backoff until it does) -> commit that record's offset, synchronously -> the next. A
stop (signal, ``--timeout``, ``--max-messages``) between delivery and commit delivers
the record again on the next start; nothing is committed that a sink did not take.
"""

from __future__ import annotations

import argparse
import signal
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import AUDITOR
from careledger.keys import KeyFileError
from careledger.service_health import ServiceHealth
from verifiers.auditor.forward import (
    Delivery,
    ForwardStats,
    Sink,
    SyslogTlsSink,
    WebhookSink,
    deliver_all,
    read_webhook_secret,
)


class ForwarderUnavailable(Exception):
    """Kafka cannot be reached or the alerts topic does not exist (one line)."""


def configure_forward(sub: Any) -> None:
    p = sub.add_parser(
        "forward",
        help="forward alerts and findings to syslog (RFC 5424 over TLS, CEF) and HTTPS "
        "webhooks (HMAC-signed), at least once, the position kept in Kafka",
    )
    p.add_argument("--name", default="siem", help="this forwarder's name: its position (siem)")
    p.add_argument("--syslog", metavar="HOST:PORT", help="a syslog receiver speaking TLS")
    p.add_argument("--syslog-ca", type=Path, help="the CA of its certificate (default: system)")
    p.add_argument("--syslog-cert", type=Path, help="a client certificate to present")
    p.add_argument("--syslog-key", type=Path, help="the client certificate's key")
    p.add_argument("--webhook", metavar="URL", help="an https:// URL to POST each record to")
    p.add_argument(
        "--webhook-secret-file",
        type=Path,
        help="the HMAC secret shared with the receiver (at least 32 bytes, mode 600)",
    )
    p.add_argument("--webhook-ca", type=Path, help="the CA of its certificate (default: system)")
    p.add_argument("--max-messages", type=int, help="stop after forwarding N records")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")


def _context(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def sinks_from_args(args: argparse.Namespace) -> list[Sink]:
    """The sinks the flags name; ValueError (one line) for a bad combination."""
    sinks: list[Sink] = []
    if args.syslog:
        host, _, port = str(args.syslog).rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--syslog {args.syslog!r} is not HOST:PORT")
        if (args.syslog_cert is None) != (args.syslog_key is None):
            raise ValueError("--syslog-cert and --syslog-key go together")
        context = _context(args.syslog_ca, args.syslog_cert, args.syslog_key)
        sinks.append(SyslogTlsSink(host.strip("[]"), int(port), context))
    if args.webhook:
        if args.webhook_secret_file is None:
            raise ValueError("--webhook needs --webhook-secret-file")
        secret = read_webhook_secret(args.webhook_secret_file)
        sinks.append(WebhookSink(str(args.webhook), secret, _context(args.webhook_ca)))
    if not sinks:
        raise ValueError("give --syslog HOST:PORT and/or --webhook URL")
    return sinks


def forward(
    settings: Settings,
    sinks: Sequence[Sink],
    *,
    name: str = "siem",
    stop: threading.Event | None = None,
    max_messages: int | None = None,
    timeout_s: float | None = None,
) -> ForwardStats:
    """Forward the alerts topic from this forwarder's committed position (the topic's
    beginning the first time). Raises ForwarderUnavailable when Kafka cannot be reached
    or the topic is missing."""
    from confluent_kafka import Consumer, KafkaError, KafkaException

    stop = stop or threading.Event()
    stats = ForwardStats()
    consumer = Consumer(
        kafka_config(
            settings,
            AUDITOR,
            {
                "group.id": f"careledger-alert-forwarder-{name}",  # ALERT_FORWARDER_GROUP
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            },
        )
    )
    topic = settings.topic_alerts
    try:
        try:
            meta = consumer.list_topics(topic, timeout=5).topics.get(topic)
        except KafkaException as exc:
            raise ForwarderUnavailable(
                f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc.args[0].str()}"
            ) from exc
        if meta is None or meta.error is not None:
            raise ForwarderUnavailable(f"topic {topic} does not exist (run `careledger up`)")
        consumer.subscribe([topic])
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def healthy() -> tuple[bool, str]:
            now = time.monotonic()
            if stats.retrying_since is not None and now - stats.retrying_since > 60.0:
                return False, (
                    f"a sink has refused a record for {now - stats.retrying_since:.0f} s"
                )
            if now - stats.last_turn > 60.0:
                return False, f"no poll of {topic} for {now - stats.last_turn:.0f} s"
            return True, f"{stats.forwarded} forwarded"

        health = ServiceHealth.for_settings(
            settings,
            f"forwarder_{name}",
            lambda: {
                "forwarded_total": stats.forwarded,
                "retries_total": stats.retries,
                "bad_records_total": stats.bad_records,
                "retrying": stats.retrying_since is not None,
            },
            healthy,
        )
    except BaseException:
        consumer.close()
        for sink in sinks:
            sink.close()
        raise
    try:
        while not stop.is_set() and (max_messages is None or stats.forwarded < max_messages):
            if deadline is not None and time.monotonic() > deadline:
                break
            stats.last_turn = time.monotonic()
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    raise ForwarderUnavailable(f"cannot read {topic}: {err.str()}")
                continue
            delivery = Delivery(
                msg.topic() or topic, msg.partition() or 0, msg.offset() or 0, msg.value() or b""
            )
            if not deliver_all(delivery, sinks, stop, stats):
                break  # stopped before every sink took it: not committed
            consumer.commit(message=msg, asynchronous=False)
    finally:
        if health is not None:
            health.stop()
        consumer.close()
        for sink in sinks:
            sink.close()
    return stats


def command_forward(args: argparse.Namespace, settings: Settings) -> int:
    try:
        sinks = sinks_from_args(args)
    except (ValueError, KeyFileError, OSError, ssl.SSLError) as exc:
        print(f"careledger alerts forward: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stats = forward(
            settings,
            sinks,
            name=args.name,
            stop=stop,
            max_messages=args.max_messages,
            timeout_s=args.timeout,
        )
    except ForwarderUnavailable as exc:
        print(f"careledger alerts forward: {exc}", file=sys.stderr)
        return 2
    print(
        f"forwarded {stats.forwarded:,} record(s) to {', '.join(s.name for s in sinks)} "
        f"({stats.retries:,} retries, {stats.bad_records:,} unreadable records)"
    )
    return 0
