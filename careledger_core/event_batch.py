"""A batch record's access events in clear, read in one call (ADR 0020, ADR 0042).

:func:`decode_canonical_events` validates every event of a batch in one msgspec call: the
events joined as one JSON array through a typed ``list[AccessEvent]`` decoder, then
encoded again; it accepts the batch only if the encoding is the joined bytes, byte for
byte, and there are as many events as entries. Joining can blur entry boundaries (one
entry holding ``{...},{...`` and the next the rest of an object), so a joined decode
proves nothing about any one entry on its own; what makes it exact is that comparison:
then each entry is the canonical encoding of a valid event, and
``careledger_core.event.decode_and_canonicalize`` of that entry alone gives the same
event and bytes back. Any problem returns None, and the caller takes the entries one by
one with that function, which names each problem.

:func:`read_access_columns` reads only what a processor stores of each event besides its
bytes (the columns of ``careledger.storage.kinds.ACCESS``), for events that were already
validated in full by :func:`decode_canonical_events` from the same bytes: by the
processor's worker process, ahead of its event loop (ADR 0042). It checks the columns'
types and nothing else: it is not a validation, and ``verify`` validates every stored
event in full. It costs about a sixth of the full decode, and builds none of the
event's nested structures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

import msgspec

from .errors import ValidationError
from .event import AccessEvent, Action, Outcome

__all__ = ["AccessColumns", "decode_canonical_events", "read_access_columns"]

_EVENTS_DECODER: Final = msgspec.json.Decoder(list[AccessEvent])
#: the encoder settings of ``careledger_core.event`` (RFC 8785 for our events)
_EVENTS_ENCODER: Final = msgspec.json.Encoder(order="sorted")


def decode_canonical_events(events: Sequence[bytes]) -> list[AccessEvent] | None:
    """Every event decoded, if each is a valid access event in canonical form; else
    None (never raises on hostile bytes: an event failing a field's pattern made the
    processor refuse its whole signed batch record, instead of that event alone, until
    this caught the event's own error)."""
    if not events:
        return []
    joined = b"[" + b",".join(events) + b"]"
    try:
        decoded = _EVENTS_DECODER.decode(joined)
        if len(decoded) != len(events) or _EVENTS_ENCODER.encode(decoded) != joined:
            return None
    except (
        msgspec.ValidationError,
        msgspec.DecodeError,
        # the patterns are checked after msgspec's decode, by ``AccessEvent.__post_init__``,
        # which raises the event's own error (msgspec passes it through)
        ValidationError,
        UnicodeEncodeError,
        RecursionError,
    ):
        return None
    return decoded


class _Id(msgspec.Struct, frozen=True, gc=False):
    id: str


class _System(msgspec.Struct, frozen=True, gc=False):
    system: str


class AccessColumns(msgspec.Struct, frozen=True, gc=False):
    """What a processor stores of an access event besides its bytes, read without
    validating the event again (:func:`read_access_columns`). The attribute names are
    :class:`~careledger_core.event.AccessEvent`'s, so the storage rows read either."""

    schema: Literal["careledger.access-event/1"]  # EVENT_SCHEMA (a test holds them equal)
    event_id: str
    occurred_at: str
    action: Action
    outcome: Outcome
    actor: _Id
    patient: _Id
    source: _System


_COLUMNS: Final = msgspec.json.Decoder(list[AccessColumns])


def read_access_columns(events: Sequence[bytes]) -> list[AccessColumns] | None:
    """The stored columns of access events that :func:`decode_canonical_events` accepted
    from these same bytes, in one call; None if they cannot be read (the caller then
    validates the events itself)."""
    if not events:
        return []
    try:
        read = _COLUMNS.decode(b"[" + b",".join(events) + b"]")
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None
    return read if len(read) == len(events) else None
