"""The audit runner's pure parts: bounds, range evaluation (warm-up, look-ahead, late
break-the-glass flags), rows, fingerprints, status hash links, the salt file, and the
follow loop over an in-memory store."""

from __future__ import annotations

import json
import stat
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from careledger.config import Settings
from careledger_core.event import AccessEvent
from careledger_core.reference import ReferenceRecord
from tests.unit.test_auditor_rules import at, btg_start, btg_stop, event, hospital
from verifiers.auditor import AuditConfig, ReferenceState, RuleCode, group_alerts
from verifiers.auditor import alerts as alerts_module
from verifiers.auditor._time import US_PER_HOUR, ts_to_us, us_to_ts
from verifiers.auditor.alerts_cli import AlertBook, status_event, status_event_id, verify_history
from verifiers.auditor.runner import (
    ALERT_COLUMNS,
    DECISION_COLUMNS,
    STATUS_COLUMNS,
    Follower,
    LedgeredEvent,
    LedgeredReference,
    PlacedDecision,
    Position,
    Reviews,
    alert_fingerprint,
    alert_row,
    closed_alert_ids,
    decision_row,
    decode_alert_row,
    load_salt,
    parse_instant,
    plan_range,
    read_bounds,
    review_alerts,
    reviewed_alert,
    sort_decisions,
    status_entry_hash,
    status_histories,
    stored_alert_fingerprint,
)
from verifiers.auditor.runner import decide as decide_module
from verifiers.auditor.runner import (
    decide_range as iter_decisions,
)
from verifiers.auditor.runner import range_run as range_run_module
from verifiers.auditor.runner.rows import RESTORED_COLUMNS

SALT = "unit-test-salt"
REFERENCE_CHAIN = "o/careledger.workforce/0"


def decide_range(*args: Any, **kwargs: Any) -> list[PlacedDecision]:
    """The decisions of a range, as a list (``decide_range`` yields them)."""
    return list(iter_decisions(*args, **kwargs))


def ledgered(
    events: Sequence[AccessEvent], chain: str = "o/careledger.access-events/0"
) -> list[LedgeredEvent]:
    out = [LedgeredEvent(Position(chain, i // 10, i % 10), e) for i, e in enumerate(events)]
    return sorted(out, key=lambda le: le.sort_key)


def test_parse_instant_accepts_dates_and_times() -> None:
    assert parse_instant("2026-11-02") == "2026-11-02T00:00:00.000000Z"
    assert parse_instant("2026-11-02T09:30") == "2026-11-02T09:30:00.000000Z"
    assert parse_instant("2026-11-02T09:30:01.5Z") == "2026-11-02T09:30:01.500000Z"
    assert parse_instant("2026-11-02T10:30:00+01:00") == "2026-11-02T09:30:00.000000Z"
    with pytest.raises(ValueError):
        parse_instant("yesterday")


def test_read_bounds_cover_the_warm_up_and_the_break_the_glass_look_ahead() -> None:
    cfg = AuditConfig()
    lo, hi = read_bounds("2026-11-02T09:00:00.000000Z", "2026-11-02T10:00:00.000000Z", cfg)
    assert ts_to_us("2026-11-02T09:00:00.000000Z") - ts_to_us(lo) >= cfg.btg_episode_us
    assert ts_to_us(hi) - ts_to_us("2026-11-02T10:00:00.000000Z") > cfg.btg_stop_window_us


def test_only_events_in_range_are_decided_but_the_warm_up_feeds_the_history() -> None:
    # five denials of N2 straddle `from`: the one inside is a DENIED_BURST thanks to the
    # four before it, which are not decided themselves
    events = [event("N2", "P2", at(i), outcome=4) for i in range(5)]
    placed = decide_range(ReferenceState(hospital()), ledgered(events), at(4), at(60))
    assert [p.decision.event_id for p in placed] == [events[4].event_id]
    assert RuleCode.DENIED_BURST in placed[0].decision.codes()
    assert placed[0].position == Position("o/careledger.access-events/0", 0, 4)


def test_a_stop_in_the_look_ahead_clears_a_start_near_the_end_of_the_range() -> None:
    start = btg_start("N2", "P2", at(50), outcome_desc="cardiac arrest")
    stop = btg_stop("N2", "P2", at(70))
    placed = decide_range(
        ReferenceState(hospital()), ledgered([start, stop]), at(0), at(60), horizon_ts=at(600)
    )
    assert [p.decision.amends for p in placed] == [False]


def test_a_missing_stop_is_reported_once_its_window_is_over_and_not_before() -> None:
    start = btg_start("N2", "P2", at(50), outcome_desc="cardiac arrest")
    state = ReferenceState(hospital())
    early = decide_range(state, ledgered([start]), at(0), at(60), horizon_ts=at(120))
    assert [p.decision.amends for p in early] == [False]
    late = decide_range(state, ledgered([start]), at(0), at(60), horizon_ts=at(60 * 6))
    assert [p.decision.amends for p in late] == [False, True]
    assert late[1].position == late[0].position
    assert late[1].decision.flags[0].evidence["phase"] == "no-stop"


def test_decision_rows_are_deterministic_and_name_patients_only_by_pseudonym() -> None:
    events = [event("N1", "P1", at(1)), event("M1", "P2", at(2))]
    rows = []
    for _ in range(2):
        placed = sort_decisions(
            decide_range(ReferenceState(hospital()), ledgered(events), at(0), at(60))
        )
        rows.append([decision_row(p, salt=SALT, decided_at="x", audit_run="r") for p in placed])
    assert rows[0] == rows[1]
    explained = dict(zip(DECISION_COLUMNS, rows[0][0], strict=True))
    assert explained["explanation_kind"] == "relationship"
    assert json.loads(explained["explanation"])["record_id"] == "CT-P1-N1"
    assert explained["severity"] == "" and explained["flags"] == "[]"
    snoop = dict(zip(DECISION_COLUMNS, rows[0][1], strict=True))
    assert "NO_EXPLANATION" in snoop["flags"]
    for row in rows[0]:
        text = json.dumps([str(v) for v in row])
        assert '"P1"' not in text and '"P2"' not in text
        assert len(dict(zip(DECISION_COLUMNS, row, strict=True))["patient_ref"]) == 32


def test_stored_alert_rows_have_the_fingerprint_of_the_alert() -> None:
    events = [event("M1", f"P{2 + (i % 2)}", at(i)) for i in range(4)]
    placed = decide_range(ReferenceState(hospital()), ledgered(events), at(0), at(60))
    alerts = group_alerts([p.decision for p in placed], salt=SALT)
    assert alerts
    for a in alerts:
        row = alert_row(a, created_at="now", audit_run="r", version=1)
        assert stored_alert_fingerprint(row) == alert_fingerprint(a)


class _AlertRows:
    """A backend whose ``alerts`` query returns the given rows."""

    name = "alert-rows"

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        assert "FROM db.alerts FINAL" in sql
        return self.rows

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        raise AssertionError("read only")

    def close(self) -> None:
        pass


def test_an_alert_row_decodes_to_what_alerts_shows_with_the_alerts_fingerprint() -> None:
    events = [event("M1", f"P{2 + (i % 2)}", at(i)) for i in range(4)]
    placed = decide_range(ReferenceState(hospital()), ledgered(events), at(0), at(60))
    alerts = group_alerts([p.decision for p in placed], salt=SALT)
    assert alerts
    for a in alerts:
        row = alert_row(a, created_at="now", audit_run="r", version=7)
        content = {k: v for k, v in a.to_dict().items() if k != "status"}
        decoded = decode_alert_row(row)
        assert decoded == json.loads(json.dumps({**content, "created_at": "now", "audit_run": "r"}))
        assert stored_alert_fingerprint(row) == alert_fingerprint(a)
        # ClickHouse may return the text columns as bytes
        raw = tuple(v.encode() if isinstance(v, str) else v for v in row)
        assert decode_alert_row(raw) == decoded
        assert stored_alert_fingerprint(raw) == alert_fingerprint(a)
        # what ``careledger alerts`` shows of the stored alert
        assert AlertBook(_AlertRows([raw]), "db").alerts() == [decoded]


def test_status_changes_are_hash_linked() -> None:
    entries: list[dict[str, Any]] = []
    prev = ""
    for seq, status in enumerate(("acknowledged", "resolved")):
        e: dict[str, Any] = {
            "alert_id": "a1",
            "seq": seq,
            "status": status,
            "changed_by": "privacy-officer",
            "changed_at": at(seq),
            "note": "",
            "prev_hash": prev,
        }
        e["entry_hash"] = status_entry_hash(prev, e)
        prev = e["entry_hash"]
        entries.append(e)
    assert set(entries[0]) == set(STATUS_COLUMNS)
    assert verify_history(entries)
    forged = [dict(entries[0], status="false-positive"), entries[1]]
    assert not verify_history(forged)
    assert not verify_history(entries[1:])


def test_the_salt_file_is_created_private_and_stays_the_same(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path)
    first = load_salt(settings)
    path = tmp_path / "keys" / "audit-salt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_salt(settings) == first and len(first) == 64
    explicit = "explicit-salt-of-the-test"  # at least 16 bytes (ADR 0026)
    assert load_salt(settings.replace(audit_salt=explicit)) == explicit


class MemoryStore:
    """The follower's view of a store, in memory."""

    def __init__(self, records: list[ReferenceRecord]) -> None:
        self.records = records
        self.blocks: dict[str, list[list[AccessEvent]]] = {}
        self.decisions: list[tuple[Any, ...]] = []
        self.alerts: list[tuple[Any, ...]] = []
        #: alert_status rows (STATUS_COLUMNS order), hash-linked per alert
        self.status: list[tuple[Any, ...]] = []

    def add_block(self, chain: str, events: list[AccessEvent]) -> None:
        self.blocks.setdefault(chain, []).append(events)

    def is_reference(self, chain: str) -> bool:
        return chain == REFERENCE_CHAIN

    def reference_records_of_chain(
        self, chain: str, above: int, upto: int
    ) -> list[LedgeredReference]:
        if not above < 0 <= upto:
            return []
        return [LedgeredReference(r, chain, 0, r.recorded_at) for r in self.records]

    def decision_cutoffs(self, lo: str, hi: str) -> list[tuple[str, str, str]]:
        # as AuditStore: the latest per access (event id and time), in occurred_at order
        c = {name: i for i, name in enumerate(DECISION_COLUMNS)}
        latest: dict[tuple[str, str], tuple[str, str]] = {}
        for r in self.decisions:
            if lo <= r[c["occurred_at"]] < hi and not r[c["amends"]]:
                key, seen = (
                    (r[c["occurred_at"]], r[c["event_id"]]),
                    (
                        r[c["decided_at"]],
                        r[c["reference_known_at"]],
                    ),
                )
                if key not in latest or seen[0] >= latest[key][0]:
                    latest[key] = seen
        return [(e, t, known) for (t, e), (_at, known) in sorted(latest.items())]

    def flagged_decisions(
        self, actors: Sequence[str], lo: str, hi: str, before: str
    ) -> list[tuple[Any, ...]]:
        c = {name: i for i, name in enumerate(DECISION_COLUMNS)}
        latest: dict[tuple[str, int], tuple[Any, ...]] = {}
        for r in sorted(self.decisions, key=lambda r: r[c["decided_at"]]):
            if r[c["decided_at"]] >= before or r[c["actor_id"]] not in actors:
                continue
            if lo <= r[c["occurred_at"]] < hi:
                latest[(r[c["event_id"]], r[c["amends"]])] = r
        rows = [tuple(r[c[name]] for name in RESTORED_COLUMNS) for r in latest.values()]
        return [r for r in rows if r[RESTORED_COLUMNS.index("flags")] != "[]"]

    def heads(self) -> dict[str, int]:
        return {REFERENCE_CHAIN: 0, **{c: len(b) - 1 for c, b in self.blocks.items()}}

    def events_of_chain(self, chain: str, above: int, upto: int) -> list[LedgeredEvent]:
        return [
            LedgeredEvent(Position(chain, h, i), e)
            for h in range(above + 1, upto + 1)
            for i, e in enumerate(self.blocks[chain][h])
        ]

    def decided_heights(self) -> dict[str, int]:
        heights: dict[str, int] = {}
        for row in self.decisions:
            heights[row[1]] = max(heights.get(row[1], -1), row[2])
        return heights

    def last_decided_time(self) -> str | None:
        return max((row[4] for row in self.decisions), default=None)

    def events_between(self, lo: str, hi: str) -> list[LedgeredEvent]:
        every = [
            le
            for chain in self.blocks
            for le in self.events_of_chain(chain, -1, len(self.blocks[chain]) - 1)
        ]
        return sorted(
            (le for le in every if lo <= le.event.occurred_at < hi), key=lambda le: le.sort_key
        )

    def review(self, alert_id: str, status: str, when: str) -> None:
        """A reviewer's status change (as ``careledger alerts`` writes it)."""
        history = status_histories(sorted(r for r in self.status if r[0] == alert_id))
        previous = history.get(alert_id, [])
        prev_hash = previous[-1]["entry_hash"] if previous else ""
        entry: dict[str, Any] = {
            "alert_id": alert_id,
            "seq": len(previous),
            "status": status,
            "changed_by": "privacy-officer",
            "changed_at": when,
            "note": "",
            "prev_hash": prev_hash,
        }
        entry["entry_hash"] = status_entry_hash(prev_hash, entry)
        self.status.append(tuple(entry[c] for c in STATUS_COLUMNS))

    def reviews(self) -> Reviews:
        histories = status_histories(sorted(self.status, key=lambda r: (r[0], r[1])))
        latest = {row[0]: row for row in sorted(self.alerts, key=lambda r: r[-1])}
        c = {name: i for i, name in enumerate(ALERT_COLUMNS)}
        closed = closed_alert_ids(histories)
        columns = ("alert_id", "actor_id", "last_at", "event_ids", "evidence")
        stored = dict(
            reviewed_alert(tuple(r[c[name]] for name in columns))
            for aid, r in latest.items()
            if aid in closed
        )
        return review_alerts(histories, stored)

    def status_changes(self) -> int:
        return len(self.status)

    def insert_decisions(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self.decisions.extend(rows)

    def insert_alerts(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self.alerts.extend(rows)


class Published:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def publish(self, alert_id: str, document: dict[str, Any]) -> None:
        self.sent.append((alert_id, document))

    def flush(self, timeout: float) -> int:
        return 0


def test_follow_grows_one_burst_alert_over_several_blocks() -> None:
    store = MemoryStore(hospital())
    out = Published()
    follower = Follower(store, salt=SALT, publisher=out)  # type: ignore[arg-type]
    chain = "o/careledger.access-events/1"
    store.add_block(chain, [event("N1", "P1", at(0))])
    assert follower.cycle() == 1
    assert out.sent == []  # explained: no alert
    store.add_block(chain, [event("M1", "P2", at(1 + i)) for i in range(3)])
    assert follower.cycle() == 3
    store.add_block(chain, [event("M1", "P2", at(10 + i)) for i in range(2)])
    assert follower.cycle() == 2
    assert follower.cycle() == 0
    no_expl = [doc for _id, doc in out.sent if doc["rule"] == "NO_EXPLANATION"]
    assert len({d["alert_id"] for d in no_expl}) == 1, "one alert, updated as it grows"
    assert len(no_expl[-1]["event_ids"]) == 5
    assert len(store.decisions) == 6
    assert "P2" not in json.dumps(out.sent)


def test_follow_reports_a_missing_stop_when_later_events_move_time_on() -> None:
    store = MemoryStore(hospital())
    out = Published()
    follower = Follower(store, salt=SALT, publisher=out)  # type: ignore[arg-type]
    chain = "o/careledger.access-events/0"
    start = btg_start("N2", "P2", at(0), outcome_desc="cardiac arrest")
    store.add_block(chain, [start])
    follower.cycle()
    later = us_to_ts(ts_to_us(at(0)) + 5 * US_PER_HOUR)
    store.add_block(chain, [event("N1", "P1", later)])
    follower.cycle()
    amends = [r for r in store.decisions if dict(zip(DECISION_COLUMNS, r, strict=True))["amends"]]
    assert len(amends) == 1 and amends[0][0] == start.event_id
    assert amends[0][1:4] == (chain, 0, 0)


def test_a_confirmed_violation_weighs_the_actors_later_accesses_only() -> None:
    events = [event("M1", "P2", at(0)), event("M1", "P3", at(30))]
    placed = decide_range(
        ReferenceState(hospital()),
        ledgered(events),
        at(0),
        at(60),
        confirmed=[("M1", at(10))],
    )
    before, after = (p.decision for p in placed)
    assert RuleCode.REPEAT_OFFENDER not in before.codes()
    assert RuleCode.REPEAT_OFFENDER in after.codes() and after.multiplier > 1


def test_follow_weighs_an_actors_next_access_after_a_review_made_while_following() -> None:
    store = MemoryStore(hospital())
    follower = Follower(store, salt=SALT)  # type: ignore[arg-type]
    chain = "o/careledger.access-events/0"
    store.add_block(chain, [event("M1", "P2", at(0))])
    follower.cycle()
    # a privacy officer resolves the alert while the follower runs
    (alert,) = {r[0] for r in store.alerts}
    store.review(alert, "acknowledged", at(5))
    store.review(alert, "resolved", at(6))
    store.add_block(chain, [event("M1", "P3", at(30))])
    follower.cycle()

    def repeat(row: tuple[Any, ...]) -> list[dict[str, Any]]:
        flags = json.loads(row[DECISION_COLUMNS.index("flags")])
        return [f["evidence"] for f in flags if f["code"] == "REPEAT_OFFENDER"]

    before, after = store.decisions
    assert repeat(before) == []
    assert repeat(after) == [{"confirmed_violations": 1, "multiplier": 1.5}]
    # read again on the next change only; a violation already fed is not counted twice
    store.review(alert, "resolved", at(7))  # not allowed by the CLI: it changes nothing
    store.add_block(chain, [event("M1", "P4", at(60))])
    follower.cycle()
    assert repeat(store.decisions[-1]) == [{"confirmed_violations": 1, "multiplier": 1.5}]


def test_follow_retries_storing_after_a_failure_without_evaluating_twice() -> None:
    from careledger.storage.backend import StorageError

    store = MemoryStore(hospital())
    follower = Follower(store, salt=SALT)  # type: ignore[arg-type]
    chain = "o/careledger.access-events/0"
    store.add_block(chain, [event("M1", "P2", at(i)) for i in range(2)])
    real_insert = store.insert_decisions
    calls = {"n": 0}

    def flaky(rows: Sequence[tuple[Any, ...]]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise StorageError("ClickHouse is down")
        real_insert(rows)

    store.insert_decisions = flaky  # type: ignore[method-assign]
    with pytest.raises(StorageError):
        follower.cycle()
    assert store.decisions == []  # the alerts go first, the decisions commit (ADR 0029)
    follower.cycle()
    assert len(store.decisions) == 2
    assert follower.auditor.history.observed == 2, "each event evaluated once"
    assert len({r[0] for r in store.alerts}) == 1


def test_a_status_change_is_ledgered_as_an_audit_log_access_about_no_patient() -> None:
    entry = {
        "alert_id": "a" * 32,
        "seq": 0,
        "status": "resolved",
        "changed_by": "privacy-officer",
        "changed_at": at(0),
        "note": "confirmed: the patient's neighbour",
        "prev_hash": "",
    }
    entry["entry_hash"] = status_entry_hash("", entry)
    ev = status_event(entry)
    assert ev == status_event(dict(entry))
    assert ev.event_id == status_event_id(str(entry["entry_hash"]))
    assert ev.event_type.code == "110101" and ev.action == "U"
    assert ev.patient.id == "-" and ev.actor.id == "privacy-officer"
    assert ev.raw_ref is not None and ev.raw_ref.sha256 == entry["entry_hash"]
    assert ev.object is not None and ev.object.id == entry["alert_id"]
    assert "neighbour" not in str(ev), "the note stays out of the ledgered event"


def test_follow_regroups_only_the_actors_flagged_in_the_cycle() -> None:
    store = MemoryStore(hospital())
    out = Published()
    follower = Follower(store, salt=SALT, publisher=out)  # type: ignore[arg-type]
    chain = "o/careledger.access-events/2"
    store.add_block(chain, [event("M1", "P2", at(i)) for i in range(3)])
    follower.cycle()
    sent = len(out.sent)
    store.add_block(chain, [event("N2", "P3", at(5))])
    follower.cycle()
    assert {doc["actor_id"] for _id, doc in out.sent[sent:]} == {"N2"}
    store.add_block(chain, [event("M1", "P2", at(6))])
    follower.cycle()
    m1 = [doc for _id, doc in out.sent if doc["actor_id"] == "M1"]
    assert len({d["alert_id"] for d in m1 if d["rule"] == "NO_EXPLANATION"}) == 1
    assert len(m1[-1]["event_ids"]) == 4


@pytest.mark.parametrize("warmup", [True, False])
def test_a_restarted_follower_replays_the_warm_up_into_its_windows(warmup: bool) -> None:
    store = MemoryStore(hospital())
    chain = "o/careledger.access-events/3"
    store.add_block(chain, [event("N2", "P2", at(i), outcome=4) for i in range(4)])
    first = Follower(store, salt=SALT)  # type: ignore[arg-type]
    first.cycle()
    assert len(store.decisions) == 4
    # restart: the fifth denial is a burst only if the four before it are remembered
    store.add_block(chain, [event("N2", "P2", at(4), outcome=4)])
    second = Follower(store, salt=SALT, warmup=warmup)  # type: ignore[arg-type]
    assert second.cycle() == 1, "what was decided is not decided again"
    assert second.warmed == (4 if warmup else 0)
    flags = json.loads(dict(zip(DECISION_COLUMNS, store.decisions[-1], strict=True))["flags"])
    assert ("DENIED_BURST" in {f["code"] for f in flags}) is warmup


def test_a_long_range_decides_the_same_when_it_lets_old_positions_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``decide_range`` forgets where old accesses are once no decision about them can
    come (ADR 0045): over three days of accesses, with overrides never stopped spread
    through them and one open at the end, it decides exactly what it decides remembering
    every access, late flags and their places included."""
    events: list[AccessEvent] = []
    for i in range(9000):  # one access every ~29 s for three days
        minute = i * 0.48
        if i % 1500 == 700:
            events.append(btg_start("N2", f"P{i}", at(minute), outcome_desc="cardiac arrest"))
        else:
            events.append(event("N1" if i % 3 else "M1", f"P{1 + i % 4}", at(minute)))
    events.append(btg_start("N2", "P-last", at(9000 * 0.48), outcome_desc="cardiac arrest"))
    end = at(9000 * 0.48 + 1)

    def decided() -> list[tuple[Any, ...]]:
        placed = decide_range(
            ReferenceState(hospital()), ledgered(events), at(0), end, horizon_ts=None
        )
        return [
            (p.decision.event_id, p.decision.amends, p.position, p.known_at, p.decision.flags)
            for p in placed
        ]

    letting_go = decided()
    monkeypatch.setattr(decide_module, "_FORGET_EVERY", 10**9)
    remembering = decided()
    assert letting_go == remembering
    late = [d for d in letting_go if d[1]]
    assert len(late) == 7  # six overrides mid-way, one open at the end


class _RangeSource(MemoryStore):
    """What ``plan_range`` reads, in memory: one chain of accesses."""

    def reference_records(self) -> list[LedgeredReference]:
        return [LedgeredReference(r, REFERENCE_CHAIN, 0, r.recorded_at) for r in self.records]

    def undecided_count(self, from_ts: str, to_ts: str) -> int:
        return 1

    def horizon(self) -> str | None:
        return None


def _three_days() -> list[AccessEvent]:
    """Three days of accesses: snooping bursts with quiet gaps (NO_EXPLANATION groups
    that end, and that span), overrides never stopped, explained accesses between."""
    events: list[AccessEvent] = []
    for i in range(6000):
        minute = i * 0.72
        if i % 1000 in range(400, 450, 10):  # overrides 7 minutes apart, never stopped
            events.append(btg_start("N2", f"P{i}", at(minute), outcome_desc="cardiac arrest"))
            # and one 10 s later: its flag and the first's late flag are close in time
            events.append(btg_start("N2", f"Q{i}", at(minute + 1 / 6), outcome_desc="stroke"))
        elif (i // 150) % 3 == 0:  # a burst of M1 looking at nobody's patients
            events.append(event("M1", f"P{2 + i % 2}", at(minute)))
        else:
            events.append(event("N1", "P1", at(minute)))
    return events


@pytest.mark.parametrize("handed", [False, True], ids=["kept", "handed-over"])
@pytest.mark.parametrize("every", [None, 1])
def test_alerts_grouped_as_decisions_come_are_the_alerts_of_the_whole_range(
    every: int | None, handed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``plan_range`` groups alerts as the auditor decides, finishing groups no later
    flag can join (ADR 0045): the alerts are those ``group_alerts`` gives over all the
    range's decisions at once, before and after a reviewer closed one mid-way (also
    with the grouper told what is final, and looking for finished groups, at every
    access; and handed over to an ``alert_sink`` as each is final, as verify's
    replay takes them, the plan then holding none)."""
    if every is not None:
        monkeypatch.setattr(range_run_module, "_SETTLE_EVERY", every)
        monkeypatch.setattr(alerts_module, "_SWEEP_EVERY", every)
    source = _RangeSource(hospital())
    source.add_block("o/careledger.access-events/0", _three_days())
    end = at(6000 * 0.72 + 1)

    def planned() -> tuple[list[Any], list[Any]]:
        made: list[Any] = []
        sunk: list[Any] = []
        early: list[int] = []

        def sink(a: Any) -> None:
            sunk.append(a)
            early.append(len(made))

        plan = plan_range(
            source,
            at(0),
            end,
            lambda p, _row: made.append(p.decision),
            salt=SALT,
            alert_sink=sink if handed else None,
        )
        whole = group_alerts(made, salt=SALT, closed=plan.reviews.closed)
        if not handed:
            return plan.alerts, whole
        assert plan.alerts == []
        assert plan.result.alerts == len(sunk)
        assert plan.result.by_rule == dict(Counter(str(a.rule) for a in sunk))
        if every is not None:
            # handed over while the range was still being decided, not all at the end
            assert min(early) < len(made)
        return sorted(sunk, key=lambda a: (a.first_at, a.rule, a.actor_id, a.alert_id)), whole

    online, whole = planned()
    assert len(online) > 10
    assert {a.rule for a in online} >= {RuleCode.NO_EXPLANATION, RuleCode.BREAK_THE_GLASS}
    assert any(a.evidence["late_flags"] for a in online)
    assert online == whole
    middle = online[len(online) // 2]
    source.insert_alerts([alert_row(a, created_at=end, audit_run="r", version=1) for a in online])
    source.review(middle.alert_id, "resolved", us_to_ts(ts_to_us(middle.last_at) + 60_000_000))
    online, whole = planned()
    assert online == whole
    assert middle.alert_id in {a.alert_id for a in online}
