"""The benchmark baseline stores the same events the chained mode stores, one row per
event, without validating: a batch record (ADR 0020) is split into its events' bytes."""

from __future__ import annotations

import hashlib

from careledger_core.batch_record import sign_batch_record
from careledger_core.signing import SigningKey
from processors.baseline import split_batch

KEY = SigningKey.from_seed(hashlib.sha256(b"baseline").digest())


def test_a_batch_record_splits_into_its_events_bytes_exactly() -> None:
    events = [b'{"a":1}', b'{"b":[1,2]}', b'"not even an event"']
    _, _, value = sign_batch_record(
        KEY,
        source_id="ehr",
        epoch="00000000000000e1",
        first_seq=1,
        canonical_events=events,
        signed_at="2026-12-03T00:00:00.000000Z",
    )
    assert split_batch(value) == events


def test_any_other_record_is_one_row_as_it_is() -> None:
    for value in (b'{"schema":"careledger.access-event/1"}', b"", b"\xff\x00", b"[" * 10_000):
        assert split_batch(value) == [value]
    broken = b'{"events":[1,2' + b'"careledger.signed-batch/1"'
    assert split_batch(broken) == [broken]
