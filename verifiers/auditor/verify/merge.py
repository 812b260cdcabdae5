"""One run's stored decision rows against its replay, as both go (ADR 0045).

The replay hands its decisions over as the auditor makes them (an access's own decision
when the access is read, a late break-the-glass flag up to the stop window later); the
stored rows come from ClickHouse in ``(occurred_at, event_id, amends)`` order, read up to
the newest decision time handed over. A key (event id, amends) is compared as soon as
both sides have it, and forgotten: what is held is the few decisions one side has and the
other not yet, and the keys compared within ``margin_us`` of event time (to recognise a
second row, or a second decision, of the same key). A row or decision left over at the
end is matched by key then, so the order only bounds the memory, never the findings.

Per key, as ``check`` had it for a whole run: the stored row and the replay's row must
be equal column for column (``DECISION_MISMATCH``); a row no replay wrote, or a second
row of one decision, is ``DECISION_UNEXPECTED``; a replayed decision without a row is
left to the caller (``missing``), which asks whether a later run decided it again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Final

from careledger_core.findings import Finding, FindingCode

from .._time import ts_to_us, us_to_ts
from ..runner.rows import DECISION_COLUMNS
from .check import decision_finding, differences, unexpected_rows
from .stored import StoredDecision, normalise_decision

__all__ = ["DecisionMerge", "Key", "missing_findings"]

_OCCURRED: Final = DECISION_COLUMNS.index("occurred_at")
Key = tuple[str, int]
#: keys compared between two looks at what can be let go
_FORGET_EVERY: Final = 1024


class DecisionMerge:
    """Merge run ``run``'s stored rows (``stored``, in order) with its replayed rows
    (``replayed``). ``findings`` grows as keys are compared; ``finish`` compares what is
    left and returns the replayed rows that have no stored row."""

    def __init__(self, run: str, stored: Iterator[StoredDecision], *, margin_us: int) -> None:
        self.run = run
        self._second = f"a second row of the same decision by run {run}"
        self.findings: list[Finding] = []
        self.rows = 0
        self._stored = stored
        self._next: StoredDecision | None = next(stored, None)
        self._margin = margin_us
        self._pending_stored: dict[Key, list[StoredDecision]] = {}
        self._pending_replayed: dict[Key, tuple[Any, ...]] = {}
        #: keys compared, with their event time: a second row or decision is recognised
        self._done: dict[Key, str] = {}
        self._done_order: deque[tuple[str, Key]] = deque()
        self._watermark = ""

    # -- the two sides
    def replayed(self, key: Key, row: tuple[Any, ...]) -> None:
        """A decision the replay made (the first of a key counts, as in the run)."""
        if key in self._done or key in self._pending_replayed:
            return
        occurred = str(row[_OCCURRED])
        if occurred > self._watermark:
            self._watermark = occurred
            self._read_upto(occurred)
        found = self._pending_stored.pop(key, None)
        if found is None:
            self._pending_replayed[key] = row
        else:
            self._compare(key, found, row)

    def _read_upto(self, t: str) -> None:
        while self._next is not None and self._next.occurred_at <= t:
            self._add_stored(self._next)
            self._next = next(self._stored, None)

    def _add_stored(self, r: StoredDecision) -> None:
        self.rows += 1
        key = r.key
        if key in self._done:
            self.findings += unexpected_rows([r], self._second)
            return
        expected = self._pending_replayed.pop(key, None)
        if expected is None:
            self._pending_stored.setdefault(key, []).append(r)
        else:
            self._compare(key, [r], expected)

    def _compare(
        self, key: Key, found: Sequence[StoredDecision], expected: tuple[Any, ...]
    ) -> None:
        first, *extra = found
        if extra:
            self.findings += unexpected_rows(extra, self._second)
        # equal as read (no value unreadable, none missing): nothing to normalise
        if first.values != expected or None in expected:
            diffs = differences(
                DECISION_COLUMNS, first.values, normalise_decision(expected), skip=()
            )
            if diffs:
                self.findings.append(
                    decision_finding(
                        FindingCode.DECISION_MISMATCH,
                        key,
                        f"decision of event {key[0]} differs from what run {self.run} decides "
                        f"over the ledger: {', '.join(sorted(diffs))}",
                        row=expected,
                        audit_run=self.run,
                        columns=diffs,
                    )
                )
        occurred = str(expected[_OCCURRED])
        self._done[key] = occurred
        self._done_order.append((occurred, key))
        if len(self._done_order) % _FORGET_EVERY == 0:
            self._forget()

    def _forget(self) -> None:
        """Keys compared more than ``margin_us`` of event time ago are let go."""
        try:
            cutoff = us_to_ts(ts_to_us(self._watermark) - self._margin)
        except ValueError:
            return
        order, done = self._done_order, self._done
        while order and order[0][0] < cutoff:
            _at, key = order.popleft()
            done.pop(key, None)

    @property
    def held(self) -> int:
        """Rows and decisions held right now (what bounds the memory)."""
        return len(self._pending_stored) + len(self._pending_replayed) + len(self._done)

    def finish(self) -> list[tuple[Key, tuple[Any, ...]]]:
        """Read the rest of the stored rows, compare what is left by key: stored rows
        without a replayed decision are ``DECISION_UNEXPECTED``; the replayed
        decisions without a row are returned (the caller decides if they are missing)."""
        while self._next is not None:
            self._add_stored(self._next)
            self._next = next(self._stored, None)
        for found in self._pending_stored.values():
            first, *extra = found
            self.findings += unexpected_rows(extra, self._second)
            self.findings += unexpected_rows(
                [first], f"run {self.run} did not decide it (replayed over the ledger it read)"
            )
        self._pending_stored.clear()
        left = list(self._pending_replayed.items())
        self._pending_replayed.clear()
        return left


def missing_findings(
    run: str, left: Sequence[tuple[Key, tuple[Any, ...]]], latest: dict[Key, str]
) -> list[Finding]:
    """The replayed decisions of ``run`` without a row (``left``), unless a later run
    decided the key again (``latest``: the latest stored decision time per key)."""
    out = []
    at_index = DECISION_COLUMNS.index("decided_at")
    for key, expected in left:
        at = str(expected[at_index])
        if latest.get(key, "") > at:
            continue  # decided again by a later run: that run's row stands
        out.append(
            decision_finding(
                FindingCode.DECISION_MISSING,
                key,
                f"run {run} decided event {key[0]}{' (late flag)' if key[1] else ''} "
                f"at {at} but its decision row is gone",
                row=expected,
                audit_run=run,
                decided_at=at,
            )
        )
    return out
