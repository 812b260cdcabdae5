"""Text the sources wrote, made safe for the outputs people open (ADR 0026).

Actor names and ids, organisations and workstations come from the audited systems and
reach CSV exports (opened in spreadsheets) and terminal tables. Two functions, for those
outputs only; JSON output is left exact (its encoder escapes control characters):

* :func:`display` — for terminals and text tables: every control character (C0, DEL,
  C1: ESC starts ANSI sequences, CR rewrites the line) and every invisible bidi or
  line-breaking format character is shown as its Python escape (``\\x1b``, ``\\r``,
  ``\\u202e``), so it is visible and cannot act.
* :func:`csv_cell` — for CSV: :func:`display`, then a cell a spreadsheet would evaluate
  as a formula (first character ``= + - @``, TAB or CR, or their full-width forms) gets
  a leading single quote, as the OWASP CSV injection guidance says. The documented
  placeholder ``-`` and plain numbers are left as they are.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["csv_cell", "display"]

#: C0 and C1 controls, DEL, and the format characters that reorder or hide text or
#: break lines in a terminal: bidi embeddings / overrides / isolates / marks, zero-width
#: characters, line and paragraph separators, the BOM.
_UNSAFE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]"
)
_FORMULA_START: Final = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")
_PLAIN_NUMBER: Final = re.compile(r"\A-?[0-9]+(?:\.[0-9]+)?\Z")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in "\r\n\t":
        return {"\r": "\\r", "\n": "\\n", "\t": "\\t"}[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def display(value: object) -> str:
    """``str(value)`` with control and invisible format characters shown escaped."""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_escape, text)


def csv_cell(value: object) -> str:
    """A CSV cell: :func:`display`, and a leading ``'`` before what a spreadsheet would
    evaluate (OWASP: cells starting with ``= + - @``, TAB, CR)."""
    raw = value if isinstance(value, str) else str(value)
    if raw and raw[0] in _FORMULA_START and raw != "-" and not _PLAIN_NUMBER.match(raw):
        return "'" + display(raw)
    return display(raw)
