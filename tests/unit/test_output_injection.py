"""Report injection (issue 12, point 4; ADR 0026): what the sources wrote (actor names
and ids, organisations, workstations) reaches CSV exports and terminal tables.

Attack: an actor named ``=HYPERLINK("http://x","y")`` became a live formula in the CSV
export opened in a spreadsheet, a raw CR split a CSV row, and ``\\x1b[31m`` recoloured
(or, with other sequences, rewrote) the operator's terminal in the table view. Now CSV
cells that a spreadsheet would evaluate get a leading single quote (OWASP CSV injection),
control characters are shown escaped in CSV and tables, and the JSON output stays exact.
"""

from __future__ import annotations

import copy
import csv
import io
import json
from typing import Any

import pytest

from careledger.safe_text import csv_cell, display
from verifiers.auditor.alerts_cli import alert_row, tail_line
from verifiers.reports.access_report import render_csv, render_table
from verifiers.reports.patient_view import render_text

FORMULA = '=HYPERLINK("http://x","y")'
ESC = "\x1b[31mred\x1b[0m"

LINE: dict[str, Any] = {
    "occurred_at": "2026-11-02T09:00:00.000000Z",
    "actor_id": "nurse-7",
    "actor_name": "N. Seven",
    "actor_role": "nurse",
    "actor_department": "ED",
    "actor_organization": "North",
    "action": "R",
    "outcome": 0,
    "object_type": "Patient",
    "object_id": "example",
    "purpose": ["TREAT"],
    "source_system": "fhir-gw",
    "workstation": "ED-WS-03",
    "recipient": None,
    "decision": None,
    "proof": {"chain_id": "c", "height": 1, "index": 0, "leaf_hash": "ab" * 32},
}


def _doc(**line: Any) -> dict[str, Any]:
    return {
        "schema": "careledger.access-report/1",
        "view": "access",
        "patient": "example",
        "from": "2026-11-01T00:00:00.000000Z",
        "to": "2026-11-03T00:00:00.000000Z",
        "lines": [dict(copy.deepcopy(LINE), **line)],
        "problems": [],
    }


def _csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


# ----------------------------------------------------------------------- csv


@pytest.mark.parametrize(
    "value", [FORMULA, "+1+2", "-2+3", "@SUM(A1:A2)", "\tTAB", "\rCR", "\uff1dHYPERLINK(1)"]
)
def test_a_csv_cell_a_spreadsheet_would_evaluate_is_quoted(value: str) -> None:
    cell = csv_cell(value)
    assert cell.startswith("'")
    assert "\r" not in cell and "\t" not in cell


@pytest.mark.parametrize("value", ["nurse-7", "-", "12", "-3", "2026-11-02", "N. Seven", ""])
def test_ordinary_csv_cells_are_unchanged(value: str) -> None:
    assert csv_cell(value) == value


def test_the_access_report_csv_neutralises_formulas_and_control_characters() -> None:
    doc = _doc(actor_name=FORMULA, actor_id="evil\r\n=1+1", organization=ESC)
    before = json.dumps(doc, sort_keys=True)
    text = render_csv(doc)
    assert json.dumps(doc, sort_keys=True) == before  # the document itself is untouched
    assert "\r" not in text and "\x1b" not in text
    rows = _csv_rows(text)
    assert len(rows) == 2  # no row was split by the CR / LF
    header, row = rows
    for name, cell in zip(header, row, strict=True):
        assert not cell.startswith(("=", "+", "@", "\t", "\r")), (name, cell)
        assert not (cell.startswith("-") and cell != "-" and not cell[1:].isdigit()), cell
    cells = dict(zip(header, row, strict=True))
    assert cells["actor_name"] == "'" + FORMULA
    assert cells["actor_id"] == "evil\\r\\n=1+1"


def test_the_access_report_json_stays_exact() -> None:
    doc = _doc(actor_name=FORMULA, actor_id="evil\r\n=1+1", organization=ESC)
    again = json.loads(json.dumps(doc, indent=1))
    assert again["lines"][0]["actor_name"] == FORMULA
    assert again["lines"][0]["actor_id"] == "evil\r\n=1+1"
    assert again["lines"][0]["organization"] == ESC


# ----------------------------------------------------------------------- tables


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (ESC, "\\x1b[31mred\\x1b[0m"),
        ("a\rb", "a\\rb"),
        ("a\nb", "a\\nb"),
        ("a\x00b\x7fc\x9bd", "a\\x00b\\x7fc\\x9bd"),
        ("evil\u202eexe.txt", "evil\\u202eexe.txt"),
        ("José Ωμέγα 患者", "José Ωμέγα 患者"),
        ("HOSP\\jsmith", "HOSP\\jsmith"),
    ],
)
def test_display_shows_control_characters_escaped(value: str, shown: str) -> None:
    assert display(value) == shown


def test_the_access_report_table_has_no_escape_sequences() -> None:
    doc = _doc(actor_name=ESC, actor_id="a\rb", actor_role="x\x07y")
    doc["patient"] = "pat\x1b]0;title\x07"
    text = render_table(doc)
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert "\\x1b[31mred" in text and "a\\rb" in text
    assert all(line.isprintable() for line in text.splitlines())


def test_the_patient_view_text_has_no_escape_sequences() -> None:
    doc = {
        "patient": "example",
        "generated_at": "2026-11-03T00:00:00.000000Z",
        "consents": [],
        "may_see_now": [],
        "decisions": [],
        "accesses": {
            "from": "2026-11-01",
            "to": "2026-11-03",
            "lines": [
                {
                    "occurred_at": "2026-11-02T09:00:00.000000Z",
                    "actor_id": "a\rb",
                    "actor_name": ESC,
                    "action": "R",
                    "object_type": "Patient",
                    "purpose": ["TREAT"],
                    "proof": {"chain_id": "c", "height": 1, "index": 0},
                }
            ],
        },
        "problems": ["row says \x1b[2J"],
    }
    text = render_text(doc)
    assert "\x1b" not in text and "\r" not in text
    assert all(line.isprintable() for line in text.splitlines())


ALERT: dict[str, Any] = {
    "alert_id": "a" * 32,
    "first_at": "2026-11-02T09:00:00.000000Z",
    "rule": "after-hours",
    "severity": "high",
    "score": 3.5,
    "event_ids": ["e1"],
    "actor_id": ESC,
    "patient_ref": "p\r\x1b[2J",
    "patient_refs": ["p"],
    "status": "open",
    "status_history_intact": True,
    "status_pending": False,
}


def test_the_alerts_table_row_has_no_escape_sequences() -> None:
    row = alert_row(ALERT)
    assert "\x1b" not in row and "\r" not in row and row.isprintable()
    assert "\\x1b[31m" in row


def test_the_alerts_tail_line_has_no_escape_sequences() -> None:
    for doc in (ALERT, {"code": "X\x1b[2J", "alert_id": "a", "message": "m\rn"}):
        line = tail_line(doc)
        assert "\x1b" not in line and "\r" not in line and line.isprintable()
