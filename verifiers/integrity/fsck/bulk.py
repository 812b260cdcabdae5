"""Whole-block decoding for the column-at-a-time checks of ``events._block_sound``.

``decode_block(kind, datas)`` answers one question for a block's stored bytes: is every
one of them a valid record of ``kind`` in its canonical form? If so it returns the
decoded records (in order), else None; it never raises on hostile bytes. None only
means "not sure": the caller then checks row by row with ``kind.decode``, which names
each problem, so this function decides nothing a finding depends on.

For access events the block is decoded in one msgspec call: the rows joined as one JSON
array (``b"[" + b",".join(datas) + b"]"``) through a typed ``list[AccessEvent]``
decoder, as the processor admits a batch record (``processors.sources._decode_all``).
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

from collections.abc import Sequence
from typing import Any, Final

import msgspec

from careledger.storage.kinds import RecordKind
from careledger_core.errors import ValidationError
from careledger_core.event import AccessEvent, canonical_event_bytes, decode_and_canonicalize

__all__ = ["decode_block"]

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
