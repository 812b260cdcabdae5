"""The benchmark baseline's view of a record (``Processor.handle_baseline``): a batch
record's events as bytes, found without validating anything."""

from __future__ import annotations

import msgspec

from careledger_core.batch_record import looks_batch

__all__ = ["split_batch"]


class _EventsOnly(msgspec.Struct):
    """The events of a batch record, unvalidated (the benchmark baseline)."""

    events: list[msgspec.Raw]


_EVENTS_ONLY = msgspec.json.Decoder(_EventsOnly)


def split_batch(value: bytes) -> list[bytes]:
    """A batch record's events as bytes, else ``[value]`` (the baseline validates nothing)."""
    if looks_batch(value):
        try:
            return [bytes(e) for e in _EVENTS_ONLY.decode(value).events] or [value]
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            pass
    return [value]
