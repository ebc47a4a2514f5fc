"""The audit run's deadline (``image_audit.notifications.deadline``): the DeadlineAlerts the environment
configures, the "finish by HH:MM" reference as Airflow's scheduler decodes and evaluates it, and the alert
the callback sends, built from a seeded warehouse and sent through a real SMTP server on loopback.

The callback is called here with what the scheduler hands a deadline callback on a worker (the DAG run as
the REST API's JSON, the deadline's time) after that crossed JSON; tests/deployment/test_deadline.py
has a real scheduler miss a deadline.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote

import pytest
from airflow.sdk import DeadlineReference, SyncCallback

from image_audit.notifications.deadline import (
    ALERT_TO_ENV,
    FINISH_BY_ENV,
    MAX_RUN_HOURS_ENV,
    FinishByClockTime,
    audit_deadlines,
    deadline_missed,
    next_clock_time,
)
from image_audit.planning.window import submission_minutes
from image_audit.warehouse.lifecycle import ScanState
from tests.support.alerts import BASE_URL, RECIPIENT, SENDER
from tests.support.alerts import body as _body
from tests.support.alerts import text as _text
from tests.support.factories import DAG_ID, insert_scans, run_scans

RUN = "scheduled__2026-11-21T00:00:00+00:00"
CONNS = {"warehouse_conn_id": "image_audit_warehouse", "copyleaks_conn_id": "copyleaks_default"}
API_KEY = "copyleaks-key-never-in-an-alert"
S = ScanState


# --- the configuration ----------------------------------------------------------------------------------
def test_without_settings_the_dag_has_no_deadline():
    assert audit_deadlines(**CONNS, environ={}) is None
    assert audit_deadlines(**CONNS, environ={FINISH_BY_ENV: " ", MAX_RUN_HOURS_ENV: ""}) is None


def test_the_environment_sets_a_clock_deadline_and_a_queued_at_one():
    environ = {FINISH_BY_ENV: "7:00", MAX_RUN_HOURS_ENV: "7.5", ALERT_TO_ENV: "oncall@example.test"}
    by_clock, by_hours = audit_deadlines(**CONNS, environ=environ)

    assert by_clock.reference == FinishByClockTime("07:00") and by_clock.interval == timedelta(0)
    assert by_clock.name == "finish by 07:00 UTC"
    assert by_hours.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert (
        by_hours.interval == timedelta(hours=7.5) and by_hours.name == "finish within 7.5 h of being queued"
    )
    for alert in (by_clock, by_hours):
        # a SyncCallback: queued on the executor (a Celery worker), by import path, with JSON kwargs
        assert isinstance(alert.callback, SyncCallback) and alert.callback.executor is None
        assert alert.callback.path == "image_audit.notifications.deadline.deadline_missed"
        assert alert.callback.kwargs == {
            "rule": alert.name,
            "to": "oncall@example.test",
            "from_email": None,
            "smtp_conn_id": "smtp_default",
            "channel": None,
            **CONNS,
        }
        assert json.loads(json.dumps(alert.callback.serialize())) == alert.callback.serialize()
    short = audit_deadlines(**CONNS, environ={MAX_RUN_HOURS_ENV: "0.006"})
    assert (
        short[0].interval == timedelta(seconds=21.6)
        and short[0].name == "finish within 21.6 s of being queued"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (FINISH_BY_ENV, "7am"),
        (FINISH_BY_ENV, "24:00"),
        (FINISH_BY_ENV, "07:60"),
        (FINISH_BY_ENV, "07:00:00"),
        (MAX_RUN_HOURS_ENV, "six"),
        (MAX_RUN_HOURS_ENV, "0"),
        (MAX_RUN_HOURS_ENV, "-2"),
        (MAX_RUN_HOURS_ENV, "nan"),
        (MAX_RUN_HOURS_ENV, "inf"),
    ],
)
def test_a_bad_setting_fails_the_parse_naming_the_variable(name, value):
    with pytest.raises(ValueError, match=rf"^{name}={re.escape(repr(value))}: expected"):
        audit_deadlines(**CONNS, environ={name: value})


@pytest.mark.parametrize(
    ("queued", "due"),
    [
        (datetime(2026, 11, 21, 0, 0, 5, tzinfo=UTC), datetime(2026, 11, 21, 7, 0, tzinfo=UTC)),
        (datetime(2026, 11, 21, 6, 59, 59, tzinfo=UTC), datetime(2026, 11, 21, 7, 0, tzinfo=UTC)),
        # at or after 07:00: the next day's (an exact 07:00 is not "after")
        (datetime(2026, 11, 21, 7, 0, tzinfo=UTC), datetime(2026, 11, 22, 7, 0, tzinfo=UTC)),
        (datetime(2026, 11, 30, 14, 0, tzinfo=UTC), datetime(2026, 12, 1, 7, 0, tzinfo=UTC)),
        # UTC whatever the offset it is given in: 08:30+02:00 is 06:30 UTC
        (
            datetime(2026, 11, 21, 8, 30, tzinfo=timezone(timedelta(hours=2))),
            datetime(2026, 11, 21, 7, tzinfo=UTC),
        ),
    ],
)
def test_the_clock_deadline_is_the_first_such_time_after_the_run_was_queued(queued, due):
    assert next_clock_time(queued, "07:00") == due


def test_the_scheduler_decodes_the_clock_reference_and_evaluates_it_from_queued_at(airflow_db):
    """Through Airflow's own serialization: the DAG processor encodes the reference with its class path, the
    scheduler decodes it through the plugin's ``deadline_references`` and evaluates it against the run's
    ``queued_at`` in the metadata database when it creates the run."""
    from airflow.models import DagRun
    from airflow.serialization.decoders import decode_deadline_alert
    from airflow.serialization.encoders import encode_deadline_alert
    from airflow.utils.session import create_session

    [alert] = audit_deadlines(**CONNS, environ={FINISH_BY_ENV: "07:30"})
    decoded = decode_deadline_alert(json.loads(json.dumps(encode_deadline_alert(alert))))
    assert decoded.reference.inner_ref == FinishByClockTime("07:30")
    dag_id = f"deadline_reference_{uuid.uuid4().hex[:8]}"
    queued, never_queued = datetime(2026, 11, 21, 9, 15, tzinfo=UTC), datetime(2026, 11, 21, tzinfo=UTC)
    with create_session() as session:
        for run_id, state, queued_at in (("queued", "queued", queued), ("running", "running", None)):
            run = DagRun(dag_id=dag_id, run_id=run_id, run_type="manual", state=state, run_after=never_queued)
            run.queued_at = queued_at
            session.add(run)
        session.flush()
        due = decoded.reference.evaluate_with(
            session=session, interval=decoded.interval, dag_id=dag_id, run_id="queued"
        )
        # a run created already running (``airflow dags test``) has no queued_at: no deadline
        none = decoded.reference.evaluate_with(
            session=session, interval=decoded.interval, dag_id=dag_id, run_id="running"
        )
        session.rollback()
    assert due == datetime(2026, 11, 22, 7, 30, tzinfo=UTC) and none is None


# --- the alert ------------------------------------------------------------------------------------------
def _context(deadline: datetime, **dag_run) -> dict:
    """What a deadline callback gets on a worker: the run (REST API JSON) and the deadline, as JSON."""
    run = {
        "dag_run_id": RUN,
        "dag_id": DAG_ID,
        "queued_at": (deadline - timedelta(hours=7)).isoformat(),
        "start_date": (deadline - timedelta(hours=7)).isoformat(),
        "end_date": None,
        "state": "running",
        "conf": {"alert_to": RECIPIENT},
    }
    context = {"dag_run": run | dag_run, "deadline": {"id": str(uuid.uuid4()), "deadline_time": deadline}}
    return json.loads(json.dumps(context, default=datetime.isoformat))


@pytest.fixture
def account(monkeypatch):
    """The Copyleaks connection the callback reads the account's request rate from: 4 requests/s."""
    extra = {"requests_per_second": 4}
    connection = {"conn_type": "copyleaks", "login": "a@example.test", "password": API_KEY, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_COPYLEAKS_DEFAULT", json.dumps(connection))


def test_a_run_past_its_deadline_sends_one_email_with_its_figures(warehouse_url, smtp, account):
    long_ago = datetime.now(UTC) - timedelta(minutes=10)  # outside both measuring windows
    rows = [
        *run_scans(RUN, S.PENDING, 40),
        *run_scans(RUN, S.SUBMITTED, 25, submitted_at=long_ago),
        *run_scans(RUN, S.COMPLETED, 30, submitted_at=long_ago, completed_at=long_ago),
        *run_scans(RUN, S.FAILED, 2, submitted_at=long_ago, completed_at=long_ago),
        *run_scans(RUN, S.TIMED_OUT, 1, submitted_at=long_ago),
        *run_scans(RUN, S.REJECTED, 3),
        *run_scans("manual__another-run", S.PENDING, 7),
    ]
    insert_scans(warehouse_url, rows)
    deadline = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    before = datetime.now(UTC)
    deadline_missed(context=_context(deadline), rule="finish by 07:00 UTC", **CONNS)
    after = datetime.now(UTC)

    [(recipients, message)] = smtp.wait_for(1)
    assert recipients == [RECIPIENT] and message["From"] == SENDER
    subject, body = str(message["Subject"]), _body(message)
    text = _text(body)
    when = deadline.strftime("%Y-%m-%d %H:%M UTC")
    assert subject == f"[image-audit] {DAG_ID} {RUN}: not finished by {when}; 65 of 101 images still waiting"
    assert f"has not finished by its deadline, {when} (finish by 07:00 UTC)." in text
    assert "its state when found late: running." in text
    for line in (
        "- images planned: 101",
        "- submitted: 58",
        "- completed: 30 (failed 2, timed out 1, rejected 3)",
        "- still waiting: 65 (40 to submit, 25 results to arrive)",
        "- measured rate: No submission in the last minute (the account's budget: 4 requests/s).",
    ):
        assert f"\n{line}\n" in text, line
    # the 40 left are estimated at the account's budget, the connection's 4 requests/s
    minutes = submission_minutes(40, 4.0)
    found = re.search(r"\n- expected finish: (\S+ \S+) UTC\n", text)
    assert found, text
    finish = datetime.strptime(found[1], "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    floor = (before + timedelta(minutes=minutes)).replace(second=0, microsecond=0)
    assert floor <= finish <= after + timedelta(minutes=minutes)
    assert f"40 scans to submit at 4 requests/s: about {minutes} min, expected to finish around" in text
    link = f"{BASE_URL}/dags/{DAG_ID}/runs/{quote(RUN, safe='')}/plugin/audit-report"
    assert f"The run's audit report in Airflow: {link}" in text and f'<a href="{link}">' in body
    assert API_KEY not in message.as_string()


def test_a_dead_webhook_route_is_said_and_the_alert_can_go_to_another_channel(
    warehouse_url, smtp, recording, account
):
    long_ago = datetime.now(UTC) - timedelta(minutes=10)
    rows = [
        *run_scans(RUN, S.SUBMITTED, 12, submitted_at=long_ago),
        *run_scans(RUN, S.COMPLETED, 5, submitted_at=long_ago, completed_at=long_ago),
    ]
    insert_scans(warehouse_url, rows)
    deadline = datetime.now(UTC) - timedelta(seconds=1)
    context = _context(deadline, conf={})  # no alert_to on the run: another channel needs none
    deadline_missed(
        context=context,
        rule="finish within 6 h of being queued",
        channel="tests.support.alerts.Recording",
        **CONNS,
    )
    [call] = recording.calls
    text = call["alert_text"]
    assert call["rendered_text"] == text  # the channel's templated field got the text
    assert "- still waiting: 12 (0 to submit, 12 results to arrive)" in text
    assert "- expected finish: unknown\n" in text
    assert "12 results are still to arrive by webhook, and none arrived in the last 5 minutes." in text
    assert (
        call["alert"]["kind"] == "deadline" and call["alert"]["rule"] == "finish within 6 h of being queued"
    )
    figures = call["alert"]["figures"]
    assert figures["remaining"] == figures["awaiting_results"] == 12 and figures["expected_finish"] is None
    assert call["alert_to"] is None and call["dag_run"]["dag_run_id"] == RUN
    assert smtp.messages == []  # the other channel sent no e-mail


def test_a_run_that_ended_before_its_deadline_or_that_nobody_is_told_of_sends_nothing(
    warehouse_url, smtp, account, caplog
):
    insert_scans(warehouse_url, run_scans(RUN, S.SUBMITTED, 3, submitted_at=datetime.now(UTC)))
    deadline = datetime.now(UTC) - timedelta(seconds=1)
    # failed an hour before its deadline (a success deletes the deadline; a failure does not)
    failed = _context(deadline, state="failed", end_date=(deadline - timedelta(hours=1)).isoformat())
    deadline_missed(context=failed, rule="finish by 07:00 UTC", **CONNS)
    # still running, but no recipient: neither the run's alert_to nor the DAG's
    caplog.set_level("WARNING", logger="image_audit.notifications.deadline")
    deadline_missed(context=_context(deadline, conf={}), rule="finish by 07:00 UTC", **CONNS)
    assert smtp.messages == []  # a message sent would be kept already: sendmail waits for its 250
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "not finished by" in warning and ALERT_TO_ENV in warning
    # a run that ended after its deadline was late: told
    late = _context(deadline, state="success", end_date=(deadline + timedelta(seconds=30)).isoformat())
    deadline_missed(context=late, rule="finish by 07:00 UTC", **CONNS)
    [(_, message)] = smtp.wait_for(1)
    assert "its state when found late: success." in _text(_body(message))
