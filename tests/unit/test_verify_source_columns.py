"""The side columns of ``source_attestations`` against the signed statement, and hostile
attestation rows (ADR 0010): every column a reader may use is checked, nothing crashes.

``event_id, source_id, key_id, epoch, seq, signed_by`` are copies of what the source
signed (the statement column) and of the event's id; a processor that rebuilds its
per-source sequence state from the store, or anyone querying "which events did source S
send", reads them. An edited copy is ``SOURCE_ATTESTATION_INVALID`` at the event.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from careledger_core.findings import FindingCode
from careledger_core.reference import SourceKeyBody
from careledger_core.signing import SigningKey
from careledger_core.source import (
    KeyEventStatement,
    SourceRegistry,
    sign_batch,
    sign_key_event,
    statement_bytes,
)
from verifiers.integrity.sources import AttestedEvent, SourceReport, build_registry, check_sources

REGISTRAR = SigningKey.from_seed(hashlib.sha256(b"columns registrar").digest())
EHR = SigningKey.from_seed(hashlib.sha256(b"columns ehr").digest())
GATEWAY = SigningKey.from_seed(hashlib.sha256(b"columns gateway").digest())
EPOCH = "00000000000000e1"
T = "2026-11-02T08:00:00.000000Z"
COLUMNS = ("event_id", "source_id", "key_id", "epoch", "seq", "signed_by")


def registry() -> SourceRegistry:
    bodies = []
    for key, source, signs_for in ((EHR, "ehr", []), (GATEWAY, "gateway", ["lab"])):
        st_ = KeyEventStatement(
            source_id=source,
            key_id=key.key_id,
            public_key=base64.b64encode(key.public_key.raw).decode(),
            status="active",
            valid_from="2026-01-01T00:00:00.000000Z",
            signs_for=tuple(signs_for),
            registrar_key_id=REGISTRAR.key_id,
        )
        bodies.append(SourceKeyBody(st_, sign_key_event(REGISTRAR, st_)))
    reg, problems = build_registry(bodies, {REGISTRAR.key_id: REGISTRAR.public_key})
    assert problems == []
    return reg


def attested(n: int = 4, *, gateway: bool = False) -> list[AttestedEvent]:
    """Rows as ``read_source_rows`` builds them: the side columns as stored (bytes)."""
    leaves = [hashlib.sha256(f"event {i}".encode()).digest() for i in range(n)]
    atts = sign_batch(
        GATEWAY if gateway else EHR,
        source_id="lab" if gateway else "ehr",
        epoch=EPOCH,
        first_seq=1,
        event_leaf_hashes=leaves,
        signed_at=T,
        signed_by="gateway" if gateway else None,
    )
    out = []
    for i, (leaf, a) in enumerate(zip(leaves, atts, strict=True)):
        s = a.statement
        out.append(
            AttestedEvent(
                "c/0",
                0,
                i,
                f"e{i}",
                leaf,
                (statement_bytes(s), a.signature, a.index, ",".join(a.proof)),
                columns=(
                    f"e{i}".encode(),
                    s.source_id.encode(),
                    s.key_id.encode(),
                    s.epoch.encode(),
                    a.seq,
                    (s.signed_by or "").encode(),
                ),
            )
        )
    return out


def codes(report: SourceReport) -> list[str]:
    return [str(f.code) for f in report.findings]


def with_column(ev: AttestedEvent, name: str, value: Any) -> AttestedEvent:
    assert ev.columns is not None
    cols = list(ev.columns)
    cols[COLUMNS.index(name)] = value
    return AttestedEvent(
        ev.chain_id, ev.height, ev.idx, ev.event_id, ev.leaf_hash, ev.attestation,
        ev.block_time, columns=tuple(cols),
    )  # fmt: skip


def test_untouched_side_columns_have_no_findings() -> None:
    for gateway in (False, True):
        report = check_sources(attested(gateway=gateway), registry(), require_signatures=True)
        assert codes(report) == [] and report.signed_events == 4


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("seq", 3),  # another event's sequence number: a replay or a gap to a reader
        ("seq", 10**6),
        ("epoch", b"00000000000000e2"),
        ("source_id", b"lab"),
        ("key_id", GATEWAY.key_id.encode()),
        ("event_id", b"e3"),
        ("signed_by", b"gateway"),
    ],
)
def test_an_edited_side_column_is_a_finding_at_its_event(column: str, value: Any) -> None:
    rows = attested()
    rows[1] = with_column(rows[1], column, value)
    report = check_sources(rows, registry(), require_signatures=True)
    [f] = report.findings
    assert f.code == FindingCode.SOURCE_ATTESTATION_INVALID
    assert (f.chain_id, f.height, f.event_index, f.event_id) == ("c/0", 0, 1, "e1")
    assert column in f.message and set(f.details["columns"]) == {column}
    # the signed statement stays authoritative: no replay or gap is made up
    assert report.signed_events == 4


def test_a_cleared_signed_by_of_a_gateway_batch_is_a_finding() -> None:
    rows = attested(gateway=True)
    rows[0] = with_column(rows[0], "signed_by", b"")
    assert codes(check_sources(rows, registry(), require_signatures=True)) == [
        "SOURCE_ATTESTATION_INVALID"
    ]


@pytest.mark.parametrize("leaf", [None, b"", b"\x00" * 31])
def test_an_unreadable_event_leaf_hash_is_a_finding_not_a_crash(leaf: bytes | None) -> None:
    rows = attested()
    ev = rows[2]
    rows[2] = AttestedEvent(
        ev.chain_id, ev.height, ev.idx, ev.event_id, leaf, ev.attestation, columns=ev.columns
    )
    report = check_sources(rows, registry(), require_signatures=True)
    assert [(str(f.code), f.event_index) for f in report.findings] == [("SOURCE_PROOF_INVALID", 2)]


def test_a_second_attestation_row_for_one_event_is_a_finding() -> None:
    rows = attested()
    ev = rows[0]
    rows[0] = AttestedEvent(
        ev.chain_id, ev.height, ev.idx, ev.event_id, ev.leaf_hash, ev.attestation,
        columns=ev.columns, extra_rows=1,
    )  # fmt: skip
    assert codes(check_sources(rows, registry(), require_signatures=True)) == [
        "SOURCE_ATTESTATION_INVALID"
    ]


def test_an_attestation_row_for_no_event_is_a_finding() -> None:
    rows = attested()
    orphan = AttestedEvent("c/0", 0, 9, "", None, rows[0].attestation, orphan=True)
    report = check_sources([*rows, orphan], registry(), require_signatures=True)
    [f] = report.findings
    assert f.code == FindingCode.SOURCE_ATTESTATION_INVALID and f.event_index == 9


@pytest.mark.parametrize(
    "change",
    [
        lambda s, g, i, p: (s.replace(b'{"', b'{ "', 1), g, i, p),  # same statement, spaced
        lambda s, g, i, p: (s, g, i, p.replace(",", ",,", 1)),  # same proof, an empty entry
        lambda s, g, i, p: (s, g, i, p + ","),
    ],
)
def test_a_non_canonical_copy_of_the_signed_values_is_a_finding(change: Any) -> None:
    rows = attested()
    ev = rows[1]
    assert ev.attestation is not None
    rows[1] = AttestedEvent(
        ev.chain_id, ev.height, ev.idx, ev.event_id, ev.leaf_hash, change(*ev.attestation),
        columns=ev.columns,
    )  # fmt: skip
    assert codes(check_sources(rows, registry(), require_signatures=True)) == [
        "SOURCE_ATTESTATION_INVALID"
    ]


def test_a_source_signing_a_huge_sequence_number_does_not_exhaust_memory() -> None:
    leaves = [hashlib.sha256(b"far").digest()]
    [a] = sign_batch(
        EHR, source_id="ehr", epoch=EPOCH, first_seq=2**53 - 1, event_leaf_hashes=leaves,
        signed_at=T,
    )  # fmt: skip
    far = AttestedEvent(
        "c/0", 1, 0, "far", leaves[0], (statement_bytes(a.statement), a.signature, 0, "")
    )
    report = check_sources([*attested(), far], registry(), require_signatures=True)
    [gap] = report.findings
    assert gap.code == FindingCode.SOURCE_SEQ_GAP
    assert (gap.details["first_missing"], gap.details["last_missing"]) == (5, 2**53 - 2)


# --------------------------------------------------------------------------- property

_HOSTILE: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.binary(max_size=80),
    st.text(max_size=40),
    st.sampled_from([b"", b"[" * 5000, b"{}", "", "zz", 0, 2**64, b"\xff\xfe"]),
    st.lists(st.integers(), max_size=2),
)


def _near(old: Any) -> st.SearchStrategy[Any]:
    if type(old) is int:
        return st.integers(old - 2, old + 2)
    if isinstance(old, bytes | str) and old:
        return st.sampled_from([old[:-1], old + old[:1], old.upper(), old[::-1]])
    return st.nothing()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_corrupted_attestation_value_is_found_and_never_crashes(data: st.DataObject) -> None:
    rows = attested(gateway=data.draw(st.booleans()))
    k = data.draw(st.integers(0, len(rows) - 1))
    ev = rows[k]
    assert ev.attestation is not None and ev.columns is not None
    where = data.draw(st.sampled_from(["attestation", "columns", "leaf_hash"]))
    if where == "leaf_hash":
        new = data.draw(st.one_of(st.none(), st.binary(min_size=32, max_size=32)))
        assume(new != ev.leaf_hash)
        rows[k] = AttestedEvent(
            ev.chain_id, ev.height, ev.idx, ev.event_id, new, ev.attestation, columns=ev.columns
        )
    else:
        values = list(ev.attestation if where == "attestation" else ev.columns)
        i = data.draw(st.integers(0, len(values) - 1))
        old = values[i]
        new = data.draw(st.one_of(_HOSTILE, _near(old)))
        assume(type(new) is not type(old) or new != old)
        values[i] = new
        att = tuple(values) if where == "attestation" else ev.attestation
        cols = tuple(values) if where == "columns" else ev.columns
        rows[k] = AttestedEvent(
            ev.chain_id, ev.height, ev.idx, ev.event_id, ev.leaf_hash, att,
            columns=cols,
        )  # fmt: skip
    report = check_sources(rows, registry(), require_signatures=True)  # must not raise
    assert report.findings, (where, rows[k])
    for f in report.findings:
        f.to_dict()


@settings(max_examples=300, deadline=None)
@given(seqs=st.lists(st.integers(1, 300), max_size=120), upto=st.integers(0, 320))
def test_sequence_runs_behave_like_a_set_of_numbers(seqs: list[int], upto: int) -> None:
    from verifiers.integrity.sources import _Seqs

    runs, model = _Seqs(), set()
    for seq in seqs:
        assert runs.add(seq) == (seq not in model)  # False: seen before, a replay
        model.add(seq)
    assert all(runs.has(n) == (n in model) for n in range(0, 322))
    missing = [n for lo, hi in runs.missing(upto) for n in range(lo, hi + 1)]
    assert missing == [n for n in range(1, upto + 1) if n not in model]
    assert runs.max_seq == max(model, default=0)
