"""What a user sees on each permanent failure: one clear message that says what to do.

The task logs of ``dag.test`` go to the test's output (and to AIRFLOW_HOME/logs when file logging is
on), so the assertions read the captured output and the warehouse/report the run left.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from image_audit_dev.servers import free_port
from tests.support.factories import DAY
from tests.support.reliability import reconnect

pytestmark = pytest.mark.slow


def _output(capfd, caplog) -> str:
    captured = capfd.readouterr()
    return captured.out + captured.err + caplog.text


def test_bad_api_key_fails_plan_once_with_what_to_check(audit, monkeypatch, capfd, caplog):
    """``plan`` reads the account's balance first: a refused key stops the run there, before anything
    is planned, and is not retried."""
    audit.seed(4, bad_rows=False)
    reconnect(monkeypatch, password="not-the-key")
    run = audit.run(DAY)
    assert run.state == "failed" and audit.task_state(run, "plan") == ("failed", 1)
    output = _output(capfd, caplog)
    assert "Copyleaks refused the credentials (401) when the account's balance was read" in output
    assert "Check the email and API key of the Copyleaks connection" in output
    assert audit.emulator.state()["submissions"] == {}
    assert audit.scans() == []  # nothing planned: the next run plans them
    assert "not-the-key" not in output


def test_bad_api_key_in_a_sandbox_run_fails_the_submit_with_what_to_check(audit, monkeypatch, capfd, caplog):
    """A sandbox run reads no balance: the key is first used, and refused, by the submit."""
    audit.seed(4, bad_rows=False)
    reconnect(monkeypatch, password="not-the-key")
    run = audit.run(DAY, sandbox=True)
    assert run.state == "failed" and audit.task_state(run, "submit_batch") == ("failed", 1)
    output = _output(capfd, caplog)
    assert "Copyleaks refused the credentials (401). 0 images were submitted before it stopped" in output
    assert "Check the email and API key of the Copyleaks connection" in output
    assert audit.emulator.state()["submissions"] == {}
    assert {s["state"] for s in audit.scans()} == {"pending"}  # the next run submits them
    assert "not-the-key" not in output


def test_no_credits_fails_plan_once_saying_top_up_or_sandbox(
    start_emulator, audit, monkeypatch, capfd, caplog
):
    audit.seed(4, bad_rows=False)
    broke = start_emulator(accounts={audit.emulator.email: audit.emulator.api_key}, credits=0)
    reconnect(monkeypatch, extra={"identity_url": broke.url, "api_url": broke.url})
    run = audit.run(DAY)
    assert run.state == "failed" and audit.task_state(run, "plan") == ("failed", 1)
    output = _output(capfd, caplog)
    assert "The Copyleaks account has 0 credits: nothing was planned or submitted" in output
    assert "Top up credits, or run with sandbox=True" in output
    assert broke.state()["scans"] == 0 and broke.state()["submissions"] == {}
    assert audit.scans() == []


def test_unreachable_webhook_url_times_out_and_says_to_fix_webhook_base_url(
    audit, monkeypatch, capfd, caplog
):
    audit.seed(4, bad_rows=False)
    closed = f"http://127.0.0.1:{free_port()}/copyleaks-webhook"
    reconnect(monkeypatch, extra={"webhook_base_url": closed})
    audit.emulator.set_faults(webhook_max_tries=2, webhook_retry_base_seconds=0.05)
    run = audit.run(DAY, wait_timeout_minutes=0.1)
    audit.emulator.wait_idle()
    assert audit.emulator.state()["webhooks_failed"] == 4
    assert run.state == "success"  # partial: the report still goes out
    output = _output(capfd, caplog)
    message = "No Copyleaks callback arrived for any of the 4 scans of this run"
    assert message in output
    assert closed in output and "reachable from Copyleaks" in output
    scans = audit.scans()
    assert {s["state"] for s in scans} == {"timed_out"}
    assert all("webhook_base_url" in s["last_error"] for s in scans)
    assert audit.report(run.run_id)["summary"]["states"]["timed_out"] == 4


def test_a_login_block_fails_the_submit_saying_so_and_keeps_its_scans_pending(audit, monkeypatch):
    """Someone else used up the account's logins: the submit task asks Copyleaks once, fails this try
    with what happened (its Airflow retry comes after the block), and submits nothing. The block (300
    s) is longer than this task may wait (5 s here; by default a whole block)."""
    import httpx
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from copyleaks_provider.scan_ids import DEFAULT_MODEL
    from image_audit.planning import PlanOptions, RunContext, plan_run
    from image_audit.planning.catalog import CatalogSpec
    from tests.support.submit_batch_process import submit_batch

    audit.seed(6, bad_rows=False)
    [batch_id] = plan_run(
        audit.engine,
        CatalogSpec(),
        RunContext("image_catalog_audit", "login-blocked", DAY, DAY + timedelta(days=1)),
        PlanOptions(model=DEFAULT_MODEL),
    ).batch_ids
    reconnect(monkeypatch, extra={"max_login_wait_seconds": 5})
    emulator = audit.emulator
    emulator.reset(logins_per_window=1)
    login = {"email": emulator.email, "key": emulator.api_key}
    for expected in (200, 429):  # another client's login, then the block
        assert httpx.post(f"{emulator.url}/v3/account/login/api", json=login).status_code == expected

    with pytest.raises(AirflowException) as raised:
        submit_batch(batch_id)
    assert not isinstance(raised.value, AirflowFailException)  # retried later, not failed for good
    assert "refuses logins of this account" in str(raised.value)
    state = emulator.state()
    assert state["login_429"] == 2 and state["api_requests"] == 0
    assert {s["state"] for s in audit.scans()} == {"pending"}
