"""No blind ``except Exception`` in the product (the house rule): a handler names the
errors that can happen (KafkaException, the driver's errors, CareledgerError, OSError,
...), so a bug is loud instead of retried or reported as "unavailable" forever. A
handler that catches everything only to clean up and re-raise (bare ``raise``) is fine.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "careledger_core",
    "careledger",
    "producers",
    "processors",
    "verifiers",
    "replica",
    "witness",
    "commands",
)
_BLIND = {"Exception", "BaseException"}


def _names(node: ast.expr | None) -> set[str]:
    if node is None:
        return {"BaseException"}  # a bare ``except:``
    if isinstance(node, ast.Tuple):
        return set().union(*(_names(e) for e in node.elts))
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Attribute):
        return {node.attr}
    return set()


def _blind_handlers(source: str) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ExceptHandler) and _names(node.type) & _BLIND:
            last = node.body[-1]
            if isinstance(last, ast.Raise) and last.exc is None:
                continue  # clean up, then re-raise the same error
            lines.append(node.lineno)
    return lines


def test_the_rule_sees_what_it_forbids() -> None:
    assert _blind_handlers("try:\n    f()\nexcept Exception:\n    pass\n") == [3]
    assert _blind_handlers("try:\n    f()\nexcept:\n    pass\n") == [3]
    assert _blind_handlers("try:\n    f()\nexcept (OSError, Exception) as e:\n    log(e)\n") == [3]
    assert _blind_handlers("try:\n    f()\nexcept BaseException:\n    undo()\n    raise\n") == []
    assert _blind_handlers("try:\n    f()\nexcept (OSError, ValueError):\n    pass\n") == []


def test_no_product_module_catches_every_exception() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for line in _blind_handlers(path.read_text())
    ]
    assert found == [], "name the errors that can happen: " + ", ".join(found)
