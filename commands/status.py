"""``careledger status``: the whole pipeline at a glance (issue 13 point 5).

Before, ``status`` showed only whether the local Kafka and ClickHouse ran. Now, when they
answer, it also says per chain how far the signed ledger is behind Kafka (records past
the stored head: not yet in a signed block) and how old its newest block is, whether a
processor reports (its metrics file, written every 5 s), the last verification and its
result, and how many alerts are open (their ledgered status, as ``alerts list`` shows
it). ``--cluster`` is the local cluster's services, as before.

Exit status: 0 the services are up, 1 one is down (as before). What cannot be read is
said on its line ("cannot tell"), never shown as zero.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from careledger import stack
from careledger.config import Settings
from careledger.storage.kinds import raw_topics, reference_topics
from careledger_core.errors import CareledgerError

#: a processor whose metrics file is older than this is not reporting
REPORT_STALE_S = 15.0


def configure_status(parser: argparse.ArgumentParser) -> None:
    stack.configure_status(parser)


@dataclass
class ChainLine:
    chain_id: str
    height: int | None
    newest_block_age_s: float | None
    behind: int | None  # records in Kafka past the stored head


@dataclass
class PipelineStatus:
    chains: list[ChainLine] = field(default_factory=list)
    processors: list[dict[str, Any]] = field(default_factory=list)
    last_verification: dict[str, Any] | None = None
    open_alerts: int | None = None
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "chains": [c.__dict__ for c in self.chains],
            "processors": self.processors,
            "last_verification": self.last_verification,
            "open_alerts": self.open_alerts,
            "cannot_tell": self.problems,
        }


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _age_s(timestamp: str, now: dt.datetime) -> float | None:
    try:
        moment = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return max(0.0, (now - moment).total_seconds())


def _processors(settings: Settings) -> list[dict[str, Any]]:
    found = []
    now = time.time()
    for path in sorted((settings.run_dir / "metrics").glob("processor-*.json")):
        try:
            snap = json.loads(path.read_text(encoding="utf-8"))
            age = now - path.stat().st_mtime
        except (OSError, ValueError):
            continue
        found.append(
            {
                "name": path.stem.removeprefix("processor-"),
                "reporting": age <= REPORT_STALE_S,
                "last_report_s": round(age, 1),
                "events_chained": snap.get("events_chained"),
                "events_per_s": snap.get("events_per_s_recent"),
                "refused_partitions": snap.get("refused_partitions", 0),
            }
        )
    return found


def chained_partitions(settings: Settings) -> list[tuple[str, int]]:
    """Every (topic, partition) the processor chains: events, reference and raw topics."""
    chained = {settings.topic_events, *reference_topics(settings), *raw_topics(settings)}
    return [
        (topic, p)
        for topic, count in stack.default_topics(settings).items()
        if topic in chained
        for p in range(count)
    ]


def partition_ends(settings: Settings) -> dict[tuple[str, int], int]:
    """The end offset (next offset to be written) of each chained partition that answers."""
    return _high_watermarks(settings, chained_partitions(settings))


def not_yet_signed(
    settings: Settings, heads: dict[str, Any], ends: dict[tuple[str, int], int]
) -> int:
    """Records below ``ends`` that no stored block covers yet (``heads``: the store's chain
    heads). A block's offset range covers its dead-lettered records too (ADR 0003), so
    this reaches 0 once the processor has sealed and stored everything up to ``ends``."""
    behind = 0
    for (topic, partition), end in ends.items():
        head = heads.get(settings.chain_id(topic, partition))
        behind += max(0, end - (0 if head is None else head.last_offset + 1))
    return behind


def _high_watermarks(
    settings: Settings, parts: list[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from careledger.kafka.clients import kafka_config
    from careledger.kafka.security import ADMIN

    consumer = Consumer(kafka_config(settings, ADMIN, {"group.id": "careledger-status"}))
    ends: dict[tuple[str, int], int] = {}
    try:
        for topic, partition in parts:
            try:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=5, cached=False
                )
            except KafkaException:
                continue
            ends[(topic, partition)] = int(high)
    finally:
        consumer.close()
    return ends


def pipeline_status(settings: Settings) -> PipelineStatus:
    """What the ledger, Kafka, the processors, verify and the auditor say now."""
    from careledger.storage.backend import ClickHouseBackend
    from careledger.storage.store import ChainStore

    st = PipelineStatus(processors=_processors(settings))
    backend = ClickHouseBackend.from_settings(settings, "reader")
    now = dt.datetime.now(dt.UTC)
    try:
        store = ChainStore.for_settings(backend, settings)
        heads = store.heads()
        created = {
            _text(c): _text(t)
            for c, t in backend.execute(
                f"SELECT chain_id, argMax(created_at, height) FROM {store.db}.blocks "
                "GROUP BY chain_id"
            )
        }
        runs = backend.execute(
            f"SELECT finished_at, result, findings, chains, events FROM "
            f"{store.db}.verification_runs ORDER BY finished_at DESC LIMIT 1"
        )
    except CareledgerError as exc:
        st.problems.append(f"ClickHouse: {getattr(exc, 'message', exc)}")
        backend.close()
        return st
    if runs:
        finished, result, findings, chains, events = runs[0]
        st.last_verification = {
            "finished_at": _text(finished),
            "result": _text(result),
            "findings": int(findings),
            "chains": int(chains),
            "events": int(events),
        }
    parts = chained_partitions(settings)
    ends = _high_watermarks(settings, parts)
    if not ends:
        st.problems.append("Kafka: cannot read the partitions' ends")
    for topic, partition in parts:
        chain_id = settings.chain_id(topic, partition)
        head = heads.get(chain_id)
        end = ends.get((topic, partition))
        next_offset = 0 if head is None else head.last_offset + 1
        if head is None and not end:
            continue  # nothing sent there, nothing chained
        st.chains.append(
            ChainLine(
                chain_id,
                None if head is None else head.height,
                None if chain_id not in created else _age_s(created[chain_id], now),
                None if end is None else max(0, end - next_offset),
            )
        )
    st.open_alerts = _open_alerts(backend, store.db, st)
    backend.close()
    return st


def _open_alerts(backend: Any, database: str, st: PipelineStatus) -> int | None:
    from verifiers.auditor.alerts_cli import AlertBook, status_view

    try:
        book = AlertBook(backend, database)
        ids = [a["alert_id"] for a in book.alerts()]
        view = status_view(book)
    except CareledgerError as exc:
        st.problems.append(f"alerts: {getattr(exc, 'message', exc)}")
        return None
    return sum(1 for i in ids if view.of(i).status == "open")


def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render(st: PipelineStatus) -> str:
    lines = [f"{'chain':48} {'height':>8} {'newest block':>13} {'not yet signed':>15}"]
    for c in st.chains:
        behind = "cannot tell" if c.behind is None else f"{c.behind:,}"
        height = "-" if c.height is None else f"{c.height:,}"
        lines.append(
            f"{c.chain_id:48} {height:>8} {_fmt_age(c.newest_block_age_s):>13} {behind:>15}"
        )
    if not st.chains:
        lines.append("(no chain yet)")
    for p in st.processors:
        state = "reporting" if p["reporting"] else f"silent for {_fmt_age(p['last_report_s'])}"
        refused = (
            f", {p['refused_partitions']} partition(s) REFUSED" if p["refused_partitions"] else ""
        )
        lines.append(
            f"processor {p['name']}: {state}, {p['events_chained']:,} events chained, "
            f"{p['events_per_s']:,.0f}/s{refused}"
        )
    if not st.processors:
        lines.append("processor: none has reported here")
    v = st.last_verification
    lines.append(
        "last verification: never"
        if v is None
        else f"last verification: {v['result']} at {v['finished_at']} UTC, {v['findings']:,} "
        f"finding(s), {v['chains']} chain(s), {v['events']:,} events"
    )
    lines.append(
        "open alerts: cannot tell" if st.open_alerts is None else f"open alerts: {st.open_alerts:,}"
    )
    lines += [f"cannot tell: {p}" for p in st.problems]
    return "\n".join(lines)


def command_status(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "cluster", False):
        return stack.command_status(args, settings)
    services = stack.status(settings)
    pipeline = pipeline_status(settings) if services.up else None
    if getattr(args, "json", False):
        doc = services.as_dict()
        doc["pipeline"] = None if pipeline is None else pipeline.as_dict()
        print(json.dumps(doc, indent=2))
    else:
        print(services)
        if pipeline is not None:
            print()
            print(render(pipeline))
        else:
            print("pipeline: cannot tell (a service is down)", file=sys.stderr)
    return 0 if services.up else 1
