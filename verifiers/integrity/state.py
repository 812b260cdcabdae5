"""The verifier's own memory: the last head it verified, per chain.

Truncating the newest blocks of a chain leaves a perfectly consistent shorter
chain; only someone who saw the longer one can tell. The verifier is that
someone: after a chain verifies clean it records the head (height, block hash,
last Kafka offset) here, in its own state directory (``Settings.verifier_state``),
which must live **outside** the store being verified (a separate volume in
docker-compose). The next run passes it to ``fsck.verify_chain`` as
``known_head``: a lower head is ``CHAIN_TRUNCATED``, a different block at that
height is ``CHAIN_REWRITTEN``.

One JSON file per ClickHouse database (``heads-<database>.json``), so verifying a
test database never confuses the state of another. Writes go to a temporary file
that is fsynced and then ``os.replace``d over the old one, under an ``flock`` so
two verifier processes cannot interleave a read-modify-write. A head only ever
moves forward: ``save`` refuses to record a lower height than the one on file
(that would erase the evidence of a truncation).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from careledger_core.errors import InfrastructureError
from verifiers.integrity.fsck import VerifiedHead

STATE_VERSION = 1
_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")


class StateError(InfrastructureError):
    """The state directory cannot be read or written, or a state file is corrupt."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = "VERIFIER_STATE"


class VerifierState:
    """Last verified heads of the chains of one database."""

    def __init__(self, directory: Path, database: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_]+", database):
            raise StateError(f"unsuitable database name for a state file: {database!r}")
        self.directory = Path(directory)
        self.database = database
        self.path = self.directory / f"heads-{database}.json"
        self._lock_path = self.directory / f".heads-{database}.lock"

    # ------------------------------------------------------------------ reading
    def load(self) -> dict[str, VerifiedHead]:
        """All recorded heads (empty if nothing was ever recorded)."""
        try:
            data_bytes = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StateError(f"cannot read verifier state {self.path}: {exc}") from exc
        try:
            data = json.loads(data_bytes.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            version = data.get("version")
            if type(version) is not int or version != STATE_VERSION:
                raise ValueError(f"unsupported version {str(version)[:40]!r}")
            chains = data["chains"]
            if not isinstance(chains, dict):
                raise ValueError("chains is not an object")
            return {chain: _head_from_json(entry) for chain, entry in chains.items()}
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            # Refuse to run on a corrupt state rather than silently forgetting the
            # heads: forgetting them would hide a truncation. (A file that is not
            # UTF-8 is a ValueError too; nesting too deep for the parser a RecursionError.)
            reason = str(exc)[:200] if not isinstance(exc, RecursionError) else "nested too deep"
            raise StateError(f"verifier state {self.path} is corrupt: {reason}") from exc

    def get(self, chain_id: str) -> VerifiedHead | None:
        return self.load().get(chain_id)

    # ------------------------------------------------------------------ writing
    def save(self, heads: Mapping[str, VerifiedHead]) -> dict[str, VerifiedHead]:
        """Record ``heads`` (merged into what is on file); returns the new state.

        A head lower than the recorded one is not stored (heads move forward
        only); the caller only passes chains that verified clean, whose head can
        therefore not be lower anyway.
        """
        if not heads:
            return self.load()
        with self._locked():
            current = self.load()
            for chain, head in heads.items():
                old = current.get(chain)
                if old is not None and head.height < old.height:
                    continue
                if head.last_offset is None:
                    continue  # a checkpoint's head, not one verified in the store
                current[chain] = head
            self._write(current)
            return current

    def forget(self, chain_ids: list[str] | None = None) -> None:
        """Drop recorded heads (all, or of the given chains). For operators and tests."""
        with self._locked():
            current = self.load()
            if chain_ids is None:
                current = {}
            else:
                for chain in chain_ids:
                    current.pop(chain, None)
            self._write(current)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with locked_state_dir(self.directory, self._lock_path):
            yield

    def _write(self, heads: Mapping[str, VerifiedHead]) -> None:
        document = {
            "version": STATE_VERSION,
            "database": self.database,
            "updated_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "chains": {chain: _head_to_json(heads[chain]) for chain in sorted(heads)},
        }
        data = json.dumps(document, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        write_state_file(self.path, data)


@contextlib.contextmanager
def locked_state_dir(directory: Path, lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created 0600 in ``directory``)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StateError(f"cannot use verifier state directory {directory}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_state_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably: a temporary file in the same directory,
    fsynced, ``os.replace``d over the old one, then the directory fsynced."""
    directory = path.parent
    tmp_name: str | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StateError(f"cannot write verifier state {path}: {exc}") from exc
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def _head_to_json(head: VerifiedHead) -> dict[str, Any]:
    return {"height": head.height, "block_hash": head.block_hash, "last_offset": head.last_offset}


def _head_from_json(entry: Any) -> VerifiedHead:
    if not isinstance(entry, dict):
        raise ValueError("a chain's head is not an object")
    height, block_hash, last_offset = entry["height"], entry["block_hash"], entry["last_offset"]
    if type(height) is not int or not 0 <= height < 2**64:
        raise ValueError(f"bad height {str(height)[:40]!r}")
    if type(last_offset) is not int or not 0 <= last_offset < 2**64:
        raise ValueError(f"bad last_offset {str(last_offset)[:40]!r}")
    if not isinstance(block_hash, str) or not _HEX64.match(block_hash):
        raise ValueError(f"bad block hash {str(block_hash)[:80]!r}")
    return VerifiedHead(height, block_hash, last_offset)


def state_for(settings: Any, database: str | None = None) -> VerifierState:
    return VerifierState(settings.verifier_state, database or settings.clickhouse_database)
