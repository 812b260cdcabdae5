"""Contract of the core package: no I/O, the error tree, stable finding codes, public API."""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import pytest

import careledger_core
from careledger_core import errors
from careledger_core.findings import DEFAULT_SEVERITY, Finding, FindingCode, Severity

CORE_DIR = Path(careledger_core.__file__).resolve().parent

#: the only modules the pure core may import (no os, io, socket, time, random, uuid, ...)
ALLOWED_IMPORTS = {
    "__future__",
    "base64",
    "binascii",
    "collections",
    "dataclasses",
    "enum",
    "hashlib",
    "hmac",
    "json",
    "math",
    "re",
    "types",
    "typing",
    "unicodedata",
    "msgspec",
    "nacl",
}
FORBIDDEN_CALLS = {"open", "print", "input", "exec", "eval", "compile", "__import__", "breakpoint"}


@pytest.mark.parametrize("path", sorted(CORE_DIR.glob("*.py")), ids=lambda p: p.name)
def test_core_module_does_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [] if node.level else [node.module or ""]
        else:
            names = []
        for name in names:
            assert name.split(".")[0] in ALLOWED_IMPORTS, f"{path.name} imports {name}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in FORBIDDEN_CALLS, f"{path.name} calls {node.func.id}()"
        if isinstance(node, ast.Attribute):
            assert node.attr not in {"environ", "urandom", "time", "now"}, (
                f"{path.name} uses .{node.attr}"
            )


def test_public_api_exports_exist() -> None:
    for name in careledger_core.__all__:
        assert hasattr(careledger_core, name), name
    assert len(set(careledger_core.__all__)) == len(careledger_core.__all__)


ERROR_CODES = {
    errors.CareledgerError: ("CARELEDGER_ERROR", None),
    errors.ValidationError: ("INVALID", errors.CareledgerError),
    errors.EventValidationError: ("EVENT_INVALID", errors.ValidationError),
    errors.HeaderValidationError: ("BLOCK_HEADER_INVALID", errors.ValidationError),
    errors.KeyFormatError: ("KEY_INVALID", errors.ValidationError),
    errors.IntegrityError: ("INTEGRITY", errors.CareledgerError),
    errors.SignatureError: ("SIGNATURE_INVALID", errors.IntegrityError),
    errors.UnknownKeyError: ("KEY_UNKNOWN", errors.IntegrityError),
    errors.ProofError: ("PROOF_INVALID", errors.IntegrityError),
    errors.CheckpointError: ("CHECKPOINT_INVALID", errors.IntegrityError),
    errors.NoteUnverifiedError: ("NOTE_UNVERIFIED", errors.CheckpointError),
    errors.InfrastructureError: ("INFRASTRUCTURE", errors.CareledgerError),
}


@pytest.mark.parametrize("cls", list(ERROR_CODES), ids=lambda c: c.__name__)
def test_error_tree_codes_and_parents(cls: type[errors.CareledgerError]) -> None:
    code, parent = ERROR_CODES[cls]
    assert cls.code == code
    if parent is not None:
        assert issubclass(cls, parent)
    # msgspec would swallow ValueError/TypeError raised in __post_init__
    assert not issubclass(cls, ValueError | TypeError)


def test_error_diagnostics() -> None:
    err = errors.EventValidationError("actor.id", "string must not be empty")
    assert (err.field, err.reason, err.code) == (
        "actor.id",
        "string must not be empty",
        "EVENT_INVALID",
    )
    assert err.to_dict() == {
        "code": "EVENT_INVALID",
        "message": "invalid access event at actor.id: string must not be empty",
        "details": {"field": "actor.id", "reason": "string must not be empty"},
    }
    custom = errors.InfrastructureError("down", code="CLICKHOUSE_DOWN", details={"host": "x"})
    assert custom.code == "CLICKHOUSE_DOWN" and custom.details == {"host": "x"}
    assert errors.InfrastructureError.code == "INFRASTRUCTURE"


@pytest.mark.parametrize(
    "err",
    [
        errors.EventValidationError("actor.id", "string must not be empty"),
        errors.HeaderValidationError("$", "not in canonical form (RFC 8785)"),
        errors.ProofError("bad proof", details={"index": 3}),
        errors.InfrastructureError("down", code="CLICKHOUSE_DOWN"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_survive_pickling_between_processes(err: errors.CareledgerError) -> None:
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err)
    assert again.to_dict() == err.to_dict() and str(again) == str(err)
    if isinstance(err, errors.EventValidationError | errors.HeaderValidationError):
        assert (again.field, again.reason) == (err.field, err.reason)  # type: ignore[attr-defined]


def test_finding_codes_are_stable() -> None:
    assert [c.value for c in FindingCode] == [
        "EVENT_HASH_MISMATCH",
        "EVENT_NOT_CANONICAL",
        "EVENT_FIELD_MISMATCH",
        "EVENT_MISSING",
        "EVENT_UNEXPECTED",
        "EVENT_OUT_OF_ORDER",
        "EVENT_OFFSET_OUT_OF_RANGE",
        "EVENT_DUPLICATE_ID",
        "MERKLE_ROOT_MISMATCH",
        "EVENT_COUNT_MISMATCH",
        "BLOCK_HASH_MISMATCH",
        "BLOCK_HEADER_MISMATCH",
        "BLOCK_HEADER_INVALID",
        "PREV_HASH_MISMATCH",
        "HEIGHT_GAP",
        "HEIGHT_FORK",
        "SIGNATURE_INVALID",
        "KEY_UNKNOWN",
        "OFFSET_GAP",
        "OFFSET_OVERLAP",
        "CHAIN_TRUNCATED",
        "CHAIN_REWRITTEN",
        "UNCOMMITTED_EVENTS",
        "CHECKPOINT_ROOT_MISMATCH",
        "CHECKPOINT_INCONSISTENT",
        "CHECKPOINTS_MISSING",
        "COSIGNATURE_INVALID",
        "SOURCE_UNSIGNED",
        "SOURCE_ATTESTATION_INVALID",
        "SOURCE_SIGNATURE_INVALID",
        "SOURCE_PROOF_INVALID",
        "SOURCE_KEY_UNKNOWN",
        "SOURCE_KEY_REVOKED",
        "SOURCE_KEY_NOT_FOR_SOURCE",
        "SOURCE_SEQ_DUPLICATE",
        "SOURCE_SEQ_GAP",
        "SOURCE_HEARTBEAT_INVALID",
        "SOURCE_SIGNED_AT_SKEW",
        "BLOCK_KEY_NOT_CURRENT",
        "EVENT_OFFSETS_MISMATCH",
        "DECISION_MISMATCH",
        "DECISION_MISSING",
        "DECISION_UNEXPECTED",
        "ALERT_MISMATCH",
        "ALERT_MISSING",
        "ALERT_UNEXPECTED",
        "ALERT_STALE",
        "ALERT_STATUS_MISMATCH",
        "ALERT_STATUS_MISSING",
        "ALERT_STATUS_NOT_LEDGERED",
        "ALERT_STATUS_PENDING",
        "REPLICA_MISMATCH",
        "DUPLICATE_EVENT",
        "CONSENT_DECISION_TAMPERED",
        "CONSENT_DECISION_NOT_LEDGERED",
        "CONSENT_DECISION_RECORD_MISSING",
        "CONSENT_DECISION_REPLAY_MISMATCH",
        "CONSENT_DECISION_PENDING",
        "SEALED_PART_INVALID",
        "SEALED_KEY_MISSING",
        "SEALED_KEY_NOT_PATIENTS",
        "SEALED_REF_MISMATCH",
    ]
    assert [s.value for s in Severity] == ["critical", "error", "warning", "info"]
    assert set(DEFAULT_SEVERITY) == set(FindingCode)


def test_finding_to_dict_is_json() -> None:
    f = Finding.of(
        FindingCode.MERKLE_ROOT_MISMATCH,
        "o/t/0",
        "root differs",
        height=3,
        details={"expected": "aa", "actual": "bb"},
    )
    assert f.severity is Severity.CRITICAL
    d = f.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["code"] == "MERKLE_ROOT_MISMATCH" and d["severity"] == "critical"
    assert d["height"] == 3 and d["event_index"] is None
    g = Finding("KEY_UNKNOWN", "warning", "o/t/0")  # type: ignore[arg-type]
    assert g.code is FindingCode.KEY_UNKNOWN and g.severity is Severity.WARNING
    with pytest.raises(ValueError):
        Finding("NOT_A_CODE", "critical", "o/t/0")  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        f.message = "x"  # type: ignore[misc]
