"""Where two ledger databases differ, row by row: the primary and a replica (ADR 0017).

``careledger replica compare`` prints it; ``careledger restore`` starts from it; and, as
shared infrastructure, ``verify`` can call ``compare(primary_store, replica_store)`` and
turn each ``Difference`` into a finding at its place.

Per chain, over the heights the replica holds, every row of the tables a block is
stored in (``blocks``, the chain's record table, ``source_attestations``,
``source_batches``) is read from
both databases with every column the processor writes (not ``stored_at``), page by
page, and compared:

* ``missing_in_primary``: the replica has the row, the primary has not (a deleted
  block or record);
* ``extra_in_primary``: the primary has a row the replica has not at a height the
  replica holds (an inserted record, a second block at one height);
* ``differs``: both have the row at that place, with other values (the columns named).

Places are ``(height)`` for headers, ``(height, idx)`` for records and attestations and
``(height, kafka_offset)`` for batch rows (ADR 0020: one per batch record).
Heights above the replica's head are not compared: the replica has not seen them yet
(``primary_ahead`` says how many). Both databases may be on different servers: rows
are compared in Python, never with a cross-database query. Nothing here is trusted:
the comparison only says where the two disagree; ``restore`` decides which is right
by checking the replica against the signed checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from careledger.storage.store import (
    ATTESTATION_COLUMNS,
    BATCH_COLUMNS,
    HEADER_COLUMNS,
    ChainStore,
    row_columns,
)

__all__ = ["ChainComparison", "Comparison", "Difference", "block_rows", "compare", "tables_of"]

#: heights compared per query
PAGE: Final = 100
#: differences kept (all are counted)
MAX_DIFFERENCES: Final = 1000

Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Difference:
    """One place where the two databases disagree."""

    kind: str  # missing_in_primary | extra_in_primary | differs
    table: str
    chain_id: str
    height: int
    idx: int | None = None
    columns: tuple[str, ...] = ()
    #: the place of a batch row (ADR 0020), which has no index
    kafka_offset: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "table": self.table,
            "chain_id": self.chain_id,
            "height": self.height,
        }
        if self.idx is not None:
            out["idx"] = self.idx
        if self.kafka_offset is not None:
            out["kafka_offset"] = self.kafka_offset
        if self.columns:
            out["columns"] = list(self.columns)
        return out

    def describe(self) -> str:
        where = f"{self.table} {self.chain_id} height {self.height}"
        if self.idx is not None:
            where += f" idx {self.idx}"
        if self.kafka_offset is not None:
            where += f" offset {self.kafka_offset}"
        what = {
            "missing_in_primary": "missing in the primary",
            "extra_in_primary": "in the primary only",
            "differs": "differs",
        }[self.kind]
        cols = f" ({', '.join(self.columns)})" if self.columns else ""
        return f"{where}: {what}{cols}"


@dataclass
class ChainComparison:
    chain_id: str
    primary_height: int | None
    replica_height: int | None
    heights_compared: int = 0
    differences: int = 0
    #: heights with any difference
    heights: set[int] = field(default_factory=set)

    @property
    def primary_ahead(self) -> int:
        """Blocks the primary has above the replica's head (not compared)."""
        p, r = self.primary_height, self.replica_height
        if p is None:
            return 0
        return p - (-1 if r is None else r)

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "primary_height": self.primary_height,
            "replica_height": self.replica_height,
            "heights_compared": self.heights_compared,
            "differences": self.differences,
            "primary_ahead": max(self.primary_ahead, 0),
        }


@dataclass
class Comparison:
    chains: list[ChainComparison] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    total: int = 0

    def add(self, chain: ChainComparison, d: Difference) -> None:
        self.total += 1
        chain.differences += 1
        chain.heights.add(d.height)
        if len(self.differences) < MAX_DIFFERENCES:
            self.differences.append(d)

    def to_json(self) -> dict[str, Any]:
        return {
            "result": "same" if self.total == 0 else "different",
            "differences_total": self.total,
            "chains": [c.to_json() for c in self.chains],
            "differences": [d.to_json() for d in self.differences],
        }


def tables_of(store: ChainStore, chain_id: str) -> list[tuple[str, tuple[str, ...], int]]:
    """``(table, columns, key length)`` of the tables a block of ``chain_id`` is in:
    headers by height, records and attestations by (height, idx), batch rows by
    (height, kafka_offset) (the second key column: ``idx``, else ``kafka_offset``). A
    sealed kind's private columns (ADR 0037) are not compared: a replica holds them empty
    (the block publications carry the signed documents, not what the key store adds)."""
    kind = store.kind_of(chain_id)
    public = tuple(c for c in row_columns(kind) if c not in kind.private_columns)
    return [
        ("blocks", HEADER_COLUMNS, 1),
        (kind.table, public, 2),
        ("source_attestations", ATTESTATION_COLUMNS, 2),
        ("source_batches", BATCH_COLUMNS, 2),
    ]


def block_rows(
    store: ChainStore, chain_id: str, table: str, columns: Sequence[str], lo: int, hi: int
) -> list[Row]:
    """Every row of ``table`` for ``chain_id`` with ``lo <= height <= hi``, all of
    ``columns`` (chain id and height first), in a deterministic order."""
    cols = ", ".join(columns)
    return list(
        store.backend.execute(
            f"SELECT {cols} FROM {store.db}.{table} "
            "WHERE chain_id = %(chain)s AND height >= %(lo)s AND height <= %(hi)s "
            f"ORDER BY {cols}",
            {"chain": chain_id, "lo": lo, "hi": hi},
        )
    )


def _max_height(store: ChainStore, chain_id: str) -> int | None:
    rows = store.backend.execute(
        f"SELECT count(), max(height) FROM {store.db}.blocks WHERE chain_id = %(chain)s",
        {"chain": chain_id},
    )
    return int(rows[0][1]) if rows and int(rows[0][0]) else None


def _second_key(columns: Sequence[str]) -> int:
    """Where a table's second key column is: ``idx``, else ``kafka_offset``."""
    return columns.index("idx") if "idx" in columns else columns.index("kafka_offset")


def _grouped(rows: list[Row], key_len: int, second: int) -> dict[tuple[int, ...], list[Row]]:
    # columns start with chain_id, height: key = height[, idx or kafka_offset]
    groups: dict[tuple[int, ...], list[Row]] = {}
    for row in rows:
        key = (int(row[1]),) if key_len == 1 else (int(row[1]), int(row[second]))
        groups.setdefault(key, []).append(row)
    return groups


def diff_rows(
    primary: list[Row], replica: list[Row], columns: Sequence[str], key_len: int
) -> Iterator[tuple[str, tuple[int, ...], tuple[str, ...]]]:
    """``(kind, key, columns)`` for each place the two row sets disagree."""
    second = _second_key(columns) if key_len > 1 else 1
    p, r = _grouped(primary, key_len, second), _grouped(replica, key_len, second)
    for key in sorted(set(p) | set(r)):
        mine, theirs = sorted(p.get(key, []), key=repr), sorted(r.get(key, []), key=repr)
        if mine == theirs:
            continue
        if not mine:
            yield "missing_in_primary", key, ()
        elif not theirs:
            yield "extra_in_primary", key, ()
        elif len(mine) == len(theirs) == 1:
            changed = tuple(
                c for c, a, b in zip(columns, mine[0], theirs[0], strict=True) if a != b
            )
            yield "differs", key, changed
        else:
            yield (
                "differs",
                key,
                (f"{len(mine)} rows in the primary, {len(theirs)} in the replica",),
            )


def compare_chain(
    primary: ChainStore,
    replica: ChainStore,
    chain_id: str,
    result: Comparison,
    *,
    upto: int | None = None,
) -> ChainComparison:
    """Compare one chain over heights 0..min(replica head, ``upto``)."""
    chain = ChainComparison(
        chain_id, _max_height(primary, chain_id), _max_height(replica, chain_id)
    )
    top = chain.replica_height
    if upto is not None:
        top = upto if top is None else min(top, upto)
    result.chains.append(chain)
    if top is None or top < 0:
        return chain
    for lo in range(0, top + 1, PAGE):
        hi = min(lo + PAGE - 1, top)
        for table, columns, key_len in tables_of(primary, chain_id):
            for kind, key, changed in diff_rows(
                block_rows(primary, chain_id, table, columns, lo, hi),
                block_rows(replica, chain_id, table, columns, lo, hi),
                columns,
                key_len,
            ):
                place = key[1] if len(key) > 1 else None
                by_offset = "idx" not in columns
                result.add(
                    chain,
                    Difference(
                        kind,
                        table,
                        chain_id,
                        key[0],
                        None if by_offset else place,
                        changed,
                        place if by_offset else None,
                    ),
                )
        chain.heights_compared = hi + 1
    return chain


def compare(
    primary: ChainStore, replica: ChainStore, chains: Sequence[str] | None = None
) -> Comparison:
    """Compare every chain either database holds (or ``chains``)."""
    result = Comparison()
    names = (
        sorted(chains)
        if chains is not None
        else sorted(set(primary.chain_ids()) | set(replica.chain_ids()))
    )
    for chain_id in names:
        compare_chain(primary, replica, chain_id, result)
    return result
