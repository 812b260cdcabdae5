"""The test tree itself: pytest imports test modules by basename (no packages under
tests/unit and tests/integration), so two modules with one name stop the whole run at
collection ("import file mismatch"), as a CI run did."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_basename() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert len(names) > 100
    assert [name for name, n in names.items() if n > 1] == []
