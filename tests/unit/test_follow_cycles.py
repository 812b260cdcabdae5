"""A follow run's cycles, told by its rows in one pass (``verify`` no longer holds a
follow run's rows to find its cycles, ADR 0045): the same cycles, cutoffs, blocks and
cursors as the whole-list reading it replaced, on any rows, hostile ones included."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from verifiers.auditor.verify.replay import _Cycles, _cycles


@dataclass(frozen=True)
class Row:
    """What ``_cycles`` reads of a ``StoredDecision``."""

    key: tuple[str, int]
    decided_at: str
    known_at: str
    position: tuple[str, int, int] | None


def whole_list(rows: Sequence[Any]) -> _Cycles:
    """The reading before (every row held, then counted)."""
    own = [r for r in rows if r.key[1] == 0 and r.decided_at]
    times = sorted({r.decided_at for r in own})
    index = {t: k for k, t in enumerate(times)}
    known: list[str] = []
    for t in times:
        counts = Counter(r.known_at for r in own if r.decided_at == t)
        known.append(counts.most_common(1)[0][0] if counts else "")
    cycle_of: dict[tuple[str, int], int] = {}
    for r in own:
        p = r.position
        if p is None:
            continue
        k = index[r.decided_at]
        cycle_of[(p[0], p[1])] = min(k, cycle_of.get((p[0], p[1]), k))
    blocks: dict[str, list[tuple[int, int]]] = {}
    for (chain, height), k in sorted(cycle_of.items()):
        blocks.setdefault(chain, []).append((height, k))
    cursors = {chain: hs[0][0] - 1 for chain, hs in blocks.items()}
    return _Cycles(times, known, blocks, cursors)


rows = st.lists(
    st.builds(
        Row,
        key=st.tuples(st.sampled_from(("e1", "e2", "e3")), st.sampled_from((0, 0, 1))),
        decided_at=st.sampled_from(("", "t1", "t2", "t3", "t\ufffd")),
        known_at=st.sampled_from(("", "k1", "k2", "k3")),
        position=st.none()
        | st.tuples(st.sampled_from(("c/0", "c/1")), st.integers(-1, 6), st.integers(0, 3)),
    ),
    max_size=60,
)


@given(rows)
def test_cycles_read_in_one_pass_are_the_cycles_of_the_whole_list(given_rows: list[Row]) -> None:
    read: list[Row] = []

    def once() -> Iterator[Row]:
        for r in given_rows:
            read.append(r)
            yield r

    assert _cycles(once()) == whole_list(given_rows)  # type: ignore[arg-type]
    assert read == given_rows  # one pass, in order


def test_a_cycles_cutoff_is_the_one_most_of_its_rows_have_ties_to_the_first_read() -> None:
    at = ("c/0", 1, 0)
    cycles = _cycles(
        [  # type: ignore[list-item]
            Row(("a", 0), "t1", "k2", at),
            Row(("b", 0), "t1", "k1", at),
            Row(("c", 0), "t1", "k1", ("c/0", 2, 0)),
            Row(("d", 0), "t2", "k3", ("c/0", 2, 1)),
            Row(("e", 0), "t2", "k2", None),
            Row(("f", 1), "t2", "k9", ("c/0", 0, 0)),  # a late flag: not the run's own
        ]
    )
    assert cycles.times == ["t1", "t2"] and cycles.known == ["k1", "k3"]
    assert cycles.blocks == {"c/0": [(1, 0), (2, 0)]} and cycles.cursors == {"c/0": 0}
