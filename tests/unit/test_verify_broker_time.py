"""`verify` judges source keys and processor keys at times their holders cannot choose
(ADR 0015), on rows built in memory.

Named after what an attacker with write access to ClickHouse, holding a revoked source
key or a retired processor key, would try.
"""

from __future__ import annotations

import base64
import hashlib

from careledger_core.findings import FindingCode
from careledger_core.reference import SourceKeyBody
from careledger_core.signing import SigningKey
from careledger_core.source import (
    KeyEventStatement,
    SourceRegistry,
    processor_source_id,
    seconds_of,
    sign_batch,
    sign_key_event,
    statement_bytes,
    timestamp_of,
)
from verifiers.integrity.processor_keys import check_processor_keys
from verifiers.integrity.sources import AttestedEvent, build_registry, check_sources

REGISTRAR = SigningKey.from_seed(hashlib.sha256(b"registrar").digest())
EHR = SigningKey.from_seed(hashlib.sha256(b"ehr").digest())
EPOCH = "00000000000000e1"
APPENDED = "2026-11-02T08:00:00.000000Z"  # the broker's time, as the block header signs it
REVOKED = "2026-11-02T07:55:00.000000Z"  # five minutes before


def shift(t: str, seconds: float) -> str:
    return timestamp_of(seconds_of(t) + seconds)


def key_body(
    key: SigningKey,
    source: str,
    status: str = "active",
    valid_from: str = "2026-01-01T00:00:00.000000Z",
) -> SourceKeyBody:
    st = KeyEventStatement(
        source_id=source,
        key_id=key.key_id,
        public_key=base64.b64encode(key.public_key.raw).decode(),
        status=status,  # type: ignore[arg-type]
        valid_from=valid_from,
        registrar_key_id=REGISTRAR.key_id,
    )
    return SourceKeyBody(st, sign_key_event(REGISTRAR, st))


def registry(*bodies: SourceKeyBody) -> SourceRegistry:
    reg, problems = build_registry(bodies, {REGISTRAR.key_id: REGISTRAR.public_key})
    assert problems == []
    return reg


def rows(
    signed_at: str,
    window: tuple[str, str] | None = (APPENDED, APPENDED),
    created_at: str = APPENDED,
    n: int = 2,
) -> list[AttestedEvent]:
    leaves = [hashlib.sha256(f"event {i}".encode()).digest() for i in range(n)]
    atts = sign_batch(
        EHR,
        source_id="ehr",
        epoch=EPOCH,
        first_seq=1,
        event_leaf_hashes=leaves,
        signed_at=signed_at,
    )
    return [
        AttestedEvent(
            "c/0",
            7,
            i,
            f"e{i}",
            leaf,
            (statement_bytes(a.statement), a.signature, a.index, ",".join(a.proof)),
            created_at,
            append_window=window,
        )
        for i, (leaf, a) in enumerate(zip(leaves, atts, strict=True))
    ]


def codes(events: list[AttestedEvent], reg: SourceRegistry) -> list[str]:
    return [str(f.code) for f in check_sources(events, reg, require_signatures=True).findings]


REVOKED_REGISTRY = (key_body(EHR, "ehr"), key_body(EHR, "ehr", "revoked", REVOKED))


def test_an_attestation_backdated_to_before_the_revocation_is_revoked_at_the_broker_time() -> None:
    """The store-side variant: someone holding the revoked key re-signs a chained event
    with a signed_at six minutes back and puts that attestation in the row. At signed_at
    the key was active (before ADR 0015: no finding); the block was appended after."""
    reg = registry(*REVOKED_REGISTRY)
    report = check_sources(rows(shift(APPENDED, -360)), reg, require_signatures=True)
    assert [str(f.code) for f in report.findings] == ["SOURCE_KEY_REVOKED"] * 2
    f = report.findings[0]
    assert (f.chain_id, f.height, f.event_index) == ("c/0", 7, 0)


def test_an_attestation_signed_far_from_the_blocks_append_times_is_a_finding() -> None:
    reg = registry(key_body(EHR, "ehr"))
    report = check_sources(rows(shift(APPENDED, -3600)), reg, require_signatures=True)
    assert [str(f.code) for f in report.findings] == ["SOURCE_SIGNED_AT_SKEW"] * 2
    assert report.findings[0].details["append_window"] == [APPENDED, APPENDED]
    assert codes(rows(shift(APPENDED, +3600)), reg) == ["SOURCE_SIGNED_AT_SKEW"] * 2
    # the window is configurable, as in the processor
    relaxed = check_sources(
        rows(shift(APPENDED, -3600)), reg, require_signatures=True, max_skew_s=7200
    )
    assert relaxed.findings == []


def test_what_the_processor_admitted_at_the_edges_is_not_a_finding() -> None:
    """Within the skew of an append time at which the key was active: a key registered
    inside the block's window, a batch signed a little before its key's registration,
    a key revoked inside the window."""
    window = (APPENDED, shift(APPENDED, 0.2))
    registered_inside = registry(key_body(EHR, "ehr", valid_from=shift(APPENDED, 0.1)))
    assert codes(rows(shift(APPENDED, -60), window), registered_inside) == []
    revoked_inside = registry(key_body(EHR, "ehr"), key_body(EHR, "ehr", "revoked", window[1]))
    assert codes(rows(shift(APPENDED, 600), window), revoked_inside) == []
    edge = registry(key_body(EHR, "ehr"))
    assert codes(rows(shift(APPENDED, -900), window), edge) == []


def test_older_blocks_are_judged_at_signed_at_and_bounded_by_their_creation() -> None:
    """Headers signed before ADR 0015 have no append times: the key's status at
    signed_at, and no batch signed after the block was sealed (plus the skew)."""
    reg = registry(key_body(EHR, "ehr"))
    assert codes(rows(shift(APPENDED, -86_400), window=None), reg) == []
    assert codes(rows(shift(APPENDED, 901), window=None), reg) == ["SOURCE_SIGNED_AT_SKEW"] * 2
    revoked = registry(*REVOKED_REGISTRY)
    assert codes(rows(shift(REVOKED, 1), window=None), revoked) == ["SOURCE_KEY_REVOKED"] * 2


# --------------------------------------------------------------------------- processor keys

OLD = SigningKey.from_seed(b"\x01" * 32)
NEW = SigningKey.from_seed(b"\x02" * 32)
STRANGER = SigningKey.from_seed(b"\x03" * 32)
ORIGIN = "careledger.local"
ROTATED = "2026-06-01T00:00:00.000000Z"


def rotation() -> SourceRegistry:
    identity = processor_source_id(ORIGIN)
    return registry(
        key_body(OLD, identity, valid_from="1970-01-01T00:00:00.000000Z"),
        key_body(NEW, identity, valid_from=ROTATED),
        key_body(OLD, identity, "revoked", ROTATED),
    )


def header(key: SigningKey, created_at: str) -> bytes:
    return f'{{"created_at":"{created_at}","key_id":"{key.key_id}"}}'.encode()


def test_blocks_signed_by_the_key_current_at_their_time_are_not_findings() -> None:
    blocks = [
        ("c/0", 0, header(OLD, "2026-05-01T00:00:00.000000Z")),
        ("c/0", 1, header(OLD, "2026-05-31T23:59:59.000000Z")),
        ("c/0", 2, header(NEW, "2026-06-01T00:00:01.000000Z")),
        ("c/1", 0, header(NEW, "2026-07-01T00:00:00.000000Z")),
    ]
    assert check_processor_keys(blocks, rotation(), ORIGIN) == []


def test_a_block_signed_by_the_retired_key_after_the_rotation_is_a_finding() -> None:
    blocks = [
        ("c/0", 0, header(OLD, "2026-05-01T00:00:00.000000Z")),
        ("c/0", 1, header(NEW, "2026-06-02T00:00:00.000000Z")),
        ("c/0", 2, header(OLD, "2026-06-03T00:00:00.000000Z")),
    ]
    [f] = check_processor_keys(blocks, rotation(), ORIGIN)
    assert (f.code, f.chain_id, f.height) == (FindingCode.BLOCK_KEY_NOT_CURRENT, "c/0", 2)
    assert f.details["status"] == "retired" and f.details["key_id"] == OLD.key_id


def test_a_retired_key_cannot_backdate_a_block_after_its_successor_signed_the_chain() -> None:
    blocks = [
        ("c/0", 5, header(NEW, "2026-06-02T00:00:00.000000Z")),
        ("c/0", 6, header(OLD, "2026-05-01T00:00:00.000000Z")),
    ]
    [f] = check_processor_keys(blocks, rotation(), ORIGIN)
    assert (f.height, f.details["successor_key_id"]) == (6, NEW.key_id)


def test_a_trusted_key_outside_the_ledgered_rotation_or_too_early_is_a_finding() -> None:
    blocks = [
        ("c/0", 0, header(STRANGER, "2026-07-01T00:00:00.000000Z")),
        ("c/1", 0, header(NEW, "2026-05-01T00:00:00.000000Z")),
    ]
    found = check_processor_keys(blocks, rotation(), ORIGIN)
    assert [(f.chain_id, f.details.get("status")) for f in found] == [
        ("c/0", None),
        ("c/1", "not yet valid"),
    ]


def test_a_log_that_never_rotated_and_malformed_headers_are_left_to_verify_chain() -> None:
    blocks = [("c/0", 0, header(STRANGER, "2026-07-01T00:00:00.000000Z"))]
    assert check_processor_keys(blocks, SourceRegistry(), ORIGIN) == []
    garbage = [("c/0", 0, b"{not json"), ("c/0", 1, None), ("c/0", 2, b'{"key_id":5}')]
    assert check_processor_keys(garbage, rotation(), ORIGIN) == []
