"""The sealed event's rebuild (``careledger_core.sealed_event._opened``) builds the access
event from the typed public and sensitive parts. It must accept and refuse exactly what
the reference does: join the two parts as dictionaries, encode them canonically and
decode the result as any access event (the code it replaced, kept here as the oracle).

Checked on every shape the simulator makes, and on hostile sensitive parts a source
could seal and commit to (the commitment is recomputed over them, so only validation
stands between them and the ledger): nulls, wrong types, overlong and empty values,
unknown or missing paths, identifiers that break their patterns or NFC, an object id
with no object, and bytes that are not canonical."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careledger_core.errors import CareledgerError
from careledger_core.event import (
    EVENT_SCHEMA,
    AccessEvent,
    decode_and_canonicalize,
    event_to_dict,
)
from careledger_core.sealed_event import _opened, decode_sealed_document, sealed_document
from careledger_core.sealing import (
    SENSITIVE_PATHS,
    SealError,
    canonical,
    commitment_of_bytes,
    join_into,
    parse_part,
    split,
)
from producers.simulator import HospitalModel, simulate

EVENTS = list(simulate(HospitalModel(staff=60, patients=120, seed=5), 3000, seed=5))
PATHS = [".".join(p) for p in SENSITIVE_PATHS]
SALT = bytes(range(32))


def _reference(document: bytes, salt: bytes, body: bytes) -> AccessEvent:
    """The rebuild as it was: parse the part, check the commitment, join, encode, decode."""
    sensitive = parse_part(body, "the part")
    public = msgspec.json.decode(document)
    if commitment_of_bytes(salt, body) != bytes.fromhex(public.pop("sealed_commitment")):
        raise SealError(code="COMMITMENT_MISMATCH", message="not the committed part")
    public["schema"] = EVENT_SCHEMA
    event, _ = decode_and_canonicalize(canonical(join_into(public, sensitive)))
    return event


def _document(public: dict[str, Any], body: bytes) -> bytes:
    return sealed_document(public, commitment_of_bytes(SALT, body))


def _outcome(fn: Any, *args: Any) -> AccessEvent | str:
    try:
        return fn(*args)  # type: ignore[no-any-return]
    except CareledgerError as exc:  # refused: with the same error class and code
        return f"refused: {type(exc).__name__} {getattr(exc, 'code', '')}"


def _both(public: dict[str, Any], body: bytes) -> tuple[AccessEvent | str, AccessEvent | str]:
    document = _document(public, body)
    typed, _ = decode_sealed_document(document)
    new = _outcome(lambda: _opened(typed, SALT, body, "the part").event)
    return new, _outcome(_reference, document, SALT, body)


def _agree(public: dict[str, Any], body: bytes) -> AccessEvent | str:
    new, old = _both(public, body)
    assert new == old
    return new


def test_every_simulated_event_rebuilds_to_itself() -> None:
    shapes: set[frozenset[str]] = set()
    for event in EVENTS:
        public, sensitive = split(event_to_dict(event))
        shapes.add(frozenset(sensitive))
        assert _agree(public, canonical(sensitive)) == event
    # the simulation exercises most optional paths, so the equality means something
    seen = frozenset().union(*shapes)
    assert {"patient", "actor.id", "actor.name", "client", "object.id", "query"} <= seen


_HOSTILE_VALUES: list[Any] = [
    None,
    0,
    1.5,
    True,
    "",
    "x" * 70_000,
    [],
    {},
    "has space",
    "e\u0301",  # not NFC
    {"id": "p1"},
    {"id": "p1", "system": None},
    {"id": "p1", "name": "Alice"},
    {"id": "", "system": "urn:x"},
    {"address": "10.0.0.1", "address_type": "bogus"},
    {"address": "10.0.0.1", "address_type": "ip", "workstation": None},
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("value", _HOSTILE_VALUES, ids=lambda v: repr(v)[:20])
def test_a_hostile_value_at_any_sensitive_path_is_judged_as_the_reference_does(
    path: str, value: Any
) -> None:
    for event in (EVENTS[0], EVENTS[7]):
        public, sensitive = split(event_to_dict(event))
        sensitive[path] = value
        _agree(public, canonical(sensitive))


@pytest.mark.parametrize(
    "change",
    [
        "drop patient",
        "drop actor.id",
        "unknown path",
        "object id without object",
        "raw uri without raw ref",
        "not canonical",
        "not json",
        "not an object",
    ],
)
def test_a_malformed_part_is_refused_as_the_reference_refuses_it(change: str) -> None:
    for event in EVENTS[:40]:
        public, sensitive = split(event_to_dict(event))
        body = canonical(sensitive)
        if change.startswith("drop "):
            sensitive.pop(change[5:], None)
            body = canonical(sensitive)
        elif change == "unknown path":
            body = canonical({**sensitive, "actor.role": "x"})
        elif change == "object id without object":
            public.pop("object", None)
            body = canonical({**sensitive, "object.id": "o1"})
        elif change == "raw uri without raw ref":
            public.pop("raw_ref", None)
            body = canonical({**sensitive, "raw_ref.uri": "urn:x"})
        elif change == "not canonical":
            body = msgspec.json.encode(dict(reversed(list(sensitive.items()))))
            if body == canonical(sensitive):
                body = body[:-1] + b" }"
        elif change == "not json":
            body = body[:-1]
        else:
            body = b"[]"
        assert isinstance(_agree(public, body), str)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["id", "system", "name", "address", "address_type", "role", "x"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    index=st.integers(0, len(EVENTS) - 1),
    path=st.sampled_from(PATHS),
    value=json_values,
)
def test_random_values_are_judged_as_the_reference_judges_them(
    index: int, path: str, value: Any
) -> None:
    public, sensitive = split(event_to_dict(EVENTS[index]))
    sensitive[path] = value
    _agree(public, canonical(sensitive))


def test_a_valid_part_of_another_event_is_named_as_not_the_committed_one() -> None:
    public, sensitive = split(event_to_dict(EVENTS[3]))
    document = _document(public, canonical(sensitive))
    typed, _ = decode_sealed_document(document)
    _, other = split(event_to_dict(EVENTS[4]))
    with pytest.raises(SealError) as caught:
        _opened(typed, SALT, canonical(other), "the part")
    assert caught.value.code == "COMMITMENT_MISMATCH"
