"""Property tests of the ingest adapters: whatever bytes arrive, parsing either gives valid
access events or raises IngestError (never another exception), and it is deterministic."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from careledger_core.event import validate_event
from producers.adapters import (
    ERROR_CODES,
    ISSUE_CODES,
    IngestError,
    ParseResult,
    parse_dicom_audit_xml,
    parse_fhir,
    parse_fhir_audit_event,
    parse_fhir_bundle,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ingest"
RECEIVED = "2026-01-05T08:00:00.000000Z"
PARSERS: dict[str, Callable[..., ParseResult]] = {
    "fhir": parse_fhir,
    "audit-event": parse_fhir_audit_event,
    "bundle": parse_fhir_bundle,
    "xml": parse_dicom_audit_xml,
}
JSON_DOCS = [json.loads(p.read_bytes()) for p in sorted(FIXTURES.glob("*/*.json"))]
XML_DOCS = [p.read_bytes() for p in sorted(FIXTURES.glob("atna/*.xml"))]


def _check(parser: Callable[..., ParseResult], data: bytes) -> ParseResult | None:
    """Parse; an IngestError must carry a known code. Events must be valid."""
    try:
        result = parser(data, received_at=RECEIVED)
    except IngestError as exc:
        assert exc.code in ERROR_CODES
        return None
    for event in result.events:
        assert validate_event(event) == event
    assert {i.code for i in result.issues} <= ISSUE_CODES.keys()
    for entry in result.entries:
        assert entry.error is None or entry.error.code in ERROR_CODES
    return result


_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", sorted(PARSERS))
@_SETTINGS
@given(data=st.binary(max_size=2048))
def test_random_bytes_raise_nothing_but_ingest_error(name: str, data: bytes) -> None:
    _check(PARSERS[name], data)


@pytest.mark.parametrize("name", sorted(PARSERS))
@_SETTINGS
@given(
    prefix=st.sampled_from([b"", b"<", b"{", b"<AuditMessage>", b'{"resourceType":"']),
    text=st.text(max_size=512),
)
def test_random_text_near_the_formats_raises_nothing_but_ingest_error(
    name: str, prefix: bytes, text: str
) -> None:
    _check(PARSERS[name], prefix + text.encode("utf-8", "surrogatepass"))


# JSON values of every shape, to put where the adapters expect something else.
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["0", "4", "success", "R", "1", "24", "Patient/x", "2020-02-30T25:00:00Z"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["coding", "code", "system", "reference", "identifier", "value", "type"]
            )
            | st.text(max_size=8),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*path, i))
    return out


@_SETTINGS
@given(
    doc_index=st.integers(min_value=0, max_value=len(JSON_DOCS) - 1),
    edits=st.lists(st.tuples(st.integers(min_value=0), _JSON), min_size=1, max_size=4),
    as_bundle=st.booleans(),
)
def test_mutated_audit_events_give_valid_events_or_ingest_error(
    doc_index: int, edits: list[tuple[int, Any]], as_bundle: bool
) -> None:
    doc = copy.deepcopy(JSON_DOCS[doc_index])
    for where, value in edits:
        paths = [p for p in _paths(doc) if p]
        target = paths[where % len(paths)]
        parent = doc
        for key in target[:-1]:
            parent = parent[key]
        parent[target[-1]] = value
    if as_bundle:
        doc = {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": doc}]}
    data = json.dumps(doc).encode()
    first = _check(parse_fhir, data)
    second = _check(parse_fhir, data)
    assert (first is None) == (second is None)
    if first is not None and second is not None:
        assert first.events == second.events and first.issues == second.issues


@_SETTINGS
@given(
    doc_index=st.integers(min_value=0, max_value=len(XML_DOCS) - 1),
    cut=st.integers(min_value=0),
    insert=st.sampled_from(
        [b"", b'"', b"<", b">", b"&", b"&amp;", b"\x00", b"\xc3", b" x=''", b"<!--", b"]]>"]
    ),
)
def test_corrupted_atna_messages_give_valid_events_or_ingest_error(
    doc_index: int, cut: int, insert: bytes
) -> None:
    data = XML_DOCS[doc_index]
    at = cut % (len(data) + 1)
    _check(parse_dicom_audit_xml, data[:at] + insert + data[at:])
