"""The event's field patterns checked in one combined match (careledger_core.event).

``AccessEvent.__post_init__`` joins every pattern-typed field with a control character
and matches one regex instead of calling one regex per field. These tests hold that
combined check to the field patterns themselves: it accepts exactly the events whose
every present field matches its own pattern, whatever the values (property tests with
hostile alphabets: the separator itself, controls, invisible and full-width characters,
white space at the ends, non-ASCII), and a decoded event with one bad field is refused
naming that field, as when the patterns were msgspec constraints.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careledger_core import event as ev
from careledger_core.errors import EventValidationError
from careledger_core.event import ID_PATTERN, TIMESTAMP_PATTERN

_SLOTS: list[tuple[str, bool]] = [  # (pattern, optional) in the order __post_init__ joins
    (ev._UUID_PATTERN, False),
    (TIMESTAMP_PATTERN, False),
    (TIMESTAMP_PATTERN, False),
    (ID_PATTERN, False),
    (ID_PATTERN, False),
    *[(ID_PATTERN, True)] * 5,
    (ev._SHA256_PATTERN, True),
    (ev._BASE64_PATTERN, True),
]

#: characters each pattern must weigh: the separator, controls, space, invisible and
#: full-width forms, NFC/NFD material, hex, base64 and timestamp punctuation, astral
_HOSTILE = st.sampled_from(
    [
        *"0123456789abcdefABCDEF-:.TZ+/= _xyz",
        *"\x1f\x00\t\n\x7f\x85\xa0\xad\u200b\u2028\u3000\uff21\ufeff\ufffd",
        *"\u00e9\u0301\U000e0001\U0001f600",  # precomposed e-acute, a combining accent
    ]
)
_VALUE = st.text(_HOSTILE, max_size=12)
_GOOD = {
    ev._UUID_PATTERN: st.from_regex(ev._UUID_PATTERN, fullmatch=True),
    TIMESTAMP_PATTERN: st.from_regex(TIMESTAMP_PATTERN, fullmatch=True),
    ID_PATTERN: st.from_regex(r"\A[!-~](?:[ -~]{0,6}[!-~])?\Z", fullmatch=True)
    | st.from_regex(ID_PATTERN, fullmatch=True).filter(lambda s: len(s) <= 16),
    ev._SHA256_PATTERN: st.from_regex(ev._SHA256_PATTERN, fullmatch=True),
    ev._BASE64_PATTERN: st.from_regex(ev._BASE64_PATTERN, fullmatch=True).filter(
        lambda s: len(s) <= 24
    ),
}


@st.composite
def _slot_values(draw: Any) -> list[str | None]:
    values: list[str | None] = []
    for pattern, optional in _SLOTS:
        kind = draw(
            st.sampled_from(["good", "hostile", "absent"] if optional else ["good", "hostile"])
        )
        if kind == "absent":
            values.append(None)
        elif kind == "good":
            values.append(draw(_GOOD[pattern]))
        else:
            values.append(draw(_VALUE))
    return values


def _each_matches(values: list[str | None]) -> bool:
    """Each present value passes its field's type: its pattern, and not empty (every
    pattern-typed field has ``min_length=1`` or a pattern that refuses ``""``)."""
    return all(
        v != "" and re.search(pattern, v) is not None
        for (pattern, _), v in zip(_SLOTS, values, strict=True)
        if v is not None
    )


# 1,000 draws (~10 s): each draws every slot of an event; 3,000 took 29 s of CI
@settings(max_examples=1000, deadline=None)
@given(_slot_values())
def test_the_combined_match_is_the_conjunction_of_the_field_patterns(
    values: list[str | None],
) -> None:
    # as AccessEvent._joined: absent is an empty slot, present-but-empty a lone separator
    joined = ev._SEP.join("" if v is None else v or ev._SEP for v in values)
    combined = ev._ALL_FIELDS_RE.match(joined) is not None
    assert combined == _each_matches(values)


@settings(max_examples=500, deadline=None)
@given(st.text(_HOSTILE, min_size=1, max_size=12))
def test_the_ascii_branch_accepts_only_what_id_pattern_accepts(value: str) -> None:
    fast = re.fullmatch(r"[!-~](?:[ -~]*[!-~])?", value) is not None
    if fast:
        assert re.search(ID_PATTERN, value) is not None


_FIELDS: list[tuple[str, Any]] = [
    ("event_id", "11E20B8F-6B0D-449B-AF03-675A1600A35A"),
    ("occurred_at", "2026-01-01T00:00:42.336Z"),
    ("recorded_at", "2026-01-01 00:00:42.336092Z"),
    ("actor.id", "E91\u200b8958"),
    ("patient.id", " 12345"),
    ("object.id", "Patient/\x1f1"),
    ("session_ref", "s\u3000ession"),
    ("correlation_id", "c\x00"),
    ("raw_ref.sha256", "ab" * 31),
    ("query", "bm90IGJhc2U2NA"),
]


def _event() -> dict[str, Any]:
    return {
        "schema": "careledger.access-event/1",
        "event_id": "00000000-0000-4000-8000-000000000001",
        "occurred_at": "2024-01-01T00:00:00.000000Z",
        "recorded_at": "2024-01-01T00:00:00.000000Z",
        "event_type": {"system": "s", "code": "c"},
        "action": "R",
        "outcome": 0,
        "actor": {"id": "u", "roles": [], "is_requestor": True},
        "source": {"system": "ehr", "type": 4},
        "patient": {"id": "p"},
    }


def _put(doc: dict[str, Any], dotted: str, value: str) -> None:
    parts = dotted.split(".")
    if parts[0] == "object" and "object" not in doc:
        doc["object"] = {"type": "Patient"}
    if parts[0] == "raw_ref" and "raw_ref" not in doc:
        doc["raw_ref"] = {"format": "fhir", "sha256": "0" * 64}
    target = doc
    for p in parts[:-1]:
        target = target[p]
    target[parts[-1]] = value


@pytest.mark.parametrize(("field", "value"), _FIELDS, ids=[f for f, _ in _FIELDS])
def test_a_decoded_event_with_one_bad_field_is_refused_naming_it(field: str, value: str) -> None:
    doc = _event()
    _put(doc, field, value)
    data = msgspec.json.encode(doc)
    with pytest.raises(EventValidationError) as info:
        ev.decode_and_canonicalize(data)
    assert info.value.field == field
    with pytest.raises(EventValidationError) as slow:
        ev.event_from_dict(doc)
    assert slow.value.field == field


def test_two_bad_fields_name_the_first_in_canonical_order() -> None:
    doc = _event()
    _put(doc, "session_ref", "bad\x00")
    _put(doc, "event_id", "not-a-uuid")
    with pytest.raises(EventValidationError) as info:
        ev.decode_and_canonicalize(msgspec.json.encode(doc))
    assert info.value.field == "event_id"  # "event_id" < "session_ref"


def test_every_good_slot_combination_of_the_minimal_event_decodes() -> None:
    doc = _event()
    for field, value in [
        ("object.id", "Patient/1"),
        ("session_ref", "é-session"),
        ("correlation_id", "c-1"),
        ("raw_ref.sha256", "ab" * 32),
        ("query", "bm90IGJhc2U2NA=="),
    ]:
        _put(doc, field, value)
    event, _canonical = ev.decode_and_canonicalize(msgspec.json.encode(doc))
    assert event.session_ref == "é-session"
