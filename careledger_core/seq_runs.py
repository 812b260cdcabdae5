"""Sets of sequence numbers as sorted disjoint runs (ADR 0010, 0015).

A source numbers the events of one epoch 1, 2, 3, ...; the processor (replay detection)
and ``verify`` (duplicates, gaps) keep the numbers of each (source, epoch) they have seen
as runs ``[start, end]``, so a source sending without loss costs one run however many
events it sent, and a forged huge number costs one more run, never memory in proportion
to its size. Pure; no bisect import (the core imports only what its contract allows).
"""

from __future__ import annotations

__all__ = ["SeqRuns"]


def _bisect_right(a: list[int], x: int) -> int:
    lo, hi = 0, len(a)
    while lo < hi:
        mid = (lo + hi) // 2
        if x < a[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _bisect_left(a: list[int], x: int) -> int:
    lo, hi = 0, len(a)
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


class SeqRuns:
    """Sequence numbers seen in one (source, epoch), as sorted disjoint runs: memory
    and time grow with the number of runs, never with the size of a number (a source
    may sign sequence number 2^53 - 1)."""

    __slots__ = ("ends", "max_seq", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.max_seq = 0

    def __len__(self) -> int:
        """The number of runs."""
        return len(self.starts)

    def add(self, seq: int) -> bool:
        """Mark ``seq`` seen; False if it was seen before (a replay)."""
        starts, ends = self.starts, self.ends
        if ends and seq == ends[-1] + 1:  # the usual case: the next number
            ends[-1] = seq
            self.max_seq = max(self.max_seq, seq)
            return True
        i = _bisect_right(starts, seq) - 1
        if i >= 0 and seq <= ends[i]:
            return False
        joins_left = i >= 0 and ends[i] == seq - 1
        joins_right = i + 1 < len(starts) and starts[i + 1] == seq + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif joins_left:
            ends[i] = seq
        elif joins_right:
            starts[i + 1] = seq
        else:
            starts.insert(i + 1, seq)
            ends.insert(i + 1, seq)
        self.max_seq = max(self.max_seq, seq)
        return True

    def add_range(self, first: int, last: int) -> None:
        """Mark ``first..last`` (inclusive) seen, merging with the runs it touches."""
        if last < first:
            return
        starts, ends = self.starts, self.ends
        lo = _bisect_left(ends, first - 1)  # first run that ends at or after first-1
        hi = _bisect_right(starts, last + 1)  # runs before hi start at or before last+1
        if lo < hi:
            first = min(first, starts[lo])
            last = max(last, ends[hi - 1])
        starts[lo:hi] = [first]
        ends[lo:hi] = [last]
        self.max_seq = max(self.max_seq, last)

    def has(self, seq: int) -> bool:
        i = _bisect_right(self.starts, seq) - 1
        return i >= 0 and seq <= self.ends[i]

    def missing(self, upto: int) -> list[tuple[int, int]]:
        """Ranges of sequence numbers 1..upto not seen (inclusive bounds)."""
        out: list[tuple[int, int]] = []
        expected = 1
        for start, end in zip(self.starts, self.ends, strict=True):
            if start > upto:
                break
            if start > expected:
                out.append((expected, start - 1))
            expected = end + 1
        if expected <= upto:
            out.append((expected, upto))
        return out
