"""Charts as SVG drawn on the server from the numbers the tables show (ADR 0035): no
chart library, no script, and every bar carries its number in a ``<title>`` so that a
chart is readable by a screen reader and testable as text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from markupsafe import Markup, escape

__all__ = ["bar_chart", "stacked_bars"]

PALETTE: Final = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#ad494a",
    "#8ca252",
    "#de9ed6",
    "#6b6ecf",
    "#e7ba52",
)
_LEGEND_COLUMNS: Final = 3
_LEGEND_STEP: Final = 230
_MAX_BAR: Final = 48.0
_W: Final = 720
_H: Final = 220
_PAD_L: Final = 48
_PAD_B: Final = 40
_PAD_T: Final = 12


def _frame(title: str, top: int, body: list[str], legend: list[str]) -> Markup:
    axis = [
        f'<line x1="{_PAD_L}" y1="{_H - _PAD_B}" x2="{_W - 8}" y2="{_H - _PAD_B}" stroke="#555"/>',
        f'<text x="{_PAD_L - 6}" y="{_PAD_T + 10}" text-anchor="end" font-size="11">{top}</text>',
        f'<text x="{_PAD_L - 6}" y="{_H - _PAD_B}" text-anchor="end" font-size="11">0</text>',
    ]
    rows = (len(legend) + _LEGEND_COLUMNS - 1) // _LEGEND_COLUMNS
    height = _H + (16 * rows if legend else 0)
    return Markup(
        f'<svg class="chart" role="img" aria-label="{escape(title)}" '
        f'viewBox="0 0 {_W} {height}" width="{_W}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
        + "".join(axis + body + legend)
        + "</svg>"
    )


def bar_chart(title: str, labels: Sequence[str], values: Sequence[int]) -> Markup:
    """One bar per label."""
    return stacked_bars(title, labels, {"": list(values)})


def stacked_bars(title: str, labels: Sequence[str], series: Mapping[str, Sequence[int]]) -> Markup:
    """Bars per label, stacked by series (e.g. alerts per day, stacked by rule)."""
    totals = [sum(s[i] for s in series.values()) for i in range(len(labels))]
    top = max(totals, default=0) or 1
    plot_w = _W - _PAD_L - 8
    plot_h = _H - _PAD_B - _PAD_T
    slot = plot_w / max(1, len(labels))
    bar_w = min(_MAX_BAR, max(1.0, slot * 0.8))
    body: list[str] = []
    every = max(1, len(labels) // 12)  # at most ~12 labels under the axis
    for i, label in enumerate(labels):
        x = _PAD_L + i * slot + (slot - bar_w) / 2
        y = float(_H - _PAD_B)
        for k, (name, values) in enumerate(series.items()):
            n = values[i]
            if n <= 0:
                continue
            h = plot_h * n / top
            y -= h
            what = f"{name} {label}: {n}" if name else f"{label}: {n}"
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[k % len(PALETTE)]}"><title>{escape(what)}</title></rect>'
            )
        if i % every == 0:
            body.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{_H - _PAD_B + 14}" text-anchor="middle" '
                f'font-size="10">{escape(label)}</text>'
            )
    legend: list[str] = []
    if len(series) > 1 or "" not in series:
        for k, name in enumerate(series):
            lx = _PAD_L + (k % _LEGEND_COLUMNS) * _LEGEND_STEP
            ly = _H + 16 * (k // _LEGEND_COLUMNS)
            legend.append(
                f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" '
                f'fill="{PALETTE[k % len(PALETTE)]}"/>'
                f'<text x="{lx + 14}" y="{ly}" font-size="11">{escape(name)}</text>'
            )
    return _frame(title, top, body, legend)
