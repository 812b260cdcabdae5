"""Where the stack keeps its state (``<run_dir>``) and the lock that serialises start/stop.

Everything that starts or stops services holds ``<run_dir>/stack.lock`` so that
concurrent callers (two test sessions, a test session and the CLI) do not race.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
from collections.abc import Iterator
from pathlib import Path

from careledger.config import PROJECT_ROOT, Settings

DEPLOY_DIR = PROJECT_ROOT / "deploy"


@dataclasses.dataclass(frozen=True)
class _Paths:
    run: Path

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    @property
    def lock(self) -> Path:
        return self.run / "stack.lock"

    @property
    def leases(self) -> Path:
        return self.run / "leases"

    @property
    def transient(self) -> Path:
        """Present while the running stack was started by a test session (not by the CLI)."""
        return self.leases / "stack-started-by-tests"

    @property
    def kafka(self) -> Path:
        return self.run / "kafka"

    @property
    def kafka_data(self) -> Path:
        return self.kafka / "data"

    @property
    def kafka_props(self) -> Path:
        return self.kafka / "server.properties"

    @property
    def kafka_pid(self) -> Path:
        return self.kafka / "kafka.pid"

    @property
    def kafka_cluster_id(self) -> Path:
        return self.kafka / "cluster.id"

    @property
    def kafka_logs(self) -> Path:
        return self.logs / "kafka"

    @property
    def kafka_out(self) -> Path:
        return self.logs / "kafka.out"

    @property
    def clickhouse(self) -> Path:
        return self.run / "clickhouse"

    @property
    def clickhouse_data(self) -> Path:
        return self.clickhouse / "data"

    @property
    def clickhouse_config(self) -> Path:
        return self.clickhouse / "config.xml"

    @property
    def clickhouse_users(self) -> Path:
        return self.clickhouse / "users.xml"

    @property
    def clickhouse_pid(self) -> Path:
        return self.clickhouse / "clickhouse.pid"

    @property
    def clickhouse_logs(self) -> Path:
        return self.logs / "clickhouse"

    @property
    def clickhouse_out(self) -> Path:
        return self.logs / "clickhouse.out"


def _paths(settings: Settings) -> _Paths:
    return _Paths(Path(settings.run_dir).resolve())


@contextlib.contextmanager
def _stack_lock(settings: Settings) -> Iterator[None]:
    paths = _paths(settings)
    paths.run.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
