"""The verifier's memory of the newest checkpoint per chain (its state directory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from verifiers.integrity.checkpoint_memory import CheckpointMemory, RememberedCheckpoint
from verifiers.integrity.state import StateError

CHAIN = "careledger.local/careledger.access-events/0"


def entry(size: int, note: str = "note\n") -> RememberedCheckpoint:
    return RememberedCheckpoint(CHAIN, size, note, 0, size - 1, "2026-01-01T00:00:00Z")


def test_remembers_only_forward_and_survives_a_reload(tmp_path: Path) -> None:
    memory = CheckpointMemory(tmp_path, "db")
    assert memory.load() == {}
    memory.save({CHAIN: entry(5)})
    memory.save({CHAIN: entry(3, "older\n")})  # a smaller checkpoint never replaces it
    again = CheckpointMemory(tmp_path, "db").load()
    assert again == {CHAIN: entry(5)}
    memory.save({CHAIN: entry(9, "newer\n")})
    assert memory.load()[CHAIN].size == 9
    assert oct((tmp_path / ".checkpoints-db.lock").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"version": 2, "chains": {}}',
        '{"version": 1, "chains": {"c": {"size": 0, "note": "n", "partition": 0, "offset": 0}}}',
        '{"version": 1, "chains": {"c": {"size": 3, "note": "", "partition": 0, "offset": 0}}}',
        '{"version": 1, "chains": {"c": {"size": 3, "note": "n", "partition": -1, "offset": 0}}}',
        '{"version": 1, "chains": {"c": {"size": 3}}}',
        '{"version": 1, "chains": []}',
    ],
)
def test_a_corrupt_memory_is_refused_not_forgotten(tmp_path: Path, text: str) -> None:
    (tmp_path / "checkpoints-db.json").write_text(text)
    with pytest.raises(StateError) as info:
        CheckpointMemory(tmp_path, "db").load()
    assert "checkpoints-db.json" in info.value.message


def test_an_unsuitable_database_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateError):
        CheckpointMemory(tmp_path, "../etc")


def test_the_file_holds_the_signed_note_as_evidence(tmp_path: Path) -> None:
    CheckpointMemory(tmp_path, "db").save({CHAIN: entry(4, "the signed note\n")})
    doc = json.loads((tmp_path / "checkpoints-db.json").read_text())
    assert doc["version"] == 1 and doc["chains"][CHAIN]["note"] == "the signed note\n"
    assert (doc["chains"][CHAIN]["partition"], doc["chains"][CHAIN]["offset"]) == (0, 3)
