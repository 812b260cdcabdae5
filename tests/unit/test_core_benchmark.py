"""The core benchmark runs (smoke test only: no timing assertions)."""

from __future__ import annotations

from careledger_core.event import decode_and_canonicalize
from careledger_core.jcs import canonicalize
from commands.benchmarks.core import run, sample_event


def test_benchmark_events_are_valid_and_about_540_bytes() -> None:
    for i in (0, 1, 99_999):
        canonical = canonicalize(sample_event(i))
        assert decode_and_canonicalize(canonical)[1] == canonical
        assert 500 <= len(canonical) <= 600


def test_benchmark_reports_every_figure() -> None:
    results = run(2_000)
    for name in (
        "baseline_json_canonicalize_per_s",
        "msgspec_decode_encode_per_s",
        "decode_and_canonicalize_per_s",
        "decode_and_canonicalize_noncanonical_input_per_s",
        "leaf_merkle_sign_per_s",
        "speedup_vs_baseline",
    ):
        assert results[name] > 0
