"""The "Audit trends" page of the audit DAG in the Airflow UI: the last N days of the analytics model.

``GET /image-audit/dags/{dag_id}/trends?days=90`` (HTML) and ``.../trends.csv`` (its table), served by the
UI app of :mod:`image_audit.ui.tab`, behind Airflow's auth. Both read ``audit_daily`` only (one row per
day, source and model: docs/analytics.md), never the per-scan tables, so the page costs the same whatever
the history holds. Per source and day: the AI share (AI-generated of the completed images) and the
needs-attention share (failed, timed out or rejected, of the images), the verdict mix and the volume.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from html import escape

import pandas as pd
from sqlalchemy import Connection, func, select

from image_audit.reporting import charts
from image_audit.reporting.exports import inert_cell
from image_audit.warehouse.analytics import NO_DAY, NO_SOURCE, NO_SOURCE_LABEL
from image_audit.warehouse.schema import audit_daily

DEFAULT_DAYS = 90
MAX_DAYS = 3660
#: Colors of the sources' lines, in the order of their volume (the rest share the last).
#: What the page shows for a row without a source.
UNKNOWN_SOURCE = NO_SOURCE_LABEL
#: The CSV's columns, one row per day and source.
CSV_COLUMNS = [
    "day",
    "source",
    "images",
    "completed",
    "ai_generated",
    "partly_ai",
    "human",
    "failed",
    "timed_out",
    "rejected",
    "ai_share",
    "needs_attention_share",
]
_COUNTS = ["images", "completed", "ai_generated", "partly_ai", "human", "failed", "timed_out", "rejected"]


@dataclass(frozen=True)
class Trends:
    """The days ``[first, last]`` of the model, summed over models, one row per (day, source)."""

    first: date
    last: date
    rows: pd.DataFrame  # CSV_COLUMNS, by day then source

    @property
    def sources(self) -> list[str]:
        """The sources, largest volume first."""
        volume = self.rows.groupby("source")["images"].sum().sort_values(ascending=False, kind="stable")
        return volume.index.tolist()

    def shares(self, column: str) -> pd.DataFrame:
        """``column`` (a share) per day (rows, every day of the range) and source (columns)."""
        table = self.rows.pivot(index="day", columns="source", values=column)
        days = [
            (self.first + timedelta(days=i)).isoformat() for i in range((self.last - self.first).days + 1)
        ]
        return table.reindex(index=days, columns=self.sources)

    def per_week(self) -> pd.DataFrame:
        """The verdict mix and volume per ISO week (labelled by its Monday), every source together."""
        days = pd.to_datetime(self.rows["day"])
        week = (days - pd.to_timedelta(days.dt.weekday, unit="D")).dt.strftime("%Y-%m-%d")
        return self.rows.assign(week=week).groupby("week")[_COUNTS].sum()


def read_trends(conn: Connection, days: int = DEFAULT_DAYS, *, today: date | None = None) -> Trends:
    """The last ``days`` ingestion days up to ``today`` (UTC) of ``audit_daily``; rows without an ingestion
    day are left out."""
    last = today or datetime.now(UTC).date()
    first = last - timedelta(days=days - 1)
    daily = audit_daily.c
    sums = [func.sum(daily[name]).label(name) for name in _COUNTS]
    query = (
        select(daily.ingest_day.label("day"), daily.source, *sums)
        .where(daily.ingest_day >= first.isoformat(), daily.ingest_day <= last.isoformat())
        .where(daily.ingest_day != NO_DAY)
        .group_by(daily.ingest_day, daily.source)
        .order_by(daily.ingest_day, daily.source)
    )
    rows = pd.DataFrame(conn.execute(query).all(), columns=["day", "source", *_COUNTS])
    rows[_COUNTS] = rows[_COUNTS].astype("int64")
    rows["source"] = rows["source"].replace(NO_SOURCE, UNKNOWN_SOURCE)
    completed = rows["completed"].where(rows["completed"] > 0)
    rows["ai_share"] = rows["ai_generated"] / completed
    images = rows["images"].where(rows["images"] > 0)
    rows["needs_attention_share"] = (rows["failed"] + rows["timed_out"] + rows["rejected"]) / images
    return Trends(first, last, rows[CSV_COLUMNS])


def trends_csv(trends: Trends) -> str:
    """The page's table as CSV. A source name is the catalog's (an uploader's) text: one a spreadsheet
    would read as a formula is made inert as in the report's export (``inert_cell``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in trends.rows.itertuples(index=False):
        values = list(row)
        values[1] = inert_cell(values[1])
        values[-2:] = ["" if pd.isna(v) else f"{v:.6f}" for v in values[-2:]]
        writer.writerow(values)
    return out.getvalue()


def render_trends(dag_id: str, trends: Trends, days: int) -> str:
    """The page: two share charts per source, the verdict mix per week, and the table behind each."""
    title = f"Audit trends: the last {days} days"
    if trends.rows.empty:
        body = (
            f"<p class='muted'>No audited images were ingested between {trends.first} and {trends.last}. The "
            "page reads the analytics model, which each run updates when it closes.</p>"
        )
        return _page(title, dag_id, days, body)
    sources = trends.sources
    colors = charts.source_colors(sources)
    sections = []
    for column, heading, key in (
        ("ai_share", "AI share per source (AI-generated, of the completed images)", "ai-share"),
        (
            "needs_attention_share",
            "Needs attention per source (failed, timed out or rejected, of the images)",
            "needs-attention",
        ),
    ):
        table = trends.shares(column)
        shown = table.dropna(how="all")
        chart = ""
        if len(table) > 1:
            series = [(s, colors[s], [_none(v) for v in table[s]]) for s in sources]
            chart = str(charts.share_lines_chart(table.index.tolist(), series, key=key, title=heading))
        sections.append(f"<section><h2>{escape(heading)}</h2>{chart}{_share_table(shown, sources)}</section>")
    weeks = trends.per_week()
    mix = str(charts.verdict_breakdown_chart(weeks, "week", max_rows=len(weeks), key="verdict-mix"))
    sections.append(f"<section><h2>Verdict mix and volume per week</h2>{mix}{_count_table(weeks)}</section>")
    return _page(title, dag_id, days, "".join(sections))


def _none(value):
    return None if pd.isna(value) else float(value)


def _share_table(table: pd.DataFrame, sources: list[str]) -> str:
    head = "".join(f"<th class='n'>{escape(s)}</th>" for s in sources)
    rows = "".join(
        f"<tr><td>{escape(day)}</td>"
        + "".join(f"<td class='n'>{charts.DASH if pd.isna(v) else f'{v * 100:.1f}%'}</td>" for v in row)
        + "</tr>"
        for day, row in zip(table.index, table.itertuples(index=False), strict=True)
    )
    return f"<div class='scroll'><table><tr><th>Day</th>{head}</tr>{rows}</table></div>"


def _count_table(weeks: pd.DataFrame) -> str:
    names = ["Images", "Results", "AI-generated", "Partly AI", "Human", "Failed", "Timed out", "Rejected"]
    head = "".join(f"<th class='n'>{n}</th>" for n in names)
    rows = "".join(
        f"<tr><td>{escape(week)}</td>" + "".join(f"<td class='n'>{int(v):,}</td>" for v in row) + "</tr>"
        for week, row in zip(weeks.index, weeks.itertuples(index=False), strict=True)
    )
    return f"<div class='scroll'><table><tr><th>Week of</th>{head}</tr>{rows}</table></div>"


_STYLE = """body{font:14px/1.5 system-ui,sans-serif;margin:24px;color:#1f2933;max-width:1200px}
table{border-collapse:collapse;margin:8px 0 24px}td,th{padding:3px 14px 3px 0;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#627d98}
.scroll{max-height:360px;overflow:auto}svg.chart{max-width:100%;height:auto}h2{font-size:16px;margin-top:28px}"""


def _page(title: str, dag_id: str, days: int, body: str) -> str:
    links = " · ".join(
        f"<a href='?days={n}'>{n} days</a>" if n != days else f"<b>{n} days</b>" for n in (30, 90, 365)
    )
    csv_link = f"<a href='trends.csv?days={days}' download>CSV</a>"
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>"
        f"<p class='muted'>{escape(dag_id)}: every source's ingestion days, from the warehouse's analytics "
        f"model (docs: the audit as a dataset). {links} · {csv_link}</p>{body}</body></html>"
    )
