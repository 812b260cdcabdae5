"""``careledger benchmark-verify --ledger``: what it keeps of verify's RSS over time and
of verify's own JSON, and how a child is measured (``run_measured``, on a real child;
verify itself is measured against the stack by hand; with a server down it is tested in
test_cli_honesty)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from commands.benchmarks.verify_audited import figures_of, shown, timeline


@given(st.lists(st.floats(min_value=0, max_value=1e5), min_size=1, max_size=500))
def test_the_rss_over_time_keeps_its_peak_and_its_end_in_order(rss: list[float]) -> None:
    samples = [(float(i), m) for i, m in enumerate(rss)]
    kept = timeline(samples, points=40)
    assert len(kept) <= 42
    assert [t for t, _m in kept] == sorted({t for t, _m in kept})
    assert kept[-1] == [round(samples[-1][0], 1), round(samples[-1][1], 1)]
    assert max(m for _t, m in kept) == round(max(rss), 1)
    if len(rss) <= 40:
        assert len(kept) == len(rss)


def test_the_figures_are_verifys_own_counts() -> None:
    doc = {
        "result": "intact",
        "elapsed_s": 224.0,
        "totals": {"chains": 9, "events": 1025310, "findings": 0, "failures": 0},
        "audit": {"result": "intact", "decisions": 1000017, "alerts": 7232, "elapsed_s": 203.8},
    }
    run: dict[str, Any] = {"exit": 0, "wall_s": 230.0, "cpu_s": 228.5, "peak_rss_mb": 508.9}
    run |= {"rss_mb_over_time": [[1.0, 180.0], [30.0, 477.0]], **figures_of(doc)}
    assert (run["events"], run["decisions"], run["alerts"]) == (1025310, 1000017, 7232)
    text = shown({"machine": {"cores": 2, "loadavg_at_start": [0.9, 1.2, 1.5]}, "run": run})
    assert "1,025,310 events, 1,000,017 decisions, 7,232 alerts" in text
    assert "intact (exit 0, 0 findings)" in text and "peak RSS 509 MB" in text


def test_a_measured_child_gives_its_exit_output_peak_and_rss_over_time() -> None:
    """``run_measured`` on a real child that holds 96 MB for a moment, prints and fails:
    its peak RSS is at least what it held, sampled RSS reaches it, the exit and the
    output are its own."""
    import sys

    from careledger.config import Settings
    from commands.benchmarks.child import run_measured

    code = (
        "import sys, time; held = bytearray(96 * 2**20); held[::4096] = b'x' * len(held[::4096]); "
        "time.sleep(0.6); print('out'); print('err', file=sys.stderr); sys.exit(3)"
    )
    sampled = run_measured([sys.executable, "-c", code], Settings(), sample_every_s=0.05)
    assert (sampled.exit, sampled.stdout, sampled.stderr) == (3, "out\n", "err\n")
    assert sampled.peak_rss_mb >= 96 and sampled.wall_s >= 0.6 and sampled.cpu_s > 0
    assert sampled.rss_mb and max(mb for _t, mb in sampled.rss_mb) >= 96
    assert [t for t, _mb in sampled.rss_mb] == sorted(t for t, _mb in sampled.rss_mb)
    blocking = run_measured([sys.executable, "-c", code], Settings())
    assert blocking.exit == 3 and blocking.peak_rss_mb >= 96 and not blocking.rss_mb
