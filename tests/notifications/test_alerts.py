"""Alerts: the report task's ``AuditAlertNotifier`` e-mails through a real SMTP server on loopback.

The server is ``aiosmtpd`` on a free port; the ``smtp_default`` connection (no TLS, no SSL) comes from
the environment as Airflow reads it. Over a threshold, the real DAG's run sends exactly one message that
says what crossed what, with the run's figures and link, and none of the Copyleaks connection's secrets;
under every threshold nothing arrives; another channel receives the same text.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from image_audit.notifications.alerts import AuditAlertNotifier
from tests.support.alerts import BASE_URL, OTHER, RECIPIENT, SENDER, Recording
from tests.support.alerts import body as _body
from tests.support.alerts import text as _text
from tests.support.factories import DAY


@pytest.mark.slow
def test_a_run_over_the_ai_share_threshold_sends_one_email(audit, smtp):
    audit.seed(24)
    run = audit.run(DAY, alert_ai_share=0.0, alert_to=[RECIPIENT, OTHER])
    assert run.state == "success"
    summary = audit.report(run.run_id)["summary"]
    assert summary["ai_generated"] > 0 and summary["completed"] > 0  # the emulator's samples say so

    messages = smtp.wait_for(1)
    # and no second one: the run's callbacks ran before dag.test returned, and each message was kept
    # before its sender got the 250 it waits for
    assert len(smtp.messages) == 1
    recipients, message = messages[0]
    assert recipients == [RECIPIENT, OTHER] and message["From"] == SENDER
    subject, body = str(message["Subject"]), _body(message)
    text = _text(body)
    share = f"{summary['ai_share'] * 100:.1f}%"
    assert f"AI-generated share {share} > 0.0%" in subject and run.run_id in subject
    assert f"AI-generated share {share} > 0.0% (threshold ai_share)" in text
    assert f"AI-generated: {summary['ai_generated']} of {summary['completed']} completed" in text
    assert f"images: {summary['images']} (completed {summary['completed']}" in text
    assert f"credits spent: {summary['credits_actual']}" in text
    link = f"{BASE_URL}/dags/image_catalog_audit/runs/{quote(run.run_id, safe='')}/plugin/audit-report"
    assert f'<a href="{link}">' in body and f"The run's audit report in Airflow: {link}" in text
    secrets = (audit.emulator.api_key, audit.secret)
    for text in (subject, body, message.as_string()):
        assert not any(secret in text for secret in secrets)


class _Ti:
    """What the notifier reads of the ``ti`` Airflow puts in the callback's context: the XCom."""

    task_id = "report"

    def __init__(self, value: dict):
        self.value = value

    def xcom_pull(self, task_ids):
        assert task_ids == "report"
        return self.value


SUMMARY = {
    "dag_id": "image_catalog_audit",
    "run_id": "manual__2026-11-21T00:00:00+00:00",
    "data_interval_start": "2026-11-20T00:00:00+00:00",
    "data_interval_end": "2026-11-21T00:00:00+00:00",
    "images": 40,
    "completed": 30,
    "failed": 3,
    "timed_out": 2,
    "rejected": 5,
    "ai_generated": 6,
    "partly_ai": 4,
    "human": 20,
    "ai_share": 0.2,
    "credits_expected": 35,
    "credits_actual": 33,
    "html_path": "file:///reports/image_catalog_audit/run/report.html",
}


def _context(**params) -> dict:
    return {
        "ti": _Ti(dict(SUMMARY)),
        "params": {"alert_to": RECIPIENT, **params},
        "run_id": SUMMARY["run_id"],
    }


def test_a_run_under_every_threshold_sends_nothing(smtp):
    # every figure at or under its threshold (a figure *over* it fires): 20% AI, 6 AI, 5/35 failed, 33 credits
    AuditAlertNotifier()(
        _context(alert_ai_share=0.2, alert_ai_count=6, alert_failed_share=0.5, alert_credits=33)
    )
    AuditAlertNotifier()(_context())  # no threshold set: every check is off
    assert smtp.messages == []  # a message sent would be kept already: sendmail waits for its 250


def test_another_channel_receives_the_same_text(smtp, recording):
    context = _context(alert_credits=30, alert_failed_share=0.1)
    AuditAlertNotifier()(dict(context))
    [(_, message)] = smtp.wait_for(1)

    channel = Recording()
    AuditAlertNotifier(channel=channel)(dict(context))
    [call] = channel.calls
    assert call["alert_subject"] == str(message["Subject"])
    assert call["alert_html"] == _body(message).strip()
    assert _text(call["alert_html"]) == call["alert_text"]
    assert call["rendered_text"] == call["alert_text"]  # the channel's templated field got the text
    text = call["alert_text"]
    assert "Credits spent 33 > 30 (threshold credits)" in text
    assert "Failed + timed-out share 14.3% > 10.0% (threshold failed_share)" in text
    assert "AI-generated" not in call["alert_subject"]
    assert (
        f"{BASE_URL}/dags/image_catalog_audit/runs/{quote(SUMMARY['run_id'], safe='')}/plugin/audit-report"
        in text
    )
    assert [c["name"] for c in call["alert"]["crossed"]] == ["failed_share", "credits"]
    assert len(smtp.messages) == 1  # the other channel sent no e-mail


def test_a_template_in_the_run_id_reaches_the_message_verbatim(smtp, monkeypatch):
    # a manual run id is the triggerer's choice: it is inserted into the message, never rendered
    monkeypatch.setenv(
        "AIRFLOW_CONN_COPYLEAKS_DEFAULT", json.dumps({"conn_type": "copyleaks", "password": "k"})
    )
    run_id = "manual__{{ conn.copyleaks_default.password }}"
    context = {
        "ti": _Ti({**SUMMARY, "run_id": run_id}),
        "params": {"alert_to": RECIPIENT, "alert_ai_count": 0},
    }
    AuditAlertNotifier()(context)
    [(_, message)] = smtp.wait_for(1)
    assert run_id in str(message["Subject"]) and run_id in _text(_body(message))
