"""``AuditAlertNotifier``: one message when an audit run's report summary is over a threshold.

A figure (AI share, AI count, failed share, credits: :data:`CHECKS`) *over* its threshold fires; under
every threshold nothing is sent. Each threshold is the notifier's, unless the run's ``alert_<name>``
Param sets it. The message goes through any Airflow notifier (default: e-mail through the SMTP
provider), is built only from the run's figures, ids and report URI (no connection, secret or catalog
row), and reaches the channel's templated fields as context values (``alert_subject``, ``alert_text``,
``alert_html``, ``alert_to``, ``alert``) that are inserted, never rendered as templates themselves.
:func:`alert_channel` and :func:`send_alert` are that path; the deadline alert
(``image_audit.notifications.deadline``) sends through them too.
"""

from __future__ import annotations

import copy
import html
import importlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from airflow.sdk import BaseNotifier

from image_audit.ui.links import report_tab_url

#: A channel: a notifier, or the import path of one (a module-level notifier, or a class or function
#: that makes one when called without arguments), which a deadline alert's callback can carry.
Channel = BaseNotifier | str

log = logging.getLogger(__name__)

#: The SMTP connection the default e-mail channel sends through.
DEFAULT_SMTP_CONN_ID = "smtp_default"
#: The run's Params that set the thresholds (``alert_<name>``) and the e-mail recipients.
PARAM_PREFIX = "alert_"
RECIPIENTS_PARAM = "alert_to"


@dataclass(frozen=True)
class Check:
    name: str  # the threshold's name (``alert_<name>`` is its Param)
    label: str
    kind: str  # "share" (shown as a percentage) or "count"


CHECKS = (
    Check("ai_share", "AI-generated share", "share"),
    Check("ai_count", "AI-generated images", "count"),
    Check("failed_share", "Failed + timed-out share", "share"),
    Check("credits", "Credits spent", "count"),
)


@dataclass(frozen=True)
class Crossing:
    check: Check
    value: float
    threshold: float

    def describe(self) -> str:
        return f"{self.check.label} {_fmt(self.check, self.value)} > {_fmt(self.check, self.threshold)}"


def _fmt(check: Check, value: float) -> str:
    if check.kind == "share":
        return f"{value * 100:.1f}%"
    return _count(value)


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def run_figures(summary: Mapping[str, Any]) -> dict[str, float | None]:
    """The figures the thresholds are compared with, from a report summary's scalar totals:
    ``ai_share`` (AI-generated / completed), ``ai_count``, ``failed_share`` ((failed + timed out) /
    (completed + failed + timed out)) and ``credits`` (Copyleaks' actual figure, else the expected)."""
    completed = int(summary.get("completed") or 0)
    failed = int(summary.get("failed") or 0) + int(summary.get("timed_out") or 0)
    ai_count = int(summary.get("ai_generated") or 0)
    ai_share = summary.get("ai_share")
    credits = summary.get("credits_actual")
    if credits is None:
        credits = summary.get("credits_expected")
    return {
        "ai_share": ai_share if ai_share is not None else _ratio(ai_count, completed),
        "ai_count": ai_count,
        "failed_share": _ratio(failed, completed + failed),
        "credits": credits,
    }


def crossings(summary: Mapping[str, Any], thresholds: Mapping[str, float | None]) -> list[Crossing]:
    """The checks whose figure is over its (set) threshold, in :data:`CHECKS` order."""
    figures = run_figures(summary)
    found = []
    for check in CHECKS:
        threshold, value = thresholds.get(check.name), figures[check.name]
        if threshold is not None and value is not None and value > threshold:
            found.append(Crossing(check, value, threshold))
    return found


class AuditAlertNotifier(BaseNotifier):
    """Send one message through ``channel`` when the run's report summary crosses a threshold.

    :param ai_share: alert when the AI-generated share of completed scans is over this (0..1)
    :param ai_count: alert when more images than this are AI-generated
    :param failed_share: alert when the failed + timed-out share of the sent scans is over this (0..1)
    :param credits: alert when the run spent more credits than this
    :param channel: any Airflow notifier, or its import path (:data:`Channel`); None: e-mail through
        ``smtp_conn_id`` to ``to``
    :param to: default e-mail recipients (the run's ``alert_to`` Param overrides them)
    :param from_email: the sender; None: the SMTP connection's ``from_email`` extra
    :param report_task_id: the task whose XCom return value is the summary; None: the task called back
    """

    def __init__(
        self,
        *,
        ai_share: float | None = None,
        ai_count: int | None = None,
        failed_share: float | None = None,
        credits: float | None = None,
        channel: Channel | None = None,
        to: str | Iterable[str] | None = None,
        from_email: str | None = None,
        smtp_conn_id: str = DEFAULT_SMTP_CONN_ID,
        report_task_id: str | None = None,
    ):
        super().__init__()
        self.thresholds = {
            "ai_share": ai_share,
            "ai_count": ai_count,
            "failed_share": failed_share,
            "credits": credits,
        }
        self.channel = channel
        self.to = to
        self.from_email = from_email
        self.smtp_conn_id = smtp_conn_id
        self.report_task_id = report_task_id

    # --- what the run says -----------------------------------------------------------------------------
    def run_thresholds(self, context) -> dict[str, float | None]:
        """The notifier's thresholds, each overridden by the run's ``alert_<name>`` Param when set."""
        params = context.get("params") or {}
        return {
            name: params.get(PARAM_PREFIX + name) if params.get(PARAM_PREFIX + name) is not None else value
            for name, value in self.thresholds.items()
        }

    def summary(self, context) -> dict:
        """The report summary: ``context["summary"]`` if given, else the report task's XCom value."""
        if context.get("summary") is not None:
            return dict(context["summary"])
        ti = context["ti"]
        value = ti.xcom_pull(task_ids=self.report_task_id or ti.task_id)
        return dict(value or {})

    def recipients(self, context) -> str | None:
        """The run's ``alert_to`` Param, else the notifier's ``to`` (:func:`recipients`)."""
        params = context.get("params") or {}
        return recipients(params.get(RECIPIENTS_PARAM), self.to)

    # --- the message ----------------------------------------------------------------------------------
    def message(self, summary: Mapping[str, Any], found: list[Crossing], context) -> dict[str, str]:
        """The alert's subject, text, HTML and link: the crossings, the run's figures, the run's link."""
        dag_id = str(summary.get("dag_id") or context["dag"].dag_id)
        run_id = str(summary.get("run_id") or context["run_id"])
        url = report_tab_url(dag_id, run_id)
        figures = run_figures(summary)
        subject = f"[image-audit] {dag_id} {run_id}: " + "; ".join(c.describe() for c in found)
        crossed = [f"- {c.describe()} (threshold {c.check.name})" for c in found]
        sent = sum(int(summary.get(state) or 0) for state in ("completed", "failed", "timed_out"))
        lines = [
            f"The audit run {run_id} of {dag_id} crossed {len(found)} alert threshold(s):",
            *crossed,
            "",
            "The run's figures:",
            f"- images: {summary.get('images', 0)} (completed {summary.get('completed', 0)}, "
            f"failed {summary.get('failed', 0)}, timed out {summary.get('timed_out', 0)}, "
            f"rejected {summary.get('rejected', 0)})",
            f"- AI-generated: {figures['ai_count']} of {summary.get('completed', 0)} completed "
            f"({_share(figures['ai_share'])}); partly AI: {summary.get('partly_ai', 0)}",
            f"- failed + timed out: {_share(figures['failed_share'])} of {sent} sent",
            f"- credits spent: {_count(figures['credits'])} "
            f"(expected {_count(summary.get('credits_expected'))})",
            f"- data interval: {summary.get('data_interval_start')} .. {summary.get('data_interval_end')}",
            "",
            f"The run's audit report in Airflow: {url}",
        ]
        if summary.get("html_path"):
            lines.append(f"The report: {summary['html_path']}")
        text = "\n".join(lines)
        return {"subject": subject, "text": text, "html": alert_html(text, url), "url": url}

    # --- sending --------------------------------------------------------------------------------------
    def notify(self, context) -> None:
        summary = self.summary(context)
        found = crossings(summary, self.run_thresholds(context))
        if not found:
            log.info("The run's figures are under every alert threshold: no alert")
            return
        to = self.recipients(context)
        if self.channel is None and not to:
            log.warning(
                "Alert thresholds crossed (%s) but no recipients: set the %r Param",
                "; ".join(c.describe() for c in found),
                RECIPIENTS_PARAM,
            )
            return
        message = self.message(summary, found, context)
        alert = {
            "crossed": [
                {"name": c.check.name, "label": c.check.label, "value": c.value, "threshold": c.threshold}
                for c in found
            ],
            "figures": run_figures(summary),
            "url": message["url"],
        }
        channel = alert_channel(self.channel, from_email=self.from_email, smtp_conn_id=self.smtp_conn_id)
        send_alert(channel, context, message, to=to, alert=alert)


# --- the path every alert takes -------------------------------------------------------------------------
def recipients(*candidates: str | Iterable[str] | None) -> str | None:
    """The first set of ``candidates`` (an address string, a comma-separated string or a list) as one
    comma-separated string (which a native and a string template environment render alike)."""
    to = next((candidate for candidate in candidates if candidate), None)
    if to and not isinstance(to, str):
        to = ", ".join(str(address) for address in to)
    return to or None


def alert_channel(
    channel: Channel | None, *, from_email: str | None = None, smtp_conn_id: str = DEFAULT_SMTP_CONN_ID
) -> BaseNotifier:
    """A fresh channel for one alert (a notifier renders its templated fields in place, once): a copy
    of ``channel``, the notifier its import path names, or e-mail through ``smtp_conn_id``."""
    if isinstance(channel, str):
        module, _, name = channel.rpartition(".")
        found = getattr(importlib.import_module(module), name)
        channel = found if isinstance(found, BaseNotifier) else found()
        if not isinstance(channel, BaseNotifier):
            raise TypeError(f"the alert channel {channel!r} names no notifier")
    if channel is not None:
        return copy.deepcopy(channel)
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    return SmtpNotifier(
        to="{{ alert_to }}",
        from_email=from_email,
        subject="{{ alert_subject }}",
        html_content="{{ alert_html }}",
        smtp_conn_id=smtp_conn_id,
    )


def alert_html(text: str, url: str) -> str:
    """An alert's text as HTML: preformatted, its link to the run's tab clickable."""
    body = html.escape(text).replace(html.escape(url), f'<a href="{html.escape(url)}">{html.escape(url)}</a>')
    return f"<pre>{body}</pre>"


def send_alert(
    channel: BaseNotifier,
    context: Mapping[str, Any],
    message: Mapping[str, str],
    *,
    to: str | None,
    alert: dict,
) -> None:
    """Send ``message`` (``subject``, ``text``, ``html``) through ``channel``, whose context carries it as
    ``alert_subject``, ``alert_text``, ``alert_html``, ``alert_to`` and ``alert`` (inserted values,
    never rendered as templates themselves)."""
    channel_context = {
        **context,
        "alert_subject": message["subject"],
        "alert_text": message["text"],
        "alert_html": message["html"],
        "alert_to": to,
        "alert": alert,
    }
    log.warning("Alert: %s", message["subject"])
    channel(channel_context)


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _count(value: float | None) -> str:
    if value is None:
        return "n/a"
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"
