"""The auditor's reads and writes in one ClickHouse database (``AuditStore``), and the
pseudonym salt file.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from careledger.keys import KeyFileError, check_owner_only
from careledger.storage.backend import SqlBackend, StorageError
from careledger.storage.kinds import topic_of
from careledger.storage.migrations import check_identifier
from careledger_core.errors import CareledgerError
from careledger_core.event import decode_event
from careledger_core.reference import reference_from_dict

from .decide import LedgeredEvent, LedgeredReference, Position
from .reviews import ReviewedAlert, Reviews, closed_alert_ids, review_alerts, reviewed_alert
from .rows import (
    ALERT_COLUMNS,
    DECISION_COLUMNS,
    RESTORED_COLUMNS,
    STATUS_COLUMNS,
    _text,
    status_histories,
    stored_alert_fingerprint,
)

log = logging.getLogger("careledger.auditor")

INSERT_BATCH: Final = 5000
#: rows one INSERT stores all or none of (below ClickHouse's ``max_insert_block_size``,
#: 1,048,576: a block is inserted atomically)
ATOMIC_INSERT: Final = 500_000
SALT_FILE: Final = "audit-salt"


# --------------------------------------------------------------------------- salt


#: The pseudonym salt keys the HMAC that turns patient ids into alert pseudonyms: a weak
#: one lets anyone holding alerts recover MRNs by trying them (ADR 0026). At least 128
#: bits if random; the one the auditor creates is 32 random bytes (64 hex characters).
MIN_SALT_BYTES: Final = 16
#: fewer distinct characters than this is a placeholder ("000...", "aaaa..."), not a secret
MIN_SALT_DISTINCT: Final = 8
_SALT_SETTING: Final = "audit_salt (CARELEDGER_AUDIT_SALT)"
_SALT_HINT: Final = "(make one with: openssl rand -hex 32)"


class SaltError(ValueError):
    """The pseudonym salt is unusable: empty, short, not random, or its file readable by
    group or others. The message is one line and never holds the salt."""


def check_salt(salt: str, where: str) -> str:
    """``salt`` if it is long and varied enough for a key, else :class:`SaltError`."""
    size = len(salt.encode("utf-8"))
    if size == 0:
        raise SaltError(f"the pseudonym salt in {where} is empty {_SALT_HINT}")
    if size < MIN_SALT_BYTES:
        raise SaltError(
            f"the pseudonym salt in {where} is {size} bytes: at least {MIN_SALT_BYTES} "
            f"are needed {_SALT_HINT}"
        )
    if len(set(salt)) < MIN_SALT_DISTINCT:
        raise SaltError(
            f"the pseudonym salt in {where} has fewer than {MIN_SALT_DISTINCT} distinct "
            f"characters: not a random secret {_SALT_HINT}"
        )
    return salt


def read_salt_file(path: Path) -> str | None:
    """The salt in ``path`` (checked: owner-only mode, long enough), None if there is no
    such file. Raises :class:`SaltError`."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SaltError(f"cannot read the pseudonym salt file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        try:
            check_owner_only(path, os.fstat(f.fileno()).st_mode, "the pseudonym salt file")
        except KeyFileError as exc:
            raise SaltError(exc.message) from exc
        try:
            text = f.read(4096).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SaltError(f"cannot read the pseudonym salt file {path}: {exc}") from exc
    return check_salt(text, str(path))


def configured_salt(settings: Any) -> str | None:
    """``Settings.audit_salt`` checked, or None when it is not set."""
    if not settings.audit_salt:
        return None
    return check_salt(str(settings.audit_salt), _SALT_SETTING)


def load_salt(settings: Any) -> str:
    """The pseudonym salt: ``Settings.audit_salt``, else ``<run_dir>/keys/audit-salt``
    (created with 32 random bytes, mode 0600, on first use). Raises :class:`SaltError`
    for a salt that is empty, short or readable by group or others (ADR 0026), and
    ``OSError`` when the file cannot be created."""
    configured = configured_salt(settings)
    if configured is not None:
        return configured
    path = Path(settings.keys_dir) / SALT_FILE
    existing = read_salt_file(path)
    if existing is not None:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return _created_by_another(path)
    os.fchmod(fd, 0o600)  # whatever the umask
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.token_hex(32) + "\n")
    return _created_by_another(path)


def _created_by_another(path: Path) -> str:
    salt = read_salt_file(path)
    if salt is None:
        raise SaltError(f"the pseudonym salt file {path} vanished while it was created")
    return salt


# --------------------------------------------------------------------------- store


class AuditSource(Protocol):
    """What a range run and a follower read and write: ``AuditStore`` over ClickHouse,
    or the ledger as it was when a run was made (``verifiers.auditor.verify``)."""

    def reference_records(self) -> list[LedgeredReference]: ...
    def reference_records_of_chain(
        self, chain_id: str, above: int, upto: int
    ) -> list[LedgeredReference]: ...
    def is_reference(self, chain_id: str) -> bool: ...
    def horizon(self) -> str | None: ...
    def events_between(
        self, lo: str, hi: str, page_size: int = 20_000
    ) -> Iterator[LedgeredEvent]: ...
    def heads(self) -> dict[str, int]: ...
    def events_of_chain(self, chain_id: str, above: int, upto: int) -> list[LedgeredEvent]: ...
    def last_decided_time(self) -> str | None: ...
    def decision_cutoffs(self, lo: str, hi: str) -> Iterable[tuple[str, str, str]]:
        """In ``occurred_at`` order; asked for again, the same rows."""
        ...

    def flagged_decisions(
        self, actors: Sequence[str], lo: str, hi: str, before: str
    ) -> list[tuple[Any, ...]]: ...
    def undecided_count(self, from_ts: str, to_ts: str) -> int: ...
    def decided_heights(self) -> dict[str, int]: ...
    def reviews(self) -> Reviews: ...
    def status_changes(self) -> int: ...
    def insert_decisions(self, rows: Sequence[tuple[Any, ...]]) -> None: ...
    def insert_alerts(self, rows: Sequence[tuple[Any, ...]]) -> None: ...


#: Source registry records (ADR 0010) are reference records too, but no rule uses
#: them: leaving them out keeps heartbeats from moving the auditor's knowledge time.
_SOURCE_KINDS = "('source-key', 'source-heartbeat')"


def _of_ranges(ranges: Mapping[str, tuple[int, int]]) -> tuple[str, dict[str, Any]]:
    """A condition on ``chain_id`` and ``height`` for chain -> (above, upto], and its
    parameters."""
    params: dict[str, Any] = {}
    terms = []
    for i, (chain, (above, upto)) in enumerate(sorted(ranges.items())):
        params[f"c{i}"] = chain
        terms.append(f"(chain_id = %(c{i})s AND height > {int(above)} AND height <= {int(upto)})")
    return " OR ".join(terms), params


def pages_by_time(
    backend: SqlBackend,
    *,
    table: str,
    columns: str,
    lo: str,
    also: str,
    where: str,
    order: str,
    params: Mapping[str, Any],
    page_size: int,
) -> Iterator[Sequence[Sequence[Any]]]:
    """The rows of ``table`` with ``occurred_at >= lo`` (and ``also``, a condition on
    ``occurred_at`` alone, and ``where``) in ``occurred_at, <order>`` order, page by
    page. ``columns`` starts with ``occurred_at``.

    Each page first reads the time of its last row from ``occurred_at`` alone, then the
    page under that bound, which ``PREWHERE`` applies before the other columns are read:
    asked for as "the first N rows from the cursor on", ClickHouse 18.16 reads every
    column of every row after the cursor. The bound changes no page: every row of the
    page is at or before it. A bounded page that comes back short (the last page; rows
    gone since; a stored time that does not read back as stored, not UTF-8) is read
    again without it."""
    cursor = lo
    skip = 0
    time_also = f" AND {also}" if also else ""
    while True:
        p = {**params, "lo": cursor}
        limit = f"ORDER BY occurred_at, {order} LIMIT {int(skip)}, {int(page_size)}"
        bound = backend.execute(
            f"SELECT occurred_at FROM {table} WHERE occurred_at >= %(lo)s{time_also} "
            f"AND {where} ORDER BY occurred_at LIMIT {int(skip) + int(page_size) - 1}, 1",
            p,
        )
        rows: Sequence[Sequence[Any]] = []
        if bound:  # a full page ends at or before this time
            p["b"] = _text(bound[0][0])
            rows = backend.execute(
                f"SELECT {columns} FROM {table} PREWHERE occurred_at >= %(lo)s{time_also} "
                f"AND occurred_at <= %(b)s WHERE {where} {limit}",
                p,
            )
        if len(rows) < page_size:
            rows = backend.execute(
                f"SELECT {columns} FROM {table} WHERE occurred_at >= %(lo)s{time_also} "
                f"AND {where} {limit}",
                p,
            )
        yield rows
        if len(rows) < page_size:
            return
        last = _text(rows[-1][0])
        same = sum(1 for r in rows if _text(r[0]) == last)
        skip = skip + same if last == cursor else same
        cursor = last


class AuditStore:
    """The auditor's reads and writes in one ClickHouse database."""

    def __init__(
        self, backend: SqlBackend, database: str, reference_topics: frozenset[str] = frozenset()
    ) -> None:
        self.backend = backend
        self.db = check_identifier(database)
        self.reference_topics = reference_topics

    def is_reference(self, chain_id: str) -> bool:
        return topic_of(chain_id) in self.reference_topics

    def _committed(self, chain: bool = False) -> str:
        """Rows of blocks whose header is stored; ``chain``: only the blocks of
        ``%(c)s`` with ``%(a)s < height <= %(u)s`` (a small subquery for polling)."""
        where = " WHERE chain_id = %(c)s AND height > %(a)s AND height <= %(u)s" if chain else ""
        return (
            "(chain_id, height, block_hash) IN "
            f"(SELECT chain_id, height, block_hash FROM {self.db}.blocks{where})"
        )

    #: the columns each read selects, and how their rows become records: a sealed
    #: ledger's store (``sealed_store.SealedAuditStore``) reads more columns and opens them
    _REFERENCE_COLUMNS = "chain_id, height, block_hash, canonical"
    _EVENT_COLUMNS = "occurred_at, chain_id, height, idx, canonical"

    def _references(
        self, rows: Sequence[Sequence[Any]], times: Iterable[Sequence[Any]]
    ) -> list[LedgeredReference]:
        return _decode_references(rows, times)

    def _events(self, rows: Sequence[Sequence[Any]]) -> list[LedgeredEvent]:
        return [le for r in rows if (le := _ledgered(r)) is not None]

    # -- reference data
    def reference_records(self) -> list[LedgeredReference]:
        """Every committed reference record in ledger order (chain, height, idx), with
        its block's signed ``created_at`` (the column verify checks against the header)."""
        rows = self.backend.execute(
            f"SELECT {self._REFERENCE_COLUMNS} FROM {self.db}.reference_records "
            f"WHERE {self._committed()} AND kind NOT IN {_SOURCE_KINDS} "
            "ORDER BY chain_id, height, idx"
        )
        # read after the records: every block they are committed in is there
        times = self.backend.execute(
            f"SELECT chain_id, height, block_hash, created_at FROM {self.db}.blocks "
            "WHERE (chain_id, height, block_hash) IN "
            f"(SELECT chain_id, height, block_hash FROM {self.db}.reference_records "
            f"WHERE kind NOT IN {_SOURCE_KINDS})"
        )
        return self._references(rows, times)

    def reference_records_of_chain(
        self, chain_id: str, above: int, upto: int
    ) -> list[LedgeredReference]:
        p = {"c": chain_id, "a": above, "u": upto}
        rows = self.backend.execute(
            f"SELECT {self._REFERENCE_COLUMNS} FROM {self.db}.reference_records "
            "WHERE chain_id = %(c)s AND height > %(a)s AND height <= %(u)s "
            f"AND {self._committed(chain=True)} ORDER BY height, idx",
            p,
        )
        times = self.backend.execute(
            f"SELECT chain_id, height, block_hash, created_at FROM {self.db}.blocks "
            "WHERE chain_id = %(c)s AND height > %(a)s AND height <= %(u)s",
            p,
        )
        return self._references(rows, times)

    # -- access events
    def horizon(self) -> str | None:
        """The latest committed access event time (None: no events)."""
        rows = self.backend.execute(
            f"SELECT max(occurred_at), count() FROM {self.db}.access_events "
            f"WHERE {self._committed()}"
        )
        if not rows or int(rows[0][1]) == 0:
            return None
        return _text(rows[0][0])

    def events_between(self, lo: str, hi: str, page_size: int = 20_000) -> Iterator[LedgeredEvent]:
        """Committed access events with ``lo <= occurred_at < hi`` in
        (occurred_at, chain_id, height, idx) order, page by page (``pages_by_time``).

        The table is sorted by (chain_id, height, idx), not by time: a page asked for as
        "the first N rows from the cursor on" made ClickHouse read the ``canonical`` of
        every row after the cursor (0.5–0.9 s a page of 20,000 over a 1M-event ledger,
        ~30 % of a range audit's or verify's replay); bounded first, 0.25 s."""
        for rows in pages_by_time(
            self.backend,
            table=f"{self.db}.access_events",
            columns=self._EVENT_COLUMNS,
            lo=lo,
            also="occurred_at < %(hi)s",
            where=self._committed(),
            order="chain_id, height, idx",
            params={"hi": hi},
            page_size=page_size,
        ):
            yield from self._events(rows)

    def heads(self) -> dict[str, int]:
        rows = self.backend.execute(
            f"SELECT chain_id, max(height) FROM {self.db}.blocks GROUP BY chain_id"
        )
        return {_text(c): int(h) for c, h in rows}

    def events_of_chain(self, chain_id: str, above: int, upto: int) -> list[LedgeredEvent]:
        rows = self.backend.execute(
            f"SELECT {self._EVENT_COLUMNS} FROM {self.db}.access_events "
            "WHERE chain_id = %(c)s AND height > %(a)s AND height <= %(u)s "
            f"AND {self._committed(chain=True)} ORDER BY height, idx",
            {"c": chain_id, "a": above, "u": upto},
        )
        return self._events(rows)

    def blocks_above(
        self, ranges: Mapping[str, tuple[int, int]]
    ) -> list[tuple[str, int, int, str]]:
        """(chain, height, event count, signed time) of the blocks in ``ranges``
        (chain -> (above, upto)): what a follower catching up cuts its poll by."""
        if not ranges:
            return []
        where, params = _of_ranges(ranges)
        rows = self.backend.execute(
            f"SELECT chain_id, height, max(event_count), min(created_at) FROM {self.db}.blocks "
            f"WHERE {where} GROUP BY chain_id, height",
            params,
        )
        return [(_text(c), int(h), int(n), _text(t)) for c, h, n, t in rows]

    def events_of_chains(self, ranges: Mapping[str, tuple[int, int]]) -> list[LedgeredEvent]:
        """``events_of_chain`` of several chains (chain -> (above, upto)) in one query,
        read column by column (the follower's poll: one round trip, no tuple per row)."""
        if not ranges:
            return []
        where, params = _of_ranges(ranges)
        sql = (
            f"SELECT chain_id, height, idx, canonical FROM {self.db}.access_events "
            f"WHERE ({where}) AND (chain_id, height, block_hash) IN "
            f"(SELECT chain_id, height, block_hash FROM {self.db}.blocks WHERE {where}) "
            "ORDER BY chain_id, height, idx"
        )
        by_column = getattr(self.backend, "execute_columns", None)
        if by_column is None:
            rows = self.backend.execute(sql, params)
            return [le for r in rows if (le := _ledgered((None, *r))) is not None]
        columns = by_column(sql, params)
        if not columns:
            return []
        out: list[LedgeredEvent] = []
        chains: dict[Any, str] = {}
        for chain, height, idx, canonical in zip(*columns, strict=True):
            le = _ledgered((None, chain, height, idx, canonical), chains)
            if le is not None:
                out.append(le)
        return out

    def last_decided_time(self) -> str | None:
        rows = self.backend.execute(
            f"SELECT max(occurred_at), count() FROM {self.db}.access_decisions"
        )
        if not rows or int(rows[0][1]) == 0:
            return None
        return _text(rows[0][0])

    def decision_cutoffs(
        self, lo: str, hi: str, page_size: int = 50_000
    ) -> Iterator[tuple[str, str, str]]:
        """(event id, occurred_at, knowledge cutoff) of the stored decisions with
        ``lo <= occurred_at < hi``, the latest per access (event id and time; rows
        written before the cutoff was stored are left out), in ``occurred_at`` order.

        Read in pages of whole times: each page ends at the time of its
        ``page_size``-th row, taken as bytes (``hex``), and holds every access of it."""
        interned: dict[str, str] = {}  # a few distinct cutoffs for many events
        cond = "amends = 0 AND reference_known_at != '' AND occurred_at < %(hi)s"
        after = "occurred_at >= %(lo)s"
        p: dict[str, Any] = {"lo": lo, "hi": hi}
        while True:
            bound = self.backend.execute(
                f"SELECT hex(occurred_at) FROM {self.db}.access_decisions "
                f"WHERE {after} AND {cond} ORDER BY occurred_at "
                f"LIMIT {max(int(page_size) - 1, 0)}, 1",
                p,
            )
            upto = ""
            if bound:
                p["b"] = _text(bound[0][0])
                upto = " AND occurred_at <= unhex(%(b)s)"
            rows = self.backend.execute(
                "SELECT occurred_at, event_id, argMax(reference_known_at, decided_at) "
                f"FROM {self.db}.access_decisions WHERE {after}{upto} AND {cond} "
                "GROUP BY occurred_at, event_id ORDER BY occurred_at",
                p,
            )
            for occurred_at, event_id, known_at in rows:
                k = _text(known_at)
                yield _text(event_id), _text(occurred_at), interned.setdefault(k, k)
            if not bound:
                return
            p["a"] = p["b"]
            after = "occurred_at > unhex(%(a)s)"

    def flagged_decisions(
        self, actors: Sequence[str], lo: str, hi: str, before: str
    ) -> list[tuple[Any, ...]]:
        """The decisions about ``actors`` with ``lo <= occurred_at < hi`` stored before
        ``before`` whose latest version (per event and ``amends``) is flagged, as
        ``RESTORED_COLUMNS``: what a restarted follower groups their next flags with."""
        latest = ", ".join(f"argMax({c}, decided_at)" for c in RESTORED_COLUMNS[2:])
        rows = self.backend.execute(
            f"SELECT event_id, amends, {latest} FROM {self.db}.access_decisions "
            "WHERE actor_id IN %(actors)s AND occurred_at >= %(lo)s AND occurred_at < %(hi)s "
            "AND decided_at < %(before)s GROUP BY event_id, amends",
            {"actors": tuple(actors), "lo": lo, "hi": hi, "before": before},
        )
        flags = RESTORED_COLUMNS.index("flags")
        return [r for r in rows if _text(r[flags]) not in ("", "[]")]

    def undecided_count(self, from_ts: str, to_ts: str) -> int:
        """Committed access events of ``[from_ts, to_ts)`` with no stored cutoff."""
        p = {"lo": from_ts, "hi": to_ts}
        rows = self.backend.execute(
            f"SELECT count() FROM {self.db}.access_events "
            f"WHERE occurred_at >= %(lo)s AND occurred_at < %(hi)s AND {self._committed()} "
            f"AND event_id NOT IN (SELECT event_id FROM {self.db}.access_decisions "
            "WHERE occurred_at >= %(lo)s AND occurred_at < %(hi)s AND amends = 0 "
            "AND reference_known_at != '')",
            p,
        )
        return int(rows[0][0]) if rows else 0

    def decided_heights(self) -> dict[str, int]:
        rows = self.backend.execute(
            f"SELECT chain_id, max(height) FROM {self.db}.access_decisions GROUP BY chain_id"
        )
        return {_text(c): int(h) for c, h in rows}

    def reviews(self) -> Reviews:
        """The reviewers' decisions (``review_alerts``): every status history, and the
        stored alerts that were closed."""
        rows = self.backend.execute(
            f"SELECT {', '.join(STATUS_COLUMNS)} FROM {self.db}.alert_status ORDER BY alert_id, seq"
        )
        histories = status_histories(rows)
        ids = closed_alert_ids(histories)
        alerts: dict[str, ReviewedAlert] = {}
        if ids:
            found = self.backend.execute(
                "SELECT alert_id, actor_id, last_at, event_ids, evidence "
                f"FROM {self.db}.alerts FINAL WHERE alert_id IN %(ids)s",
                {"ids": tuple(ids)},
            )
            alerts = dict(reviewed_alert(r) for r in found)
        return review_alerts(histories, alerts)

    def confirmed_violations(self) -> list[tuple[str, str]]:
        """(actor id, time) of each confirmed violation (``Reviews.violations``)."""
        return self.reviews().violations()

    def status_changes(self) -> int:
        """How many alert status changes are stored (append-only: grows with each review)."""
        rows = self.backend.execute(f"SELECT count() FROM {self.db}.alert_status")
        return int(rows[0][0]) if rows else 0

    # -- writes
    def wait_mutations(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self.backend.execute(
                "SELECT count() FROM system.mutations WHERE database = %(db)s AND is_done = 0",
                {"db": self.db},
            )
            if not rows or int(rows[0][0]) == 0:
                return
            time.sleep(0.05)
        raise StorageError(f"mutations in {self.db} did not finish in {timeout_s}s")

    def delete_range(self, from_ts: str, to_ts: str) -> None:
        """Remove the decisions and alerts of ``[from_ts, to_ts)`` (before a replay)."""
        p = {"lo": from_ts, "hi": to_ts}
        for table, column in (("access_decisions", "occurred_at"), ("alerts", "first_at")):
            n = self.backend.execute(
                f"SELECT count() FROM {self.db}.{table} "
                f"WHERE {column} >= %(lo)s AND {column} < %(hi)s",
                p,
            )
            if n and int(n[0][0]):
                self.backend.execute(
                    f"ALTER TABLE {self.db}.{table} DELETE "
                    f"WHERE {column} >= %(lo)s AND {column} < %(hi)s",
                    p,
                )
        self.wait_mutations()

    def insert_decisions(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Up to ``ATOMIC_INSERT`` rows in one INSERT: ClickHouse stores them all or none
        (a follower's cycle: its restart resumes after the highest block decided, so a
        part of a cycle stored would skip the rest of it)."""
        if len(rows) <= ATOMIC_INSERT:
            self.backend.insert(f"{self.db}.access_decisions", DECISION_COLUMNS, rows)
            return
        for i in range(0, len(rows), INSERT_BATCH):
            self.backend.insert(
                f"{self.db}.access_decisions", DECISION_COLUMNS, rows[i : i + INSERT_BATCH]
            )

    def insert_alerts(self, rows: Sequence[tuple[Any, ...]]) -> None:
        for i in range(0, len(rows), INSERT_BATCH):
            self.backend.insert(f"{self.db}.alerts", ALERT_COLUMNS, rows[i : i + INSERT_BATCH])

    def alert_fingerprints(self, from_ts: str, to_ts: str) -> dict[str, str]:
        rows = self.backend.execute(
            f"SELECT {', '.join(ALERT_COLUMNS)} FROM {self.db}.alerts FINAL "
            "WHERE first_at >= %(lo)s AND first_at < %(hi)s",
            {"lo": from_ts, "hi": to_ts},
        )
        return {_text(r[0]): stored_alert_fingerprint(r) for r in rows}


def _decode_references(
    rows: Iterable[Sequence[Any]], times: Iterable[Sequence[Any]]
) -> list[LedgeredReference]:
    """(chain_id, height, block_hash, canonical) rows and (chain_id, height, block_hash,
    created_at) block rows -> ledgered records (rows of a block not found are skipped)."""
    block_time = {(_text(c), h, _text(b)): _text(t) for c, h, b, t in times if type(h) is int}
    records: list[LedgeredReference] = []
    bad = 0
    for chain, height, block, canonical in rows:
        if type(height) is not int:  # a column of another type: verify reports it
            bad += 1
            continue
        key = (_text(chain), height, _text(block))
        when = block_time.get(key)
        if when is None:  # not committed when the blocks were read
            continue
        try:
            # stored bytes are canonical (verify checks it): validate the record without
            # re-canonicalising it, which would double the cost of loading the ledger
            doc = json.loads(bytes(canonical))
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            records.append(LedgeredReference(reference_from_dict(doc), key[0], key[1], when))
        except (ValueError, TypeError, RecursionError, CareledgerError):
            bad += 1  # a row verify would report as tampered (JSON or record invalid)
    if bad:
        log.warning("%d stored reference records could not be decoded (run verify)", bad)
    return records


def _ledgered(row: Sequence[Any], chains: dict[Any, str] | None = None) -> LedgeredEvent | None:
    """A row (occurred_at, chain_id, height, idx, canonical) -> the event at its place
    (None: a row verify reports). ``chains`` interns chain ids across rows."""
    _occ, chain, height, idx, canonical = row
    if type(height) is not int or type(idx) is not int:
        log.warning("access event with an unreadable place in %s skipped", _text(chain))
        return None
    if chains is None:
        chain_id = _text(chain)
    else:
        chain_id = chains.get(chain) or chains.setdefault(chain, _text(chain))
    try:
        event = decode_event(bytes(canonical))
    except (CareledgerError, ValueError, TypeError, RecursionError):
        # tampered row: verify reports it; the auditor skips it
        log.warning("undecodable access event at %s/%s/%s skipped", chain_id, height, idx)
        return None
    return LedgeredEvent(Position(chain_id, height, idx), event)
