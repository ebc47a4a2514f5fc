"""Fault injection: the real DAG against the emulator's faults; nothing lost, stored twice or sent twice.

Each scenario ends with ``check_invariants``: every catalog image's latest attempt final, 0 lost
results, 0 duplicate result rows, no image submitted twice except a timed-out scan resubmitted.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy.engine import make_url

from tests.support import ROOT
from tests.support.deployment import wired_audit
from tests.support.factories import DAY
from tests.support.polling import wait_for
from tests.support.reliability import API_FAULTS, FIGURES, check_invariants
from tests.support.tcp_proxy import TcpProxy
from tests.support.warehouse import requires_postgres

pytestmark = pytest.mark.slow

#: Copyleaks-side webhook faults of the issue (with API_FAULTS' 10% 429 and 5% 5xx on submit): dropped,
#: duplicated, delayed, out-of-order webhooks.
WEBHOOK_FAULTS = {
    "p_drop_webhook": 0.1,
    "p_duplicate_webhook": 0.1,
    "p_delay_webhook": 0.2,
    "delay_webhook_ms": 800,
    "reorder_webhooks": True,
    "webhook_latency_ms": 50,
}


def _in_background(action) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def test_api_and_webhook_faults_then_a_timed_out_run_and_the_next_run_finishing(audit):
    audit.seed(40)  # 47 scans: some of the 10% dropped webhooks (P(none) < 1%)
    audit.emulator.set_faults(**API_FAULTS, **WEBHOOK_FAULTS, webhook_max_tries=3)

    first = audit.run(DAY, wait_timeout_minutes=0.15)
    assert first.state == "success"
    audit.emulator.wait_idle()
    state = audit.emulator.state()
    assert state["injected_429"] + state["injected_5xx"] > 0
    timed_out = [s for s in audit.scans() if s["state"] == "timed_out"]
    assert len(timed_out) >= state["webhooks_dropped"] > 0, "dropped webhooks must time out"
    assert audit.report(first.run_id)["summary"]["states"]["timed_out"] == len(timed_out)

    audit.emulator.set_faults(p_drop_webhook=0.0)  # the next run: Copyleaks delivers again
    second = audit.run(DAY + timedelta(days=1))
    assert second.state == "success"
    check_invariants(audit)
    latest = {s["image_id"]: s for s in sorted(audit.scans(), key=lambda s: s["attempt"])}
    assert all(latest[s["image_id"]]["attempt"] == 2 for s in timed_out)


def test_receiver_restarted_mid_run(audit):
    audit.seed(24, bad_rows=False)
    # Callbacks arrive over a few seconds; Copyleaks retries a refused delivery for about 8 s.
    audit.emulator.set_faults(
        webhook_latency_ms=400, reorder_webhooks=True, webhook_retry_base_seconds=0.5, webhook_max_tries=5
    )
    restarts = []

    def restart_during_callbacks():
        wait_for(lambda: audit.emulator.state()["in_flight"] > 0, "a scan in flight", 30, 0.05)
        audit.receiver.stop()
        restarts.append(audit.emulator.state()["in_flight"])
        time.sleep(1.5)  # the fault itself: the receiver stays down 1.5 s (not a wait for a moment)
        audit.receiver.start()  # same port: the webhook URLs stay valid

    thread = _in_background(restart_during_callbacks)
    run = audit.run(DAY, wait_timeout_minutes=1)
    thread.join(30)
    assert run.state == "success"
    assert restarts and restarts[0] > 0, "the receiver must go down while callbacks are in flight"
    state = audit.emulator.state()
    assert state["webhooks_sent"] > state["webhooks_acknowledged"], "some deliveries hit the downed receiver"
    check_invariants(audit, extra_faults=1)
    assert {s["state"] for s in audit.scans()} == {"completed"}


def test_warehouse_locked_for_seconds_during_callbacks(audit, warehouse_url):
    """SQLite: an exclusive lock makes every callback's write wait; PostgreSQL has the TCP-cut test."""
    audit.seed(24, bad_rows=False)
    audit.emulator.set_faults(webhook_latency_ms=300, reorder_webhooks=True)
    held = []

    def lock_the_warehouse():
        wait_for(lambda: audit.emulator.state()["in_flight"] > 0, "a scan in flight", 30, 0.05)
        conn = sqlite3.connect(make_url(warehouse_url).database, isolation_level=None, timeout=30)
        conn.execute("BEGIN EXCLUSIVE")
        held.append(audit.emulator.state()["in_flight"])
        time.sleep(4)  # the fault itself: the lock is held 4 s (not a wait for a moment)
        conn.execute("ROLLBACK")
        conn.close()

    thread = _in_background(lock_the_warehouse)
    run = audit.run(DAY, wait_timeout_minutes=1)
    thread.join(30)
    assert run.state == "success"
    assert held and held[0] > 0, "the lock must be taken while callbacks are in flight"
    check_invariants(audit, extra_faults=1)
    assert {s["state"] for s in audit.scans()} == {"completed"}


@pytest.mark.postgres
@requires_postgres
def test_postgres_warehouse_cut_during_callbacks(postgres_databases, emulator, airflow_db, monkeypatch):
    """The receiver reaches PostgreSQL through a TCP proxy that is cut for 3 s while callbacks arrive:
    it answers 503, Copyleaks retries, and every result is stored once the warehouse is back."""
    from image_audit.warehouse.engine import get_engine
    from image_audit.warehouse.schema import migrate

    url = postgres_databases.create()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE", url)
        migrate(get_engine(url))
        target = make_url(url)
        proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432).start()
        via_proxy = target.set(port=proxy.port, host="127.0.0.1").render_as_string(hide_password=False)
        with wired_audit(url, emulator, monkeypatch, receiver_warehouse_url=via_proxy) as audit:
            audit.seed(24, bad_rows=False)
            audit.emulator.set_faults(
                webhook_latency_ms=400, reorder_webhooks=True, webhook_retry_base_seconds=0.5
            )
            cut = []

            def cut_the_warehouse():
                wait_for(lambda: audit.emulator.state()["in_flight"] > 0, "a scan in flight", 30, 0.05)
                proxy.cut()
                cut.append(audit.emulator.state()["in_flight"])
                time.sleep(3)  # the fault itself: the warehouse stays cut 3 s
                proxy.restore()

            thread = _in_background(cut_the_warehouse)
            run = audit.run(DAY, wait_timeout_minutes=1)
            thread.join(30)
            assert run.state == "success"
            assert cut and cut[0] > 0, "the cut must happen while callbacks are in flight"
            state = audit.emulator.state()
            assert state["webhooks_sent"] > state["webhooks_acknowledged"], "some deliveries got a 503"
            check_invariants(audit, extra_faults=1)
            assert {s["state"] for s in audit.scans()} == {"completed"}
        proxy.stop()
    finally:
        postgres_databases.drop(url)


def test_submit_task_killed_mid_batch_then_retried(audit, warehouse_url):
    """SIGKILL the submit operator's process after a few submissions; its retry resubmits only the rest.

    What the killed process sent but never recorded goes again under the same scan id: Copyleaks
    answers that idempotently (or 409), so no image is scanned twice.
    """
    from copyleaks_provider.scan_ids import DEFAULT_MODEL
    from image_audit.planning import PlanOptions, RunContext, plan_run
    from image_audit.planning.catalog import CatalogSpec
    from tests.support.submit_batch_process import submit_batch

    audit.seed(30, bad_rows=False)
    plan = plan_run(
        audit.engine,
        CatalogSpec(),
        RunContext("image_catalog_audit", "killed-submit", DAY, DAY + timedelta(days=1)),
        PlanOptions(model=DEFAULT_MODEL, batch_size=100),
    )
    assert len(plan.batch_ids) == 1 and plan.planned == 30
    audit.emulator.set_faults(api_latency_ms=250)  # 30 submits at concurrency 8: about a second

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.submit_batch_process", plan.batch_ids[0]],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        sent_before_kill = wait_for(
            lambda: len(audit.emulator.state()["submissions"]) >= 5 and audit.emulator.state()["submissions"],
            "5 submissions before the kill",
            timeout=60,
            interval=0.01,
        )
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert process.returncode == -signal.SIGKILL
    assert len(sent_before_kill) < 30, "killed mid-batch"

    audit.emulator.set_faults(api_latency_ms=0)
    counts = submit_batch(plan.batch_ids[0])  # the task's retry
    assert counts["pending"] == 0
    wait_for(lambda: {s["state"] for s in audit.scans()} == {"completed"}, "every scan completed", 60, 0.2)

    state = audit.emulator.state()
    assert len(state["submissions"]) == 30
    resent = {scan_id for scan_id, n in state["submissions"].items() if n > 1}
    assert resent <= set(sent_before_kill), "only what the killed process had sent may go again"
    assert state["duplicate_submissions"] == sum(n - 1 for n in state["submissions"].values())
    assert state["scans"] == 30 and state["credits_remaining"] == audit.emulator.settings.credits - 30
    FIGURES["submit_processes_killed"] += 1
    check_invariants(audit, extra_faults=1)
