"""The report's charts: matplotlib figures (Agg canvas, no pyplot state) embedded as PNG data URIs."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from image_audit.reporting.verdicts import VERDICT_LABELS, Thresholds, Verdict

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
DPI = 110


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _style(axes) -> None:
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        axes.spines[side].set_color("#d1d5db")
    axes.tick_params(colors=MUTED, labelsize=9)
    axes.yaxis.label.set_color(MUTED)
    axes.xaxis.label.set_color(MUTED)


def to_data_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _bar_labels(axes, bars, values: Sequence[int]) -> None:
    axes.bar_label(bars, labels=[f"{v:,}" for v in values], padding=3, fontsize=9, color=INK)


def counts_chart(counts: dict[str, int], colors: dict[str, str], labels: dict[str, str] | None = None) -> str:
    """Horizontal bars, one per key (states or verdicts)."""
    labels = labels or {}
    keys = list(counts)[::-1]
    figure = _figure(5.2, 0.42 * len(keys) + 0.6)
    axes = figure.add_subplot()
    values = [counts[k] for k in keys]
    bars = axes.barh(
        [labels.get(k, k.replace("_", " ")) for k in keys],
        values,
        color=[colors.get(k, NOT_SCORED_COLOR) for k in keys],
        height=0.62,
    )
    _bar_labels(axes, bars, values)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlim(0, max([*values, 1]) * 1.15)
    _style(axes)
    return to_data_uri(figure)


def histogram_chart(counts: dict[str, Sequence[int]], thresholds: Thresholds) -> str:
    """Completed images per AI-proportion bucket, stacked by verdict, with the threshold lines."""
    bins = len(next(iter(counts.values())))
    width = 1.0 / bins
    lefts = [i * width for i in range(bins)]
    figure = _figure(10.2, 2.9)
    axes = figure.add_subplot()
    bottom = [0] * bins
    for verdict in (Verdict.HUMAN.value, Verdict.PARTLY_AI.value, Verdict.AI_GENERATED.value):
        values = list(counts[verdict])
        axes.bar(
            lefts,
            values,
            bottom=bottom,
            width=width * 0.92,
            align="edge",
            alpha=0.9,
            color=VERDICT_COLORS[verdict],
            label=VERDICT_LABELS[Verdict(verdict)],
        )
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.legend(fontsize=8, frameon=False, loc="lower right", bbox_to_anchor=(1, 1.0), ncols=3)
    for value, label in ((thresholds.partly_ai, "partly AI"), (thresholds.ai_generated, "AI-generated")):
        axes.axvline(value, color=INK, linestyle="--", linewidth=0.9)
        axes.annotate(
            f"{label} ≥ {value:g}",
            (value, 1),
            xycoords=("data", "axes fraction"),
            xytext=(3, -2),
            textcoords="offset points",
            va="top",
            fontsize=8,
            color=INK,
        )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, max([*bottom, 1]) * 1.25)
    axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("AI proportion of the image (summary.ai)")
    axes.set_ylabel("images")
    _style(axes)
    return to_data_uri(figure)


def verdict_breakdown_chart(table: pd.DataFrame, label: str, max_rows: int = 15) -> str:
    """Stacked horizontal bars per source or day: verdicts of the completed images, then the rest."""
    table = table.head(max_rows).iloc[::-1]
    names = [str(index) for index in table.index]
    figure = _figure(10.2, 0.36 * len(names) + 0.9)
    axes = figure.add_subplot()
    left = pd.Series(0, index=table.index, dtype="int64")
    for verdict in (Verdict.AI_GENERATED.value, Verdict.PARTLY_AI.value, Verdict.HUMAN.value):
        axes.barh(
            names,
            table[verdict],
            left=left,
            color=VERDICT_COLORS[verdict],
            height=0.62,
            label=VERDICT_LABELS[Verdict(verdict)],
        )
        left = left + table[verdict]
    rest = table["images"] - left
    axes.barh(names, rest, left=left, color=NOT_SCORED_COLOR, height=0.62, label="no result")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel(f"images per {label}")
    axes.legend(loc="lower right", fontsize=8, frameon=False, ncols=4, bbox_to_anchor=(1, 1.0))
    _style(axes)
    return to_data_uri(figure)


def trend_chart(runs: pd.DataFrame) -> str:
    """AI share per run (``label``, ``ai_share``, ``flagged_share``), oldest first."""
    figure = _figure(10.2, 2.8)
    axes = figure.add_subplot()
    x = list(range(len(runs)))
    axes.plot(
        x,
        runs["flagged_share"],
        marker="o",
        color=VERDICT_COLORS[Verdict.PARTLY_AI.value],
        label="AI-generated or partly AI",
    )
    axes.plot(
        x,
        runs["ai_share"],
        marker="o",
        color=VERDICT_COLORS[Verdict.AI_GENERATED.value],
        label="AI-generated",
    )
    crowded = len(x) > 5
    axes.set_xticks(x, runs["label"], rotation=30 if crowded else 0, ha="right" if crowded else "center")
    top = max(0.05, float(pd.concat([runs["flagged_share"], runs["ai_share"]]).max(skipna=True) or 0))
    axes.set_ylim(0, min(1.0, top * 1.25))
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_ylabel("share of completed images")
    axes.legend(fontsize=8, frameon=False, loc="upper left")
    axes.grid(axis="y", color="#eef0f3")
    _style(axes)
    return to_data_uri(figure)
