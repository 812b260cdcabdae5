"""The console's SVG charts: each bar's number is in its title (readable, testable), bar
heights follow the numbers, and labels from the store cannot inject markup."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from console.charts import bar_chart, stacked_bars

SVG = "{http://www.w3.org/2000/svg}"


def _bars(svg: str) -> dict[str, float]:
    root = ET.fromstring(svg)
    out = {}
    for rect in root.iter(f"{SVG}rect"):
        title = rect.find(f"{SVG}title")
        if title is not None and title.text:
            out[title.text] = float(rect.get("height", "0"))
    return out


def test_every_bar_says_its_number_and_heights_are_proportional() -> None:
    bars = _bars(bar_chart("accesses", ["00", "01", "02"], [10, 5, 0]))
    assert set(bars) == {"00: 10", "01: 5"}  # a zero draws no bar
    assert abs(bars["00: 10"] - 2 * bars["01: 5"]) < 0.2


def test_stacked_series_stack_and_are_named() -> None:
    svg = stacked_bars("alerts", ["d1", "d2"], {"A": [1, 2], "B": [3, 0]})
    bars = _bars(svg)
    assert set(bars) == {"A d1: 1", "A d2: 2", "B d1: 3"}
    assert abs(bars["A d1: 1"] + bars["B d1: 3"] - 2 * bars["A d2: 2"]) < 0.2  # d1 total 4
    assert ">A</text>" in svg and ">B</text>" in svg  # the legend


def test_hostile_labels_are_text_not_markup() -> None:
    svg = str(stacked_bars("<script>x</script>", ["<img src=x>"], {"</svg><b>": [1]}))
    ET.fromstring(svg)  # still one well-formed SVG element
    assert "<script>" not in svg and "<img" not in svg and "</svg><b>" not in svg


def test_an_empty_chart_is_still_a_chart() -> None:
    svg = str(stacked_bars("nothing yet", [], {}))
    ET.fromstring(svg)
    assert re.search(r"<rect", svg) is None
