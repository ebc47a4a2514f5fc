"""The audit run's deadline: a ``DeadlineAlert`` on the DAG that the scheduler checks, and the one alert
its callback sends when a run has not finished in time.

Configured by the environment the DAG is parsed in (:func:`audit_deadlines`):

- ``IMAGE_AUDIT_FINISH_BY=07:00``: finished by the first 07:00 UTC after the run was queued
  (:class:`FinishByClockTime`, a deadline reference the ``image_audit`` plugin registers);
- ``IMAGE_AUDIT_MAX_RUN_HOURS=6``: finished within 6 hours of being queued (``DAGRUN_QUEUED_AT``).

Both count from when the run was queued, which every run has (a scheduled, manual, backfilled or
asset-triggered one; an asset-triggered run has no logical date). Either, both (two deadlines, each
alerting once) or neither (no deadline) may be set. A run that succeeds before its deadline has it
deleted by the scheduler; one that fails before it gets no alert either (:func:`deadline_missed`).

The callback is a ``SyncCallback``: the scheduler queues it on the executor (a Celery worker, like a
task), where the callback supervisor lets it read connections (the warehouse, the Copyleaks account's
rate, SMTP) through the Execution API. It reads the run's progress from the warehouse
(``image_audit.ui.progress``, what the run's Audit report tab shows) and sends it through the
thresholds' path (``image_audit.notifications.alerts``): e-mail through ``smtp_default`` by default, or
any notifier named by its import path. Its arguments are the JSON the scheduler stores, so they hold
names and ids only.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseDeadlineReference, DeadlineAlert, DeadlineReference, SyncCallback

from image_audit.notifications.alerts import (
    DEFAULT_SMTP_CONN_ID,
    RECIPIENTS_PARAM,
    alert_channel,
    alert_html,
    recipients,
    send_alert,
)

if TYPE_CHECKING:
    from image_audit.ui.progress import RunProgress

log = logging.getLogger(__name__)

#: ``HH:MM`` (UTC): the run is due by the first such time after it was queued.
FINISH_BY_ENV = "IMAGE_AUDIT_FINISH_BY"
#: Hours (a decimal number): the run is due this long after it was queued.
MAX_RUN_HOURS_ENV = "IMAGE_AUDIT_MAX_RUN_HOURS"
#: The deadline alert's e-mail recipients (comma-separated) when the run's ``alert_to`` Param is unset.
ALERT_TO_ENV = "IMAGE_AUDIT_DEADLINE_ALERT_TO"
_CLOCK = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


def parse_clock_time(value: str, setting: str = FINISH_BY_ENV) -> str:
    """``value`` as ``HH:MM`` (``7:00`` reads ``07:00``); ``ValueError`` naming ``setting`` otherwise."""
    found = _CLOCK.fullmatch(value.strip())
    if not found:
        raise ValueError(f"{setting}={value!r}: expected a UTC time of day as HH:MM, e.g. 07:00")
    return f"{int(found[1]):02d}:{found[2]}"


def next_clock_time(after: datetime, clock: str) -> datetime:
    """The first ``clock`` (``HH:MM``, UTC) strictly after ``after``."""
    hour, minute = (int(part) for part in parse_clock_time(clock).split(":"))
    after = after.astimezone(UTC) if after.tzinfo else after.replace(tzinfo=UTC)
    due = after.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return due if due > after else due + timedelta(days=1)


@dataclass(eq=False)  # equality and hash: the base's, by the serialized form
class FinishByClockTime(BaseDeadlineReference):
    """A deadline reference: the first ``time`` (``HH:MM``, UTC) after the run was queued.

    Evaluated by the scheduler when it creates the run (deadline interval 0), which decodes it from the
    serialized DAG by this class's path: the ``image_audit`` plugin's ``deadline_references`` registers
    it. A run without ``queued_at`` (``airflow dags test`` creates runs already running) gets no
    deadline, as with Airflow's own ``DAGRUN_QUEUED_AT``.
    """

    time: str = "07:00"
    required_kwargs: ClassVar[set[str]] = {"dag_id", "run_id"}

    def __post_init__(self) -> None:
        self.time = parse_clock_time(self.time)

    def serialize_reference(self) -> dict[str, Any]:
        return {**super().serialize_reference(), "time": self.time}

    @classmethod
    def deserialize_reference(cls, reference_data: dict[str, Any]) -> FinishByClockTime:
        return cls(time=reference_data["time"])

    def _evaluate_with(self, *, session, dag_id: str, run_id: str, **_: Any) -> datetime | None:
        from airflow.models import DagRun
        from sqlalchemy import select

        queued_at = session.scalar(
            select(DagRun.queued_at).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
        )
        return None if queued_at is None else next_clock_time(queued_at, self.time)


def audit_deadlines(
    *,
    warehouse_conn_id: str,
    copyleaks_conn_id: str,
    channel: str | None = None,
    from_email: str | None = None,
    smtp_conn_id: str = DEFAULT_SMTP_CONN_ID,
    environ: Mapping[str, str] | None = None,
) -> list[DeadlineAlert] | None:
    """The DAG's deadlines from :data:`FINISH_BY_ENV` and :data:`MAX_RUN_HOURS_ENV` (None: neither set).

    Read when the DAG is parsed: a changed setting applies to runs created after the next parse. A bad
    value fails the parse (an import error naming the variable), rather than leaving runs unwatched.

    :param channel: the import path of the alert's notifier
        (:data:`image_audit.notifications.alerts.Channel`); None: e-mail through ``smtp_conn_id``
    """
    environ = os.environ if environ is None else environ
    finish_by = (environ.get(FINISH_BY_ENV) or "").strip()
    max_hours = (environ.get(MAX_RUN_HOURS_ENV) or "").strip()
    options = {
        "to": (environ.get(ALERT_TO_ENV) or "").strip() or None,
        "from_email": from_email,
        "smtp_conn_id": smtp_conn_id,
        "channel": channel,
        "warehouse_conn_id": warehouse_conn_id,
        "copyleaks_conn_id": copyleaks_conn_id,
    }
    alerts = []
    if finish_by:
        reference = FinishByClockTime(parse_clock_time(finish_by))
        rule = f"finish by {reference.time} UTC"
        alerts.append(_alert(reference, timedelta(0), rule, options))
    if max_hours:
        interval = timedelta(hours=_hours(max_hours))
        rule = f"finish within {_span(interval)} of being queued"
        alerts.append(_alert(DeadlineReference.DAGRUN_QUEUED_AT, interval, rule, options))
    return alerts or None


def _alert(reference, interval: timedelta, rule: str, options: dict) -> DeadlineAlert:
    callback = SyncCallback(deadline_missed, kwargs={"rule": rule, **options})
    return DeadlineAlert(reference=reference, interval=interval, callback=callback, name=rule)


def _hours(value: str) -> float:
    try:
        hours = float(value)
    except ValueError:
        hours = math.nan
    if not (math.isfinite(hours) and hours > 0):
        raise ValueError(f"{MAX_RUN_HOURS_ENV}={value!r}: expected a number of hours over 0, e.g. 6 or 7.5")
    return hours


def _span(interval: timedelta) -> str:
    """``6 h``, ``90 min``, ``20 s``: the interval in the largest unit it fills."""
    seconds = interval.total_seconds()
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.4g} {unit}"
    return f"{seconds:.4g} s"


# --- the callback -----------------------------------------------------------------------------------------
def deadline_missed(
    *,
    context: Mapping[str, Any],
    rule: str,
    to: str | None = None,
    from_email: str | None = None,
    smtp_conn_id: str = DEFAULT_SMTP_CONN_ID,
    channel: str | None = None,
    warehouse_conn_id: str,
    copyleaks_conn_id: str,
) -> None:
    """A run missed its deadline: send one alert with where it is now.

    ``context`` is what the scheduler gives a deadline callback: ``dag_run`` (the REST API's DAG run, as
    JSON, at the moment the miss was handled) and ``deadline`` (``deadline_time``). Recipients: the
    run's ``alert_to`` (its conf), else ``to``. A run that ended before its deadline (a failure: a
    success deletes the deadline) was not late, so nothing is sent.
    """
    from image_audit.config import warehouse_url
    from image_audit.ui.progress import account_requests_per_second, read_run_progress
    from image_audit.warehouse.engine import get_engine

    dag_run = dict(context.get("dag_run") or {})
    dag_id, run_id = str(dag_run["dag_id"]), str(dag_run["dag_run_id"])
    due = _datetime((context.get("deadline") or {}).get("deadline_time"))
    ended = _datetime(dag_run.get("end_date"))
    if ended is not None and due is not None and ended <= due:
        log.info(
            "Run %s of %s ended (%s) at %s, before its deadline %s: no deadline alert",
            run_id, dag_id, dag_run.get("state"), ended, due,
        )  # fmt: skip
        return
    budget = account_requests_per_second(copyleaks_conn_id)
    progress = read_run_progress(get_engine(warehouse_url(warehouse_conn_id)), dag_id, run_id, budget=budget)
    message = deadline_message(progress, dag_run=dag_run, due=due, rule=rule)
    address = recipients((dag_run.get("conf") or {}).get(RECIPIENTS_PARAM), to)
    if channel is None and not address:
        log.warning(
            "%s; no recipients: set the %r Param or %s", message["subject"], RECIPIENTS_PARAM, ALERT_TO_ENV
        )
        return
    alert = {
        "kind": "deadline",
        "rule": rule,
        "deadline": due.isoformat() if due else None,
        "figures": progress.as_dict(),
        "url": message["url"],
    }
    notifier = alert_channel(channel, from_email=from_email, smtp_conn_id=smtp_conn_id)
    send_alert(notifier, context, message, to=address, alert=alert)


def deadline_message(
    progress: RunProgress, *, dag_run: Mapping[str, Any], due: datetime | None, rule: str
) -> dict:
    """The alert's subject, text, HTML and link: the deadline, the run's state, and the figures of its
    progress (``image_audit.ui.progress.RunProgress``), as its Audit report tab shows them."""
    from image_audit.ui.links import report_tab_url
    from image_audit.ui.progress import utc_text

    dag_id, run_id = progress.dag_id, progress.run_id
    url = report_tab_url(dag_id, run_id)
    rows = progress.rows()
    subject = (
        f"[image-audit] {dag_id} {run_id}: not finished by {utc_text(due)}; "
        f"{progress.remaining:,} of {progress.planned:,} images still waiting"
    )
    finish = progress.expected_finish
    lines = [
        f"The audit run {run_id} of {dag_id} has not finished by its deadline, {utc_text(due)} ({rule}).",
        f"It was queued at {utc_text(_datetime(dag_run.get('queued_at')))}; its state when found late: "
        f"{dag_run.get('state')}.",
        "",
        f"Where it is at {utc_text(progress.at)}:",
        f"- images planned: {progress.planned:,}",
        f"- submitted: {progress.submitted:,}",
        f"- completed: {rows['Completed']:,} (failed {rows['Failed']:,}, timed out {rows['Timed out']:,}, "
        f"rejected {rows['Rejected (never sent)']:,})",
        f"- still waiting: {progress.remaining:,} ({progress.pending:,} to submit, "
        f"{progress.awaiting_results:,} results to arrive)",
        f"- measured rate: {progress.rate_line()}",
        f"- expected finish: {utc_text(finish) if finish else 'unknown'}",
        progress.outlook(),
        "",
        f"The run's audit report in Airflow: {url}",
    ]
    text = "\n".join(lines)
    return {"subject": subject, "text": text, "html": alert_html(text, url), "url": url}


def _datetime(value: Any) -> datetime | None:
    """A datetime the scheduler handed over: a ``datetime``, or its ISO form once it crossed JSON."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
