"""The stack's error and the status it reports (``careledger status``)."""

from __future__ import annotations

import dataclasses
from typing import Any


class StackError(RuntimeError):
    """The local stack cannot be installed, started or reached."""


@dataclasses.dataclass(frozen=True)
class ServiceStatus:
    name: str
    ready: bool
    pid: int | None  # our process, from the pid file; None if not ours / not running
    ports: dict[str, int]
    detail: str = ""

    @property
    def managed(self) -> bool:
        """True when the running service is the one careledger started."""
        return self.pid is not None

    def line(self) -> str:
        ports = ", ".join(f"{k} {v}" for k, v in self.ports.items())
        state = "up" if self.ready else "down"
        who = f"pid {self.pid}" if self.pid else ("external" if self.ready else "-")
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.name:<12} {state:<5} {who:<12} {ports}{extra}"


@dataclasses.dataclass(frozen=True)
class StackStatus:
    kafka: ServiceStatus
    clickhouse: ServiceStatus
    # Services that the call returning this status started ("kafka", "clickhouse").
    started: tuple[str, ...] = ()

    @property
    def up(self) -> bool:
        return self.kafka.ready and self.clickhouse.ready

    def __str__(self) -> str:
        return "\n".join((self.kafka.line(), self.clickhouse.line()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "kafka": dataclasses.asdict(self.kafka),
            "clickhouse": dataclasses.asdict(self.clickhouse),
            "started": list(self.started),
        }
