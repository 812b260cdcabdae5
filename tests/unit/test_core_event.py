"""The access event: strict validation with exact field paths, canonical bytes that
equal the generic RFC 8785 encoder, and lossless round trips."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import re
import unicodedata
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careledger_core.errors import CareledgerError, EventValidationError, ValidationError
from careledger_core.event import (
    EVENT_SCHEMA,
    ID_PATTERN,
    AccessEvent,
    Actor,
    Coding,
    Patient,
    Source,
    canonical_event_bytes,
    decode_and_canonicalize,
    decode_event,
    event_from_dict,
    event_leaf_hash,
    event_to_dict,
    validate_event,
)
from careledger_core.hashing import leaf_hash
from careledger_core.jcs import canonicalize

BASE: dict[str, Any] = {
    "schema": EVENT_SCHEMA,
    "event_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
    "occurred_at": "2024-06-15T08:00:00.500000Z",
    "recorded_at": "2024-06-15T08:00:01.000000Z",
    "event_type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110112"},
    "event_subtype": [
        {"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type"},
        {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110127"},
    ],
    "action": "E",
    "outcome": 4,
    "outcome_desc": "partial result",
    "purpose_of_use": ["ETREAT", "BTG"],
    "actor": {"id": "nurse-7", "name": "N. Seven", "roles": ["nurse"], "is_requestor": False},
    "client": {"address": "10.0.0.17", "address_type": "ip", "workstation": "ED-WS-03"},
    "session_ref": "jti-5f1c0d",
    "source": {"system": "fhir-gw", "site": "north", "type": 9},
    "patient": {"id": "24^^^MPI&1.2.3&ISO^PI", "system": "urn:oid:1.2.3"},
    "object": {"type": "Patient", "id": "pat-24", "role": "1"},
    "sensitivity": {"confidentiality": "V", "labels": ["HIV"]},
    "query": base64.b64encode(b"GET /Observation?patient=24").decode("ascii"),
    "correlation_id": "req-0001",
    "raw_ref": {"format": "fhir-r4-json", "sha256": "ab" * 32, "uri": "s3://raw/1.json"},
}
BASE_BYTES = json.dumps(BASE, separators=(",", ":")).encode()

DELETE = object()


def _set(doc: dict[str, Any], path: str, value: object) -> None:
    parts = path.replace("[", ".").replace("]", "").split(".")
    target: Any = doc
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    last = parts[-1]
    if value is DELETE:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


def with_(path: str, value: object) -> bytes:
    doc = copy.deepcopy(BASE)
    _set(doc, path, value)
    return json.dumps(doc, separators=(",", ":")).encode()


def raw(old: bytes, new: bytes) -> bytes:
    assert old in BASE_BYTES, old
    return BASE_BYTES.replace(old, new, 1)


TS = "2024-06-15T08:00:00.500000Z"

# (expected field, reason fragment, input bytes)
INVALID: list[tuple[str, str, bytes]] = [
    ("$", "invalid JSON", b""),
    ("$", "invalid JSON", b"{"),
    ("$", "invalid JSON", BASE_BYTES + b" x"),
    ("$", "invalid JSON", b"\xef\xbb\xbf" + BASE_BYTES),
    ("$", "UTF-8", raw(b"N. Seven", b"N. S\xe9ven")),
    ("$", "UTF-8", raw(b"N. Seven", b"N. \xed\xa0\x80")),  # CESU-style encoded surrogate
    ("$", "object", b"[]"),
    ("$", "object", b'"event"'),
    ("$", "object", b"null"),
    ("schema", "careledger.access-event/1", with_("schema", "careledger.access-event/2")),
    ("schema", "missing", with_("schema", DELETE)),
    ("event_id", "UUID", with_("event_id", "not-a-uuid")),
    ("event_id", "UUID", with_("event_id", BASE["event_id"].upper())),
    ("event_id", "UUID", with_("event_id", "{" + BASE["event_id"] + "}")),
    ("event_id", "UUID", with_("event_id", BASE["event_id"].replace("-", ""))),
    ("event_id", "UUID", with_("event_id", BASE["event_id"] + "\n")),
    ("event_id", "wrong type", with_("event_id", 123)),
    ("event_id", "missing", with_("event_id", DELETE)),
    ("occurred_at", "6 fraction digits", with_("occurred_at", "2024-06-15T08:00:00Z")),
    ("occurred_at", "6 fraction digits", with_("occurred_at", "2024-06-15T08:00:00.500Z")),
    ("occurred_at", "6 fraction digits", with_("occurred_at", TS[:-1] + "+00:00")),
    ("occurred_at", "6 fraction digits", with_("occurred_at", TS[:-1] + "z")),
    ("occurred_at", "6 fraction digits", with_("occurred_at", TS.replace("T", " "))),
    ("occurred_at", "6 fraction digits", with_("occurred_at", TS + "\n")),
    ("occurred_at", "6 fraction digits", with_("occurred_at", "2024-13-01T00:00:00.000000Z")),
    ("occurred_at", "6 fraction digits", with_("occurred_at", "2024-06-15T24:00:00.000000Z")),
    ("occurred_at", "6 fraction digits", with_("occurred_at", "2024-06-15T08:00:60.000000Z")),
    ("occurred_at", "6 fraction digits", with_("occurred_at", "٢٠٢٤-06-15T08:00:00.000000Z")),
    ("occurred_at", "calendar", with_("occurred_at", "2024-02-30T00:00:00.000000Z")),
    ("occurred_at", "calendar", with_("occurred_at", "2023-02-29T00:00:00.000000Z")),
    ("occurred_at", "calendar", with_("occurred_at", "2100-02-29T00:00:00.000000Z")),
    ("occurred_at", "calendar", with_("occurred_at", "2024-04-31T00:00:00.000000Z")),
    ("recorded_at", "calendar", with_("recorded_at", "2024-06-31T00:00:00.000000Z")),
    ("recorded_at", "missing", with_("recorded_at", DELETE)),
    ("event_type", "missing", with_("event_type", DELETE)),
    ("event_type", "wrong type", with_("event_type", "rest")),
    ("event_type.code", "empty", with_("event_type.code", "")),
    ("event_type.system", "wrong type", with_("event_type.system", 1)),
    ("event_type.display", "null", with_("event_type.display", None)),
    ("event_type.version", "unknown field", with_("event_type.version", "1")),
    ("event_subtype[1].code", "missing", with_("event_subtype[1].code", DELETE)),
    ("event_subtype", "wrong type", with_("event_subtype", "read")),
    ("event_subtype", "at most 64", with_("event_subtype", [BASE["event_type"]] * 65)),
    ("action", "C, R, U, D, E", with_("action", "X")),
    ("action", "C, R, U, D, E", with_("action", "r")),
    ("action", "wrong type", with_("action", 1)),
    ("outcome", "0, 4, 8, 12", with_("outcome", 1)),
    ("outcome", "0, 4, 8, 12", with_("outcome", -4)),
    ("outcome", "0, 4, 8, 12", with_("outcome", 2**53)),
    ("outcome", "wrong type", raw(b'"outcome":4', b'"outcome":18446744073709551616')),
    ("outcome", "wrong type", with_("outcome", "0")),
    ("outcome", "wrong type", with_("outcome", True)),
    ("outcome", "wrong type", raw(b'"outcome":4', b'"outcome":4.0')),
    ("outcome", "wrong type", raw(b'"outcome":4', b'"outcome":4e0')),
    ("outcome", "null", with_("outcome", None)),
    ("outcome_desc", "empty", with_("outcome_desc", "")),
    ("outcome_desc", "at most 8192", with_("outcome_desc", "x" * 8193)),
    ("purpose_of_use[0]", "empty", with_("purpose_of_use[0]", "")),
    ("purpose_of_use", "null", with_("purpose_of_use", None)),
    ("purpose_of_use[1]", "wrong type", with_("purpose_of_use[1]", 5)),
    ("actor.id", "empty", with_("actor.id", "")),
    ("actor.id", "at most 256", with_("actor.id", "x" * 257)),
    ("actor.id", "wrong type", with_("actor.id", 5)),
    ("actor.id", "missing", with_("actor.id", DELETE)),
    ("actor.roles", "missing", with_("actor.roles", DELETE)),
    ("actor.is_requestor", "wrong type", with_("actor.is_requestor", "true")),
    ("actor.is_requestor", "wrong type", with_("actor.is_requestor", 1)),
    ("actor.name", "null", with_("actor.name", None)),
    ("actor.name", "at most 1024", with_("actor.name", "é" * 1025)),
    ("actor.badge", "unknown field", with_("actor.badge", "x")),
    ("actor.name", "surrogate", raw(b"N. Seven", b"N. \\ud800 Seven")),
    ("actor.name", "surrogate", raw(b"N. Seven", b"N. \\udc00")),
    ("actor.id", "duplicate", raw(b'"id":"nurse-7"', b'"id":"nurse-7","id":"admin"')),
    ("patient", "duplicate", raw(b'"patient":', b'"patient":{"id":"p-other"},"patient":')),
    ("client.address_type", "ip, hostname, uri", with_("client.address_type", "mac")),
    ("client.address", "missing", with_("client.address", DELETE)),
    ("client", "null", with_("client", None)),
    ("session_ref", "at most 256", with_("session_ref", "s" * 257)),
    ("source.type", "range", with_("source.type", 0)),
    ("source.type", "range", with_("source.type", 10)),
    ("source.type", "range", with_("source.type", -1)),
    ("source.type", "range", with_("source.type", 2**53)),
    ("source.type", "wrong type", with_("source.type", "4")),
    ("source.type", "wrong type", raw(b'"type":9', b'"type":9.0')),
    ("source.system", "missing", with_("source.system", DELETE)),
    ("patient.id", "missing", with_("patient.id", DELETE)),
    ("patient", "null", with_("patient", None)),
    ("patient", "wrong type", with_("patient", "p1")),
    ("object.type", "missing", with_("object.type", DELETE)),
    ("object.id", "null", with_("object.id", None)),
    ("sensitivity.confidentiality", "U, L, M, N, R, V", with_("sensitivity.confidentiality", "X")),
    ("sensitivity.labels", "missing", with_("sensitivity.labels", DELETE)),
    ("query", "base64", with_("query", "not base64!")),
    ("query", "base64", with_("query", "abc")),
    ("query", "base64", with_("query", "YWJj\n")),
    ("query", "empty", with_("query", "")),
    ("correlation_id", "empty", with_("correlation_id", "")),
    ("raw_ref.sha256", "SHA-256", with_("raw_ref.sha256", "AB" * 32)),
    ("raw_ref.sha256", "SHA-256", with_("raw_ref.sha256", "ab" * 31)),
    ("raw_ref.format", "missing", with_("raw_ref.format", DELETE)),
    ("unexpected", "unknown field", with_("unexpected", 1)),
]


@pytest.mark.parametrize(
    ("field", "reason", "data"),
    INVALID,
    ids=[f"{f}:{r}:{i}" for i, (f, r, _) in enumerate(INVALID)],
)
def test_malformed_event_rejected_with_exact_field(field: str, reason: str, data: bytes) -> None:
    with pytest.raises(EventValidationError) as info:
        decode_event(data)
    err = info.value
    assert err.field == field
    assert reason in err.reason
    assert err.code == "EVENT_INVALID"
    assert err.details["field"] == field
    assert isinstance(err, ValidationError) and isinstance(err, CareledgerError)
    # event_from_dict names the same field, wherever a dict can carry the defect
    if field != "$" and reason not in ("duplicate", "surrogate"):
        with pytest.raises(EventValidationError) as info2:
            event_from_dict(json.loads(data))
        assert info2.value.field == field


def test_base_event_is_valid() -> None:
    event, canonical = decode_and_canonicalize(BASE_BYTES)
    assert event_to_dict(event) == BASE
    assert canonical == canonicalize(BASE)


def test_unknown_top_level_null_is_still_unknown_not_null() -> None:
    with pytest.raises(EventValidationError) as info:
        decode_event(with_("extra", None))
    assert info.value.field == "extra"


# ---------------------------------------------------------------- hypothesis events

text = st.text(min_size=1, max_size=12)
#: identifiers: no invisible, control or full-width characters, NFC (ADR 0026)
ids = (
    st.text(st.characters(blacklist_categories=("Cc", "Cf", "Cs")), min_size=1, max_size=12)
    .map(lambda s: unicodedata.normalize("NFC", s))
    .filter(lambda s: re.fullmatch(ID_PATTERN, s) is not None)
)


def _ts(d: dt.datetime) -> str:
    return (
        f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
        f".{d.microsecond:06d}Z"
    )


timestamps = st.datetimes(min_value=dt.datetime(1, 1, 1)).map(_ts)
codings = st.fixed_dictionaries({"system": text, "code": text}, optional={"display": text})
code_lists = st.lists(text, max_size=3)

event_dicts = st.fixed_dictionaries(
    {
        "schema": st.just(EVENT_SCHEMA),
        "event_id": st.uuids().map(str),
        "occurred_at": timestamps,
        "recorded_at": timestamps,
        "event_type": codings,
        "action": st.sampled_from("CRUDE"),
        "outcome": st.sampled_from([0, 4, 8, 12]),
        "actor": st.fixed_dictionaries(
            {"id": ids, "roles": code_lists, "is_requestor": st.booleans()},
            optional={"name": text, "organization": text, "department": text},
        ),
        "source": st.fixed_dictionaries(
            {"system": text, "type": st.integers(1, 9)}, optional={"site": text}
        ),
        "patient": st.fixed_dictionaries({"id": ids}, optional={"system": text}),
    },
    optional={
        "event_subtype": st.lists(codings, min_size=1, max_size=3),
        "outcome_desc": text,
        "purpose_of_use": st.lists(text, min_size=1, max_size=3),
        "client": st.fixed_dictionaries(
            {"address": text, "address_type": st.sampled_from(["ip", "hostname", "uri"])},
            optional={"workstation": text},
        ),
        "session_ref": ids,
        "object": st.fixed_dictionaries({"type": text}, optional={"id": ids, "role": text}),
        "sensitivity": st.fixed_dictionaries(
            {"confidentiality": st.sampled_from("ULMNRV"), "labels": code_lists}
        ),
        "query": st.binary(min_size=1, max_size=40).map(lambda b: base64.b64encode(b).decode()),
        "correlation_id": ids,
        "raw_ref": st.fixed_dictionaries(
            {"format": text, "sha256": st.binary(min_size=32, max_size=32).map(bytes.hex)},
            optional={"uri": text},
        ),
    },
)


@settings(max_examples=300)
@given(event_dicts)
def test_fast_event_canonical_equals_generic_canonicalize(d: dict[str, Any]) -> None:
    event = event_from_dict(d)
    fast = canonical_event_bytes(event)
    assert fast == canonicalize(d) == canonicalize(event_to_dict(event))
    assert event_leaf_hash(event) == leaf_hash(fast)


@settings(max_examples=300)
@given(event_dicts)
def test_decode_of_canonical_bytes_round_trips(d: dict[str, Any]) -> None:
    event = event_from_dict(d)
    canonical = canonical_event_bytes(event)
    again, canonical_again = decode_and_canonicalize(canonical)
    assert again == event
    assert canonical_again == canonical
    assert decode_event(canonical) == event
    assert event_to_dict(event) == d
    assert validate_event(event) == event


@settings(max_examples=200)
@given(event_dicts, st.sampled_from([None, 2]), st.booleans())
def test_any_json_spelling_of_an_event_gives_the_same_canonical_bytes(
    d: dict[str, Any], indent: int | None, ascii_only: bool
) -> None:
    spelled = json.dumps(
        dict(reversed(list(d.items()))), indent=indent, ensure_ascii=ascii_only
    ).encode()
    event, canonical = decode_and_canonicalize(spelled)
    assert event == event_from_dict(d)
    assert canonical == canonicalize(d)


# ---------------------------------------------------------------- other behaviour


def _minimal(**changes: Any) -> AccessEvent:
    fields: dict[str, Any] = {
        "schema": EVENT_SCHEMA,
        "event_id": "00000000-0000-4000-8000-000000000001",
        "occurred_at": "2024-01-01T00:00:00.000000Z",
        "recorded_at": "2024-01-01T00:00:00.000000Z",
        "event_type": Coding(system="s", code="c"),
        "action": "R",
        "outcome": 0,
        "actor": Actor(id="u", roles=(), is_requestor=True),
        "source": Source(system="ehr", type=4),
        "patient": Patient(id="p"),
    }
    fields.update(changes)
    return AccessEvent(**fields)


def test_events_are_frozen_values() -> None:
    event = _minimal()
    with pytest.raises(AttributeError):
        event.action = "D"  # type: ignore[misc]
    assert event == _minimal() and hash(event) == hash(_minimal())


def test_absent_optional_fields_are_omitted_not_null() -> None:
    canonical = canonical_event_bytes(_minimal())
    assert b"null" not in canonical
    assert set(json.loads(canonical)) == {
        "schema",
        "event_id",
        "occurred_at",
        "recorded_at",
        "event_type",
        "action",
        "outcome",
        "actor",
        "source",
        "patient",
    }


def test_direct_construction_is_checked_by_validate_event() -> None:
    # constraints msgspec checks only when decoding (ranges, lengths) need validate_event
    bad = _minimal(source=Source(system="ehr", type=42))
    with pytest.raises(EventValidationError) as info:
        validate_event(bad)
    assert info.value.field == "source.type"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"event_id": "NOT-A-UUID"}, "event_id"),
        ({"recorded_at": "2024-01-01T00:00:00Z"}, "recorded_at"),
        ({"session_ref": "s\u200b1"}, "session_ref"),
        ({"query": "not base64!"}, "query"),
    ],
)
def test_direct_construction_checks_patterns(changes: dict[str, object], field: str) -> None:
    # the field patterns are checked in __post_init__ (one combined match), so a
    # constructed event is checked like a decoded one, and the field is named
    with pytest.raises(EventValidationError) as info:
        _minimal(**changes)
    assert info.value.field == field


@pytest.mark.parametrize(
    "value", ["2024-02-30T00:00:00.000000Z", "2024-13-31T00:00:00.000000Z", "2024-01-3x", 5]
)
def test_direct_construction_checks_calendar_dates(value: object) -> None:
    with pytest.raises(EventValidationError) as info:
        _minimal(occurred_at=value)
    assert info.value.field == "occurred_at"


def test_lone_surrogate_in_constructed_event_named_when_encoding() -> None:
    event = _minimal(actor=Actor(id="u\ud800", roles=(), is_requestor=True))
    with pytest.raises(EventValidationError) as info:
        canonical_event_bytes(event)
    assert info.value.field == "actor.id"
    with pytest.raises(EventValidationError) as info:
        event_from_dict(event_to_dict(event))
    assert info.value.field == "actor.id"


def test_event_from_dict_is_strict_about_types() -> None:
    d = event_to_dict(_minimal())
    d["outcome"] = "0"
    with pytest.raises(EventValidationError) as info:
        event_from_dict(d)
    assert info.value.field == "outcome"
    with pytest.raises(EventValidationError):
        event_from_dict([])  # type: ignore[arg-type]


def test_canonical_input_takes_the_fast_path_unchanged() -> None:
    canonical = canonical_event_bytes(_minimal())
    event, again = decode_and_canonicalize(canonical)
    assert again == canonical  # and is the very bytes that get hashed
    assert decode_event(memoryview(canonical).tobytes()) == event


def test_empty_optional_lists_normalise_to_absent() -> None:
    d = event_to_dict(_minimal())
    d["event_subtype"] = []
    d["purpose_of_use"] = []
    event, canonical = decode_and_canonicalize(json.dumps(d).encode())
    assert event == _minimal()
    assert canonical == canonical_event_bytes(_minimal())


def test_escaped_and_raw_unicode_decode_to_the_same_event() -> None:
    d = event_to_dict(_minimal(patient=Patient(id="患者😷")))
    a = decode_and_canonicalize(json.dumps(d, ensure_ascii=False).encode())
    b = decode_and_canonicalize(json.dumps(d, ensure_ascii=True).encode())
    assert a == b
    assert "患者😷".encode() in a[1]


def test_error_is_not_a_msgspec_or_value_error() -> None:
    with pytest.raises(EventValidationError) as info:
        decode_event(b"{}")
    assert not isinstance(info.value, ValueError | msgspec.MsgspecError)
    assert info.value.to_dict()["code"] == "EVENT_INVALID"
