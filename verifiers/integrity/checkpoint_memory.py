"""The verifier's memory of checkpoints: the newest signed checkpoint it read, per chain.

The checkpoints topic is outside ClickHouse, but not outside Kafka's reach: whoever can
administer Kafka can delete its records (DeleteRecords moves the log-start offset) or
recreate the topic. A verifier that read a checkpoint once keeps it here, with the
signed note and where it was read, in its own state directory next to the verified
heads (``verifiers.integrity.state``): ``checkpoints-<database>.json``. Later runs

* use each remembered checkpoint as a known head (re-verified under the trusted keys
  on every load: a note whose key is no longer trusted is ignored), so a truncation it
  showed stays reported when the notes are gone;
* report ``CHECKPOINTS_MISSING`` when the topic no longer holds it at that position.

Per chain only a larger checkpoint replaces the remembered one (memory moves forward
only). Same file discipline as the heads: written to a temporary file, fsynced,
``os.replace``d, under an ``flock``. A corrupt file is a ``StateError`` (the verifier
refuses to run rather than forget evidence).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verifiers.integrity.state import StateError, locked_state_dir, write_state_file

__all__ = ["CheckpointMemory", "RememberedCheckpoint", "memory_for"]

MEMORY_VERSION = 1
_MAX_NOTE = 1 << 16


@dataclass(frozen=True, slots=True)
class RememberedCheckpoint:
    chain: str
    size: int
    note: str
    partition: int
    offset: int
    read_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "note": self.note,
            "partition": self.partition,
            "offset": self.offset,
            "read_at": self.read_at,
        }


def _from_json(chain: str, entry: Any) -> RememberedCheckpoint:
    size, note = entry["size"], entry["note"]
    partition, offset = entry["partition"], entry["offset"]
    if type(size) is not int or size < 1:
        raise ValueError(f"bad size {size!r}")
    if not isinstance(note, str) or not note or len(note) > _MAX_NOTE:
        raise ValueError("bad note")
    for value in (partition, offset):
        if type(value) is not int or value < 0:
            raise ValueError(f"bad position {value!r}")
    read_at = entry.get("read_at", "")
    return RememberedCheckpoint(chain, size, note, partition, offset, str(read_at))


class CheckpointMemory:
    """Remembered checkpoints of the chains of one database; see the module doc."""

    def __init__(self, directory: Path, database: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_]+", database):
            raise StateError(f"unsuitable database name for a state file: {database!r}")
        self.directory = Path(directory)
        self.path = self.directory / f"checkpoints-{database}.json"
        self._lock_path = self.directory / f".checkpoints-{database}.lock"
        self.database = database

    def load(self) -> dict[str, RememberedCheckpoint]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StateError(f"cannot read verifier state {self.path}: {exc}") from exc
        try:
            data = json.loads(text)
            if data.get("version") != MEMORY_VERSION:
                raise ValueError(f"unsupported version {data.get('version')!r}")
            return {chain: _from_json(chain, e) for chain, e in data["chains"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"verifier state {self.path} is corrupt: {exc}") from exc

    def save(self, newest: Mapping[str, RememberedCheckpoint]) -> dict[str, RememberedCheckpoint]:
        """Remember ``newest`` where it is larger than what is on file; returns the state."""
        with self._locked():
            current = self.load()
            changed = False
            for chain, cp in newest.items():
                old = current.get(chain)
                if old is None or cp.size > old.size:
                    current[chain] = cp
                    changed = True
            if changed:
                self._write(current)
            return current

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with locked_state_dir(self.directory, self._lock_path):
            yield

    def _write(self, entries: Mapping[str, RememberedCheckpoint]) -> None:
        document = {
            "version": MEMORY_VERSION,
            "database": self.database,
            "updated_at": _now(),
            "chains": {chain: entries[chain].to_json() for chain in sorted(entries)},
        }
        data = json.dumps(document, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        write_state_file(self.path, data)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def memory_for(settings: Any) -> CheckpointMemory:
    return CheckpointMemory(settings.verifier_state, settings.clickhouse_database)


def remembered_now(
    chain: str, size: int, note: str, partition: int, offset: int
) -> RememberedCheckpoint:
    return RememberedCheckpoint(chain, size, note, partition, offset, _now())
