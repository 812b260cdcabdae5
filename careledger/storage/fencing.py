"""Fencing a zombie processor (ADR 0031): one writer per chain, enforced by the store.

A processor that stalls past its consumer-group session (a long GC pause, SIGSTOP, a
frozen VM) loses its partitions to another processor; when it resumes, it may still hold
sealed blocks for them and write them before it hears of the rebalance. Without a fence
that is a second block at a height (``HEIGHT_FORK``): detected by ``verify``, but
written. ClickHouse has no transactions, so the fence is made of what it has:

1. **Claims.** A processor that loads a chain first appends ``(chain, epoch, owner)``
   to ``chain_owners`` with the next epoch. The chain's owner is the claim with the
   highest ``(epoch, owner)``: two claims racing for one epoch still name one owner.
2. **Conditional headers.** The header rows (the commit point of a write: event rows
   without a header are uncommitted) are inserted with ``INSERT ... SELECT ... WHERE``:
   the server inserts a chain's headers only if, when it runs the statement, the writer
   is that chain's owner and no header exists at or above the write's first height. The
   check and the insert are one statement on the server, so a writer paused between
   deciding to write and writing is judged when the statement arrives, not before.
3. **Read back.** The writer reads the headers back; a chain whose header is not the one
   it wrote was fenced. Its own event, attestation and batch rows of those blocks (named
   by their block hashes, which no other block shares) are deleted, and the caller
   drops the chain until the group assigns it again.

What is left: two statements executing at the same instant on the server (a zombie's
insert already running when the new owner's claim lands). The new owner therefore
waits ``CLAIM_SETTLE_S`` after its claim before its first write, far longer than one
header insert runs; and should it happen anyway, ``verify`` still reports the fork.
A zombie killed between being fenced and deleting its rows leaves rows no header names
(``UNCOMMITTED_EVENTS`` or unexpected rows in ``verify``): noticed, never chained.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from careledger.storage.backend import SqlBackend, quote

#: how long a fenced writer confirms the deletes of its write's rows
DISCARD_CONFIRM_S = 30.0
#: how long a new owner waits after its claim before its first write: any header insert
#: a stalled previous owner had already sent has finished by then
CLAIM_SETTLE_S: Final = 0.25
#: a guarded header insert's statement text, at most (ClickHouse parses at most
#: ``max_query_size``, 256 KiB by default, of a statement)
MAX_STATEMENT_BYTES: Final = 192 * 1024


def claim(backend: SqlBackend, db: str, chain_id: str, owner: str) -> int:
    """Append a claim of ``chain_id`` by ``owner`` with the next epoch; return it."""
    rows = backend.execute(
        f"SELECT max(epoch) FROM {db}.chain_owners WHERE chain_id = %(c)s", {"c": chain_id}
    )
    epoch = int(rows[0][0] or 0) + 1 if rows else 1
    backend.insert(f"{db}.chain_owners", ("chain_id", "epoch", "owner"), [(chain_id, epoch, owner)])
    return epoch


def owner_of(backend: SqlBackend, db: str, chain_id: str) -> str | None:
    """The chain's owner: the claim with the highest (epoch, owner); None if unclaimed."""
    rows = backend.execute(
        f"SELECT owner FROM {db}.chain_owners WHERE chain_id = %(c)s "
        "ORDER BY epoch DESC, owner DESC LIMIT 1",
        {"c": chain_id},
    )
    if not rows:
        return None
    value = rows[0][0]
    return value.decode() if isinstance(value, bytes) else str(value)


def column_types(backend: SqlBackend, db: str, table: str) -> dict[str, str]:
    rows = backend.execute(
        "SELECT name, type FROM system.columns WHERE database = %(db)s AND table = %(t)s",
        {"db": db, "t": table},
    )
    return {_text(n): _text(t) for n, t in rows}


def insert_headers_fenced(
    backend: SqlBackend,
    db: str,
    columns: Sequence[str],
    types: Mapping[str, str],
    rows_by_chain: Mapping[str, Sequence[Sequence[Any]]],
    owner: str,
    *,
    max_statement_bytes: int = MAX_STATEMENT_BYTES,
) -> None:
    """Every chain's header rows in one ``INSERT ... SELECT`` (or a few, each under
    ``max_statement_bytes``: a chain's rows are never split), each chain's rows guarded
    by the same condition: ``owner`` owns it, and nothing is stored at or above its first
    height in this write. ``rows`` are in ``columns`` order; ``chain_id`` and ``height``
    among them.

    The rows travel as one array literal per column, indexed by row number, and the
    guard is two ``IN`` sets over the statement's chains: the statement costs about a
    plain insert plus two small reads, whatever the number of rows (one ``SELECT`` of
    casts per row and two scalar subqueries per chain had cost three times as much on
    ClickHouse 18.16, on the processor's write path)."""
    statements: list[list[tuple[str, Sequence[Sequence[Any]]]]] = [[]]
    size = 0
    for chain_id, rows in sorted(rows_by_chain.items()):
        if not rows:
            continue
        length = sum(len(quote(v)) + 2 for row in rows for v in row)
        if statements[-1] and size + length > max_statement_bytes:
            statements.append([])
            size = 0
        statements[-1].append((chain_id, rows))
        size += length
    for chains in statements:
        if chains:
            backend.execute(_guarded_insert(db, columns, types, chains, owner))


def _guarded_insert(
    db: str,
    columns: Sequence[str],
    types: Mapping[str, str],
    chains: Sequence[tuple[str, Sequence[Sequence[Any]]]],
    owner: str,
) -> str:
    height_at = columns.index("height")
    rows = [row for _, chain_rows in chains for row in chain_rows]
    values = ", ".join(
        f"CAST(arrayElement([{', '.join(quote(row[i]) for row in rows)}], "
        f"toUInt64(number) + 1) AS {types[c]}) AS {c}"
        for i, c in enumerate(columns)
    )
    named = ", ".join(quote(chain_id) for chain_id, _ in chains)
    occupied = " OR ".join(
        f"(chain_id = {quote(chain_id)} AND height >= {min(int(r[height_at]) for r in chain_rows)})"
        for chain_id, chain_rows in chains
    )
    # the owner of a chain: its claim with the highest (epoch, owner)
    owned = (
        f"SELECT chain_id FROM (SELECT chain_id, owner FROM {db}.chain_owners "
        f"WHERE chain_id IN ({named}) ORDER BY epoch DESC, owner DESC LIMIT 1 BY chain_id) "
        f"WHERE owner = {quote(owner)}"
    )
    return (
        f"INSERT INTO {db}.blocks ({', '.join(columns)}) "
        f"SELECT * FROM (SELECT {values} FROM system.numbers LIMIT {len(rows)}) "
        f"WHERE chain_id IN ({owned}) "
        f"AND chain_id NOT IN (SELECT chain_id FROM {db}.blocks WHERE {occupied})"
    )


def placed(backend: SqlBackend, db: str, wanted: Mapping[tuple[str, int], str]) -> set[str]:
    """The chains of ``wanted`` ((chain, height) -> block hash) whose header at every
    wanted height is the wanted block: the others were fenced."""
    chains = sorted({c for c, _ in wanted})
    rows = backend.execute(
        f"SELECT chain_id, height, block_hash FROM {db}.blocks "
        "WHERE chain_id IN %(chains)s AND height >= %(low)s",
        {"chains": tuple(chains), "low": min(h for _, h in wanted)},
    )
    stored: dict[tuple[str, int], set[str]] = {}
    for chain, height, block_hash in rows:
        stored.setdefault((_text(chain), int(height)), set()).add(_text(block_hash))
    ok = set(chains)
    for where, block_hash in wanted.items():
        if stored.get(where) != {block_hash}:
            ok.discard(where[0])
    return ok


def discard_fenced(
    backend: SqlBackend,
    db: str,
    tables: Sequence[str],
    chain_id: str,
    hashes: Sequence[str],
    *,
    timeout_s: float = DISCARD_CONFIRM_S,
) -> bool:
    """Delete the rows a fenced write left (they name block hashes no header has), and
    confirm it: each delete is an asynchronous mutation, and on 18.16 one sometimes
    finished without reaching rows of the write (seen with merges running; ADR 0031
    addendum). A table whose mutations are done while such rows remain gets the delete
    again, until none remain or ``timeout_s`` passes. Rows named by a fenced block hash
    are never anyone's, so deleting them again is always safe. Returns whether none is
    left (else ``verify`` reports them; they are never chained)."""
    where = "chain_id = %(c)s AND block_hash IN %(h)s"
    params = {"c": chain_id, "h": tuple(hashes)}

    def delete(tables: Sequence[str]) -> None:
        for table in tables:
            backend.execute(f"ALTER TABLE {db}.{table} DELETE WHERE {where}", params)

    def left(table: str) -> bool:
        return bool(
            backend.execute(f"SELECT count() FROM {db}.{table} WHERE {where}", params)[0][0]
        )

    pending = list(tables)
    delete(pending)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        time.sleep(0.2)
        running = {
            _text(t)
            for (t,) in backend.execute(
                "SELECT DISTINCT table FROM system.mutations "
                "WHERE database = %(db)s AND is_done = 0",
                {"db": db},
            )
        }
        pending = [t for t in pending if left(t)]
        delete([t for t in pending if t not in running])  # done, yet rows remain
    return not pending


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
