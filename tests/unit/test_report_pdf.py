"""The access report as PDF: a document a real PDF reader (pypdf) opens, every line and
its proof in the text, several pages when long, hostile text shown, not interpreted."""

from __future__ import annotations

import io
from typing import Any

from pypdf import PdfReader

from verifiers.reports.pdf import render_pdf


def _doc(n: int, actor_name: str = "Ana Moreau") -> dict[str, Any]:
    return {
        "schema": "careledger.access-report/1",
        "view": "access",
        "patient": "MRN123",
        "from": "2026-11-01T00:00:00.000000Z",
        "to": "2026-12-01T00:00:00.000000Z",
        "generated_at": "2026-12-05T09:00:00.000000Z",
        "database": "careledger",
        "completeness": "every access in a committed block",
        "problems": [],
        "lines": [
            {
                "occurred_at": f"2026-11-02T08:{i % 60:02d}:00.000000Z",
                "actor_id": f"E{i}",
                "actor_name": actor_name,
                "actor_role": "nurse",
                "description": "Restful Operation / read: Observation",
                "decision": {"explanation": {"kind": "care-team", "via": "ward 3"}},
                "proof": {
                    "chain_id": "careledger.local/careledger.access-events/2",
                    "height": 7 + i,
                    "index": i,
                    "leaf_hash": f"{i:064x}",
                    "block_hash": "ab" * 32,
                    "signature": "cd" * 64,
                    "audit_path": ["ef" * 32, "01" * 32],
                },
            }
            for i in range(n)
        ],
    }


def _text(pdf: bytes) -> tuple[int, str]:
    reader = PdfReader(io.BytesIO(pdf))
    return len(reader.pages), "\n".join(p.extract_text() for p in reader.pages)


def test_every_line_and_its_proof_is_in_the_pdf() -> None:
    pages, text = _text(render_pdf(_doc(3)))
    assert pages == 1
    assert "patient MRN123" in text and "3 access(es)" in text
    for i in range(3):
        assert f"E{i}" in text and f"{i:064x}" in text
    assert "careledger.local/careledger.access-events/2 height 9 index 2" in text
    assert "ef" * 32 in text and "explained: care-team (ward 3)" in text


def test_a_long_report_runs_over_pages_with_numbers() -> None:
    pages, text = _text(render_pdf(_doc(60)))
    assert pages > 3
    assert f"page 1 of {pages}" in text and f"page {pages} of {pages}" in text
    assert "E59" in text


def test_hostile_text_is_shown_not_interpreted() -> None:
    pdf = render_pdf(_doc(1, actor_name="x) Tj ET BT (evil\r\n\x1b[31m Ωmega"))
    pages, text = _text(pdf)
    assert pages == 1
    assert "x) Tj ET BT (evil" in text  # the parentheses are escaped, not PDF operators
    assert "\\x1b" in text and "?mega" in text  # control shown, outside Latin-1 replaced


def test_an_empty_report_is_a_valid_one_page_pdf() -> None:
    pages, text = _text(render_pdf(_doc(0)))
    assert pages == 1 and "0 access(es)" in text
