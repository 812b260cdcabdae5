"""The raw record envelope (careledger.raw-record/1) and its record kind."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid

import pytest

from careledger.config import Settings
from careledger.raw_record import (
    MAX_ENVELOPE_BYTES,
    MAX_ISSUES,
    RawRecordValidationError,
    build_envelope,
    decode_and_canonicalize_raw,
    envelope_bytes_for,
)
from careledger.storage.kinds import RAW, kind_for_topic
from careledger_core.jcs import canonicalize

DATA = b"<85>1 - host app - IHE+RFC-3881 - \xef\xbb\xbf<AuditMessage/>"


def envelope(**changes: object) -> tuple[object, bytes]:
    args: dict[str, object] = {
        "record_id": str(uuid.uuid4()),
        "data": DATA,
        "sha256": hashlib.sha256(DATA).hexdigest(),
        "format": "syslog+dicom-audit+xml",
        "received_at": "2026-11-29T10:00:00.123456Z",
        "transport": {"protocol": "syslog-tcp", "source_id": "pacs", "pri": "85"},
        "issues": [{"code": "SYSLOG_MSGID", "message": "m", "path": "MSGID"}],
    }
    args.update(changes)
    return build_envelope(**args)  # type: ignore[arg-type]


def test_envelope_is_canonical_json_and_round_trips() -> None:
    env, canonical = envelope()
    doc = json.loads(canonical)
    assert canonical == canonicalize(doc)  # JCS
    assert doc["schema"] == "careledger.raw-record/1"
    assert base64.b64decode(doc["data"]) == DATA
    again, canonical2 = decode_and_canonicalize_raw(canonical)
    assert canonical2 == canonical and again == env
    assert RAW.record_id(again) == doc["record_id"]
    assert RAW.time_of(again) == "2026-11-29T10:00:00.123456Z"
    assert RAW.read_values(again)[4:7] == (b"pacs", b"syslog-tcp", 1)


def test_data_must_hash_to_sha256() -> None:
    _env, canonical = envelope()
    doc = json.loads(canonical)
    doc["data"] = base64.b64encode(DATA + b"x").decode()
    with pytest.raises(RawRecordValidationError) as info:
        decode_and_canonicalize_raw(canonicalize(doc))
    assert info.value.code == "RAW_RECORD_INVALID" and info.value.field == "sha256"
    with pytest.raises(RawRecordValidationError):
        envelope(sha256="0" * 64)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(schema="careledger.raw-record/2"),
        lambda d: d.update(record_id="nope"),
        lambda d: d.update(received_at="2026-11-29T10:00:00Z"),
        lambda d: d.update(extra=1),
        lambda d: d["transport"].update({"Bad Key": "x"}),
        lambda d: d.update(data="not base64!"),
        lambda d: d.update(format=""),
    ],
)
def test_malformed_envelopes_are_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    _env, canonical = envelope()
    doc = json.loads(canonical)
    mutate(doc)
    with pytest.raises(RawRecordValidationError):
        decode_and_canonicalize_raw(canonicalize(doc))
    with pytest.raises(RawRecordValidationError):
        decode_and_canonicalize_raw(b"not json")


def test_many_issues_are_summarised() -> None:
    issues = [{"code": "X", "message": str(i), "path": ""} for i in range(MAX_ISSUES + 50)]
    env, _ = envelope(issues=issues)
    assert len(env.issues) == MAX_ISSUES  # type: ignore[attr-defined]
    assert env.issues[-1].code == "ISSUES_TRUNCATED"  # type: ignore[attr-defined]


def test_size_bounds() -> None:
    big = b"x" * (1024 * 1024)
    _env, canonical = envelope(data=big, sha256=hashlib.sha256(big).hexdigest())
    assert len(canonical) <= envelope_bytes_for(len(big)) <= MAX_ENVELOPE_BYTES
    assert RAW.max_bytes == MAX_ENVELOPE_BYTES


def test_raw_topic_is_a_raw_kind() -> None:
    s = Settings()
    assert kind_for_topic(s, s.topic_raw) is RAW
    assert kind_for_topic(s, s.topic_events) is not RAW
