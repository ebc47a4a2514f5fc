"""Alerts on change: a source whose AI share (or failure share) on a day the run audited is more than
``points`` percentage points above its baseline, the median of that share over the source's previous
``baseline_days`` days.

Read from the analytics model (``audit_daily``, summed over models) when the run closes, so a source
that went from 3% to 20% AI overnight is named even when no absolute threshold is crossed. A day with
fewer than ``min_images`` images counts neither as today nor in a baseline (a tiny source pages nobody),
and a baseline needs ``MIN_BASELINE_DAYS`` such days. ``close_run`` returns the changes it found (a few
small records) and its success callback, :class:`SourceChangeNotifier`, sends one message for them all
through the threshold alerts' path, with a link to the DAG's trends tab.
"""

from __future__ import annotations

import logging
import statistics
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Any

from airflow.sdk import BaseNotifier
from sqlalchemy import Connection, func, select

from image_audit.notifications.alerts import (
    DEFAULT_SMTP_CONN_ID,
    RECIPIENTS_PARAM,
    Channel,
    alert_channel,
    alert_html,
    recipients,
    run_figures,
    send_alert,
)
from image_audit.ui.links import trends_tab_url
from image_audit.warehouse.analytics import NO_DAY, NO_SOURCE_LABEL
from image_audit.warehouse.schema import audit_daily, audit_scans
from image_audit.warehouse.verdicts import utc_day_sql

log = logging.getLogger(__name__)

#: The longest source name a message shows.
MAX_NAME = 100
#: A baseline is the median over at least this many days of the source (each with ``min_images``).
MIN_BASELINE_DAYS = 3
#: The shares compared: name, label.
METRICS = (("ai_share", "AI-generated share"), ("failed_share", "Failed + timed-out share"))
#: The Params that set a run's change alerts (null ``alert_change_points``: off).
POINTS_PARAM, MIN_IMAGES_PARAM, BASELINE_PARAM = (
    "alert_change_points",
    "alert_change_min_images",
    "alert_change_baseline_days",
)


@dataclass(frozen=True)
class SourceChange:
    source: str
    day: str
    metric: str
    label: str
    value: float
    baseline: float
    baseline_days: int
    images: int

    @property
    def name(self) -> str:
        """The source as a message shows it: one line (it is an uploader's text: a line break in a mail
        subject would be refused, and the alert lost), at most ``MAX_NAME`` characters."""
        text = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in self.source)
        return (text[:MAX_NAME] + "...") if len(text) > MAX_NAME else text or NO_SOURCE_LABEL

    def describe(self) -> str:
        return (
            f"{self.name} on {self.day}: {self.label} {self.value * 100:.1f}%, its "
            f"{self.baseline_days}-day baseline {self.baseline * 100:.1f}% ({self.images} images)"
        )


def run_days(conn: Connection, dag_id: str, run_id: str) -> list[str]:
    """The ingestion days (UTC) of the run's scans."""
    scan = audit_scans.c
    day = utc_day_sql(scan.ingested_at, conn.dialect.name)
    query = (
        select(day)
        .distinct()
        .where(scan.dag_id == dag_id, scan.run_id == run_id, scan.ingested_at.is_not(None))
    )
    return sorted(row[0] for row in conn.execute(query))


def source_changes(
    conn: Connection, days: Iterable[str], *, points: float, min_images: int, baseline_days: int = 14
) -> list[SourceChange]:
    """The (day, source, metric) whose share is more than ``points`` percentage points over the source's
    baseline, for each of ``days`` (``YYYY-MM-DD``)."""
    days = sorted(set(days) - {NO_DAY})
    if not days:
        return []
    first = (date.fromisoformat(days[0]) - timedelta(days=baseline_days)).isoformat()
    daily = audit_daily.c
    counts = ("images", "completed", "ai_generated", "failed", "timed_out")
    query = (
        select(daily.ingest_day, daily.source, *(func.sum(daily[name]) for name in counts))
        .where(daily.ingest_day >= first, daily.ingest_day <= days[-1])
        .group_by(daily.ingest_day, daily.source)
    )
    shares: dict[str, dict[str, tuple[int, dict[str, float | None]]]] = {}
    for day, source, images, completed, ai, failed, timed_out in conn.execute(query):
        counted = {"completed": completed, "ai_generated": ai, "failed": failed, "timed_out": timed_out}
        shares.setdefault(source, {})[day] = (int(images), run_figures(counted))  # the thresholds' shares
    found = []
    for source, by_day in sorted(shares.items()):
        for day in days:
            if day not in by_day or by_day[day][0] < min_images:
                continue
            images, today = by_day[day]
            window = [
                (date.fromisoformat(day) - timedelta(days=back)).isoformat()
                for back in range(1, baseline_days + 1)
            ]
            for metric, label in METRICS:
                history = [
                    by_day[d][1][metric]
                    for d in window
                    if d in by_day and by_day[d][0] >= min_images and by_day[d][1][metric] is not None
                ]
                value = today[metric]
                if value is None or len(history) < MIN_BASELINE_DAYS:
                    continue
                baseline = statistics.median(history)
                if (value - baseline) * 100 > points:
                    found.append(
                        SourceChange(
                            source,
                            day,
                            metric,
                            label,
                            value,
                            baseline,
                            len(history),
                            images,
                        )
                    )
    return found


def run_changes(conn: Connection, dag_id: str, run_id: str, params: Mapping[str, Any]) -> list[dict]:
    """The changes of the run's days under its ``alert_change_*`` Params, as XCom-able records (none when
    ``alert_change_points`` is null)."""
    points = params.get(POINTS_PARAM)
    if points is None:
        return []
    found = source_changes(
        conn,
        run_days(conn, dag_id, run_id),
        points=float(points),
        min_images=int(params.get(MIN_IMAGES_PARAM) or 0),
        baseline_days=int(params.get(BASELINE_PARAM) or 14),
    )
    return [asdict(change) for change in found]


class SourceChangeNotifier(BaseNotifier):
    """One message for the changes the task found (its XCom value's ``changes``), to the run's
    ``alert_to``, through ``channel`` (default: e-mail through ``smtp_conn_id``)."""

    def __init__(
        self,
        *,
        channel: Channel | None = None,
        to: str | Iterable[str] | None = None,
        from_email: str | None = None,
        smtp_conn_id: str = DEFAULT_SMTP_CONN_ID,
    ):
        super().__init__()
        self.channel, self.to, self.from_email, self.smtp_conn_id = channel, to, from_email, smtp_conn_id

    def notify(self, context) -> None:
        ti = context["ti"]
        value = ti.xcom_pull(task_ids=ti.task_id) or {}
        changes = [SourceChange(**record) for record in value.get("changes") or []]
        if not changes:
            log.info("No source changed beyond its baseline: no change alert")
            return
        to = recipients((context.get("params") or {}).get(RECIPIENTS_PARAM), self.to)
        if self.channel is None and not to:
            log.warning(
                "Sources changed (%s) but no recipients: set the %r Param", len(changes), RECIPIENTS_PARAM
            )
            return
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        url = trends_tab_url(dag_id)
        first = changes[0]
        more = f" (+{len(changes) - 1} more)" if len(changes) > 1 else ""
        subject = (
            f"[image-audit] {dag_id}: {first.name} {first.label} {first.value * 100:.1f}% "
            f"vs its baseline {first.baseline * 100:.1f}%{more}"
        )
        points = (context.get("params") or {}).get(POINTS_PARAM)
        lines = [
            f"The audit run {run_id} of {dag_id} found {len(changes)} source figure(s) more than {points} "
            "points above their baseline (the median of the source's previous days):",
            *(f"- {change.describe()}" for change in changes),
            "",
            f"The trends in Airflow: {url}",
        ]
        text = "\n".join(lines)
        message = {"subject": subject, "text": text, "html": alert_html(text, url), "url": url}
        alert = {"changes": [asdict(change) for change in changes], "url": url}
        channel = alert_channel(self.channel, from_email=self.from_email, smtp_conn_id=self.smtp_conn_id)
        send_alert(channel, context, message, to=to, alert=alert)
