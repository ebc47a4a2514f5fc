"""The real DAG end to end: emulator -> receiver -> warehouse, with ``dag.test`` on SQLite and PostgreSQL.

Each image must be submitted exactly once (the emulator's counters say so), reruns submit nothing,
a timeout leaves partial results that the next run completes, and bad rows reach the report.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from urllib.parse import quote

import pytest

from tests.support.factories import DAY

pytestmark = pytest.mark.slow


def _submitted_ids(state: dict) -> Counter:
    return Counter(state["submissions"])


def _good_ids(rows: list[dict]) -> set[str]:
    return {r["image_id"] for r in rows}


def test_normal_run_stores_every_result_and_reports_rejections(audit):
    rows = audit.seed(24)
    run = audit.run(DAY)
    assert run.state == "success"
    audit.emulator.wait_idle()

    scans = audit.scans()
    by_state = Counter(s["state"] for s in scans)
    assert by_state["rejected"] >= 3  # the sample catalog's bad rows
    assert by_state["pending"] == by_state["submitted"] == by_state["timed_out"] == 0
    submitted = _submitted_ids(audit.emulator.state())
    assert submitted and set(submitted.values()) == {1}
    assert {r["scan_id"] for r in audit.results()} <= set(submitted)
    sent = {s["scan_id"] for s in scans if s["state"] in ("completed", "failed")}
    assert sent == set(submitted)
    assert len({s["image_id"] for s in scans if s["state"] != "rejected"}) == len(submitted)
    report = audit.report(run.run_id)
    summary = report["summary"]
    assert summary["rejected_rows"] == by_state["rejected"]
    assert summary["states"]["completed"] == by_state["completed"] == len(audit.results())
    assert len(rows) >= 24
    # the row and the Asset event carry the files' URIs (file:// by default; s3:// etc. when configured)
    uris = {key: report[key] for key in ("html_path", "csv_path", "parquet_path")}
    assert uris["html_path"].startswith("file:///") and uris["html_path"].endswith("/report.html")
    assert _report_event(run.run_id) == {"dag_id": "image_catalog_audit", "run_id": run.run_id, **uris}
    # Each task's "Audit report" button: the URL its worker pushed when it finished, to this run's tab
    run_page = f"http://localhost:8080/dags/image_catalog_audit/runs/{quote(run.run_id, safe='')}"
    tab = f"{run_page}/plugin/audit-report"
    links = _extra_link_urls(run.run_id)
    assert set(links) == {"submit_batch", "wait_for_results", "report"}, links
    assert all(urls and set(urls) == {tab} for urls in links.values()), links
    batches = {s["batch_id"] for s in scans if s["batch_id"]}
    assert len(links["submit_batch"]) == len(batches) > 0  # one per mapped batch


def _extra_link_urls(run_id: str) -> dict[str, list[str]]:
    """The extra-link URLs the run's tasks pushed (Airflow 3 keeps them as XCom), by task id."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    query = select(XComModel.task_id, XComModel.value).where(
        XComModel.run_id == run_id, XComModel.key == "_link_AuditReportLink"
    )
    with create_session() as session:
        rows = session.execute(query).all()
    urls: dict[str, list[str]] = {}
    for task_id, value in rows:
        urls.setdefault(task_id, []).append(value)
    return urls


def _report_event(run_id: str) -> dict:
    """The extra of the ``image_audit_report`` Asset event the run's report task emitted."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        (extra,) = session.scalars(select(AssetEvent.extra).where(AssetEvent.source_run_id == run_id)).all()
    return extra


def test_backfill_submits_each_image_once_and_a_rerun_submits_nothing(audit):
    audit.seed(30, days=3)
    for offset in range(3):
        assert audit.run(DAY + timedelta(days=offset)).state == "success"
    audit.emulator.wait_idle()
    first = _submitted_ids(audit.emulator.state())
    assert set(first.values()) == {1}
    scans = [s for s in audit.scans() if s["state"] != "rejected"]
    assert len(first) == len({s["image_id"] for s in scans}) == len(scans)
    assert {s["data_interval_start"].date() if s["data_interval_start"] else None for s in scans} >= {
        (DAY + timedelta(days=d)).date() for d in range(3)
    }

    rerun = audit.run(DAY + timedelta(days=1))
    assert rerun.state == "success"
    audit.emulator.wait_idle()
    assert _submitted_ids(audit.emulator.state()) == first


def test_timeout_gives_partial_results_that_the_next_run_completes(audit):
    audit.seed(20, bad_rows=False)
    audit.emulator.set_faults(p_drop_webhook=0.5, webhook_max_tries=1)
    first = audit.run(DAY, wait_timeout_minutes=0.1)
    assert first.state == "success"
    audit.emulator.wait_idle()
    timed_out = [s for s in audit.scans() if s["state"] == "timed_out"]
    assert timed_out, "with half the webhooks dropped some scans must time out"
    assert audit.report(first.run_id)["summary"]["states"]["timed_out"] == len(timed_out)

    audit.emulator.set_faults(p_drop_webhook=0.0)
    second = audit.run(DAY + timedelta(days=1))
    assert second.state == "success"
    audit.emulator.wait_idle()
    latest: dict[str, dict] = {}
    for scan in sorted(audit.scans(), key=lambda s: s["attempt"]):
        latest[scan["image_id"]] = scan
    assert {s["state"] for s in latest.values()} <= {"completed", "failed"}
    retried = {s["image_id"] for s in timed_out}
    assert all(latest[i]["attempt"] == 2 for i in retried)
    # Each attempt's scan id was submitted once; the retried images twice in all (by design).
    assert set(_submitted_ids(audit.emulator.state()).values()) == {1}


def test_a_short_submission_window_defers_the_rest_to_the_next_run(audit):
    audit.seed(20, bad_rows=False)
    # 0.01 minutes at the connection's 10 requests/s: floor(10 * 60 * 0.01 * 0.955 * 0.97) = 5 submissions
    first = audit.run(DAY, max_submit_minutes=0.01)
    assert first.state == "success"
    audit.emulator.wait_idle()
    assert len(_submitted_ids(audit.emulator.state())) == 5
    backlog = audit.report(first.run_id)["summary"]["backlog"]
    assert backlog["scans"] == 15 and backlog["by_reason"]["window"] == 15
    assert (backlog["requests_per_second"], backlog["run_capacity"], backlog["runs_to_clear"]) == (10, 5, 3)

    second = audit.run(DAY + timedelta(days=1))  # the default window: the backlog goes first
    assert second.state == "success"
    audit.emulator.wait_idle()
    submitted = _submitted_ids(audit.emulator.state())
    assert len(submitted) == 20 and set(submitted.values()) == {1}
    assert audit.report(second.run_id)["summary"]["backlog_scans"] == 0


def test_a_null_sandbox_param_takes_the_connections_and_records_what_was_sent(audit, monkeypatch):
    """The connection says sandbox: the scans are sent as sandbox (no credits), recorded as sandbox,
    and the report counts them so, rather than as charged scans."""
    import json
    import os

    connection = json.loads(os.environ["AIRFLOW_CONN_COPYLEAKS_DEFAULT"])
    connection["extra"]["sandbox"] = True
    monkeypatch.setenv("AIRFLOW_CONN_COPYLEAKS_DEFAULT", json.dumps(connection))
    audit.seed(6, bad_rows=False)
    credits_before = audit.emulator.state()["credits_remaining"]
    run = audit.run(DAY)  # the sandbox Param defaults to null
    assert run.state == "success"
    audit.emulator.wait_idle()
    assert {s["sandbox"] for s in audit.scans()} == {True}
    assert audit.emulator.state()["credits_remaining"] == credits_before
    assert audit.report(run.run_id)["summary"]["credits"]["sandbox_scans"] == 6


def test_archive_results_moves_settled_old_results_out_and_keeps_the_model(audit):
    from pathlib import Path

    from sqlalchemy import select, update

    from image_audit.reporting.storage import reports_base
    from image_audit.warehouse.analytics import refresh_all
    from image_audit.warehouse.schema import audit_scans, image_standing

    audit.seed(12)
    assert audit.run(DAY).state == "success"
    audit.emulator.wait_idle()
    with audit.engine.begin() as conn:  # the run as it stands 500 days later
        scan = audit_scans.c
        for scan_id, created, updated in conn.execute(
            select(scan.scan_id, scan.created_at, scan.updated_at)
        ).all():
            aged = {"created_at": created - timedelta(days=500), "updated_at": updated - timedelta(days=500)}
            conn.execute(update(audit_scans).where(scan.scan_id == scan_id).values(**aged))
        refresh_all(conn)
        standing = [dict(row) for row in conn.execute(select(image_standing)).mappings()]
    settled = [s for s in audit.scans() if s["state"] in ("completed", "failed", "rejected")]
    assert settled

    kept = audit.run(DAY + timedelta(days=1), archive_after_days=None)
    assert audit.task_state(kept, "archive_results")[0] == "success"
    assert len(audit.scans()) == len(settled)
    archived = audit.run(DAY + timedelta(days=2), archive_after_days=400)
    assert archived.state == "success" and audit.task_state(archived, "archive_results")[0] == "success"
    assert audit.scans() == [] and audit.results() == []
    files = sorted(Path(reports_base().path, "archive").rglob("*.parquet"))
    assert {f.name for f in files} == {
        "audit_scans.parquet",
        "audit_results.parquet",
        "audit_failed_callbacks.parquet",
    }
    with audit.engine.connect() as conn:
        assert [dict(row) for row in conn.execute(select(image_standing)).mappings()] == standing
