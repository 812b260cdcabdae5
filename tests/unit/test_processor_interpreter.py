"""The processor's interpreter settings (ADR 0038, ADR 0039): what ``careledger process``
sets before it starts, read back from the interpreter."""

from __future__ import annotations

import gc
import sys

from processors.app import (
    GC_THRESHOLDS,
    SWITCH_INTERVAL_S,
    block_timer_interval_s,
    tune_interpreter,
)


def test_the_processor_collects_rarely_and_switches_threads_often() -> None:
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    try:
        tune_interpreter()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert abs(sys.getswitchinterval() - SWITCH_INTERVAL_S) < 1e-9
        # far below CPython's 5 ms, the wait that made every C call releasing the GIL
        # in the event loop a chance for another thread to keep it that long
        assert SWITCH_INTERVAL_S <= 0.0005 < 0.005
        assert GC_THRESHOLDS[0] >= 10_000
    finally:
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(interval)


def test_a_block_closes_at_most_a_quarter_of_its_time_late() -> None:
    from careledger.config import Settings

    assert block_timer_interval_s(Settings(block_max_ms=250)) == 0.0625
    assert block_timer_interval_s(Settings(block_max_ms=1000)) == 0.25
    assert block_timer_interval_s(Settings(block_max_ms=20)) == 0.01  # never a busy timer
