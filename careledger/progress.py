"""A progress line for long commands (issue 13): ``verify`` over a large ledger, ``audit
--from/--to`` over a long range. On a terminal, one line on stderr rewritten in place at
most twice a second and cleared at the end; elsewhere (a pipe, a log, CI) nothing, so
that stderr keeps only what a command says on purpose (its one-line errors). ``--progress``
forces it as plain lines at most every 5 seconds."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(
        self,
        label: str,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = self.tty if enabled is None else enabled
        self.every_s = 0.5 if self.tty else 5.0
        self._clock = clock
        self.started = clock()
        self._last = float("-inf")
        self._width = 0

    def update(self, text: str, *, force: bool = False) -> None:
        """Show ``text`` (with the elapsed time) unless shown less than ``every_s`` ago."""
        if not self.enabled:
            return
        now = self._clock()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        line = f"{self.label}: {text} ({now - self.started:,.0f} s)"
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        """Clear the line (a terminal) so that the command's own output follows."""
        if self.enabled and self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
