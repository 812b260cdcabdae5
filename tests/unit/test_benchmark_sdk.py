"""benchmark-sdk must not write to a real ledger's topics: its producers sign with keys
nobody registered, and their heartbeats on the sources topic are findings there (found
when a demo ledger verified as tampered after a benchmark run)."""

from __future__ import annotations

import dataclasses

from careledger.config import load_settings
from commands.benchmarks.sdk import bench_settings


def test_every_topic_of_the_benchmark_is_its_own() -> None:
    base = load_settings(env={})
    mine = bench_settings(base)
    topics = [f.name for f in dataclasses.fields(base) if f.name.startswith("topic_")]
    assert "topic_sources" in topics and "topic_events" in topics
    for name in topics:
        assert getattr(mine, name) != getattr(base, name), name
    assert bench_settings(base).topic_sources != mine.topic_sources  # one set per run
