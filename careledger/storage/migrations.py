"""Versioned, idempotent ClickHouse schema migrations.

Each migration is a numbered list of statements. Every statement is written to
run on ClickHouse 18.16 (our oldest supported server) *and* on the current
engine (checked in the tests through chDB), which rules out, among others,
``DateTime64``, ``LowCardinality``, ``ADD COLUMN IF NOT EXISTS`` and
``mutations_sync``. Statements are themselves idempotent (``IF NOT EXISTS``) so
that two processes migrating at once, or a crash half-way through a
migration, do no harm; ``schema_migrations`` records what was applied. A column
added to an existing table (``Migration.add_columns``) is looked up in
``system.columns`` first, as 18.16 has no ``ADD COLUMN IF NOT EXISTS``.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from careledger.storage.backend import SqlBackend, StorageError, open_backend

log = logging.getLogger(__name__)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class AddColumn:
    """``ALTER TABLE {db}.<table> ADD COLUMN <name> <definition>``, unless it exists."""

    table: str
    name: str
    definition: str


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    add_columns: tuple[AddColumn, ...] = ()


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "events and signed block headers",
        (
            """
            CREATE TABLE IF NOT EXISTS {db}.access_events (
                chain_id String,
                height UInt64,
                idx UInt32,
                block_hash String,
                kafka_offset UInt64,
                event_id String,
                occurred_at String,
                occurred_date Date,
                actor_id String,
                patient_id String,
                action String,
                outcome UInt8,
                source_system String,
                canonical String,
                leaf_hash String
            ) ENGINE = MergeTree()
            PARTITION BY toYYYYMM(occurred_date)
            ORDER BY (chain_id, height, idx)
            """,
            """
            CREATE TABLE IF NOT EXISTS {db}.blocks (
                chain_id String,
                height UInt64,
                block_hash String,
                prev_hash String,
                merkle_root String,
                event_count UInt32,
                first_offset UInt64,
                last_offset UInt64,
                dead_lettered UInt32,
                absent_offsets UInt32,
                first_event_time String,
                last_event_time String,
                created_at String,
                key_id String,
                header String,
                signature String,
                stored_at DateTime DEFAULT now()
            ) ENGINE = MergeTree()
            ORDER BY (chain_id, height)
            """,
        ),
    ),
    Migration(
        2,
        "verification runs",
        (
            """
            CREATE TABLE IF NOT EXISTS {db}.verification_runs (
                run_id String,
                mode String,
                scope String,
                started_at DateTime,
                finished_at DateTime,
                chains UInt32,
                blocks UInt64,
                events UInt64,
                findings UInt32,
                result String,
                summary String
            ) ENGINE = MergeTree()
            ORDER BY (started_at, run_id)
            """,
        ),
    ),
)

MIGRATIONS += (
    Migration(
        3,
        "ledgered reference data: consents, care relationships, workforce, patients",
        (
            """
            CREATE TABLE IF NOT EXISTS {db}.reference_records (
                chain_id String,
                height UInt64,
                idx UInt32,
                block_hash String,
                kafka_offset UInt64,
                record_id String,
                kind String,
                version UInt32,
                subject_id String,
                recorded_at String,
                effective_at String,
                effective_date Date,
                retracted UInt8,
                canonical String,
                leaf_hash String
            ) ENGINE = MergeTree()
            PARTITION BY toYYYYMM(effective_date)
            ORDER BY (chain_id, height, idx)
            """,
        ),
    ),
)

MIGRATIONS += (
    Migration(
        4,
        "access auditor: decisions, alerts and ledgered alert status changes",
        (
            # One row per audited access (plus one per late break-the-glass flag,
            # amends = 1). A replay of a range deletes that range's rows first.
            """
            CREATE TABLE IF NOT EXISTS {db}.access_decisions (
                event_id String,
                chain_id String,
                height UInt64,
                idx UInt32,
                occurred_at String,
                occurred_date Date,
                actor_id String,
                patient_ref String,
                amends UInt8,
                explanation_kind String,
                explanation String,
                searched String,
                flags String,
                severity String,
                score Float64,
                decided_at String,
                audit_run String
            ) ENGINE = MergeTree()
            PARTITION BY toYYYYMM(occurred_date)
            ORDER BY (occurred_at, event_id)
            """,
            # An alert grows while its burst goes on (follow mode): each update is a
            # new row with a higher version; readers use FINAL.
            """
            CREATE TABLE IF NOT EXISTS {db}.alerts (
                alert_id String,
                rule String,
                severity String,
                score Float64,
                actor_id String,
                patient_ref String,
                patient_refs String,
                event_ids String,
                evidence String,
                explanations_searched String,
                first_at String,
                last_at String,
                created_at String,
                audit_run String,
                version UInt64
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY (first_at, alert_id)
            """,
            # Append-only: one row per status change, hash-linked per alert.
            """
            CREATE TABLE IF NOT EXISTS {db}.alert_status (
                alert_id String,
                seq UInt32,
                status String,
                changed_by String,
                changed_at String,
                note String,
                prev_hash String,
                entry_hash String
            ) ENGINE = MergeTree()
            ORDER BY (alert_id, seq)
            """,
        ),
    ),
)

MIGRATIONS += (
    Migration(
        5,
        "bitemporal audit decisions: the reference knowledge cutoff of each decision",
        (),
        # The ledger time (signed block created_at) up to which reference versions were
        # known when the decision was made; '' for rows written before this migration.
        (AddColumn("access_decisions", "reference_known_at", "String DEFAULT ''"),),
    ),
)

MIGRATIONS += (
    Migration(
        6,
        "source attestations of access events (ADR 0010)",
        (
            # One row per signed event: the batch statement and signature (the same
            # for every event of a batch) and the event's place in the batch. Written
            # with the event rows, before the block header; self-authenticating, so
            # the verifier re-checks every signature and proof from these columns.
            """
            CREATE TABLE IF NOT EXISTS {db}.source_attestations (
                chain_id String,
                height UInt64,
                idx UInt32,
                block_hash String,
                event_id String,
                source_id String,
                key_id String,
                epoch String,
                seq UInt64,
                signed_by String,
                statement String,
                signature String,
                batch_index UInt32,
                proof String
            ) ENGINE = MergeTree()
            ORDER BY (chain_id, height, idx)
            """,
        ),
    ),
)

MIGRATIONS += (
    Migration(
        7,
        "ledgered raw records: the bytes the ingest gateway received (issue 4)",
        (
            # One row per raw record (careledger.raw-record/1 envelope in canonical),
            # chained like reference data: chains of their own, one per partition of
            # Settings.topic_raw.
            """
            CREATE TABLE IF NOT EXISTS {db}.raw_records (
                chain_id String,
                height UInt64,
                idx UInt32,
                block_hash String,
                kafka_offset UInt64,
                record_id String,
                sha256 String,
                format String,
                received_at String,
                received_date Date,
                source_id String,
                protocol String,
                issue_count UInt32,
                canonical String,
                leaf_hash String
            ) ENGINE = MergeTree()
            PARTITION BY toYYYYMM(received_date)
            ORDER BY (chain_id, height, idx)
            """,
        ),
    ),
)

MIGRATIONS += (
    Migration(
        8,
        "replicas (ADR 0017): blocks published to the blocks topic, records a replica refused",
        (
            # Primary: after each write, per chain, the newest height the processor
            # published to the blocks topic (flushed, acks=all). A chain resumed above it
            # republishes the stored blocks in between: a crash between the store write
            # and the publish loses nothing a replica needs. Bookkeeping, not evidence.
            """
            CREATE TABLE IF NOT EXISTS {db}.block_publications (
                chain_id String,
                height UInt64,
                block_hash String,
                published_at DateTime DEFAULT now()
            ) ENGINE = MergeTree()
            ORDER BY (chain_id, height)
            """,
            # Replica: every blocks-topic record that did not verify (or did not fit the
            # chain it names), with its bytes and where it was read. Never dropped
            # silently; `careledger replica refused` lists them.
            """
            CREATE TABLE IF NOT EXISTS {db}.replica_refused (
                refused_at DateTime DEFAULT now(),
                topic String,
                kafka_partition UInt32,
                kafka_offset UInt64,
                chain_id String,
                height Int64,
                block_hash String,
                code String,
                reason String,
                record_sha256 String,
                record String
            ) ENGINE = MergeTree()
            ORDER BY (topic, kafka_partition, kafka_offset)
            """,
        ),
    ),
)

MIGRATIONS += (
    Migration(
        9,
        "batch records (ADR 0020): one row per source-signed batch record chained",
        (
            # One row per batch record: the statement and signature once, instead of an
            # attestation row per event. The record's events are the block's event rows
            # at this kafka_offset, in idx order; they fill the batch indices not listed
            # in ``skipped`` ("index:leafhex,..." of entries dead-lettered alone). Written
            # with the event rows, before the header; self-authenticating: verify
            # recomputes the signed root from the chained events and the skipped entries.
            # source_id .. signed_by are side copies of the statement, checked by verify.
            """
            CREATE TABLE IF NOT EXISTS {db}.source_batches (
                chain_id String,
                height UInt64,
                block_hash String,
                kafka_offset UInt64,
                source_id String,
                key_id String,
                epoch String,
                first_seq UInt64,
                size UInt32,
                signed_by String,
                statement String,
                signature String,
                skipped String
            ) ENGINE = MergeTree()
            ORDER BY (chain_id, height, kafka_offset)
            """,
        ),
    ),
    Migration(
        10,
        "chain owners (ADR 0031): a processor claims a chain before writing it",
        (
            # Appended by a processor when it loads a chain; the owner is the claim with
            # the highest (epoch, owner). Block headers are inserted only by the owner
            # (careledger.storage.fencing): a zombie processor cannot write a block.
            """
            CREATE TABLE IF NOT EXISTS {db}.chain_owners (
                chain_id String,
                epoch UInt64,
                owner String,
                claimed_at DateTime DEFAULT now()
            ) ENGINE = MergeTree()
            ORDER BY (chain_id, epoch, owner)
            """,
        ),
    ),
)

MIGRATIONS += (
    Migration(
        11,
        "the key store's rows (ADR 0037): wrapped data keys and unwrap counts",
        (
            # lookup = HMAC(K_lookup, patient) and the wrapped data key, both hex; a
            # patient may have several keys (key_id). A destruction is an ALTER ... DELETE
            # (careledger/keyrows.py); the superseded parts it leaves are removed after
            # old_parts_lifetime, 60 s here instead of the server's 480 s default.
            """
            CREATE TABLE IF NOT EXISTS {db}.data_keys (
                lookup String,
                key_id String,
                wrapped String,
                created_ns UInt64
            ) ENGINE = MergeTree()
            ORDER BY (lookup, key_id)
            SETTINGS old_parts_lifetime = 60
            """,
            # Every unwrap of a data key, counted per process and purpose and flushed in
            # batches; re-identifications are also ledgered by their callers.
            """
            CREATE TABLE IF NOT EXISTS {db}.key_unwraps (
                at UInt32,
                process String,
                purpose String,
                unwraps UInt64
            ) ENGINE = MergeTree()
            ORDER BY (purpose, at)
            """,
        ),
    ),
)

MIGRATIONS += (
    Migration(
        12,
        "sealed access events (ADR 0037): the sensitive part and its data key",
        (),
        add_columns=(
            # a sealed ledger's events: XChaCha20-Poly1305 of salt || sensitive part under
            # the patient's data key (base64), and that key's id (hex); empty otherwise
            AddColumn("access_events", "sealed", "String DEFAULT ''"),
            AddColumn("access_events", "data_key_id", "String DEFAULT ''"),
        ),
    ),
)

MIGRATIONS += (
    Migration(
        13,
        "sealed reference records (ADR 0037): the record under its subject's data key",
        (),
        add_columns=(
            # a sealed ledger's consents, care relationships, staff and patient records:
            # XChaCha20-Poly1305 of salt || the record under the subject's data key
            # (base64), and that key's id (hex); empty for records in clear
            AddColumn("reference_records", "sealed", "String DEFAULT ''"),
            AddColumn("reference_records", "data_key_id", "String DEFAULT ''"),
        ),
    ),
)

MIGRATIONS += (
    Migration(
        14,
        "sealed raw records (ADR 0037): the received bytes under a record key",
        (),
        add_columns=(
            # a sealed ledger's raw records: XChaCha20-Poly1305 of salt || payload (the
            # envelope and the patients it names) under the record key derived from
            # their data keys (base64), and those keys' ids (hex, comma-separated)
            AddColumn("raw_records", "sealed", "String DEFAULT ''"),
            AddColumn("raw_records", "data_key_id", "String DEFAULT ''"),
        ),
    ),
)

MIGRATIONS += (
    Migration(
        15,
        "the alerts a follower grouped a decision's flags into (ADR 0048)",
        (),
        add_columns=(
            # a JSON object, rule -> alert id, written by followers that group with
            # anchors (``;group=3``); empty for range runs and older rows
            AddColumn("access_decisions", "alert_ids", "String DEFAULT ''"),
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


def check_identifier(name: str) -> str:
    """Database names are interpolated into SQL: allow plain identifiers only."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a valid ClickHouse identifier: {name!r}")
    return name


def applied_versions(backend: SqlBackend, database: str) -> set[int]:
    db = check_identifier(database)
    rows = backend.execute(f"SELECT DISTINCT version FROM {db}.schema_migrations")
    return {int(r[0]) for r in rows}


#: ``CREATE TABLE IF NOT EXISTS <db>.<table> (`` ... ``ENGINE = [Replacing]MergeTree(args)``
_CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS ([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)\s*\(")
_ENGINE = re.compile(r"ENGINE = (Replacing)?MergeTree\(([^)]*)\)")
#: where a replicated table's replicas meet in ZooKeeper: one path per database and
#: table, so per-test and per-benchmark databases never share one
REPLICATION_PATH = "/careledger/tables/{db}/{table}"
#: how long a replica waits for a column another replica's ALTER added to arrive
_REPLICATED_ALTER_WAIT_S = 30.0


def replicated(statement: str) -> str:
    """A formatted ``CREATE TABLE`` statement with its ``MergeTree`` engine (plain or
    ``Replacing``) turned into the ``Replicated`` one (ADR 0030): the path in ZooKeeper
    names the database and table, the replica is the server's ``{replica}`` macro.
    Statements of other kinds come back unchanged."""
    table = _CREATE_TABLE.search(statement)
    if table is None:
        return statement
    path = REPLICATION_PATH.format(db=table.group(1), table=table.group(2))

    def engine(m: re.Match[str]) -> str:
        args = ", ".join(a for a in (f"'{path}'", "'{replica}'", m.group(2).strip()) if a)
        return f"ENGINE = Replicated{m.group(1) or ''}MergeTree({args})"

    out, n = _ENGINE.subn(engine, statement)
    if n != 1:
        raise ValueError(f"no single MergeTree engine in the statement creating {table.group(2)}")
    return out


def migrate_backend(
    backend: SqlBackend, database: str, *, replicated_tables: bool = False
) -> list[int]:
    """Apply the pending migrations; return the versions applied now. With
    ``replicated_tables``, every table but ``schema_migrations`` is created
    ``Replicated`` (ADR 0030); ``schema_migrations`` stays each server's own record of
    the statements it ran, because DDL runs on each replica."""
    return _migrate_servers([backend], database, replicated_tables)[0]


def _migrate_servers(
    backends: Sequence[SqlBackend], database: str, replicated_tables: bool
) -> list[list[int]]:
    """Every server migrated in lock step: each migration on every server before the
    next. Replicas share each table's structure through ZooKeeper, so a table must be
    created on every replica before a later migration alters it on one (a replica
    creating it afterwards from the older statement would be refused as "too
    different"). Returns the versions applied now, per server."""
    db = check_identifier(database)
    done = [_prepare(backend, db) for backend in backends]
    applied: list[list[int]] = [[] for _ in backends]
    for migration in MIGRATIONS:
        for backend, have, now in zip(backends, done, applied, strict=True):
            if migration.version in have:
                continue
            _apply(backend, db, migration, replicated_tables)
            now.append(migration.version)
    return applied


def _prepare(backend: SqlBackend, db: str) -> set[int]:
    backend.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
    backend.execute(
        f"""
        CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
            version UInt32,
            name String,
            applied_at DateTime DEFAULT now()
        ) ENGINE = MergeTree()
        ORDER BY version
        """
    )
    return applied_versions(backend, db)


def _apply(backend: SqlBackend, db: str, migration: Migration, replicated_tables: bool) -> None:
    for statement in migration.statements:
        sql = statement.format(db=db)
        backend.execute(replicated(sql) if replicated_tables else sql)
    for column in migration.add_columns:
        wait_s = _REPLICATED_ALTER_WAIT_S if replicated_tables else 0.0
        _add_column(backend, db, column, wait_s=wait_s)
    backend.insert(
        f"{db}.schema_migrations", ("version", "name"), [(migration.version, migration.name)]
    )
    log.info("applied schema migration %d (%s) to %s", migration.version, migration.name, db)


def _has_column(backend: SqlBackend, db: str, table: str, name: str) -> bool:
    rows = backend.execute(
        "SELECT count() FROM system.columns "
        "WHERE database = %(db)s AND table = %(t)s AND name = %(n)s",
        {"db": db, "t": table, "n": name},
    )
    return bool(rows) and int(rows[0][0]) > 0


def _add_column(backend: SqlBackend, db: str, column: AddColumn, *, wait_s: float = 0.0) -> None:
    """Add the column unless it exists. On a replicated table another replica's ALTER
    may already be on its way here (ClickHouse replicates ALTERs): a refused ALTER is
    then waited for, up to ``wait_s``, before it counts as a failure."""
    table, name = check_identifier(column.table), check_identifier(column.name)
    if _has_column(backend, db, table, name):
        return
    try:
        backend.execute(f"ALTER TABLE {db}.{table} ADD COLUMN {name} {column.definition}")
    except StorageError:
        deadline = time.monotonic() + wait_s
        while not _has_column(backend, db, table, name):  # not another migrator's doing
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def replica_settings(settings: Any) -> list[Any]:
    """One settings value per ClickHouse server holding the data: the primary
    (``clickhouse_host:clickhouse_port``), then each of ``clickhouse_replicas``, each
    without failover (DDL must reach that very server)."""
    servers = [settings.replace(clickhouse_replicas=())]
    for entry in settings.clickhouse_replicas:
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            raise StorageError(f"clickhouse_replicas entry {entry!r} is not host:port")
        servers.append(
            settings.replace(
                clickhouse_host=host, clickhouse_port=int(port), clickhouse_replicas=()
            )
        )
    return servers


def migrate(settings: Any, backend: SqlBackend | None = None) -> list[int]:
    """Migrate the configured database; on a replicated layout, every replica in lock
    step (the versions returned are the primary's). A replica that cannot be reached
    fails the migration: run it again when every replica is up."""
    replicated_tables = bool(getattr(settings, "clickhouse_replicated", False))
    if backend is not None:
        return migrate_backend(
            backend, settings.clickhouse_database, replicated_tables=replicated_tables
        )
    backends: list[SqlBackend] = []
    try:
        for server in replica_settings(settings):
            backends.append(open_backend(server))
        return _migrate_servers(backends, settings.clickhouse_database, replicated_tables)[0]
    finally:
        for owned in backends:
            owned.close()


def configure_migrate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database", help="database name (default: settings.clickhouse_database)")


def command_migrate(args: argparse.Namespace, settings: Any) -> int:
    from careledger.storage.backend import StorageError

    if args.database:
        settings = settings.replace(clickhouse_database=args.database)
    try:
        applied = migrate(settings)
    except StorageError as exc:
        print(f"careledger migrate: {exc}", file=sys.stderr)
        return 2
    if applied:
        print(f"applied migrations {applied} to {settings.clickhouse_database}")
    else:
        print(f"schema of {settings.clickhouse_database} is up to date (version {LATEST_VERSION})")
    return 0
