"""``/health`` and ``/metrics`` of a long-running service (issue 13, point 5).

The processor, the auditor (``audit --follow``), the verifier (``verify --follow``), the
gateway and the witness each serve, on ``Settings.metrics_port`` (0: off) at
``Settings.metrics_host``:

* ``GET /health``: 200 ``{"status": "ok", ...}`` while the service does its work, 503
  with the reason when it does not (its store or Kafka unreachable, a refused
  partition, no cycle for too long). Compose's healthchecks and orchestrators ask it.
* ``GET /metrics``: the Prometheus text format (prometheus-client renders it) of the
  service's own snapshot: every number a gauge ``careledger_<service>_<name>`` (a
  ``*_total`` name a counter), every mapping of numbers one labelled family (e.g.
  ``careledger_processor_partition_lag{partition="careledger.access-events/0"}``).

A small stdlib HTTP server in a daemon thread: it never blocks the service's own loop,
and a snapshot that raises answers 500 for that request only.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["ServiceHealth", "render_metrics"]

log = logging.getLogger("careledger.health")

Snapshot = Callable[[], Mapping[str, Any]]
Health = Callable[[], tuple[bool, str]]
_NAME: Final = re.compile(r"[^a-zA-Z0-9_]")
#: the label of a mapping's keys, by the mapping's name (else "key")
LABELS: Final[Mapping[str, str]] = {
    "chain_heights": "chain",
    "partition_lag": "partition",
    "chain_block_age_s": "chain",
    "records_by_transport": "transport",
    "refusals": "reason",
    "findings_by_code": "code",
    "alerts_by_rule": "rule",
    "refused_by_code": "code",
    "cosigned_size": "origin",
    "seconds_since_cosigned": "origin",
    "blocks_topic_log_start": "partition",
}


def _metric_name(service: str, key: str) -> str:
    return _NAME.sub("_", f"careledger_{service}_{key}")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


class _Collector(Collector):
    def __init__(self, service: str, snapshot: Snapshot) -> None:
        self.service = service
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        for key, value in sorted(self.snapshot().items()):
            name = _metric_name(self.service, key)
            if isinstance(value, Mapping):
                label = LABELS.get(key, "key")
                family = GaugeMetricFamily(name, f"{key} per {label}", labels=[label])
                for k, v in sorted(value.items(), key=lambda kv: str(kv[0])):
                    n = _number(v)
                    if n is not None:
                        family.add_metric([str(k)], n)
                yield family
                continue
            n = _number(value)
            if n is None:
                continue
            if key.endswith("_total"):
                counter = CounterMetricFamily(name.removesuffix("_total"), key)
                counter.add_metric([], n)
                yield counter
            else:
                yield GaugeMetricFamily(name, key, value=n)


def render_metrics(service: str, snapshot: Mapping[str, Any]) -> bytes:
    """The Prometheus text format of one snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(service, lambda: snapshot))
    return generate_latest(registry)


class ServiceHealth:
    """Serves ``/health`` and ``/metrics`` for ``service`` until ``stop()``."""

    def __init__(
        self, service: str, snapshot: Snapshot, healthy: Health, host: str, port: int
    ) -> None:
        self.service = service
        self.snapshot = snapshot
        self.healthy = healthy
        self.host = host
        self.port = port
        self._server: ThreadingHTTPServer | None = None

    @classmethod
    def for_settings(
        cls, settings: Any, service: str, snapshot: Snapshot, healthy: Health
    ) -> ServiceHealth | None:
        """Started on the settings' metrics port, or None when it is 0 (off)."""
        if not settings.metrics_port:
            return None
        health = cls(service, snapshot, healthy, settings.metrics_host, settings.metrics_port)
        try:
            health.start()
        except OSError as exc:
            log.error(
                "%s: cannot serve /health and /metrics on %s:%d: %s",
                service,
                settings.metrics_host,
                settings.metrics_port,
                exc,
            )
            return None
        return health

    def start(self) -> int:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "careledger"
            sys_version = ""

            def log_message(self, format: str, *args: Any) -> None:
                return  # probes every few seconds: no access log

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/health":
                        ok, why = owner.healthy()
                        body = json.dumps(
                            {
                                "service": owner.service,
                                "status": "ok" if ok else "failing",
                                "reason": why,
                            },
                            sort_keys=True,
                        ).encode()
                        self._answer(200 if ok else 503, "application/json", body)
                    elif path == "/metrics":
                        body = render_metrics(owner.service, owner.snapshot())
                        self._answer(200, CONTENT_TYPE_LATEST, body)
                    else:
                        self._answer(404, "text/plain", b"not found\n")
                except (ValueError, TypeError, KeyError, RuntimeError, OSError) as exc:
                    log.warning("%s: %s failed: %s", owner.service, path, exc)
                    self._answer(500, "text/plain", b"snapshot failed\n")

            def _answer(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = int(server.server_address[1])
        threading.Thread(
            target=server.serve_forever, name=f"{self.service}-health", daemon=True
        ).start()
        log.info("%s: /health and /metrics on %s:%d", self.service, self.host, self.port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
