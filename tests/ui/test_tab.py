"""The "Audit report" tab on each DAG run, served by the real Airflow api-server through the plugin.

The page is behind Airflow's own auth manager (here the SimpleAuthManager with two configured users), the
webhook receiver beside it is not (HMAC only), and ``GET /api/v2/plugins`` lists the tab. It serves only a
report under the reports location, whatever the warehouse row names, with a strict Content-Security-Policy.
"""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from copyleaks_provider.webhooks.auth import webhook_url
from image_audit.planning.window import submission_minutes
from image_audit.reporting.report import HTML_NAME, safe_run_id
from image_audit.reporting.storage import uri
from image_audit.ui.tab import EXTERNAL_VIEW, SECURITY_HEADERS, report_file
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.schema import audit_reports, audit_scans, migrate
from image_audit_dev.servers import BackgroundServer
from tests.support.api_server import PASSWORDS, PLUGIN_FILE, SECRET, ui_api_server
from tests.support.factories import result_body, seed_scan
from tests.support.polling import wait_for
from tests.support.warehouse import scan_row

DAG_ID = "image_catalog_audit"
REPORTED_RUN = "scheduled__2026-11-21T00:00:00+00:00"
RUNNING_RUN = "manual__2026-11-22T03:00:00+00:00"
SUBMITTING_RUN = "manual__2026-11-23T03:00:00+00:00"
REPORT_HTML = "<!doctype html><html><body><h1>Image audit report</h1><p>marker-7f3a</p></body></html>"
#: In every file the tab must not serve.
NOT_SERVED = "not-served-9c2e"
CSP = SECURITY_HEADERS["Content-Security-Policy"]


@pytest.fixture(scope="module")
def ui_tmp(tmp_path_factory) -> Path:
    """The api-server's directory: its warehouse, its reports (``reports/``) and its log."""
    return tmp_path_factory.mktemp("ui-tab")


def insert_report(warehouse: str, run_id: str, html_path: str) -> None:
    with get_engine(warehouse).begin() as conn:
        conn.execute(
            audit_reports.insert(),
            {
                "dag_id": DAG_ID,
                "run_id": run_id,
                "created_at": datetime.now(UTC),
                "summary": {},
                "html_path": html_path,
            },
        )


@pytest.fixture(scope="module")
def server(airflow_db, ui_tmp):
    """The api-server on a seeded warehouse: a reported run, a running one, a submitting one."""
    tmp = ui_tmp  # the api-server's reports location: tmp / "reports"
    warehouse = f"sqlite:///{tmp / 'warehouse.db'}"
    migrate(get_engine(warehouse))
    # A finished run: its report file (where the report task writes it) and row. A running one: scans in
    # every state, no report.
    report = tmp / "reports" / DAG_ID / safe_run_id(REPORTED_RUN) / HTML_NAME
    report.parent.mkdir(parents=True)
    report.write_text(REPORT_HTML)
    insert_report(warehouse, REPORTED_RUN, f"file://{report}")
    states = {"pending": 7, "submitted": 3, "completed": 4, "failed": 1, "rejected": 2}
    for state, n in states.items():
        for i in range(n):
            seed_scan(warehouse, f"{state}-{i}", ScanState(state), run_id=RUNNING_RUN)
    seed_scan(warehouse, "webhook-scan", run_id=REPORTED_RUN)
    # A run submitting now: 5 to send, 12 sent (when: set by its test, just before it asks)
    for i in range(5):
        seed_scan(warehouse, f"to-send-{i}", ScanState.PENDING, run_id=SUBMITTING_RUN)
    for i in range(12):
        seed_scan(warehouse, f"sent-{i}", ScanState.SUBMITTED, run_id=SUBMITTING_RUN)
    with ui_api_server(tmp, warehouse, reports_url=f"file://{tmp / 'reports'}") as base:
        yield base, warehouse


def token(base: str, user: str) -> str:
    response = httpx.post(
        f"{base}/auth/token", json={"username": user, "password": PASSWORDS[user]}, timeout=30
    )
    assert response.status_code == 201, response.text
    return response.json()["access_token"]


def page(base: str, run_id: str, **kwargs) -> httpx.Response:
    return httpx.get(f"{base}/image-audit/runs/{DAG_ID}/{run_id}", timeout=30, **kwargs)


def bearer(base: str, user: str) -> dict:
    return {"headers": {"Authorization": f"Bearer {token(base, user)}"}}


def test_importing_the_plugin_leaves_airflows_api_security_unimported():
    """Every task imports the plugin (for its macros): the tab's app is built at its first request."""
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        "assert 'airflow.api_fastapi.core_api.security' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code, str(PLUGIN_FILE)], check=True, capture_output=True)


def test_anonymous_callers_get_airflows_401(server):
    base, _ = server
    response = page(base, REPORTED_RUN)
    assert response.status_code == 401 and response.json() == {"detail": "Not authenticated"}
    assert response.headers["x-content-type-options"] == "nosniff"  # the tab's headers on Airflow's answer
    # A forged token is Airflow's to refuse as well
    forged = page(base, REPORTED_RUN, headers={"Authorization": "Bearer not.a.jwt"})
    assert forged.status_code == 403 and forged.json() == {"detail": "Invalid JWT token"}


def test_a_viewer_sees_the_runs_report(server):
    base, _ = server
    response = page(base, REPORTED_RUN, **bearer(base, "viewer"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html") and response.text == REPORT_HTML
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-frame-options"] == "SAMEORIGIN"
    assert response.headers["x-content-type-options"] == "nosniff"
    # The UI's session: the same token in the _token cookie (what the tab's iframe sends)
    cookie = page(base, REPORTED_RUN, cookies={COOKIE_NAME_JWT_TOKEN: token(base, "viewer")})
    assert cookie.status_code == 200 and "marker-7f3a" in cookie.text


def test_a_run_without_a_report_shows_its_live_progress(server):
    base, _ = server
    response = page(base, RUNNING_RUN, **bearer(base, "viewer"))
    assert response.status_code == 200, response.text
    text = response.text
    assert '<meta http-equiv="refresh" content="10">' in text and "Audit in progress" in text
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-frame-options"] == "SAMEORIGIN"
    rows = {"Planned": 17, "Submitted": 8, "Completed": 4, "Failed": 1, "Remaining": 10}
    for label, n in rows.items():
        assert f"<tr><th>{label}</th><td class='n'>{n}</td></tr>" in text
    # Nothing sent in the last minute: the estimate runs at the budget (the connection sets no rate:
    # the account's documented default, 10/s)
    assert "No submission in the last minute (the account&#x27;s budget: 10 requests/s)." in text
    minutes = submission_minutes(7, 10.0)
    assert f"7 scans to submit at 10 requests/s: about {minutes} min" in text
    # A run the warehouse knows nothing of
    unknown = page(base, "manual__nothing", **bearer(base, "viewer"))
    assert unknown.status_code == 200 and "No scans are recorded for this run yet" in unknown.text


def test_a_submitting_run_shows_its_measured_rate_against_the_budget(server):
    base, warehouse = server
    headers = bearer(base, "viewer")
    # 12 submissions over the last 30 s, one every 2.5 s: 0.4/s
    asked = datetime.now(UTC)
    with get_engine(warehouse).begin() as conn:
        for i in range(12):
            sent_at = asked - timedelta(seconds=30 - 2.5 * i)
            conn.execute(
                audit_scans.update().where(audit_scans.c.scan_id == f"sent-{i}"), {"submitted_at": sent_at}
            )
    text = page(base, SUBMITTING_RUN, **headers).text
    took = (datetime.now(UTC) - asked).total_seconds()
    found = re.search(r"Submitting at ([0-9.]+) requests/s over the last minute; the account&#x27;s budget: "
                      r"10 requests/s \((\d+)% of it\)\.", text)  # fmt: skip
    assert found, text
    measured, share = float(found[1]), int(found[2])
    # 12 submissions over the 30 s (plus the time the request took) since the first of them
    assert 12 / (30 + took) - 0.001 <= measured <= 12 / 30 + 0.001, (measured, took)
    assert share == round(measured * 10)
    # The finish estimate for the 5 left runs at the measured rate, not at the budget
    estimate = re.search(r"5 scans to submit at ([0-9.]+) requests/s: about (\d+) min", text)
    assert estimate and abs(float(estimate[1]) - measured) < 0.01, text
    assert int(estimate[2]) == submission_minutes(5, float(estimate[1]))


def test_a_user_the_auth_manager_grants_no_dag_access_gets_403(server):
    base, _ = server
    response = page(base, REPORTED_RUN, **bearer(base, "outsider"))
    assert response.status_code == 403 and response.json() == {"detail": "Forbidden"}
    assert "marker-7f3a" not in response.text


def test_the_webhook_stays_outside_airflows_auth(server):
    base, warehouse = server
    prefix = f"{base}/copyleaks-webhook"
    assert httpx.get(f"{prefix}/health", timeout=30).status_code == 200
    # A bad HMAC token: our receiver's 403, not Airflow's 401
    forged = httpx.post(webhook_url(prefix, "not-the-secret", "webhook-scan"), json={}, timeout=30)
    assert forged.status_code == 403 and forged.json() == {"detail": "invalid callback token"}
    # The right one, without any Airflow credential: stored
    url = webhook_url(prefix, SECRET, "webhook-scan")
    response = httpx.post(url, json=result_body("webhook-scan"), timeout=30)
    assert response.status_code == 200 and response.json() == {"status": "stored"}
    assert scan_row(warehouse, "webhook-scan")["state"] == "completed"


def test_the_api_lists_the_tab(server):
    base, _ = server
    assert httpx.get(f"{base}/api/v2/plugins", timeout=30).status_code == 401
    response = httpx.get(f"{base}/api/v2/plugins", timeout=30, **bearer(base, "viewer"))
    assert response.status_code == 200, response.text
    (plugin,) = [p for p in response.json()["plugins"] if p["name"] == "image_audit"]
    (view,) = [v for v in plugin["external_views"] if v["destination"] == "dag_run"]
    assert {k: view[k] for k in EXTERNAL_VIEW} == EXTERNAL_VIEW
    assert view["href"] == "/image-audit/runs/{DAG_ID}/{RUN_ID}" and view["destination"] == "dag_run"
    assert {app["url_prefix"] for app in plugin["fastapi_apps"]} == {"/copyleaks-webhook", "/image-audit"}


@pytest.fixture
def loopback():
    """A server on loopback that records every request it gets (and would answer with ``NOT_SERVED``)."""
    app, requests = FastAPI(), []

    @app.get("/{path:path}")
    def anything(path: str, request: Request) -> HTMLResponse:
        requests.append(str(request.url))
        return HTMLResponse(f"<p>{NOT_SERVED}</p>")

    with BackgroundServer(app) as recorder:
        yield f"http://127.0.0.1:{recorder.port}", requests


@pytest.mark.parametrize(
    "where",
    [
        "etc-passwd",
        "outside",
        "traversal",
        "symlink",
        "symlinked-dir",
        "not-the-report",
        "bare-path",
        "loopback-url",
    ],
)
def test_the_tab_serves_only_a_report_under_the_reports_location(server, ui_tmp, loopback, where):
    """A row naming anything but a report.html under the reports location (a forged or stale row: the
    warehouse is not the api-server's file system) is refused and logged, and nothing is read."""
    base, warehouse = server
    reports, elsewhere = ui_tmp / "reports", ui_tmp / f"elsewhere-{where}"
    elsewhere.mkdir()
    (elsewhere / "report.html").write_text(f"<p>{NOT_SERVED}</p>")
    inside = reports / DAG_ID / where
    inside.mkdir()
    (inside / "notes.txt").write_text(NOT_SERVED)
    (inside / "report.html").symlink_to(elsewhere / "report.html")
    (inside / "linked").symlink_to(elsewhere)
    loopback_url, requests = loopback
    html_path = {
        "etc-passwd": "file:///etc/passwd",
        "outside": f"file://{elsewhere}/report.html",
        "traversal": f"file://{reports}/{DAG_ID}/../../{elsewhere.name}/report.html",
        "symlink": f"file://{inside}/report.html",
        "symlinked-dir": f"file://{inside}/linked/report.html",
        "not-the-report": f"file://{inside}/notes.txt",
        "bare-path": f"{elsewhere}/report.html",
        "loopback-url": f"{loopback_url}/report.html",
    }[where]
    run_id = f"manual__forged-{where}"
    insert_report(warehouse, run_id, html_path)

    response = page(base, run_id, **bearer(base, "viewer"))
    assert response.status_code == 403 and "Audit report refused" in response.text
    assert NOT_SERVED not in response.text and "root:" not in response.text
    assert html_path not in response.text
    assert response.headers["content-security-policy"] == CSP
    assert requests == []  # the api-server fetched nothing
    logged = wait_for(
        lambda: f"Not serving the report of {DAG_ID} / {run_id}" in (ui_tmp / "api-server.log").read_text(),
        f"the refusal of {run_id} in the api-server's log",
        timeout=10,
    )
    assert logged and NOT_SERVED not in (ui_tmp / "api-server.log").read_text()


def test_report_files_on_an_object_store_are_read_through_the_reports_base(monkeypatch):
    """Under an object store the URI must name the base's bucket and prefix, and no other connection."""
    monkeypatch.setenv("IMAGE_AUDIT_REPORTS_URL", "s3://reports-bucket/audit")
    monkeypatch.delenv("IMAGE_AUDIT_REPORTS_CONN_ID", raising=False)
    report = "s3://reports-bucket/audit/image_catalog_audit/scheduled__2026-11-21/report.html"
    assert uri(report_file(report)) == report
    for forged in [
        "s3://other-bucket/audit/image_catalog_audit/r/report.html",
        "s3://reports-bucket/audit-other/image_catalog_audit/r/report.html",
        "s3://aws_admin@reports-bucket/audit/image_catalog_audit/r/report.html",
        "s3://reports-bucket/audit/image_catalog_audit/../../secrets/report.html",
        "s3://reports-bucket/audit/image_catalog_audit//report.html",
        "s3://reports-bucket/audit/image_catalog_audit/r/report.html?versionId=1",
        "s3://reports-bucket/audit/image_catalog_audit/r/results.csv",
        "gs://reports-bucket/audit/image_catalog_audit/r/report.html",
        "file:///reports-bucket/audit/image_catalog_audit/r/report.html",
        "http://169.254.169.254/latest/meta-data/report.html",
    ]:
        assert report_file(forged) is None, forged
