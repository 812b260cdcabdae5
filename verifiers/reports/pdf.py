"""The access report as a PDF (issue 13: "exports as CSV/PDF with proofs").

A small writer of our own, no dependency: text pages in Courier (one of the PDF
standard fonts, nothing embedded), A4, each line of the report with its proof (chain,
height, index, leaf hash, block hash, the block's signature and the audit path), so a
reader can check a line by hand or with ``careledger verify-proof`` on the JSON export.
Text outside Latin-1 is shown as ``?`` and control characters escaped
(``careledger.safe_text.display``), so what a source wrote cannot break the document.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from careledger.safe_text import display

__all__ = ["render_pdf"]

_W, _H = 595, 842  # A4 in points
_MARGIN: Final = 36
_SIZE: Final = 7.5
_LEADING: Final = 9.5
_COLUMNS: Final = int((_W - 2 * _MARGIN) / (0.6 * _SIZE))  # Courier: 0.6 em per glyph
_ROWS: Final = int((_H - 2 * _MARGIN) / _LEADING)


def _pdf_text(text: str) -> bytes:
    safe = display(text).encode("latin-1", "replace")
    return safe.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")


def _lines(doc: Mapping[str, Any]) -> Iterable[str]:
    yield "careledger access report"
    yield f"patient {doc.get('patient')}   from {doc.get('from')}   to {doc.get('to')}"
    yield f"generated {doc.get('generated_at')}   database {doc.get('database')}"
    yield f"view {doc.get('view')}   {len(doc.get('lines') or [])} access(es)"
    completeness = doc.get("completeness")
    if completeness:
        yield from textwrap.wrap(f"completeness: {completeness}", _COLUMNS)
    for problem in doc.get("problems") or []:
        yield from textwrap.wrap(f"PROBLEM: {problem}", _COLUMNS)
    yield ""
    for n, line in enumerate(doc.get("lines") or [], 1):
        who = " ".join(str(x) for x in (line.get("actor_name"), f"({line.get('actor_id')})") if x)
        head = f"{n}. {line.get('occurred_at')}  {who}  {line.get('actor_role') or ''}"
        yield from textwrap.wrap(head, _COLUMNS)
        what = line.get("description") or line.get("purpose") or ""
        yield from textwrap.wrap(f"   {what}", _COLUMNS, subsequent_indent="   ")
        decision = line.get("decision")
        if isinstance(decision, Mapping) and decision:
            from verifiers.reports.access_report import decision_summary

            yield from textwrap.wrap(f"   decision: {decision_summary(dict(decision))}", _COLUMNS)
        proof = line.get("proof") or {}
        yield (
            f"   proof: {proof.get('chain_id')} height {proof.get('height')} "
            f"index {proof.get('index')}"
        )
        for name in ("leaf_hash", "block_hash", "signature"):
            if proof.get(name):
                yield from textwrap.wrap(
                    f"   {name}: {proof[name]}", _COLUMNS, subsequent_indent="      "
                )
        path: Sequence[str] = proof.get("audit_path") or []
        if path:
            yield "   audit path:"
            for step in path:
                yield f"      {step}"
        yield ""


def _page_stream(rows: Sequence[str], page: int, pages: int) -> bytes:
    out = [b"BT", f"/F1 {_SIZE} Tf {_LEADING} TL".encode(), f"{_MARGIN} {_H - _MARGIN} Td".encode()]
    for row in rows:
        out.append(b"(" + _pdf_text(row) + b") Tj T*")
    out.append(b"ET")
    footer = f"page {page} of {pages}"
    out += [
        b"BT",
        f"/F1 {_SIZE} Tf {_W - _MARGIN - 0.6 * _SIZE * len(footer):.1f} {_MARGIN / 2} Td".encode(),
        b"(" + _pdf_text(footer) + b") Tj",
        b"ET",
    ]
    return b"\n".join(out)


def render_pdf(doc: Mapping[str, Any]) -> bytes:
    """The report document (``access_report.build_report``) as PDF bytes."""
    rows = list(_lines(doc))
    chunks = [rows[i : i + _ROWS] for i in range(0, len(rows), _ROWS)] or [[]]
    objects: list[bytes] = []  # object n is objects[n - 1]

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    catalog = add(b"")  # filled below
    pages_obj = add(b"")
    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Courier /Encoding /WinAnsiEncoding >>")
    kids = []
    for n, chunk in enumerate(chunks, 1):
        stream = _page_stream(chunk, n, len(chunks))
        content = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        kids.append(
            add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %d %d] "
                b"/Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>"
                % (pages_obj, _W, _H, font, content)
            )
        )
    objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages_obj
    objects[pages_obj - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids),
        len(kids),
    )
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        catalog,
        xref,
    )
    return bytes(out)
