"""The alert-latency benchmark's measurement: reading the topics' records and the figures.

Pure parts of ``careledger benchmark-alerts`` (commands.benchmarks.alerts): alert
documents and checkpoint notes as read back from their topics, the first alert
listing each event, when each block was committed, the latency of each labelled
access (see the command's module docstring for what is measured), percentiles and
the distributions, and the text the command prints. No service, no clock.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from careledger_core.checkpoint import parse_checkpoint
from careledger_core.errors import CareledgerError

ALERT_SCHEMA = "careledger.alert/1"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the smallest value with at least ``q`` % of the values
    at or below it) of ascending ``sorted_values``; ``q`` in (0, 100]."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError("q must be in (0, 100]")
    rank = math.ceil(q / 100.0 * len(sorted_values))
    return float(sorted_values[max(rank, 1) - 1])


def summarize(values: Iterable[float]) -> dict[str, Any]:
    """count, p50, p95, p99 and max (seconds; None when there are no values)."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "p50_s": None, "p95_s": None, "p99_s": None, "max_s": None}
    return {
        "count": len(ordered),
        "p50_s": percentile(ordered, 50),
        "p95_s": percentile(ordered, 95),
        "p99_s": percentile(ordered, 99),
        "max_s": ordered[-1],
    }


@dataclass(frozen=True)
class AlertRecord:
    """One alert document as appended to the alerts topic."""

    appended_at: float  # seconds since the epoch (broker append time)
    alert_id: str
    rule: str
    #: related (unflagged) events first, then the flagged ones (``Alert.event_ids``)
    event_ids: tuple[str, ...]
    related: int  # how many of ``event_ids`` are related, not flagged

    @property
    def flagged(self) -> tuple[str, ...]:
        return self.event_ids[self.related :]


def parse_alert(value: bytes, appended_at: float) -> AlertRecord | None:
    """An auditor alert from the alerts topic; None for anything else (verifier findings)."""
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("schema") != ALERT_SCHEMA:
        return None
    if doc.get("source", "auditor") != "auditor":  # e.g. the processor's quarantine alerts
        return None
    event_ids = tuple(str(e) for e in doc.get("event_ids", ()))
    evidence = doc.get("evidence") or {}
    related = int(evidence.get("related_events", 0)) if isinstance(evidence, dict) else 0
    return AlertRecord(
        appended_at=appended_at,
        alert_id=str(doc.get("alert_id", "")),
        rule=str(doc.get("rule", "")),
        event_ids=event_ids,
        related=max(0, min(related, len(event_ids))),
    )


@dataclass(frozen=True)
class Listing:
    """The first alert record that lists an event."""

    at: float
    alert_id: str
    rule: str
    flagged: bool  # the event is among the alert's flagged events (not only related)
    #: flagged events this publication added to the alert (the accesses whose decisions
    #: made it list the event); the event itself when it is flagged
    triggers: tuple[str, ...]


def first_listings(records: Iterable[AlertRecord]) -> dict[str, Listing]:
    """Event id -> the earliest alert record listing it (records in append order; an
    alert is published again, with the same id, each time it grows)."""
    seen_flagged: dict[str, set[str]] = {}
    out: dict[str, Listing] = {}
    for rec in sorted(records, key=lambda r: r.appended_at):  # stable: topic order on ties
        before = seen_flagged.setdefault(rec.alert_id, set())
        flagged = rec.flagged
        new = tuple(e for e in flagged if e not in before)
        before.update(flagged)
        flagged_set = set(flagged)
        for eid in rec.event_ids:
            if eid in out:
                continue
            if eid in flagged_set:
                out[eid] = Listing(rec.appended_at, rec.alert_id, rec.rule, True, (eid,))
            else:
                out[eid] = Listing(rec.appended_at, rec.alert_id, rec.rule, False, new or flagged)
    return out


class CommitTimes:
    """When each block of each chain was committed, from the processor's checkpoints:
    (append time, chain id, size) records; a block at height h is committed by the
    first checkpoint of its chain with size > h."""

    def __init__(self, checkpoints: Iterable[tuple[float, str, int]]) -> None:
        per_chain: dict[str, list[tuple[float, int]]] = {}
        for at, chain_id, size in checkpoints:
            per_chain.setdefault(chain_id, []).append((at, size))
        self._times: dict[str, list[float]] = {}
        self._sizes: dict[str, list[int]] = {}
        for chain_id, entries in per_chain.items():
            entries.sort()
            times, sizes, top = [], [], 0
            for at, size in entries:
                if size > top:  # a late, smaller checkpoint adds nothing
                    top = size
                    times.append(at)
                    sizes.append(size)
            self._times[chain_id] = times
            self._sizes[chain_id] = sizes

    def at(self, chain_id: str, height: int) -> float | None:
        sizes = self._sizes.get(chain_id)
        if not sizes:
            return None
        i = bisect.bisect_right(sizes, height)  # first size > height
        return self._times[chain_id][i] if i < len(sizes) else None


def parse_checkpoint_note(note: bytes) -> tuple[str, int] | None:
    """(chain id, size) of a signed checkpoint note, or None if it is not one."""
    try:
        body = note.decode("utf-8").split("\n\n", 1)[0] + "\n"
        cp = parse_checkpoint(body)
    except (UnicodeDecodeError, ValueError, CareledgerError):
        return None
    return cp.origin, cp.size


@dataclass(frozen=True)
class EventLatency:
    event_id: str
    produced_at: float
    alerted_at: float | None
    #: produce time of the access whose decision raised the alert (see the module doc)
    raised_by_at: float | None
    chained_at: float | None  # commit time of the block holding that access
    flagged_itself: bool
    rule: str | None
    in_kafka_at: float | None = None  # that access's record appended to the events topic


def match_latencies(
    labelled: Iterable[str],
    produced_at: Mapping[str, float],
    listings: Mapping[str, Listing],
    chained_at: Callable[[str], float | None],
    in_kafka_at: Callable[[str], float | None] = lambda _e: None,
) -> list[EventLatency]:
    """One ``EventLatency`` per labelled event with a produce time (alerted or not).
    ``chained_at(event_id)``: commit time of the block holding the event, if known;
    ``in_kafka_at(event_id)``: when its record was appended to the events topic."""
    out: list[EventLatency] = []
    for eid in labelled:
        t0 = produced_at.get(eid)
        if t0 is None:
            continue
        listing = listings.get(eid)
        if listing is None:
            out.append(EventLatency(eid, t0, None, None, None, False, None))
            continue
        raiser = eid
        if not listing.flagged:
            later = [
                (produced_at[t], t)
                for t in listing.triggers
                if t in produced_at and produced_at[t] >= t0
            ]
            if later:
                raiser = min(later)[1]
        out.append(
            EventLatency(
                event_id=eid,
                produced_at=t0,
                alerted_at=listing.at,
                raised_by_at=produced_at[raiser],
                chained_at=chained_at(raiser),
                flagged_itself=listing.flagged,
                rule=listing.rule,
                in_kafka_at=in_kafka_at(raiser),
            )
        )
    return out


def latency_figures(latencies: Sequence[EventLatency]) -> dict[str, Any]:
    """The distributions printed by the benchmark."""
    raised: list[float] = []
    own: list[float] = []
    to_chained: list[float] = []
    to_alert: list[float] = []
    to_kafka: list[float] = []
    kafka_to_chained: list[float] = []
    related_only = 0
    for x in latencies:
        if x.alerted_at is None or x.raised_by_at is None:
            continue
        raised.append(x.alerted_at - x.raised_by_at)
        own.append(x.alerted_at - x.produced_at)
        related_only += not x.flagged_itself
        if x.chained_at is not None:
            to_chained.append(x.chained_at - x.raised_by_at)
            to_alert.append(x.alerted_at - x.chained_at)
        if x.in_kafka_at is not None:
            to_kafka.append(x.in_kafka_at - x.raised_by_at)
            if x.chained_at is not None:
                kafka_to_chained.append(x.chained_at - x.in_kafka_at)
    return {
        "labelled": len(latencies),
        "alerted": len(raised),
        "alerted_share": len(raised) / len(latencies) if latencies else None,
        "alerted_as_related_only": related_only,
        "produce_to_alert": summarize(raised),
        "own_produce_to_alert": summarize(own),
        "produce_to_chained": summarize(to_chained),
        "produce_to_kafka": summarize(to_kafka),
        "kafka_to_chained": summarize(kafka_to_chained),
        "chained_to_alert": summarize(to_alert),
    }


def _ms(value: float | None) -> str:
    return "    n/a" if value is None else f"{value * 1000:7.0f}"


def render(figures: Mapping[str, Any]) -> str:
    """The figures as the text ``careledger benchmark-alerts`` prints."""
    m, tr, lat, st = figures["machine"], figures["traffic"], figures["latency"], figures["settings"]
    load = " ".join(f"{x:.2f}" for x in m["load_average_start"])
    lines: list[str] = []
    lines.append(
        f"careledger benchmark-alerts on {m['cores']} cores (load average {load} at start), "
        f"{st['partitions']} partitions, blocks <= {st['block_max_events']} events or "
        f"{st['block_max_ms']} ms, audit poll every {st['audit_poll_interval_s']} s"
    )
    rate = tr["ingest_rate_per_s"] or 0.0
    after = tr["decided_after_last_produce_s"]
    lines.append(
        f"  ingest: {tr['timed_events']:,} events at {rate:,.0f} events/s "
        f"(asked {tr['rate_asked_per_s']:,.0f}; {tr['warmup_events']:,} warm-up events "
        "before the clock), "
        + (
            f"all audited {after:.2f} s after the last produce"
            if after is not None
            else "NOT all audited"
        )
    )
    share = lat["alerted_share"]
    in_warmup = figures.get("scenario", {}).get("labelled_in_warmup", 0)
    lines.append(
        f"  labelled inappropriate accesses: {lat['labelled']:,} timed "
        f"(+{in_warmup:,} in the warm-up), alerted {lat['alerted']:,} "
        f"({'n/a' if share is None else f'{share:.1%}'}; "
        f"{lat['alerted_as_related_only']:,} only as related events of a later flag)"
        + (
            f"; not alerted, by labelled rule: {lat['not_alerted_by_labelled_rule']}"
            if lat.get("not_alerted_by_labelled_rule")
            else ""
        )
    )
    lines.append(f"  {'latency (ms)':38} {'count':>6} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}")
    for key, label in (
        ("produce_to_alert", "produce -> alert"),
        ("produce_to_kafka", "  produce -> in Kafka (SDK, broker)"),
        ("kafka_to_chained", "  in Kafka -> chained (signed block)"),
        ("chained_to_alert", "  chained -> alert (audit --follow)"),
        ("own_produce_to_alert", "from the labelled access's own produce"),
    ):
        d = lat[key]
        lines.append(
            f"  {label:38} {d['count']:6,} {_ms(d['p50_s'])} {_ms(d['p95_s'])} "
            f"{_ms(d['p99_s'])} {_ms(d['max_s'])}"
        )
    cpu = figures["cpu"]
    names = ("processor", "auditor", "kafka", "clickhouse", "producer", "other")
    parts = [
        f"{name} {cpu[f'{name}_cores']:.2f}"
        for name in names
        if cpu.get(f"{name}_cores") is not None
    ]
    if cpu.get("machine_busy_cores") is not None:
        parts.append(f"machine busy {cpu['machine_busy_cores']:.2f} of {m['cores']}")
    end = " ".join(f"{x:.2f}" for x in m.get("load_average_end", ()))
    lines.append(f"  cores used while timed: {', '.join(parts)}; load average {end} at the end")
    return "\n".join(lines)
