"""The progress line of long commands: on a terminal rewritten in place, rate-limited and
cleared; nothing on a pipe unless asked; plain lines when forced."""

from __future__ import annotations

import io

from careledger.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_terminal_gets_one_line_rewritten_rate_limited_and_cleared() -> None:
    out, clock = Terminal(), Clock()
    p = Progress("verify", stream=out, clock=clock)
    p.update("1/9 chains")
    p.update("2/9 chains")  # too soon: not shown
    clock.now += 0.6
    p.update("3/9 chains, 1,000 events verified")
    p.done()
    text = out.getvalue()
    assert "\n" not in text
    assert text.count("\r") == 4  # two updates, and the clearing (spaces between two)
    assert "1/9 chains" in text and "2/9" not in text and "3/9 chains" in text
    assert text.endswith("\r") and text.rstrip("\r").endswith(" ")


def test_a_pipe_gets_nothing_unless_asked_then_plain_lines() -> None:
    out, clock = io.StringIO(), Clock()
    quiet = Progress("audit", stream=out, clock=clock)
    quiet.update("5,000 accesses")
    quiet.done()
    assert out.getvalue() == ""
    forced = Progress("audit", stream=out, enabled=True, clock=clock)
    forced.update("5,000 accesses")
    clock.now += 1
    forced.update("10,000 accesses")  # within 5 s: not shown
    clock.now += 5
    forced.update("15,000 accesses")
    forced.done()
    lines = out.getvalue().splitlines()
    assert lines == ["audit: 5,000 accesses (0 s)", "audit: 15,000 accesses (6 s)"]
