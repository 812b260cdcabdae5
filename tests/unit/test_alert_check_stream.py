"""The alert checks compare each replayed upsert as it is written (ADR 0047).

``AlertCheck`` must find exactly what comparing the whole lists of upserts found (the
check as it was before ADR 0047, kept here as the reference: every run's upserts held,
sorted by time, then each stored alert compared), on any interleaving of stored rows,
later versions, ties in time, runs that failed half-way and alerts whose rows are gone,
while holding no upsert row.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from careledger_core.findings import Finding, FindingCode
from verifiers.auditor.runner.rows import ALERT_COLUMNS
from verifiers.auditor.verify.check import (
    _WRITE_COLUMNS,
    AlertCheck,
    Decided,
    _alert_finding,
    _content,
    _regrouped,
    _replaced,
    differences,
)
from verifiers.auditor.verify.replay import Replay
from verifiers.auditor.verify.stored import StoredAlert, compact_alert

_TIMES = [f"2026-01-0{k}T00:00:00.000000Z" for k in range(1, 5)]
_RUNS = ["range:a", "range:b", "follow:c"]
_IDS = ["alert-0", "alert-1"]


def _row(alert_id: str, variant: int, first_at: str, at: str, run: str) -> tuple[Any, ...]:
    events = [f"evt-{alert_id}-{k}" for k in range(1 + variant % 2)]
    return (
        alert_id,
        "AFTER_HOURS" if variant < 2 else "VIP",
        "medium",
        float(variant),
        "dr-who",
        "p-1",
        json.dumps(["p-1"]),
        json.dumps(events),
        json.dumps({"note": "x" * (200 * variant)}),
        json.dumps([]),
        first_at,
        first_at,
        at,
        run,
        0,
    )


@dataclass(frozen=True)
class _Write:
    at: str
    alert_id: str
    variant: int
    first_at: str


_write = st.builds(
    _Write,
    st.sampled_from(_TIMES),
    st.sampled_from(_IDS),
    st.integers(0, 3),
    st.sampled_from(_TIMES[:2]),
)
_stored = st.tuples(
    st.sampled_from(_IDS),
    st.integers(0, 3),
    st.sampled_from(_TIMES[:2]),
    st.sampled_from(_TIMES),
    st.sampled_from([*_RUNS, "range:never-replayed"]),
)
_run = st.tuples(
    st.lists(_write, max_size=8),
    st.booleans(),  # replayed whole (else it failed half-way)
    st.one_of(st.none(), st.tuples(st.sampled_from(_TIMES[:2]), st.sampled_from(_TIMES[2:]))),
)


def _whole_lists(
    stored_alerts: Sequence[StoredAlert],
    replays: Sequence[Replay],
    upserts_of: dict[str, list[tuple[str, str, tuple[Any, ...]]]],
    decided: Decided,
    recent: set[str],
) -> list[Finding]:
    """The check before ADR 0047: every upsert of the runs replayed whole, held."""
    out: list[Finding] = []
    upserts: dict[str, list[tuple[str, str, tuple[Any, ...]]]] = {}
    written: dict[tuple[str, str, str], tuple[Any, ...]] = {}
    times: dict[str, set[str]] = {}
    for rp in replays:
        times.setdefault(rp.run, set()).update(rp.times)
        for at, alert_id, row in upserts_of[rp.run]:
            upserts.setdefault(alert_id, []).append((at, rp.run, row))
            written[(rp.run, at, alert_id)] = row
    for ups in upserts.values():
        ups.sort(key=lambda u: u[0])
    stored: dict[str, list[StoredAlert]] = {}
    for a in stored_alerts:
        stored.setdefault(a.alert_id, []).append(a)
    for alert_id, (first, *extra) in sorted(stored.items()):
        for x in extra:
            out.append(
                _alert_finding(
                    FindingCode.ALERT_UNEXPECTED,
                    alert_id,
                    f"a second row of alert {alert_id} (first event at {x.first_at})",
                    first_at=x.get("first_at"),
                )
            )
        run, at = first.audit_run, first.created_at
        expected = written.get((run, at, alert_id))
        if expected is not None:
            diffs = differences(ALERT_COLUMNS, first.values, expected, skip=("version",))
            later = [
                u
                for u in upserts.get(alert_id, ())
                if u[0] > at and _content(u[2]) != _content(first.values)
            ]
            if diffs:
                out.append(
                    _alert_finding(
                        FindingCode.ALERT_MISMATCH,
                        alert_id,
                        f"alert {alert_id} differs from the alert run {run} raised at {at} "
                        f"over the ledger: {', '.join(sorted(diffs))}",
                        audit_run=run,
                        created_at=at,
                        columns=diffs,
                    )
                )
            elif later:
                u_at, u_run, u_row = later[-1]
                cols = differences(ALERT_COLUMNS, first.values, u_row, _WRITE_COLUMNS)
                out.append(
                    _alert_finding(
                        FindingCode.ALERT_MISMATCH,
                        alert_id,
                        f"alert {alert_id} is the version run {run} wrote at {at}, not the "
                        f"one run {u_run} wrote at {u_at}: " + ", ".join(sorted(cols)),
                        audit_run=run,
                        created_at=at,
                        columns=cols,
                    )
                )
        elif at in times.get(run, ()):
            out.append(
                _alert_finding(
                    FindingCode.ALERT_UNEXPECTED,
                    alert_id,
                    f"run {run} did not raise alert {alert_id} at {at} (replayed over the ledger)",
                    audit_run=run,
                    created_at=at,
                )
            )
        else:
            out += _regrouped(None, first, decided, "salt", _NO_CONFIG)  # type: ignore[arg-type]
    for alert_id, ups in sorted(upserts.items()):
        if alert_id in stored or alert_id in recent:
            continue
        at, run, row = ups[-1]
        first_at = str(row[ALERT_COLUMNS.index("first_at")])
        if _replaced(replays, first_at, at):
            continue
        out.append(
            _alert_finding(
                FindingCode.ALERT_MISSING,
                alert_id,
                f"run {run} raised alert {alert_id} ({row[1]}, actor {row[4]}, first event "
                f"at {first_at}) at {at} but its row is gone",
                audit_run=run,
                created_at=at,
            )
        )
    return out


_NO_CONFIG: Any = None


@settings(max_examples=1500, deadline=None)
@given(
    stored=st.lists(_stored, max_size=6),
    runs=st.lists(_run, min_size=len(_RUNS), max_size=len(_RUNS)),
    recent=st.sets(st.sampled_from(_IDS), max_size=2),
)
def test_alerts_compared_as_written_find_what_the_whole_lists_found(
    stored: list[tuple[str, int, str, str, str]],
    runs: list[tuple[list[_Write], bool, tuple[str, str] | None]],
    recent: set[str],
) -> None:
    stored_alerts = [
        StoredAlert.of(_row(aid, variant, first_at, at, run))
        for aid, variant, first_at, at, run in stored
    ]
    # nobody's decisions are kept: an alert of no replayed run regroups to nothing
    decided = Decided(frozenset())
    check = AlertCheck(stored_alerts)
    replays: list[Replay] = []
    upserts_of: dict[str, list[tuple[str, str, tuple[Any, ...]]]] = {}
    for run, (writes, whole, bounds) in zip(_RUNS, runs, strict=True):
        # a run's upserts come in its own order (not sorted by time: ties and going back
        # both occur), one run after the other, as verify replays them
        rows = [
            (w.at, w.alert_id, compact_alert(_row(w.alert_id, w.variant, w.first_at, w.at, run)))
            for w in writes
        ]
        upserts_of[run] = rows
        for at, alert_id, row in rows:
            check.written(run, at, alert_id, row)
        if whole:
            replays.append(
                Replay(run, "range", times=sorted({w.at for w in writes}), bounds=bounds)
            )
    got = check.findings(None, replays, decided, salt="salt", recent=recent)  # type: ignore[arg-type]
    want = _whole_lists(stored_alerts, replays, upserts_of, decided, recent)
    assert [f.to_dict() for f in got] == [f.to_dict() for f in want]


def test_a_mismatch_found_as_written_names_its_columns_and_the_later_version() -> None:
    """The two shapes of ALERT_MISMATCH, as the written rows show them (not a copy)."""
    t1, t2, t3 = _TIMES[:3]
    stored = StoredAlert.of(_row("alert-0", 0, t1, t2, "range:a"))
    check = AlertCheck([stored])
    check.written("range:a", t2, "alert-0", compact_alert(_row("alert-0", 2, t1, t2, "range:a")))
    replays = [Replay("range:a", "range", times=[t2])]
    (f,) = check.findings(None, replays, Decided(frozenset()), salt="s")  # type: ignore[arg-type]
    assert f.code == FindingCode.ALERT_MISMATCH
    columns = _columns(f)
    assert set(columns) == {"rule", "score", "evidence"}
    assert columns["rule"] == {"stored": "AFTER_HOURS", "recomputed": "VIP"}

    check = AlertCheck([stored])
    check.written("range:a", t2, "alert-0", compact_alert(_row("alert-0", 0, t1, t2, "range:a")))
    check.written("follow:c", t3, "alert-0", compact_alert(_row("alert-0", 1, t1, t3, "follow:c")))
    replays.append(Replay("follow:c", "follow", times=[t3]))
    (f,) = check.findings(None, replays, Decided(frozenset()), salt="s")  # type: ignore[arg-type]
    assert f.code == FindingCode.ALERT_MISMATCH
    assert f"not the one run follow:c wrote at {t3}" in f.message
    assert set(_columns(f)) == {"score", "event_ids", "evidence"}


def test_the_check_holds_no_upsert_row() -> None:
    """What verify holds grows with the stored alerts, not with the runs' upserts: a
    row handed over is not referenced once ``written`` returns, whether it matches its
    stored alert, is a later version of it, or names an alert without a row."""
    t1, t2, t3 = _TIMES[:3]
    stored = [StoredAlert.of(_row(f"alert-{k}", 0, t1, t2, "range:a")) for k in range(50)]
    check = AlertCheck(stored)
    for k in range(50):
        for run, at, variant in (("range:a", t2, 0), ("follow:c", t3, 1), ("follow:c", t1, 0)):
            row = compact_alert(_row(f"alert-{k}", variant, t1, at, run))
            before = sys.getrefcount(row)
            check.written(run, at, f"alert-{k}", row)
            assert sys.getrefcount(row) == before, (run, at)
        gone = compact_alert(_row(f"gone-{k}", 0, t1, t2, "range:a"))
        before = sys.getrefcount(gone)
        check.written("range:a", t2, f"gone-{k}", gone)
        assert sys.getrefcount(gone) == before


def test_the_upserts_of_a_run_that_failed_half_way_count_for_nothing() -> None:
    """A run whose replay raised is not handed over: its later version, its exact write
    and its alerts without a row are not findings (its rows are, elsewhere)."""
    t1, t2, t3 = _TIMES[:3]
    stored = StoredAlert.of(_row("alert-0", 0, t1, t2, "range:a"))
    check = AlertCheck([stored])
    check.written("range:a", t2, "alert-0", compact_alert(_row("alert-0", 0, t1, t2, "range:a")))
    # the failed run: a later, other version of the stored alert, and an alert gone
    check.written("follow:c", t3, "alert-0", compact_alert(_row("alert-0", 1, t1, t3, "follow:c")))
    check.written("follow:c", t3, "alert-1", compact_alert(_row("alert-1", 1, t1, t3, "follow:c")))
    whole = [Replay("range:a", "range", times=[t2])]
    assert check.findings(None, whole, Decided(frozenset()), salt="s") == []  # type: ignore[arg-type]
    both = [*whole, Replay("follow:c", "follow", times=[t3])]
    got = check.findings(None, both, Decided(frozenset()), salt="s")  # type: ignore[arg-type]
    assert [f.code for f in got] == [FindingCode.ALERT_MISMATCH, FindingCode.ALERT_MISSING]


def _columns(f: Finding) -> dict[str, Any]:
    columns = f.details["columns"]
    assert isinstance(columns, dict)
    return columns
