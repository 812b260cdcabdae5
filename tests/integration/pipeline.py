"""Helpers to drive the real pipeline from tests: processes, keys, waiting.

Everything here talks to the real Kafka broker and ClickHouse server of the
local stack; nothing is mocked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from careledger.config import Settings
from careledger.keys import write_keypair
from careledger.storage.backend import ClickHouseBackend
from careledger.storage.store import ChainStore

REPO = Path(__file__).resolve().parents[2]


def with_keys(settings: Settings, tmp_path: Path) -> Settings:
    key_path = tmp_path / "keys" / "signing.key"
    write_keypair(key_path)
    return settings.replace(signing_key=key_path, trusted_keys=(str(key_path) + ".pub",))


def processor_settings(settings: Settings, **changes: Any) -> Settings:
    app_id = f"careledger-test-{uuid.uuid4().hex[:8]}"
    return settings.replace(processor_app_id=app_id, processor_web_port=0, **changes)


def cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELEDGER_")}
    env.update(settings.as_env())
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_processor(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
    return subprocess.Popen(
        [sys.executable, "-m", "careledger.cli", "process", "--loglevel", "info"],
        cwd=REPO,
        env=cli_env(settings),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def run_cli(
    settings: Settings, *args: str, timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "careledger.cli", *args],
        cwd=REPO,
        env=cli_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def store_for(settings: Settings) -> ChainStore:
    return ChainStore.for_settings(ClickHouseBackend.from_settings(settings), settings)


def wait_until(
    condition: Callable[[], bool], timeout: float, interval: float = 0.5, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def committed_event_count(store: ChainStore) -> int:
    """Events in blocks that have a header (what a reader may rely on)."""
    rows = store.backend.execute(
        f"SELECT count() FROM {store.db}.access_events AS e "
        f"ANY INNER JOIN (SELECT chain_id, height, block_hash FROM {store.db}.blocks) AS b "
        "USING (chain_id, height, block_hash)"
    )
    return int(rows[0][0])


def accounted_offsets(store: ChainStore) -> tuple[int, int, int]:
    """(events, dead-lettered, absent) summed over all block headers."""
    rows = store.backend.execute(
        f"SELECT sum(event_count), sum(dead_lettered), sum(absent_offsets) FROM {store.db}.blocks"
    )
    ev, dl, ab = rows[0]
    return int(ev or 0), int(dl or 0), int(ab or 0)


def stored_event_ids(store: ChainStore) -> list[str]:
    rows = store.backend.execute(f"SELECT event_id FROM {store.db}.access_events")
    return [r[0].decode() for r in rows]
