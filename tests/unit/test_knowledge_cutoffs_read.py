"""The knowledge cutoffs read in step with the events (ADR 0046), on chDB.

A range run decides an access it decided before with the cutoff its stored decision
used; the cutoffs are read from ``access_decisions`` in ``occurred_at`` order, a page of
whole times at a time, by the auditor (``AuditStore.decision_cutoffs``) and by verify
(``LedgerView.latest_cutoffs``). A cutoff is one access's: its event id *and* its time.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest

from tests.audit_ledger import DAY, AuditedLedger, chdb_audited
from tests.unit.test_audit_bitemporal_state import late_relationship
from tests.unit.test_auditor_rules import at, event
from verifiers.auditor.runner.decide import _FORGET_EVERY
from verifiers.auditor.runner.rows import DECISION_COLUMNS
from verifiers.auditor.verify.ledger import LedgerView

LATER = "2030-01-01T00:00:00.000000Z"
OLDER = "2020-01-01T00:00:00.000000Z"


@pytest.fixture
def ledger() -> Iterator[AuditedLedger]:
    with chdb_audited("kc") as ledger:
        yield ledger


def copy_decisions(ledger: AuditedLedger, where: str, **changed: str) -> None:
    """Copies of the decision rows ``where`` holds, with ``changed`` columns (SQL)."""
    columns = ", ".join(DECISION_COLUMNS)
    values = ", ".join(changed.get(c, c) for c in DECISION_COLUMNS)
    ledger.sql(
        f"INSERT INTO {{db}}.access_decisions ({columns}) "
        f"SELECT {values} FROM {{db}}.access_decisions WHERE {where}"
    )


def latest_per_access(ledger: AuditedLedger, before: str = "~") -> list[tuple[str, str, str]]:
    """One ``GROUP BY`` read of what the paged reads must give, in time order."""
    rows = ledger.sql(
        "SELECT event_id, occurred_at, argMax(reference_known_at, decided_at) "
        "FROM {db}.access_decisions WHERE amends = 0 AND reference_known_at != '' "
        "AND decided_at < %(before)s GROUP BY occurred_at, event_id ORDER BY occurred_at",
        {"before": before},
    )
    return [(text(e), text(t), text(k)) for e, t, k in rows]


def text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def test_cutoffs_read_page_by_page_are_one_read_of_the_latest_per_access(
    ledger: AuditedLedger,
) -> None:
    """Times shared across a page's end, a later run's cutoff for the same access, an
    older copy, rows without a cutoff or amending, and a time that is not UTF-8: each
    page size reads what one ``GROUP BY`` reads, none twice, none lost, in time order."""
    copy_decisions(ledger, "amends = 0", event_id="concat(event_id, '-twin')")
    copy_decisions(ledger, "amends = 0", decided_at=f"'{LATER}'", reference_known_at=f"'{LATER}'")
    copy_decisions(ledger, "amends = 0", decided_at=f"'{OLDER}'", reference_known_at="'x'")
    copy_decisions(ledger, "amends = 0", event_id="'no-cutoff'", reference_known_at="''")
    copy_decisions(ledger, "amends = 0", event_id="'amending'", amends="1")
    copy_decisions(
        ledger,
        "amends = 0 AND event_id NOT LIKE '%-twin'",
        occurred_at="concat('2026-11-02T09:01', unhex('FF'))",
        event_id="'hostile'",
    )
    whole = latest_per_access(ledger)
    assert len(whole) >= 11 and {k for _e, _t, k in whole} >= {LATER}
    assert "x" not in {k for _e, _t, k in whole}
    lo, hi = "", "\U0010ffff"  # every time stored here is before it
    for page in (1, 2, 3, 1000):
        paged = list(ledger.audit.decision_cutoffs(lo, hi, page_size=page))
        assert sorted(paged) == sorted(whole), page
        assert [t for _e, t, _k in paged] == [t for _e, t, _k in whole], page


def test_verify_reads_the_latest_cutoff_of_each_access_made_before_the_run(
    ledger: AuditedLedger,
) -> None:
    """What a run read as stored cutoffs is what was stored before it: a later run's
    cutoffs are not, an access's rows are reduced to the latest of them."""
    copy_decisions(ledger, "amends = 0", decided_at=f"'{LATER}'", reference_known_at=f"'{LATER}'")
    copy_decisions(ledger, "amends = 0", decided_at=f"'{OLDER}'", reference_known_at="'x'")
    view = LedgerView.read(
        ledger.backend,
        ledger.db,
        ledger.topics,
        now_us=0,
        settled="~",
        future="~",
    )
    for before in (LATER, "2999-01-01T00:00:00.000000Z"):
        read = list(view.latest_cutoffs(before, "", "\U0010ffff"))
        assert read == latest_per_access(ledger, before)
    assert all(k != LATER for _e, _t, k in view.latest_cutoffs(LATER, "", "\U0010ffff"))


def test_an_event_id_ledgered_again_hours_later_is_a_new_access_to_auditor_and_verify(
    ledger: AuditedLedger,
) -> None:
    """The snoop's event id ledgered again ten hours later, beyond the late-flag window
    and after enough accesses for the auditor to let the first one's place go
    (``decide_range``), then a back-dated care relationship that explains it, then the
    day audited again: the first access keeps its stored cutoff (still flagged), the
    second has none of its own and is decided with what is known now (explained), as a
    new access. The auditor and verify agree."""
    snoop = ledger.cases["snoop"]
    [(decided,)] = ledger.sql("SELECT count() FROM {db}.access_decisions WHERE amends = 0")
    ledger.commit(*(event("N1", "P1", at(400 + i / 100)) for i in range(_FORGET_EVERY + 10)))
    ledger.commit(msgspec.structs.replace(snoop, occurred_at=at(600)))
    ledger.reference(late_relationship())
    again = ledger.audit_range(*DAY)
    assert again.kept_knowledge == decided
    assert again.decisions > decided + _FORGET_EVERY
    rows = [
        tuple(map(text, r))
        for r in ledger.sql(
            "SELECT occurred_at, explanation_kind, flags FROM {db}.access_decisions "
            "WHERE event_id = %(e)s AND amends = 0 ORDER BY occurred_at",
            {"e": snoop.event_id},
        )
    ]
    assert [(t, kind) for t, kind, _f in rows] == [(at(1), ""), (at(600), "relationship")]
    assert "NO_EXPLANATION" in rows[0][2] and "NO_EXPLANATION" not in rows[1][2]
    assert ledger.alert_of("snoop")  # still the alert of the first access
    result = ledger.verify()
    assert result.result == "intact", [str(f) for f in result.findings]
