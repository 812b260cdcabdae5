"""The auditor's stored rows as ``verify`` reads them: untrusted, never raising.

Every column is normalised to the type the auditor writes (``str``, ``int``,
``datetime.date``, ``float``); a value of another type, or text that is not UTF-8, becomes
an ``Unreadable`` marker that equals nothing the auditor could have written, so a hostile
row is a finding at its place, never a crash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..runner.rows import ALERT_COLUMNS, DECISION_COLUMNS

__all__ = [
    "Digested",
    "StoredAlert",
    "StoredDecision",
    "Unreadable",
    "compact_alert",
    "normalise_alert",
    "normalise_decision",
    "normalise_value",
    "parse_alerts",
    "parse_decisions",
    "shown",
]


class Unreadable(str):
    """A stored value of the wrong type or encoding (shown as its ``repr``)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return False

    def __ne__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return str.__hash__(self)


_INT: Final = frozenset({"height", "idx", "amends", "version"})
_FLOAT: Final = frozenset({"score"})
_DATE: Final = frozenset({"occurred_date"})


def _unreadable(value: Any) -> Unreadable:
    return Unreadable(repr(value)[:200])


def _as_int(value: Any) -> Any:
    return value if type(value) is int else _unreadable(value)


def _as_float(value: Any) -> Any:
    if type(value) is float or type(value) is int:
        return float(value)
    return _unreadable(value)


def _as_date(value: Any) -> Any:
    return value if type(value) is dt.date else _unreadable(value)


def _as_text(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return _unreadable(value)
    if isinstance(value, str):
        return value
    return _unreadable(value)


def _converter(column: str) -> Callable[[Any], Any]:
    if column in _INT:
        return _as_int
    if column in _FLOAT:
        return _as_float
    if column in _DATE:
        return _as_date
    return _as_text


def normalise_value(column: str, value: Any) -> Any:
    """One stored value normalised (``column`` says its type)."""
    return _converter(column)(value)


_CONVERTERS: dict[tuple[str, ...], tuple[Callable[[Any], Any], ...]] = {}


def _normalise(columns: tuple[str, ...], row: Sequence[Any]) -> tuple[Any, ...]:
    convert = _CONVERTERS.get(columns)
    if convert is None:
        convert = _CONVERTERS[columns] = tuple(_converter(c) for c in columns)
    if len(row) != len(columns):
        values = list(row)[: len(columns)]
        row = values + [None] * (len(columns) - len(values))
    return tuple(map(_call, convert, row))


def _call(convert: Callable[[Any], Any], value: Any) -> Any:
    return convert(value)


def normalise_decision(row: Sequence[Any]) -> tuple[Any, ...]:
    """A decision row (``DECISION_COLUMNS`` order) with every value normalised."""
    return _normalise(DECISION_COLUMNS, row)


def normalise_alert(row: Sequence[Any]) -> tuple[Any, ...]:
    """An alert row (``ALERT_COLUMNS`` order) with every value normalised."""
    return _normalise(ALERT_COLUMNS, row)


#: the alert columns that grow with the alert (JSON lists and the evidence): longer
#: than ``_LONG``, they are kept as a ``Digested`` in the rows held for the checks
_DIGESTED: Final = frozenset({"patient_refs", "event_ids", "evidence", "explanations_searched"})
_LONG: Final = 160
#: what a ``Digested`` keeps of its text to show
_HEAD: Final = 80


@dataclass(frozen=True, slots=True)
class Digested:
    """A long text value of an alert row, kept as its length, its BLAKE2b digest and
    the start a finding shows (ADR 0045): two are equal exactly when their texts are
    (up to a 128-bit collision), in a fraction of the text's memory."""

    head: str
    length: int
    digest: bytes

    @classmethod
    def of(cls, text: str) -> Digested:
        data = text.encode("utf-8", "surrogatepass")
        return cls(text[:_HEAD], len(text), hashlib.blake2b(data, digest_size=16).digest())

    def shown(self) -> str:
        return f"{self.head}... ({self.length} characters, BLAKE2b-128 {self.digest.hex()})"


def _compact(value: Any) -> Any:
    # Unreadable (a str subclass) and short text stay as they are
    if type(value) is str and len(value) > _LONG:
        return Digested.of(value)
    return value


def _kept(value: Any) -> Any:
    return value


def _shared(value: Any) -> Any:
    # values many alerts repeat (a rule, an actor, a run and its time): one string each
    return sys.intern(value) if type(value) is str else value


#: alert columns whose values repeat across alerts
_SHARED: Final = frozenset(
    {"rule", "severity", "actor_id", "explanations_searched", "created_at", "audit_run"}
)
_COMPACT: Final = tuple(
    _compact if c in _DIGESTED else _shared if c in _SHARED else _kept for c in ALERT_COLUMNS
)


def _compacted(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(map(_call, _COMPACT, values))


def compact_alert(row: Sequence[Any]) -> tuple[Any, ...]:
    """An alert row (``ALERT_COLUMNS`` order) normalised, its long lists and evidence
    ``Digested``: what the alert checks compare and show, in bounded memory per alert."""
    return _compacted(normalise_alert(row))


def shown(value: Any, limit: int = 300) -> Any:
    """A value as a finding shows it (JSON-friendly, bounded)."""
    if isinstance(value, Digested):
        return value.shown()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "..."
    return value


_D = {c: i for i, c in enumerate(DECISION_COLUMNS)}
_A = {c: i for i, c in enumerate(ALERT_COLUMNS)}


@dataclass(frozen=True, slots=True)
class StoredDecision:
    """One ``access_decisions`` row (normalised)."""

    values: tuple[Any, ...]

    def get(self, column: str) -> Any:
        return self.values[_D[column]]

    def text(self, column: str) -> str:
        v = self.get(column)
        return v if isinstance(v, str) and not isinstance(v, Unreadable) else ""

    @property
    def key(self) -> tuple[str, int]:
        """(event id, amends): one decision per key and run."""
        amends = self.get("amends")
        return self.text("event_id"), amends if isinstance(amends, int) else -1

    @property
    def audit_run(self) -> str:
        return self.text("audit_run")

    @property
    def decided_at(self) -> str:
        return self.text("decided_at")

    @property
    def known_at(self) -> str:
        return self.text("reference_known_at")

    @property
    def occurred_at(self) -> str:
        return self.text("occurred_at")

    @property
    def position(self) -> tuple[str, int, int] | None:
        """(chain, height, idx) as the row claims it, if readable."""
        chain, height, idx = self.get("chain_id"), self.get("height"), self.get("idx")
        if isinstance(chain, Unreadable) or not isinstance(height, int):
            return None
        if not isinstance(idx, int):
            return None
        return chain, height, idx


@dataclass(frozen=True, slots=True)
class StoredAlert:
    """One ``alerts`` row as ``FINAL`` reads it (``compact_alert``: normalised, long text
    digested; ``version`` kept apart), with the flagged event ids it names."""

    values: tuple[Any, ...]
    #: the flagged event ids joined by NUL, or None when the row does not say them
    #: readably (one string: an alert of a thousand accesses holds no thousand objects)
    packed_flagged: str | None = None
    #: whether the flagged ids were kept (verify keeps them only for the alerts it may
    #: regroup or review: ``LedgerView.read``)
    flagged_kept: bool = True

    @classmethod
    def of(cls, row: Sequence[Any], *, keep_flagged: bool = True) -> StoredAlert:
        values = normalise_alert(row)
        if not keep_flagged:
            return cls(_compacted(values), None, False)
        flagged = _flagged(values[_A["event_ids"]], values[_A["evidence"]])
        return cls(_compacted(values), None if flagged is None else "\0".join(flagged))

    def get(self, column: str) -> Any:
        return self.values[_A[column]]

    def text(self, column: str) -> str:
        v = self.get(column)
        return v if isinstance(v, str) and not isinstance(v, Unreadable) else ""

    @property
    def alert_id(self) -> str:
        return self.text("alert_id")

    @property
    def audit_run(self) -> str:
        return self.text("audit_run")

    @property
    def created_at(self) -> str:
        return self.text("created_at")

    @property
    def first_at(self) -> str:
        return self.text("first_at")

    def flagged(self) -> list[str] | None:
        """The flagged event ids (the last ``flagged_events`` of ``event_ids``), or None
        when the row does not say them readably."""
        if not self.flagged_kept:
            raise RuntimeError(f"the flagged events of alert {self.alert_id} were not kept")
        if self.packed_flagged is None:
            return None
        return self.packed_flagged.split("\0") if self.packed_flagged else []


def _json(value: Any) -> Any:
    if not isinstance(value, str) or isinstance(value, Unreadable):
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


def _flagged(event_ids: Any, evidence: Any) -> list[str] | None:
    ids = _json(event_ids)
    doc = _json(evidence)
    if not isinstance(ids, list) or not all(isinstance(i, str) and "\0" not in i for i in ids):
        return None
    n = doc.get("flagged_events") if isinstance(doc, dict) else None
    if type(n) is int and 0 < n <= len(ids):
        return ids[-n:]
    return list(ids)


def parse_decisions(rows: Iterable[Sequence[Any]]) -> list[StoredDecision]:
    return [StoredDecision(normalise_decision(r)) for r in rows]


def parse_alerts(rows: Iterable[Sequence[Any]]) -> list[StoredAlert]:
    return [StoredAlert.of(r) for r in rows]
