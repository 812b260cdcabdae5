"""`careledger benchmark --repeat N`: the drains in rounds of every mode, each round's
ratios from its own drains, and their medians (``commands.benchmarks.pipeline_report``).
Runs of the same code on a busy 2-core machine varied by up to a third; a ratio taken
from drains minutes apart mixed that drift into the cost it claims to measure."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from commands.benchmarks import pipeline
from commands.benchmarks.pipeline_report import (
    median_ratios,
    rates_by_mode,
    ratios_of,
    render_table,
)


def _drain(mode: str, rate: float | None, processes: int = 1, r: int | None = None) -> Any:
    d: dict[str, Any] = {
        "mode": mode,
        "processes": processes,
        "load_average_at_start": [1.0, 1.0, 1.0],
        "events_per_s": rate,
        "wall_seconds": 10.0,
        "cpu_us_per_event": {"processor": 40.0, "kafka": 5.0, "clickhouse": 20.0},
        "peak_rss_bytes": 300 * 2**20,
    }
    if r is not None:
        d["round"] = r
    return d


def test_a_rounds_ratios_come_from_its_own_drains() -> None:
    got = ratios_of(
        [
            _drain("chained", 16_000.0),
            _drain("chained", 20_000.0, processes=2),
            _drain("chained-sealed", 8_000.0),
            _drain("chained-sealed", 10_000.0, processes=2),
            _drain("baseline", 64_000.0),
        ]
    )
    assert got == {
        "chained_over_baseline": 0.25,
        "two_processes_over_one": 1.25,
        "sealed_over_chained": 0.5,
        "sealed_two_processes_over_one": 1.25,
    }
    # modes that did not run have no ratio; a drain without a rate gives none
    assert ratios_of([_drain("chained", None), _drain("baseline", 50_000.0)]) == {
        "chained_over_baseline": None
    }


def test_the_median_of_each_ratio_skips_rounds_without_it() -> None:
    rounds = [
        {"sealed_over_chained": 0.5, "chained_over_baseline": 0.3},
        {"sealed_over_chained": 0.7, "chained_over_baseline": None},
        {"sealed_over_chained": 0.55, "chained_over_baseline": 0.2},
    ]
    assert median_ratios(rounds) == {"sealed_over_chained": 0.55, "chained_over_baseline": 0.25}
    assert median_ratios([{"x": None}]) == {"x": None}


def test_rates_by_mode_give_median_and_range_in_the_order_run() -> None:
    drains = [
        _drain("chained", 15_000.0, r=1),
        _drain("baseline", 60_000.0, r=1),
        _drain("chained", 17_000.0, r=2),
        _drain("baseline", None, r=2),
        _drain("chained", 16_000.0, r=3),
        _drain("baseline", 70_000.0, r=3),
    ]
    assert rates_by_mode(drains) == [
        {
            "mode": "chained",
            "processes": 1,
            "drains": 3,
            "median_events_per_s": 16_000.0,
            "min_events_per_s": 15_000.0,
            "max_events_per_s": 17_000.0,
        },
        {
            "mode": "baseline",
            "processes": 1,
            "drains": 2,
            "median_events_per_s": 65_000.0,
            "min_events_per_s": 60_000.0,
            "max_events_per_s": 70_000.0,
        },
    ]


def test_the_table_names_each_round_and_shows_the_medians() -> None:
    drains = [
        _drain("chained", 16_000.0, r=1),
        _drain("chained-sealed", 8_000.0, r=1),
        _drain("baseline", 64_000.0, r=1),
        _drain("chained", 18_000.0, r=2),
        _drain("chained-sealed", 12_600.0, r=2),
        _drain("baseline", 60_000.0, r=2),
    ]
    per_round = [ratios_of(drains[:3]), ratios_of(drains[3:])]
    figures = {
        "events": 100_000,
        "drain": drains,
        "ratios": median_ratios(per_round),
        "ratios_by_round": per_round,
        "rates_by_mode": rates_by_mode(drains),
    }
    text = render_table(figures)
    assert "chained, 1 process #1" in text and "sealed, 1 process #2" in text
    assert (
        "sealed / chained throughput (encryption at rest): 0.60 (median of 2 rounds: 0.50, 0.70)"
        in text
    )
    assert "chained / baseline throughput: 0.28 (median of 2 rounds: 0.25, 0.30)" in text
    assert "sealed, 1 process: median 10,300 events/s over 2 drains (8,000 to 12,600)" in text
    # one round: no round numbers, no medians
    one_round = [{k: v for k, v in d.items() if k != "round"} for d in drains[:3]]
    single = render_table({"events": 1, "drain": one_round, "ratios": per_round[0]})
    assert "#1" not in single and "median" not in single
    assert "sealed / chained throughput (encryption at rest): 0.50\n" in single + "\n"


def test_repeat_is_a_positive_count() -> None:
    parser = argparse.ArgumentParser()
    pipeline.configure_benchmark(parser)
    assert parser.parse_args([]).repeat == 1
    assert parser.parse_args(["--repeat", "3"]).repeat == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--repeat", "0"])
