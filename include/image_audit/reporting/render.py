"""HTML rendering: one Jinja2 template, autoescaped, every asset inline (no network needed to view it)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from functools import cache

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

DASH = "\u2013"  # shown for a missing value


def _number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value:,}" if isinstance(value, int) else f"{value:,.0f}"


def _percent(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value * 100:.{digits}f}%"


def _when(value: str | None) -> str:
    """An ISO 8601 timestamp as ``YYYY-MM-DD HH:MM`` UTC."""
    if not value:
        return DASH
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _share(part, whole) -> str:
    return _percent(part / whole) if whole else DASH


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("image_audit.reporting", "templates"),
        autoescape=select_autoescape(["html", "j2"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=_number, pct=_percent, when=_when)
    env.globals.update(share=_share)
    return env


def render_report(context: dict) -> str:
    return environment().get_template("report.html.j2").render(**context)
