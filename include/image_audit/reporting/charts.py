"""The report's charts: inline SVG drawn from the report's figures (no plotting library, no raster).

Each chart is one ``<svg class="chart" role="img">`` element with a ``<title>`` and a ``<desc>`` (what a
screen reader says), and a ``<title>`` on every bar and point (the browser's tooltip gives its figure).
Sizes are given in inches at 110 dpi; the SVG scales to its column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
from markupsafe import Markup, escape

from image_audit.warehouse.verdicts import VERDICT_LABELS, Thresholds, Verdict

STATE_COLORS = {
    "completed": "#0f766e",
    "submitted": "#3b82f6",
    "pending": "#93c5fd",
    "failed": "#b91c1c",
    "timed_out": "#9ca3af",
    "rejected": "#f97316",
}
VERDICT_COLORS = {
    Verdict.AI_GENERATED.value: "#dc2626",
    Verdict.PARTLY_AI.value: "#f59e0b",
    Verdict.HUMAN.value: "#16a34a",
}
NOT_SCORED_COLOR = "#cbd5e1"
INK = "#1f2937"
MUTED = "#6b7280"
AXIS = "#d1d5db"
GRID = "#eef0f3"
DPI = 110
FONT = 12
SMALL = 11
DASH = "\u2013"
#: Average advance of a character of the page's sans-serif at 1px (to size the label margins).
CHAR_WIDTH = 0.6


def _px(inches: float) -> int:
    return round(inches * DPI)


def _text_width(text: str, size: float = FONT) -> float:
    return len(text) * size * CHAR_WIDTH


def _coord(value: float) -> str:
    """An SVG coordinate: one decimal at most, without trailing zeros."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def nice_ticks(top: float, count: int = 6, integer: bool = False) -> list[float]:
    """Ticks 0, step, 2 step... up to ``top``: ``step`` 1, 2, 2.5 or 5 times a power of ten, about
    ``count`` of them (integers only when ``integer``)."""
    if not top > 0:
        return [0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    if integer:
        step = max(1, math.ceil(step))
    ticks, i = [], 0
    while i * step <= top * (1 + 1e-9):
        ticks.append(round(i * step, 12))
        i += 1
    return ticks


def _count(value: float) -> str:
    return f"{round(value):,}"


def _percent(value: float, step: float) -> str:
    digits = 0 if abs(step * 100 - round(step * 100)) < 1e-9 else 1
    return f"{value * 100:.{digits}f}%"


def _svg(key: str, width: int, height: int, title: str, desc: str, body: list[str]) -> Markup:
    ids = f"chart-{key}-title chart-{key}-desc"
    head = (
        f'<svg class="chart" id="chart-{key}" role="img" aria-labelledby="{ids}" xmlns="http://www.w3.org/2000/svg"'
        f' viewBox="0 0 {width} {height}" width="{width}" height="{height}" font-size="{FONT}"'
        f' font-family="inherit"><title id="chart-{key}-title">{escape(title)}</title>'
        f'<desc id="chart-{key}-desc">{escape(desc)}</desc>'
        f'<rect width="{width}" height="{height}" fill="#fff"/>'
    )
    # every text in it went through escape(); the rest are numbers and this module's constants
    return Markup(head + "".join(body) + "</svg>")  # noqa: S704


def _rect(x: float, y: float, w: float, h: float, color: str, tip: str, opacity: float = 1.0) -> str:
    extra = f' fill-opacity="{opacity:g}"' if opacity < 1 else ""
    box = f'x="{_coord(x)}" y="{_coord(y)}" width="{_coord(max(w, 0))}" height="{_coord(max(h, 0))}"'
    return f'<rect {box} fill="{color}"{extra}><title>{escape(tip)}</title></rect>'


def _text(
    x: float, y: float, text: str, anchor: str = "start", color: str = MUTED, size: int = FONT, **attrs
) -> str:
    more = "".join(f' {name.replace("_", "-")}="{value}"' for name, value in attrs.items())
    return (
        f'<text x="{_coord(x)}" y="{_coord(y)}" text-anchor="{anchor}" fill="{color}"'
        f' font-size="{size}"{more}>{escape(text)}</text>'
    )


def _line(x1: float, y1: float, x2: float, y2: float, color: str = AXIS, **attrs) -> str:
    more = "".join(f' {name.replace("_", "-")}="{value}"' for name, value in attrs.items())
    return (
        f'<line x1="{_coord(x1)}" y1="{_coord(y1)}" x2="{_coord(x2)}" y2="{_coord(y2)}"'
        f' stroke="{color}"{more}/>'
    )


def _legend(right: float, y: float, entries: Sequence[tuple[str, str]]) -> list[str]:
    """Swatches and names, right-aligned at ``right``."""
    body, x = [], right
    for label, color in reversed(entries):
        x -= _text_width(label, SMALL) * 1.1  # the estimate runs short on capitals
        body.append(_text(x, y + 4, label, color=INK, size=SMALL))
        x -= 18
        body.append(f'<rect x="{_coord(x)}" y="{_coord(y - 5)}" width="14" height="9" fill="{color}"/>')
        x -= 20
    return body


def _x_axis(left: float, right: float, bottom: float, top_value: float, integer: bool = True) -> tuple:
    """Vertical grid ticks of a horizontal bar chart: the scale and the ticks' elements."""
    ticks = nice_ticks(top_value, 6, integer=integer)
    scale = (right - left) / (ticks[-1] if ticks[-1] > top_value else top_value or 1)
    body = [_line(left, bottom, right, bottom)]
    for tick in ticks:
        x = left + tick * scale
        body.append(_line(x, bottom, x, bottom + 4))
        body.append(_text(x, bottom + 17, _count(tick), "middle"))
    return scale, body


def counts_chart(
    counts: dict[str, int],
    colors: dict[str, str],
    labels: dict[str, str] | None = None,
    *,
    key: str = "counts",
    title: str = "Images per scan state",
) -> Markup:
    """Horizontal bars, one per key (states or verdicts), each labelled with its count."""
    labels = labels or {}
    names = [labels.get(k, k.replace("_", " ")) for k in counts]
    width, row = _px(5.2), 0.42 * DPI
    top, axis_room = 10, 30
    height = round(top + row * len(counts) + axis_room)
    left = max(_text_width(name) for name in names) + 16 if names else 16
    values = list(counts.values())
    largest = max([*values, 1])
    right = width - 12
    bottom = height - axis_room
    scale, body = _x_axis(left, right, bottom, largest * 1.15)
    body.append(_line(left, top, left, bottom))
    for i, (name, value, k) in enumerate(zip(names, values, counts, strict=True)):
        middle = top + row * (i + 0.5)
        bar = row * 0.62
        body.append(
            _rect(
                left,
                middle - bar / 2,
                value * scale,
                bar,
                colors.get(k, NOT_SCORED_COLOR),
                f"{name}: {value:,}",
            )
        )
        body.append(_line(left - 4, middle, left, middle))
        body.append(_text(left - 7, middle + 4, name, "end"))
        body.append(_text(left + value * scale + 4, middle + 4, f"{value:,}", color=INK))
    desc = "; ".join(f"{name}: {value:,}" for name, value in zip(names, values, strict=True))
    return _svg(key, width, height, title, desc, body)


def histogram_chart(counts: dict[str, Sequence[int]], thresholds: Thresholds) -> Markup:
    """Completed images per AI-proportion bucket, stacked by verdict, with the threshold lines."""
    bins = len(next(iter(counts.values())))
    width, height = _px(10.2), _px(2.9)
    right, top, bottom = width - 16, 34, height - 46
    order = (Verdict.HUMAN.value, Verdict.PARTLY_AI.value, Verdict.AI_GENERATED.value)
    totals = [sum(counts[v][i] for v in order) for i in range(bins)]
    ceiling = max([*totals, 1]) * 1.25
    ticks = nice_ticks(ceiling, 8, integer=True)
    left = 36 + max(_text_width(_count(tick)) for tick in ticks)
    y_scale = (bottom - top) / ceiling
    x_scale = (right - left) / 1.0
    body = []
    for tick in ticks:
        y = bottom - tick * y_scale
        body.append(_line(left - 4, y, left, y))
        body.append(_text(left - 7, y + 4, _count(tick), "end"))
    for i in range(bins):
        x = left + i / bins * x_scale
        base = 0
        span = f"{i * 100 / bins:g}{DASH}{(i + 1) * 100 / bins:g}%"
        for verdict in order:
            value = counts[verdict][i]
            if value:
                y = bottom - (base + value) * y_scale
                tip = f"AI proportion {span}: {VERDICT_LABELS[Verdict(verdict)]} {value:,}"
                body.append(
                    _rect(x, y, x_scale / bins * 0.92, value * y_scale, VERDICT_COLORS[verdict], tip, 0.9)
                )
            base += value
    body += [_line(left, bottom, right, bottom), _line(left, top, left, bottom)]
    for tick in nice_ticks(1.0, 5):
        x = left + tick * x_scale
        body.append(_line(x, bottom, x, bottom + 4))
        body.append(_text(x, bottom + 17, _percent(tick, 0.2), "middle"))
    for value, label in ((thresholds.partly_ai, "partly AI"), (thresholds.ai_generated, "AI-generated")):
        x = left + value * x_scale
        body.append(_line(x, top, x, bottom, INK, stroke_dasharray="4 3", stroke_width="0.9"))
        anchor, dx = ("end", -3) if value > 0.85 else ("start", 3)
        body.append(_text(x + dx, top + 11, f"{label} ≥ {value:g}", anchor, INK, SMALL))
    body += _legend(right, 14, [(VERDICT_LABELS[Verdict(v)], VERDICT_COLORS[v]) for v in order])
    body.append(_text((left + right) / 2, height - 8, "AI proportion of the image (summary.ai)", "middle"))
    body.append(
        _text(
            16,
            (top + bottom) / 2,
            "images",
            "middle",
            transform=f"rotate(-90 16 {_coord((top + bottom) / 2)})",
        )
    )
    shown = [
        f"{i * 100 / bins:g}{DASH}{(i + 1) * 100 / bins:g}%: {totals[i]:,}" for i in range(bins) if totals[i]
    ]
    desc = (
        f"Completed images per {100 / bins:g}-point bucket of summary.ai, stacked by verdict; thresholds "
        f"partly AI ≥ {thresholds.partly_ai:g}, AI-generated ≥ {thresholds.ai_generated:g}. "
        + ("; ".join(shown) or "No completed images.")
    )
    return _svg("histogram", width, height, "Histogram of the AI proportion", desc, body)


def verdict_breakdown_chart(
    table: pd.DataFrame, label: str, max_rows: int = 15, *, key: str | None = None
) -> Markup:
    """Stacked horizontal bars per source or day: verdicts of the completed images, then the rest."""
    table = table.head(max_rows)
    names = [str(index) for index in table.index]
    width, row = _px(10.2), 0.36 * DPI
    top, axis_room = 30, 46
    height = round(top + row * len(names) + axis_room)
    left = max(_text_width(name) for name in names) + 16 if names else 16
    right, bottom = width - 16, height - axis_room
    scale, body = _x_axis(left, right, bottom, max([*table["images"].tolist(), 1]))
    body.append(_line(left, top, left, bottom))
    parts = [(VERDICT_LABELS[Verdict(v)], VERDICT_COLORS[v], v) for v in VERDICT_COLORS]
    lines = []
    for i, (name, record) in enumerate(zip(names, table.to_dict("records"), strict=True)):
        middle, bar, start = top + row * (i + 0.5), row * 0.62, 0
        scored = sum(int(record[v]) for _, _, v in parts)
        segments = [(title, color, int(record[v])) for title, color, v in parts]
        segments.append(("no result", NOT_SCORED_COLOR, int(record["images"]) - scored))
        for title, color, value in segments:
            if value > 0:
                tip = f"{name}: {title} {value:,}"
                body.append(_rect(left + start * scale, middle - bar / 2, value * scale, bar, color, tip))
            start += value
        body.append(_line(left - 4, middle, left, middle))
        body.append(_text(left - 7, middle + 4, name, "end"))
        lines.append(
            f"{name}: {int(record['images']):,} images, "
            + ", ".join(f"{title} {value:,}" for title, _, value in segments)
        )
    body += _legend(
        right, 12, [(title, color) for title, color, _ in parts] + [("no result", NOT_SCORED_COLOR)]
    )
    body.append(_text((left + right) / 2, height - 8, f"images per {label}", "middle"))
    title = f"Verdicts per {label}"
    return _svg(key or label.replace(" ", "-"), width, height, title, "; ".join(lines), body)


#: One color per source line, in the order the sources are listed; the sources past the sixth share gray.
SOURCE_COLORS = ["#2563eb", "#dc2626", "#16a34a", "#f59e0b", "#7c3aed", "#0891b2", "#6b7280"]


def source_colors(sources: Sequence[str]) -> dict[str, str]:
    """Each of ``sources`` its line's color (``SOURCE_COLORS``, in order)."""
    return {s: SOURCE_COLORS[min(i, len(SOURCE_COLORS) - 1)] for i, s in enumerate(sources)}


def trend_chart(runs: pd.DataFrame) -> Markup:
    """AI share per run (``label``, ``ai_share``, ``flagged_share``), oldest first."""
    series = [
        (
            "AI-generated or partly AI",
            VERDICT_COLORS[Verdict.PARTLY_AI.value],
            runs["flagged_share"].tolist(),
        ),
        ("AI-generated", VERDICT_COLORS[Verdict.AI_GENERATED.value], runs["ai_share"].tolist()),
    ]
    return share_lines_chart(
        [str(label) for label in runs["label"]], series, key="trend", title="AI share per run"
    )


def share_lines_chart(
    labels: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[float | None]]],
    *,
    key: str,
    title: str,
    y_label: str = "share of completed images",
) -> Markup:
    """Shares (0-1) along ``labels``, one line per ``(name, color, values)``; a missing value (None, NaN)
    breaks its line. Drawn in order: the last series is on top."""
    labels = list(labels)
    crowded = len(labels) > 5
    top = 20 + 16 * len(series)  # the legend above the plot, a line per series
    width, height = _px(10.2), _px(2.8) + top - 28
    left, right = 36 + _text_width("100.0%"), width - 24
    bottom = height - (max(_text_width(t, SMALL) for t in labels) * 0.5 + 24 if crowded else 46)
    known = [v for _, _, values in series for v in values if not _missing(v)]
    ceiling = min(1.0, max(0.05, max(known, default=0.0)) * 1.25)
    ticks = nice_ticks(ceiling, 5)
    step = ticks[1] if len(ticks) > 1 else ceiling
    y_scale = (bottom - top) / ceiling
    count = len(labels)
    pad = (right - left) * 0.05
    x_step = (right - left - 2 * pad) / max(count - 1, 1)
    xs = [left + pad + i * x_step for i in range(count)]
    every = max(1, math.ceil(count / 30))  # at most 30 axis labels
    body = []
    for tick in ticks:
        y = bottom - tick * y_scale
        body.append(_line(left, y, right, y, GRID))
        body.append(_text(left - 7, y + 4, _percent(tick, step), "end"))
    body += [_line(left, bottom, right, bottom), _line(left, top, left, bottom)]
    for i, (x, text) in enumerate(zip(xs, labels, strict=True)):
        body.append(_line(x, bottom, x, bottom + 4))
        if i % every:
            continue
        if crowded:
            transform = f"rotate(-30 {_coord(x)} {_coord(bottom + 14)})"
            body.append(_text(x, bottom + 14, text, "end", size=SMALL, transform=transform))
        else:
            body.append(_text(x, bottom + 17, text, "middle", size=SMALL))
    for name, color, values in series:
        run: list[str] = []
        for x, value in zip([*xs, None], [*values, None], strict=True):
            if x is None or _missing(value):
                if len(run) > 1:  # a missing share breaks the line
                    points = " ".join(run)
                    body.append(
                        f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.6"/>'
                    )
                run = []
                continue
            run.append(f"{_coord(x)},{_coord(bottom - min(value, ceiling) * y_scale)}")
        for x, value, text in zip(xs, values, labels, strict=True):
            if not _missing(value):
                y = bottom - min(value, ceiling) * y_scale
                body.append(
                    f'<circle cx="{_coord(x)}" cy="{_coord(y)}" r="3.5" fill="{color}">'
                    f"<title>{escape(f'{text}: {name} {value * 100:.1f}%')}</title></circle>"
                )
    for i, (name, color, _) in enumerate(series):
        y = 12 + i * 16
        body.append(_line(left + 10, y, left + 30, y, color, stroke_width="1.6"))
        body.append(f'<circle cx="{left + 20}" cy="{y}" r="3" fill="{color}"/>')
        body.append(_text(left + 36, y + 4, name, color=INK, size=SMALL))
    body.append(
        _text(
            16,
            (top + bottom) / 2,
            y_label,
            "middle",
            transform=f"rotate(-90 16 {_coord((top + bottom) / 2)})",
        )
    )
    lines = [
        f"{text}: "
        + ", ".join(
            f"{name} {DASH if _missing(values[i]) else f'{values[i] * 100:.1f}%'}"
            for name, _, values in series
        )
        for i, text in enumerate(labels)
    ]
    return _svg(key, width, height, title, "; ".join(lines), body)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
