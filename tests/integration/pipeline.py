"""Helpers to drive the real pipeline from tests: processes, keys, waiting.

Everything here talks to the real Kafka broker and ClickHouse server of the
local stack; nothing is mocked.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from careledger import processes
from careledger.config import Settings
from careledger.kafka.security import ADMIN
from careledger.keys import load_signing_key, write_keypair
from careledger.processes import child_env as cli_env
from careledger.processes import run_cli, stop
from careledger.stack.acls import ensure_acls
from careledger.storage.backend import ClickHouseBackend
from careledger.storage.store import ChainStore

REPO = Path(__file__).resolve().parents[2]

# Tests import these from here next to the test-only helpers.
__all__ = ["REPO", "cli_env", "run_cli", "start_processor", "stop", "with_source"]


def with_keys(settings: Settings, tmp_path: Path) -> Settings:
    key_path = tmp_path / "keys" / "signing.key"
    write_keypair(key_path)
    return settings.replace(signing_key=key_path, trusted_keys=(str(key_path) + ".pub",))


#: SQL condition leaving out the source registry records (ADR 0010): every test
#: pipeline registers a source and its SDK sends heartbeats, so counts of reference
#: records the test produced must not include them.
NOT_SOURCE_KINDS = " AND kind NOT IN ('source-key', 'source-heartbeat')"


def with_source(
    settings: Settings,
    tmp_path: Path,
    source_id: str = "test-source",
    *,
    signs_for: tuple[str, ...] = (),
) -> Settings:
    """Opt in to signing at the source: a registrar key (trusted, shared by every source
    of the test) and a key for ``source_id``, registered on the settings' sources topic
    (created if missing). The SDK then signs as ``source_id``."""
    from careledger import stack
    from careledger.sources import register_key

    keys = tmp_path / "keys"
    registrar_path = keys / "registrar.key"
    if registrar_path.exists():
        registrar = load_signing_key(registrar_path, env={})
    else:
        registrar = write_keypair(registrar_path)
    source_path = keys / f"source-{re.sub(r'[^A-Za-z0-9._-]', '_', source_id)}.key"
    source = write_keypair(source_path, overwrite=True)
    trusted = tuple(dict.fromkeys((*settings.trusted_registrar_keys, f"{registrar_path}.pub")))
    s = settings.replace(
        source_id=source_id,
        source_key=source_path,
        registrar_key=registrar_path,
        trusted_registrar_keys=trusted,
    )
    stack.ensure_topics(s, {s.topic_sources: s.reference_partitions})
    register_key(s, registrar, source_id, source.public_key, signs_for=signs_for, principal=ADMIN)
    return s


def processor_settings(settings: Settings, **changes: Any) -> Settings:
    app_id = f"careledger-test-{uuid.uuid4().hex[:8]}"
    s = settings.replace(processor_app_id=app_id, processor_web_port=0, **changes)
    ensure_acls(s)  # the processor's group (ADR 0033)
    return s


def start_processor(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """The real processor, at info level: tests read its log."""
    return processes.start_processor(settings, log_path, loglevel="info")


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


def accounted_offsets(store: ChainStore, topic: str | None = None) -> tuple[int, int, int]:
    """(events, dead-lettered, absent) summed over the block headers of the chains of
    ``topic`` (every chain when None)."""
    where = ""
    params: dict[str, str] = {}
    if topic is not None:
        where = " WHERE chain_id LIKE %(chains)s"
        params = {"chains": f"%/{topic}/%"}
    rows = store.backend.execute(
        "SELECT sum(event_count), sum(dead_lettered), sum(absent_offsets) "
        f"FROM {store.db}.blocks{where}",
        params,
    )
    ev, dl, ab = rows[0]
    return int(ev or 0), int(dl or 0), int(ab or 0)


def row_census(store: ChainStore) -> str:
    """What the event rows are, for a failure message: how many, how many distinct,
    how many no header names (left by an uncommitted or fenced write), and the
    mutations still pending (deletes run asynchronously)."""
    db = store.db
    total, distinct = store.backend.execute(
        f"SELECT count(), uniqExact(event_id) FROM {db}.access_events"
    )[0]
    committed = committed_event_count(store)
    pending = store.backend.execute(
        "SELECT table, count() FROM system.mutations "
        "WHERE database = %(db)s AND is_done = 0 GROUP BY table",
        {"db": db},
    )
    orphans = store.backend.execute(
        f"SELECT chain_id, height, substring(block_hash, 1, 12), count() "
        f"FROM {db}.access_events WHERE (chain_id, height, block_hash) NOT IN "
        f"(SELECT chain_id, height, block_hash FROM {db}.blocks) "
        "GROUP BY chain_id, height, block_hash ORDER BY chain_id, height LIMIT 12"
    )
    return (
        f"{int(total)} event rows, {int(distinct)} distinct, {committed} under a header, "
        f"{int(total) - committed} under none; pending mutations: {pending or 'none'}; "
        f"rows under no header (chain, height, block, rows): {orphans or 'none'}"
    )


def stored_event_ids(store: ChainStore) -> list[str]:
    rows = store.backend.execute(f"SELECT event_id FROM {store.db}.access_events")
    return [r[0].decode() for r in rows]
