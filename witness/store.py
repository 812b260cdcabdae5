"""The witness's state: every checkpoint it cosigned, and the evidence it kept (SQLite).

Crash safety. One SQLite database in WAL mode with ``synchronous=FULL``: a transaction
that committed survives SIGKILL and power loss, one that did not leaves no trace. Each
add-checkpoint runs as ONE ``BEGIN IMMEDIATE`` transaction (a write lock, taken before
anything is read): read the latest cosigned checkpoint and the one at the submitted
size, decide (``careledger_core.witness.decide``), record the evidence, record the new
checkpoint, sign, commit; the cosignature leaves the process only after the commit. Two
requests (threads or processes sharing the file) therefore never both pass the "old
size" check against the same state, so none can roll the other back (the race of
C2SP tlog-witness), and a crash before the commit loses only a cosignature nobody got.

Tables::

    cosigned(origin, size, root, note, cosignature, first_at, last_at)
        one row per (origin, size) ever cosigned; the root of a row can never change
        and rows are never deleted (triggers refuse both), so the witness cannot
        cosign two roots at one size even through a bug
    evidence(digest, kind, origin, size, root, status, first_at, last_at, seen, document)
        a log-signed checkpoint that conflicts with a cosigned one (both notes, JSON);
        status 'open'; an "inconsistent" one (it came with a proof that fails) becomes
        'resolved' when the witness later cosigns that same checkpoint through a valid
        proof (someone replayed it with a bad proof), or 'fork' when it cosigns another
        root at that size (a "fork" piece of evidence with both notes is added)
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from careledger_core.witness import (
    Cosignature,
    CosignedState,
    Decision,
    Evidence,
    EvidenceKind,
    Submission,
    decide,
)

__all__ = ["DB_NAME", "LogHead", "Outcome", "WitnessStore", "WitnessStoreError"]

DB_NAME: Final = "witness.sqlite3"
SCHEMA_VERSION: Final = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cosigned (
    origin TEXT NOT NULL,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    cosignature TEXT NOT NULL,
    first_at INTEGER NOT NULL,
    last_at INTEGER NOT NULL,
    PRIMARY KEY (origin, size)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS cosigned_root_is_final
BEFORE UPDATE OF origin, size, root ON cosigned
WHEN NEW.root IS NOT OLD.root OR NEW.size IS NOT OLD.size OR NEW.origin IS NOT OLD.origin
BEGIN SELECT RAISE(ABORT, 'a cosigned checkpoint never changes'); END;
CREATE TRIGGER IF NOT EXISTS cosigned_is_never_deleted
BEFORE DELETE ON cosigned
BEGIN SELECT RAISE(ABORT, 'a cosigned checkpoint is never deleted'); END;
CREATE TABLE IF NOT EXISTS evidence (
    digest TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    origin TEXT NOT NULL,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    status TEXT NOT NULL,
    first_at INTEGER NOT NULL,
    last_at INTEGER NOT NULL,
    seen INTEGER NOT NULL,
    document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS evidence_by_checkpoint ON evidence (origin, size);
"""


class WitnessStoreError(RuntimeError):
    """The state database cannot be opened or written."""


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    cosignature: Cosignature | None


@dataclass(frozen=True)
class LogHead:
    origin: str
    size: int
    root_hash: bytes
    note: str
    cosignature: str
    last_at: int


class WitnessStore:
    """The state of one witness (thread-safe; one open connection)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / DB_NAME
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
            )
            os.chmod(self.path, 0o600)
        except (OSError, sqlite3.Error) as exc:
            raise WitnessStoreError(f"cannot open the witness state {self.path}: {exc}") from exc
        (version,) = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if version != SCHEMA_VERSION:
            raise WitnessStoreError(f"{self.path}: unknown state schema {version!r}")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------ reads
    @staticmethod
    def _state(row: tuple[Any, ...] | None) -> CosignedState | None:
        return None if row is None else CosignedState(int(row[0]), bytes(row[1]), str(row[2]))

    def _latest(self, db: sqlite3.Connection, origin: str) -> CosignedState | None:
        row = db.execute(
            "SELECT size, root, note FROM cosigned WHERE origin = ? ORDER BY size DESC LIMIT 1",
            (origin,),
        ).fetchone()
        return self._state(row)

    def _at(self, db: sqlite3.Connection, origin: str, size: int) -> CosignedState | None:
        row = db.execute(
            "SELECT size, root, note FROM cosigned WHERE origin = ? AND size = ?", (origin, size)
        ).fetchone()
        return self._state(row)

    def heads(self) -> list[LogHead]:
        """The latest cosigned checkpoint of every origin."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.origin, c.size, c.root, c.note, c.cosignature, c.last_at "
                "FROM cosigned c JOIN (SELECT origin, MAX(size) AS size FROM cosigned "
                "GROUP BY origin) m ON c.origin = m.origin AND c.size = m.size ORDER BY c.origin"
            ).fetchall()
        return [LogHead(r[0], int(r[1]), bytes(r[2]), r[3], r[4], int(r[5])) for r in rows]

    def head(self, origin: str) -> LogHead | None:
        return next((h for h in self.heads() if h.origin == origin), None)

    def cosigned_roots(self, origin: str) -> dict[int, bytes]:
        """size -> root of every checkpoint cosigned for ``origin``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT size, root FROM cosigned WHERE origin = ? ORDER BY size", (origin,)
            ).fetchall()
        return {int(size): bytes(root) for size, root in rows}

    def evidence(self) -> list[dict[str, Any]]:
        """Every piece of evidence, oldest first (documents with their status)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT document, status, first_at, last_at, seen FROM evidence "
                "ORDER BY first_at, digest"
            ).fetchall()
        out = []
        for document, status, first_at, last_at, seen in rows:
            doc = json.loads(document)
            doc.update(status=status, first_seen=first_at, last_seen=last_at, seen=seen)
            out.append(doc)
        return out

    # ------------------------------------------------------------------ the one write
    def submit(
        self, submission: Submission, sign: Callable[[str], Cosignature], now: int
    ) -> Outcome:
        """Decide on ``submission`` against the state and persist the result, atomically;
        ``sign(note_text)`` is called only for a checkpoint being cosigned, inside the
        transaction, and its cosignature is returned only once committed."""
        origin, cp = submission.origin, submission.checkpoint
        try:
            with self._transaction() as db:
                decision = decide(
                    submission, self._latest(db, origin), self._at(db, origin, cp.size)
                )
                if decision.evidence is not None:
                    self._keep(db, decision.evidence, cp.size, cp.root_hash, now)
                cosignature = None
                if decision.new_state is not None:
                    cosignature = sign(submission.body)
                    self._record(db, origin, decision.new_state, cosignature, now)
                    self._settle(db, origin, decision.new_state, now)
        except sqlite3.Error as exc:
            raise WitnessStoreError(f"witness state {self.path}: {exc}") from exc
        return Outcome(decision, cosignature)

    @staticmethod
    def _keep(db: sqlite3.Connection, evidence: Evidence, size: int, root: bytes, now: int) -> None:
        db.execute(
            "INSERT INTO evidence (digest, kind, origin, size, root, status, first_at, "
            "last_at, seen, document) VALUES (?, ?, ?, ?, ?, 'open', ?, ?, 1, ?) "
            "ON CONFLICT (digest) DO UPDATE SET last_at = excluded.last_at, seen = seen + 1",
            (
                evidence.digest,
                evidence.kind.value,
                evidence.origin,
                size,
                root,
                now,
                now,
                json.dumps(evidence.to_dict(), ensure_ascii=False, sort_keys=True),
            ),
        )

    @staticmethod
    def _record(
        db: sqlite3.Connection, origin: str, state: CosignedState, cos: Cosignature, now: int
    ) -> None:
        db.execute(
            "INSERT INTO cosigned (origin, size, root, note, cosignature, first_at, last_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (origin, size) DO UPDATE SET "
            "root = excluded.root, cosignature = excluded.cosignature, last_at = excluded.last_at",
            (origin, state.size, state.root_hash, state.note, cos.line, now, now),
        )

    def _settle(self, db: sqlite3.Connection, origin: str, state: CosignedState, now: int) -> None:
        """Evidence about a checkpoint of this size, now that one is cosigned: the same
        one (it came with a bad proof before) is resolved; another root is a fork."""
        rows = db.execute(
            "SELECT digest, root, document FROM evidence WHERE origin = ? AND size = ? "
            "AND kind = ? AND status = 'open'",
            (origin, state.size, EvidenceKind.INCONSISTENT.value),
        ).fetchall()
        for digest, root, document in rows:
            if bytes(root) == state.root_hash:
                db.execute("UPDATE evidence SET status = 'resolved' WHERE digest = ?", (digest,))
                continue
            db.execute("UPDATE evidence SET status = 'fork' WHERE digest = ?", (digest,))
            presented = json.loads(document)
            fork = Evidence(
                EvidenceKind.FORK,
                origin,
                state.note,
                str(presented["presented_note"]),
                int(presented["old_size"]),
                tuple(base64.b64decode(p) for p in presented["proof"]),
                f"two log-signed checkpoints of size {state.size} with different roots",
            )
            self._keep(db, fork, state.size, bytes(root), now)
