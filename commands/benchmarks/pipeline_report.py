"""The figures of `careledger benchmark`: statistics, the table, the JSON and the plot.

Pure (no service, no clock) except :func:`write_json` and :func:`plot`, which write
files. ``figures`` is the JSON document the command writes (``careledger.benchmark-
pipeline/1``); the table and the plot are drawn from it, so what is printed is what is
recorded.

Latency percentiles come from the processor's latency histogram (``processors.metrics``:
log-spaced buckets 25 % wide), the difference of two snapshots taken around a phase; a
percentile is interpolated linearly inside its bucket (:func:`histogram_percentile`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DrainSample",
    "chained_latencies",
    "default_rates",
    "drain_figures",
    "histogram_diff",
    "histogram_percentile",
    "latency_summary",
    "median_ratios",
    "parse_rates",
    "percentile",
    "plot",
    "rates_by_mode",
    "ratios_of",
    "render_table",
    "send_latencies",
    "weighted_percentile",
    "weighted_summary",
    "write_json",
]

SCHEMA = "careledger.benchmark-pipeline/1"
DEFAULT_FRACTIONS = (0.25, 0.50, 0.75)


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ascending ``sorted_values``; ``q`` in (0, 100]."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError("q must be in (0, 100]")
    rank = math.ceil(q / 100.0 * len(sorted_values))
    return float(sorted_values[max(rank, 1) - 1])


def histogram_diff(before: Sequence[int] | None, after: Sequence[int]) -> list[int]:
    """Counts observed between two snapshots of the same histogram (``before`` None:
    from the start). Raises ValueError if they do not fit (another histogram, or a
    processor that restarted in between: a count went down)."""
    if before is None:
        return list(after)
    if len(before) != len(after):
        raise ValueError("snapshots of different histograms")
    diff = [a - b for a, b in zip(after, before, strict=True)]
    if any(d < 0 for d in diff):
        raise ValueError("a count went down between the snapshots (did the processor restart?)")
    return diff


def histogram_percentile(bounds: Sequence[float], buckets: Sequence[int], q: float) -> float | None:
    """The ``q``-quantile (``q`` in (0, 1]) of a histogram whose bucket ``i`` counts values
    in ``(bounds[i-1], bounds[i]]`` (bucket 0 from 0, the last one above ``bounds[-1]``),
    interpolated linearly inside its bucket. None when empty; a quantile in the overflow
    bucket is reported as ``bounds[-1]`` (a lower bound)."""
    if len(buckets) != len(bounds) + 1:
        raise ValueError("a histogram has one bucket more than it has bounds")
    if not 0 < q <= 1:
        raise ValueError("q must be in (0, 1]")
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            lower = 0.0 if i == 0 else float(bounds[i - 1])
            upper = float(bounds[i])
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
    return float(bounds[-1])  # pragma: no cover - rank <= total always lands above


def latency_summary(bounds: Sequence[float], buckets: Sequence[int]) -> dict[str, Any]:
    """count, p50, p95, p99 (seconds) of a histogram."""
    return {
        "count": int(sum(buckets)),
        "p50_s": histogram_percentile(bounds, buckets, 0.50),
        "p95_s": histogram_percentile(bounds, buckets, 0.95),
        "p99_s": histogram_percentile(bounds, buckets, 0.99),
    }


def weighted_percentile(pairs: Sequence[tuple[float, int]], q: float) -> float:
    """Nearest-rank ``q``-quantile (``q`` in (0, 1]) of values with integer weights
    (``(value, weight)``, any order): the smallest value with at least ``q`` of the total
    weight at or below it."""
    if not 0 < q <= 1:
        raise ValueError("q must be in (0, 1]")
    ordered = sorted((v, w) for v, w in pairs if w > 0)
    total = sum(w for _, w in ordered)
    if total <= 0:
        raise ValueError("no values")
    rank = math.ceil(q * total)
    seen = 0
    for value, weight in ordered:
        seen += weight
        if seen >= rank:
            return float(value)
    return float(ordered[-1][0])  # pragma: no cover - seen reaches total


def weighted_summary(pairs: Sequence[tuple[float, int]]) -> dict[str, Any]:
    """count, p50, p95, p99 and max (seconds) of weighted values."""
    count = sum(w for _, w in pairs if w > 0)
    if count == 0:
        return {"count": 0, "p50_s": None, "p95_s": None, "p99_s": None, "max_s": None}
    return {
        "count": count,
        "p50_s": weighted_percentile(pairs, 0.50),
        "p95_s": weighted_percentile(pairs, 0.95),
        "p99_s": weighted_percentile(pairs, 0.99),
        "max_s": max(v for v, w in pairs if w > 0),
    }


def chained_latencies(
    rows: Iterable[tuple[int, int, int, int]],
    appended: Mapping[tuple[int, int], float],
    stored: Callable[[int, int], float | None],
) -> tuple[list[tuple[float, int]], int]:
    """Per-event latencies of chained events: ``rows`` are (partition, Kafka offset,
    block height, events of that record in that block), ``appended`` the broker append
    time of each (partition, offset), ``stored(partition, height)`` when that block was
    stored (None: unknown). Returns ``(latency, events)`` pairs and how many events had
    no append or store time."""
    pairs: list[tuple[float, int]] = []
    unknown = 0
    for partition, offset, height, n in rows:
        t0 = appended.get((partition, offset))
        t1 = stored(partition, height)
        if t0 is None or t1 is None:
            unknown += n
            continue
        pairs.append((max(t1 - t0, 0.0), n))
    return pairs, unknown


def send_latencies(
    rows: Iterable[tuple[str, int, int]],
    index_of: Mapping[str, int],
    sent_at: Sequence[float],
    stored: Callable[[int, int], float | None],
) -> tuple[list[tuple[float, int]], int]:
    """Per-event latencies from the producer's ``send`` to the block stored: ``rows`` are
    (event id, partition, block height) of chained events, ``index_of`` maps an event id
    to its place in ``sent_at`` (wall-clock send times, 0.0 = not sent). Returns
    ``(latency, 1)`` pairs and how many events had no send or store time."""
    pairs: list[tuple[float, int]] = []
    unknown = 0
    for event_id, partition, height in rows:
        i = index_of.get(event_id)
        t0 = sent_at[i] if i is not None and 0 <= i < len(sent_at) else 0.0
        t1 = stored(partition, height)
        if not t0 or t1 is None:
            unknown += 1
            continue
        pairs.append((max(t1 - t0, 0.0), 1))
    return pairs, unknown


@dataclass(frozen=True)
class DrainSample:
    """One look at a draining pipeline: when, how much of the backlog was stored (in the
    units the store counts: events in blocks, or baseline rows), and CPU seconds used so
    far by the processes watched (None: unknown)."""

    t: float
    stored: int
    cpu: dict[str, float | None]


def drain_figures(
    first: DrainSample, last: DrainSample, target: int, events: int
) -> dict[str, Any]:
    """Throughput and CPU per event between two samples of a drain of ``events`` events
    whose store counts ``target`` units when done (a baseline row may hold a batch: the
    units stored are converted to events pro rata)."""
    units = last.stored - first.stored
    seconds = last.t - first.t
    drained = units * events / target if target > 0 else 0.0
    out: dict[str, Any] = {
        "events_measured": round(drained),
        "seconds": round(seconds, 3),
        "events_per_s": round(drained / seconds, 1) if seconds > 0 and drained > 0 else None,
        "cpu_us_per_event": {},
    }
    for name, before in first.cpu.items():
        after = last.cpu.get(name)
        if before is None or after is None or drained <= 0:
            out["cpu_us_per_event"][name] = None
        else:
            out["cpu_us_per_event"][name] = round((after - before) * 1e6 / drained, 1)
    return out


def _nice(rate: float) -> float:
    """A rate rounded to two significant figures (at least 10 events/s)."""
    if rate <= 10:
        return 10.0
    digits = math.floor(math.log10(rate)) - 1
    return float(round(rate, -digits))


def default_rates(
    peak: float | None, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> list[float]:
    """The offered rates of the latency phases: ``fractions`` of the chained peak,
    rounded to two significant figures; none without a peak."""
    if not peak or peak <= 0:
        return []
    return sorted({_nice(peak * f) for f in fractions})


def parse_rates(text: str) -> list[float]:
    """``"5000,15000"`` -> [5000.0, 15000.0]; ValueError for anything but positive
    numbers (``k`` suffix allowed: ``15k``)."""
    rates: list[float] = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        scale = 1000.0 if part.endswith("k") else 1.0
        try:
            value = float(part.rstrip("k")) * scale
        except ValueError:
            raise ValueError(f"not a rate: {part!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"a rate must be a positive number of events/s: {part!r}")
        rates.append(value)
    if not rates:
        raise ValueError("no rate given")
    return rates


# --------------------------------------------------------------------------- the table


def _n(value: float | None, fmt: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value * 1000:,.0f} ms" if value < 10 else f"{value:,.1f} s"


def _secs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f} s"


def _mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f} MB"


def _load(value: Sequence[float] | None) -> str:
    return "n/a" if not value else " ".join(f"{x:.2f}" for x in value)


def _mode_label(mode: str, p: int) -> str:
    if mode == "chained":
        return f"chained, {p} process{'es' if p != 1 else ''}"
    if mode == "chained-sealed":
        return f"sealed, {p} process{'es' if p != 1 else ''}"
    return str(mode)


def _drain_label(d: dict[str, Any]) -> str:
    label = _mode_label(d["mode"], d.get("processes", 1))
    return label if d.get("round") is None else f"{label} #{d['round']}"


# --------------------------------------------------------------------------- rounds


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def ratios_of(drains: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """The throughput ratios of drains run in one round (one drain per mode): chained
    over baseline, and those of the modes that ran (2 processes over 1, sealed over
    chained, sealed by 2 over 1)."""
    rates = {(d["mode"], d.get("processes", 1)): d.get("events_per_s") for d in drains}
    one = rates.get(("chained", 1))
    out = {"chained_over_baseline": _ratio(one, rates.get(("baseline", 1)))}
    if ("chained", 2) in rates:
        out["two_processes_over_one"] = _ratio(rates[("chained", 2)], one)
    if ("chained-sealed", 1) in rates:
        sealed = rates[("chained-sealed", 1)]
        out["sealed_over_chained"] = _ratio(sealed, one)
        if ("chained-sealed", 2) in rates:
            out["sealed_two_processes_over_one"] = _ratio(rates[("chained-sealed", 2)], sealed)
    return out


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def median_ratios(rounds: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Each ratio's median over the rounds that have it (None where no round does)."""
    keys = list(dict.fromkeys(k for r in rounds for k in r))
    out: dict[str, float | None] = {}
    for key in keys:
        values = [v for r in rounds if (v := r.get(key)) is not None]
        out[key] = round(_median(values), 3) if values else None
    return out


def rates_by_mode(drains: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per mode (and process count), in the order first run: the median, lowest and
    highest events/s of its drains, and how many had a rate."""
    groups: dict[tuple[str, int], list[float]] = {}
    for d in drains:
        rates = groups.setdefault((d["mode"], d.get("processes", 1)), [])
        if d.get("events_per_s") is not None:
            rates.append(float(d["events_per_s"]))
    return [
        {
            "mode": mode,
            "processes": p,
            "drains": len(rates),
            "median_events_per_s": _median(rates) if rates else None,
            "min_events_per_s": min(rates, default=None),
            "max_events_per_s": max(rates, default=None),
        }
        for (mode, p), rates in groups.items()
    ]


_RATIO_LABELS = (
    ("chained_over_baseline", "chained / baseline throughput"),
    ("two_processes_over_one", "2 processes / 1 process (chained)"),
    ("sealed_over_chained", "sealed / chained throughput (encryption at rest)"),
    ("sealed_two_processes_over_one", "2 processes / 1 process (sealed)"),
)


def _round_lines(figures: Mapping[str, Any]) -> list[str]:
    """The ratios (each round's, and their median when the drains ran in rounds) and, in
    rounds, each mode's median events/s with its range."""
    ratios = figures.get("ratios", {})
    rounds = figures.get("ratios_by_round") or []
    lines = []
    for key, label in _RATIO_LABELS:
        if ratios.get(key) is None:
            continue
        line = f"  {label}: {ratios[key]:.2f}"
        if rounds:
            each = ", ".join("n/a" if r.get(key) is None else f"{r[key]:.2f}" for r in rounds)
            line += f" (median of {len(rounds)} rounds: {each})"
        lines.append(line)
    if rounds:
        for m in figures.get("rates_by_mode", []):
            lines.append(
                f"  {_mode_label(m['mode'], m['processes'])}: median "
                f"{_n(m.get('median_events_per_s'))} events/s over {m['drains']} drains "
                f"({_n(m.get('min_events_per_s'))} to {_n(m.get('max_events_per_s'))})"
            )
    return lines


def render_table(figures: dict[str, Any]) -> str:
    """The text the command prints."""
    m = figures.get("machine", {})
    s = figures.get("settings", {})
    lines = [
        f"careledger benchmark  {figures.get('started_at', '')}",
        f"machine: {m.get('cores')} cores ({m.get('cpu_model')}), "
        f"{_n((m.get('memory_bytes') or 0) / 2**30, '.1f')} GiB; "
        f"Kafka {m.get('kafka_version')}, ClickHouse {m.get('clickhouse_version')}; "
        "processor, Kafka and ClickHouse on this machine",
        f"pipeline: {s.get('partitions')} partitions, blocks <= {s.get('block_max_events')} "
        f"events / {s.get('block_max_ms')} ms; source signatures "
        f"{'required' if s.get('require_source_signatures') else 'optional'}, SDK batches "
        f"<= {s.get('source_batch_max_events')} events / {s.get('source_batch_max_ms')} ms, "
        f"{s.get('source_record_format')} records",
    ]
    backlog = figures.get("backlog")
    if backlog:
        lines.append(
            f"backlog: {backlog['events']:,} events in {_n(backlog.get('records'))} Kafka "
            f"records, produced by {backlog['threads']} SDK thread at "
            f"{_n(backlog.get('offered_events_per_s'))} events/s "
            f"(load {_load(backlog.get('load_average_at_start'))})"
        )
    sealed = figures.get("backlog_sealed")
    if sealed:
        lines.append(
            f"sealed backlog: the same events in {_n(sealed.get('records'))} Kafka records, "
            f"sealed and produced by {sealed['threads']} SDK thread at "
            f"{_n(sealed.get('offered_events_per_s'))} events/s "
            f"(load {_load(sealed.get('load_average_at_start'))})"
        )
    drains = figures.get("drain", [])
    if drains:
        lines += [
            "",
            f"drain a backlog of {figures.get('events', 0):,} events: events/s from the consumer "
            "group stable to the last event stored; wall: from the processes' start",
            f"  {'':<22} {'load at start':>15} {'events/s':>10} {'wall':>8}  "
            f"{'CPU µs/event: processor / Kafka / ClickHouse':>45}  {'peak RSS':>9}  check",
        ]
        for d in drains:
            cpu = d.get("cpu_us_per_event", {})
            cpu_text = " / ".join(
                _n(cpu.get(k), ",.0f") for k in ("processor", "kafka", "clickhouse")
            )
            check = d.get("check") or {}
            verdict = (
                "-"
                if not check
                else (
                    "ok"
                    if check.get("ok")
                    else f"LOST {check.get('lost')} DUP {check.get('duplicated')}"
                )
            )
            lines.append(
                f"  {_drain_label(d):<22} {_load(d.get('load_average_at_start')):>15} "
                f"{_n(d.get('events_per_s')):>10} {_secs(d.get('wall_seconds')):>8}  "
                f"{cpu_text:>45}  "
                f"{_mb(d.get('peak_rss_bytes')):>9}  {verdict}"
            )
            if d.get("note"):
                lines.append(f"  {'':<22} {d['note']}")
        lines += _round_lines(figures)
    phases = figures.get("latency", [])
    if phases:
        lines += [
            "",
            "latency, Kafka append -> stored (chained: in a signed block, per event; "
            "baseline: per record)",
            f"  {'mode':<9} {'target/s':>9} {'offered/s':>10} {'thr':>3} {'events':>9} "
            f"{'p50':>8} {'p95':>8} {'p99':>8} {'p99 send':>9} {'caught up':>10} "
            f"{'CPU µs/ev':>9} {'load at start':>15}",
        ]
        for p in phases:
            lat = p.get("latency", {})
            lag = p.get("caught_up_after_s")
            lines.append(
                f"  {p['mode']:<9} {_n(p.get('target_events_per_s')):>9} "
                f"{_n(p.get('offered_events_per_s')):>10} {p.get('threads', 1):>3} "
                f"{p.get('events', 0):>9,} {_ms(lat.get('p50_s')):>8} "
                f"{_ms(lat.get('p95_s')):>8} {_ms(lat.get('p99_s')):>8} "
                f"{_ms(p.get('latency_from_send', {}).get('p99_s')):>9} "
                f"{'n/a' if lag is None else f'+{lag:.1f} s':>10} "
                f"{_n(p.get('cpu_us_per_event', {}).get('processor')):>9} "
                f"{_load(p.get('load_average_at_start')):>15}"
            )
        lines.append(
            "  p99 send: from the producer's send() (SDK batching and signing included) to "
            "stored in a signed block"
        )
        for mode, rss in figures.get("latency_peak_rss_bytes", {}).items():
            lines.append(f"  {mode} processor peak RSS during the latency phases: {_mb(rss)}")
    for note in figures.get("notes", []):
        lines.append(f"note: {note}")
    if figures.get("json_path"):
        lines.append(f"figures: {figures['json_path']}")
    if figures.get("plot_path"):
        lines.append(f"plot:    {figures['plot_path']}")
    elif figures.get("plot_skipped"):
        lines.append(f"plot:    skipped ({figures['plot_skipped']})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- files


def to_json(figures: dict[str, Any]) -> str:
    """The figures as JSON (``allow_nan=False``: NaN or infinity is a bug, not a figure)."""
    return json.dumps(figures, indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_json(figures: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(to_json(figures), encoding="utf-8")
    tmp.replace(path)


def plot_series(figures: dict[str, Any]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """mode -> percentile name -> [(offered events/s, latency s)], ascending rate; phases
    without a rate or a latency are left out."""
    series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for p in figures.get("latency", []):
        rate = p.get("offered_events_per_s")
        if rate is None:
            continue
        for name in ("p50_s", "p95_s", "p99_s"):
            value = p.get("latency", {}).get(name)
            if value is not None:
                series.setdefault(p["mode"], {}).setdefault(name, []).append((rate, value))
        value = p.get("latency_from_send", {}).get("p99_s")
        if value is not None:
            series.setdefault(p["mode"], {}).setdefault("send_p99_s", []).append((rate, value))
    for by_name in series.values():
        for points in by_name.values():
            points.sort()
    return series


def plot(figures: dict[str, Any], path: Path) -> str | None:
    """Draw latency (log scale) against offered rate, one line per mode and percentile,
    with each mode's drain throughput as a vertical line. Returns why it was skipped, or
    None when ``path`` was written."""
    try:
        import matplotlib

        logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font cache notes
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'careledger[benchmark]')"
    series = plot_series(figures)
    if not series:
        return "no latency figures"
    colors = {"chained": "tab:blue", "baseline": "tab:gray"}
    styles = {"p50_s": ":", "p95_s": "--", "p99_s": "-", "send_p99_s": "-."}
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    try:
        for mode, by_name in series.items():
            for name, points in by_name.items():
                xs, ys = zip(*points, strict=True)
                ax.plot(
                    xs,
                    ys,
                    styles.get(name, "-"),
                    marker="o",
                    color=colors.get(mode),
                    label=f"{mode} {name[:-2].replace('_', ' ')}",
                )
        offered = max(x for by_name in series.values() for pts in by_name.values() for x, _ in pts)
        right = 1.3 * offered
        for d in figures.get("drain", []):  # the chained drain rate in sight when near
            rate = d.get("events_per_s")
            if d["mode"] == "chained" and rate and rate <= 3 * offered:
                right = max(right, 1.1 * rate)
        for d in figures.get("drain", []):
            rate = d.get("events_per_s")
            if rate and d.get("processes", 1) == 1:
                label = f"{d['mode']} drain {rate:,.0f} events/s"
                if rate <= right:
                    ax.axvline(rate, color=colors.get(d["mode"]), alpha=0.4, label=label)
                else:  # off the scale of the offered rates: named, not drawn
                    ax.plot([], [], color=colors.get(d["mode"]), alpha=0.4, label=label + " →")
        ax.set_xlim(0, right)
        ax.axhline(1.0, color="tab:red", alpha=0.3, linewidth=1, label="1 s")
        ax.set_yscale("log")
        ax.set_xlabel("offered events/s (achieved)")
        ax.set_ylabel("Kafka append -> stored, s")
        m = figures.get("machine", {})
        ax.set_title(
            f"careledger pipeline, {m.get('cores')} cores, {figures.get('started_at', '')}",
            fontsize=10,
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return None
