"""Whole-block decoding for the column-at-a-time checks of ``events._block_sound``.

``decode_block(kind, datas)`` answers one question for a block's stored bytes: is every
one of them a valid record of ``kind`` in its canonical form? If so it returns the
decoded records (in order), else None; it never raises on hostile bytes. None only
means "not sure": the caller then checks row by row with ``kind.decode``, which names
each problem, so this function decides nothing a finding depends on.

For access events the block is decoded in one msgspec call: the rows joined as one JSON
array (``b"[" + b",".join(datas) + b"]"``) through a typed ``list[AccessEvent]``
decoder, as the processor admits a batch record
(``careledger_core.event_batch.decode_canonical_events``).
Joining can blur row boundaries (one row holding ``{...},{...`` and the next the rest of
an object), so a joined decode proves nothing about any one row on its own; what makes
it exact is the comparison that follows: every decoded record re-encoded on its own
(``canonical_event_bytes``) must be *byte for byte* the row at its position, and there
must be as many records as rows. Then each row is the canonical encoding of a valid
record, and decoding that row alone (``decode_and_canonicalize``, the row-by-row path)
gives the same record and the same bytes back: exactly what the row-by-row checks
accept. Anything else (a row that is not canonical, an invalid record, a split row, a
decode error) is None.

Other kinds (reference data, raw records) are decoded row by row with ``kind.decode``.
The joined decode is used only while ``kind.decode`` is
``careledger_core.event.decode_and_canonicalize``, whose accepting path is exactly
"the typed decoder accepts the bytes and re-encoding gives them back".
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from careledger.storage.kinds import ACCESS, RecordKind, _date
from careledger_core.errors import ValidationError
from careledger_core.event import AccessEvent, canonical_event_bytes, decode_and_canonicalize

__all__ = ["columns_equal", "decode_block"]

_ACCESS_EVENTS: Final = msgspec.json.Decoder(list[AccessEvent])
#: what hostile bytes can make a decoder raise (the row-by-row path reports each)
_DECODE_ERRORS: Final = (
    msgspec.ValidationError,
    msgspec.DecodeError,
    ValidationError,
    ValueError,
    TypeError,
    RecursionError,
    MemoryError,
)


def decode_block(kind: RecordKind, datas: Sequence[bytes]) -> list[Any] | None:
    """The records of ``datas`` if every one is a valid, canonical ``kind`` record (the
    row-by-row checks would report nothing about their bytes); else None."""
    if kind.decode is decode_and_canonicalize:
        return _decode_access(datas)
    try:
        decoded = list(map(kind.decode, datas))
    except _DECODE_ERRORS:
        return None
    if [canonical for _, canonical in decoded] != list(datas):
        return None
    return [record for record, _ in decoded]


def _decode_access(datas: Sequence[bytes]) -> list[Any] | None:
    joined = b"[" + b",".join(datas) + b"]"
    try:
        events = _ACCESS_EVENTS.decode(joined)
        if len(events) != len(datas):
            return None
        canonical = list(map(canonical_event_bytes, events))
    except _DECODE_ERRORS:
        return None
    # each row on its own is the canonical encoding of its record (see the module)
    if canonical != list(datas):
        return None
    return events


#: how each of ``ACCESS.read_columns`` is taken from a decoded event: a text attribute
#: (stored as its UTF-8 bytes), the outcome (an integer) or the derived date
_TEXT, _INT, _DATE = "text", "int", "date"
_ACCESS_COLUMNS: Final = {
    "event_id": (_TEXT, operator.attrgetter("event_id")),
    "occurred_at": (_TEXT, operator.attrgetter("occurred_at")),
    "actor_id": (_TEXT, operator.attrgetter("actor.id")),
    "patient_id": (_TEXT, operator.attrgetter("patient.id")),
    "action": (_TEXT, operator.attrgetter("action")),
    "outcome": (_INT, operator.attrgetter("outcome")),
    "source_system": (_TEXT, operator.attrgetter("source.system")),
    "occurred_date": (_DATE, operator.attrgetter("occurred_at")),
}
_SEP: Final = "\x00"
_BSEP: Final = b"\x00"


def columns_equal(
    kind: RecordKind, by_column: Sequence[list[Any]], events: list[Any]
) -> bool | None:
    """Whether the stored ``kind.read_columns`` (``by_column``, each already of its read
    type) equal ``kind.read_values`` of each event, as whole columns: a text column's
    values joined with NUL against the events' texts joined likewise (exact only when no
    stored value holds a NUL: the joined bytes then have one NUL per boundary, and equal
    joined bytes mean equal values at every row). None: cannot tell this way (another
    kind, a NUL in a value): the caller compares row by row. False names no row: the
    row-by-row checks that follow do."""
    if (
        kind is not ACCESS
        or len(by_column) != len(kind.read_columns)
        or set(kind.read_columns) != set(_ACCESS_COLUMNS)  # the mapping kept up to date
    ):
        return None
    n = len(events)
    for name, stored in zip(kind.read_columns, by_column, strict=True):
        how, get = _ACCESS_COLUMNS[name]
        values = list(map(get, events))
        if how == _TEXT:
            joined = _BSEP.join(stored)
            if joined.count(_BSEP) != n - 1:
                return None
            if _SEP.join(values).encode() != joined:
                return False
        elif how == _INT:
            if stored != values:
                return False
        elif stored != list(map(_date, values)):
            return False
    return True
