"""A follower fed an actor's flags out of time order across cycles (a chain whose blocks
are committed late, a backlog read a capped cycle at a time) never puts one flag in two
alerts: the alerts it wrote anchor their flags (grouping 2, ADR 0048). The attack: flags
that occurred before, inside and between alerts already written, and after the flags of
a written alert were forgotten. Runs made before (grouping 1) still replay intact."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.audit_ledger import SALT, AuditedLedger, chdb_audited
from tests.unit.test_auditor_rules import at, event
from verifiers.auditor.runner import Follower, parse_run_id
from verifiers.auditor.runner.rows import follow_run_id

DAY = 24 * 60


@pytest.fixture
def ledger() -> Iterator[AuditedLedger]:
    with chdb_audited("ooo") as ledger:
        yield ledger


def stored_alerts(
    ledger: AuditedLedger, actor: str | None = None
) -> dict[str, tuple[str, list[str]]]:
    """alert id -> (rule, flagged event ids) of each alert as stored (its last version),
    of every actor or one."""
    rows = ledger.sql("SELECT alert_id, rule, event_ids, evidence, actor_id FROM {db}.alerts FINAL")
    out = {}
    for aid, rule, ids, evidence, actor_id in rows:
        if actor is None or actor_id.decode() == actor:
            related = json.loads(evidence)["related_events"]
            out[aid.decode()] = (rule.decode(), json.loads(ids)[related:])
    return out


def sizes(ledger: AuditedLedger) -> dict[str, list[int]]:
    """The sizes of N1's alerts, by rule."""
    out: dict[str, list[int]] = {}
    for rule, ids in stored_alerts(ledger, "N1").values():
        out.setdefault(rule, []).append(len(ids))
    return {rule: sorted(n) for rule, n in out.items()}


def twice(alerts: dict[str, tuple[str, list[str]]]) -> list[tuple[str, str]]:
    per_rule = Counter((rule, e) for rule, ids in alerts.values() for e in ids)
    return [key for key, n in per_rule.items() if n > 1]


def flagged_events(ledger: AuditedLedger) -> set[str]:
    rows = ledger.sql("SELECT event_id FROM {db}.access_decisions WHERE flags != '[]'")
    return {r[0].decode() for r in rows}


def run_cycles(ledger: AuditedLedger, follower: Follower, minutes: list[list[float]]) -> None:
    """Commit one block per cycle: N1 opening an unrelated record at each minute."""
    for block in minutes:
        ledger.commit(*(event("N1", f"P{m}", at(m)) for m in block))
        assert follower.cycle() >= len(block)


#: cycle by cycle: an alert, a flag before it, one after it, one inside it, one that
#: bridges it to a second alert, and one before both
OUT_OF_ORDER = [[600, 610, 620], [595], [640], [615], [750, 760], [700], [500, 590]]


def test_flags_before_inside_and_between_written_alerts_land_in_one_alert_each(
    ledger: AuditedLedger,
) -> None:
    follower = Follower(ledger.audit, salt=SALT, now=ledger.clock.ts)
    run_cycles(ledger, follower, OUT_OF_ORDER)
    alerts = stored_alerts(ledger)
    assert twice(alerts) == []
    alerted = {e for _rule, ids in alerts.values() for e in ids}
    assert alerted == flagged_events(ledger)  # and none is left out
    # 500 and 590 alone (90 min apart); 595 stays as written; the first alert (600-620)
    # grew with 640, 615 and 700 but does not take 750-760 (written apart)
    # (each of N1's accesses is flagged by two rules: at night, and unexplained)
    assert sizes(ledger) == {r: [1, 1, 1, 2, 6] for r in ("AFTER_HOURS", "NO_EXPLANATION")}
    result = ledger.verify()
    assert result.findings == [], [(str(f.code), f.message) for f in result.findings]


def test_without_anchors_the_same_cycles_put_flags_in_two_alerts_and_still_replay(
    ledger: AuditedLedger,
) -> None:
    """What the runs made before ADR 0048 did (the defect this guards against), and
    ``verify`` replays such a run as it went (its id has no ``;group=``)."""
    follower = Follower(ledger.audit, salt=SALT, now=ledger.clock.ts, grouping=1)
    assert ";group=" not in follower.run_id
    run_cycles(ledger, follower, OUT_OF_ORDER)
    assert twice(stored_alerts(ledger)) != []
    result = ledger.verify()
    assert result.findings == [], [(str(f.code), f.message) for f in result.findings]


def test_a_flag_inside_an_alert_whose_flags_were_forgotten_is_an_alert_of_its_own(
    ledger: AuditedLedger,
) -> None:
    follower = Follower(ledger.audit, salt=SALT, now=ledger.clock.ts)
    # an alert, then the actor three days later (the first alert's flags are forgotten),
    # then a flag inside the first alert's time: it cannot regroup it, nor take its flags
    run_cycles(ledger, follower, [[600, 610, 620], [600 + 3 * DAY], [615], [617]])
    alerts = stored_alerts(ledger)
    assert twice(alerts) == []
    # the written one as it was, the one three days later, the late two together
    assert sizes(ledger) == {r: [1, 2, 3] for r in ("AFTER_HOURS", "NO_EXPLANATION")}
    assert {e for _r, ids in alerts.values() for e in ids} == flagged_events(ledger)
    result = ledger.verify()
    assert result.findings == [], [(str(f.code), f.message) for f in result.findings]


def test_the_grouping_is_part_of_a_follow_runs_id() -> None:
    run = follow_run_id("ab12", "2026-01-01T00:00:00.000000Z")
    assert run.endswith(";group=3")
    parsed = parse_run_id(run)
    assert parsed is not None and parsed.grouping == 3
    assert parse_run_id("follow:ab12;group=2").grouping == 2  # type: ignore[union-attr]
    assert parse_run_id("follow:ab12").grouping == 1  # type: ignore[union-attr]
    assert parse_run_id("follow:ab12;group=4") is None
    assert parse_run_id("follow:ab12;group=3;group=3") is None


def alert_ids_stored(ledger: AuditedLedger, run: str) -> dict[str, dict[str, str]]:
    rows = ledger.sql(
        "SELECT event_id, alert_ids FROM {db}.access_decisions WHERE audit_run = %(r)s "
        "AND flags != '[]'",
        {"r": run},
    )
    return {e.decode(): json.loads(ids) if ids else {} for e, ids in rows}


def test_each_flagged_decision_row_names_the_alerts_its_flags_went_into(
    ledger: AuditedLedger,
) -> None:
    follower = Follower(ledger.audit, salt=SALT, now=ledger.clock.ts)
    run_cycles(ledger, follower, OUT_OF_ORDER)
    named = alert_ids_stored(ledger, follower.run_id)
    alerts = stored_alerts(ledger)
    assert named and all(named.values())
    for event_id, ids in named.items():
        for rule, aid in ids.items():
            assert alerts[aid][0] == rule and event_id in alerts[aid][1]
    # and a range run leaves the column empty (its grouping is whole)
    ledger.audit_range(at(-DAY), at(3 * DAY))
    [(n,)] = ledger.sql(
        "SELECT count() FROM {db}.access_decisions WHERE audit_run LIKE 'range:%%' "
        "AND alert_ids != ''"
    )
    assert n == 0


@pytest.mark.parametrize("grouping", [3, 2])
def test_a_flag_arriving_out_of_order_after_a_restart_does_not_regroup_an_earlier_runs_alert(
    ledger: AuditedLedger, grouping: int
) -> None:
    """The restart: the first run wrote an alert (600-620) and stopped; the next reads
    its flags back and, with grouping 3, the alert they went into (their rows name it),
    so a flag before it that arrives now is an alert of its own. Grouping 2 (no names
    in the rows) regroups the earlier alert's flags under the new flag's id."""
    first = Follower(ledger.audit, salt=SALT, now=ledger.clock.ts, grouping=grouping)
    run_cycles(ledger, first, [[600, 610, 620]])
    second = Follower(ledger.audit, salt=SALT, now=ledger.clock.ts, grouping=grouping)
    run_cycles(ledger, second, [[595], [630]])
    alerts = stored_alerts(ledger)
    if grouping == 2:
        assert twice(alerts) != []
    else:
        assert twice(alerts) == []
        # 595 alone; the first run's alert grew with 630 under its id
        assert sizes(ledger) == {r: [1, 4] for r in ("AFTER_HOURS", "NO_EXPLANATION")}
    result = ledger.verify()
    assert result.findings == [], [(str(f.code), f.message) for f in result.findings]
    assert result.summary["runs"]["follow"] == 2


def test_a_written_alert_no_longer_whole_is_left_as_written(ledger: AuditedLedger) -> None:
    """Defence in depth: should the follower hold only part of a written alert's flags
    (its first one forgotten), a flag inside it must not regroup the rest under a new
    id; the alert stays as written and the new flag is an alert of its own."""
    follower = Follower(ledger.audit, salt=SALT, now=ledger.clock.ts)
    run_cycles(ledger, follower, [[600, 610, 620]])
    first = at(600)
    follower.recent["N1"] = [d for d in follower.recent["N1"] if d.occurred_at != first]
    run_cycles(ledger, follower, [[615]])
    assert twice(stored_alerts(ledger)) == []
    assert sizes(ledger) == {r: [1, 3] for r in ("AFTER_HOURS", "NO_EXPLANATION")}


def test_a_follower_forgets_the_alerts_and_flags_no_new_flag_can_regroup(
    ledger: AuditedLedger,
) -> None:
    """What the anchors cost is bounded: an actor flagged once a day for six days holds
    the alerts (one per rule) and flags of the last two days (a new flag regroups a day
    back), not six days of them."""
    follower = Follower(ledger.audit, salt=SALT, now=ledger.clock.ts)
    run_cycles(ledger, follower, [[600 + day * DAY, 610 + day * DAY] for day in range(6)])
    assert len(follower.written["N1"]) == 4
    assert len(follower.recent["N1"]) == 4
    assert twice(stored_alerts(ledger)) == []
    assert sizes(ledger) == {r: [2] * 6 for r in ("AFTER_HOURS", "NO_EXPLANATION")}


@pytest.mark.parametrize("value", ['{"NO_EXPLANATION":"0000"}', "{not json", "[1]"])
def test_a_rewritten_alert_ids_column_is_found_and_a_restart_reading_it_does_not_fail(
    ledger: AuditedLedger, value: str
) -> None:
    """The column a restart reads is checked like every other: rewritten, ``verify``
    names the row; hostile, the restart groups that row as unflagged and goes on."""
    first = Follower(ledger.audit, salt=SALT, now=ledger.clock.ts)
    run_cycles(ledger, first, [[600, 610, 620]])
    [(victim,)] = ledger.sql(
        "SELECT event_id FROM {db}.access_decisions WHERE actor_id = 'N1' AND occurred_at = %(t)s",
        {"t": at(610)},
    )
    ledger.mutate(
        "ALTER TABLE {db}.access_decisions UPDATE alert_ids = %(v)s WHERE event_id = %(e)s",
        {"v": value, "e": victim.decode()},
    )
    second = Follower(ledger.audit, salt=SALT, now=ledger.clock.ts)
    run_cycles(ledger, second, [[595], [630]])
    found = [(str(f.code), f.event_id) for f in ledger.verify().findings]
    assert ("DECISION_MISMATCH", victim.decode()) in found, found
