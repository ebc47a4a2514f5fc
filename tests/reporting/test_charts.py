"""The report's inline SVG charts draw the summary's figures."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest

from tests.support.reports import (
    EXPECTED,
    SVG,
    svg_charts,
    svg_text,
)


def _bars(chart: ElementTree.Element) -> list[tuple[str, float, float]]:
    """Each bar of a chart: its tooltip, width and height."""
    return [
        ("".join(r.find(f"{SVG}title").itertext()), float(r.get("width")), float(r.get("height")))
        for r in chart.iter(f"{SVG}rect")
        if r.find(f"{SVG}title") is not None
    ]


def test_svg_charts_draw_the_reports_figures(reports):
    """The inline charts show the summary's figures: one bar per count, lengths in proportion (to the
    0.1 px the coordinates are written with)."""
    _, report, _ = reports
    summary = report.summary
    charts = svg_charts(report.html_path.read_text())

    states = {tip.split(": ")[0]: (int(tip.split(": ")[1]), w) for tip, w, _ in _bars(charts["chart-states"])}
    assert {k: v[0] for k, v in states.items()} == {
        k.replace("_", " "): n for k, n in EXPECTED["states"].items()
    }
    assert states["completed"][1] == pytest.approx(10 * states["failed"][1], rel=0.01)
    assert states["pending"][1] == pytest.approx(states["failed"][1], rel=0.01)
    verdicts = {tip: w for tip, w, _ in _bars(charts["chart-verdicts"])}
    assert set(verdicts) == {"AI-generated: 4", "Partly AI: 4", "Human: 2"}
    assert verdicts["Human: 2"] == pytest.approx(verdicts["AI-generated: 4"] / 2, rel=0.01)

    buckets: dict[int, int] = {}
    heights: dict[int, float] = {}
    for tip, _, height in _bars(charts["chart-histogram"]):  # "AI proportion 95\u2013100%: AI-generated 3"
        span, figure = tip.removeprefix("AI proportion ").split(": ")
        index = int(span.split("\u2013")[0]) // 5
        buckets[index] = buckets.get(index, 0) + int(figure.rsplit(" ", 1)[1])
        heights[index] = heights.get(index, 0.0) + height
    assert (
        buckets == EXPECTED["histogram"] == {i: n for i, n in enumerate(summary["histogram"]["counts"]) if n}
    )
    assert heights[19] == pytest.approx(3 * heights[0], rel=0.01)
    desc = svg_text(charts["chart-histogram"], "desc")[0]
    assert "partly AI ≥ 0.2" in desc and "AI-generated ≥ 0.9" in desc

    per_source: dict[str, int] = {}
    for tip, _, _ in _bars(charts["chart-by-source"]):  # "shop: Partly AI 2"
        name, part = tip.rsplit(": ", 1)
        per_source[name] = per_source.get(name, 0) + int(part.rsplit(" ", 1)[1])
    assert per_source == {name: row["images"] for name, row in summary["by_source"].items()}
    per_day = {tip.rsplit(": ", 1)[0] for tip, _, _ in _bars(charts["chart-by-day"])}
    assert per_day == set(summary["by_day"])

    points = ["".join(c.itertext()) for c in charts["chart-trend"].iter(f"{SVG}circle") if len(c)]
    assert f"AI-generated {summary['ai_share'] * 100:.1f}%" in points[-1]  # the current run, last
    assert any("AI-generated 25.0%" in point for point in points)  # R0's stored share
