"""The verifier's own state file, corrupted by anyone who can write to its directory (or
a disk that failed): ``StateError`` (``verify`` exit 2, naming the file), never a
traceback and never a silently forgotten head (that would hide a truncation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verifiers.integrity.fsck import VerifiedHead
from verifiers.integrity.state import StateError, VerifierState

HASH = "ab" * 32


def state_with(tmp_path: Path, data: bytes) -> VerifierState:
    state = VerifierState(tmp_path, "careledger")
    state.path.write_bytes(data)
    return state


def test_a_good_state_file_loads(tmp_path: Path) -> None:
    state = VerifierState(tmp_path, "careledger")
    state.save({"c/t/0": VerifiedHead(3, HASH, 40)})
    assert state.load() == {"c/t/0": VerifiedHead(3, HASH, 40)}


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe\x00 not utf-8",
        b"[" * 100_000,  # nesting deeper than the JSON parser's recursion limit
        b'{"version": 1, "chains": {"c": {"height": ' + b"9" * 5000 + b"}}}",
        b'{"version": 1, "chains": {"c": {"height": 1e400, "block_hash": "x"}}}',
        b'{"version": 1, "chains": {"c": {"height": 1, "block_hash": "'
        + HASH.encode()
        + b'", "last_offset": 18446744073709551616}}}',
        b"",
        b"null",
        b'{"version": 1, "chains": []}',
        b'{"version": 1, "chains": {"c": null}}',
        b'{"version": true, "chains": {}}',
    ],
)
def test_a_corrupt_state_file_is_a_state_error(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(StateError) as info:
        state_with(tmp_path, data).load()
    assert "heads-careledger.json" in info.value.message


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=12), inner, max_size=3)
            ),
            max_leaves=12,
        ).map(lambda doc: json.dumps({"version": 1, "chains": doc}).encode()),
    )
)
def test_any_state_file_loads_or_is_a_state_error(tmp_path: Path, data: bytes) -> None:
    try:
        heads = state_with(tmp_path, data).load()
    except StateError:
        return
    for chain, head in heads.items():
        assert isinstance(chain, str) and isinstance(head, VerifiedHead)
        assert type(head.height) is int and 0 <= head.height < 2**64
        assert type(head.last_offset) is int and 0 <= head.last_offset < 2**64
