"""The "Audit trends" page (``image_audit.ui.trends``): what it reads from ``audit_daily`` and shows, its
CSV, and the page served by the real api-server behind Airflow's auth, then read in a browser.

``IMAGE_AUDIT_TRENDS_SCREENSHOT=<file.png>`` keeps the browser test's screenshot (docs/trends.png is made
so).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from datetime import date, timedelta
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import func, select

from image_audit.ui.tab import TRENDS_VIEW
from image_audit.ui.trends import CSV_COLUMNS, UNKNOWN_SOURCE, read_trends, render_trends, trends_csv
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import audit_daily, audit_scans, migrate
from tests.support.api_server import PASSWORDS, ui_api_server
from tests.support.browser import chromium, viewer_page
from tests.support.factories import DAY, daily_row

DAG_ID = "image_catalog_audit"
TODAY = date(2026, 12, 6)
SCREENSHOT_ENV = "IMAGE_AUDIT_TRENDS_SCREENSHOT"


def seed_days(url: str, days: int = 30, today: date = TODAY) -> None:
    """``days`` days up to ``today``: "partner-feed" jumps from 5% to 40% AI on the last day, "shop" stays
    at 10% with 2% failures, "=HYPERLINK(...)" (an uploader's source name) has one day, and a second model
    adds to "shop"'s first day. Nothing in the per-scan tables: the page must not need them."""
    rows = []
    for i in range(days):
        day = today - timedelta(days=days - 1 - i)
        rows.append(daily_row(day, "partner-feed", 100, 40 if day == today else 5))
        rows.append(daily_row(day, "shop", 100, 10 if i else 12, failed=2))
    rows.append(daily_row(today - timedelta(days=days - 1), "shop", 10, 0, model="ai-image-2"))
    rows.append(daily_row(today - timedelta(days=3), '=HYPERLINK("http://evil.example")', 4, 1))
    rows.append(daily_row(today - timedelta(days=2), "", 5, 0))
    rows.append(daily_row(today - timedelta(days=days + 5), "shop", 100, 90))  # before the range
    engine = get_engine(url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(audit_daily.insert(), rows)


# --- what the page reads and shows -------------------------------------------------------------------


def test_the_trends_are_the_daily_models_days_summed_over_models(warehouse_url):
    seed_days(warehouse_url)
    with get_engine(warehouse_url).connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit_scans)).scalar_one() == 0
        trends = read_trends(conn, 30, today=TODAY)
    assert (trends.first, trends.last) == (TODAY - timedelta(days=29), TODAY)
    assert trends.sources[:2] == ["shop", "partner-feed"]  # the largest volume first
    ai = trends.shares("ai_share")
    assert ai.loc[TODAY.isoformat(), "partner-feed"] == pytest.approx(0.40)
    assert ai.loc[(TODAY - timedelta(days=1)).isoformat(), "partner-feed"] == pytest.approx(0.05)
    first = (TODAY - timedelta(days=29)).isoformat()
    # shop's first day: 98 + 10 completed over two models, 12 AI-generated
    assert ai.loc[first, "shop"] == pytest.approx(12 / 108)
    attention = trends.shares("needs_attention_share")
    assert attention.loc[first, "shop"] == pytest.approx(2 / 110)
    assert ai.loc[(TODAY - timedelta(days=2)).isoformat(), UNKNOWN_SOURCE] == 0
    assert len(ai) == 30  # every day of the range, with or without rows
    assert int(trends.per_week()["images"].sum()) == 30 * 200 + 10 + 4 + 5


def test_the_page_shows_each_chart_with_its_table_and_escapes_source_names(warehouse_url):
    seed_days(warehouse_url)
    with get_engine(warehouse_url).connect() as conn:
        page = render_trends(DAG_ID, read_trends(conn, 30, today=TODAY), 30)
    for key in ("ai-share", "needs-attention", "verdict-mix"):
        assert f'id="chart-{key}"' in page
    assert page.count("<table>") == 3
    assert f"{TODAY.isoformat()}: partner-feed 40.0%" in page  # the AI-share chart's description
    assert "40.0%" in page and "trends.csv?days=30" in page
    assert '=HYPERLINK("http' not in page and "=HYPERLINK(&quot;http://evil.example&quot;)" in page


def test_an_empty_range_says_so(warehouse_url):
    seed_days(warehouse_url)
    with get_engine(warehouse_url).connect() as conn:
        trends = read_trends(conn, 7, today=TODAY + timedelta(days=400))
    assert trends.rows.empty
    assert "No audited images were ingested" in render_trends(DAG_ID, trends, 7)


def test_the_csv_is_the_table_with_formulas_made_inert(warehouse_url):
    seed_days(warehouse_url)
    with get_engine(warehouse_url).connect() as conn:
        trends = read_trends(conn, 30, today=TODAY)
    rows = list(csv.DictReader(io.StringIO(trends_csv(trends))))
    assert list(rows[0]) == CSV_COLUMNS and len(rows) == len(trends.rows)
    (evil,) = [row for row in rows if "HYPERLINK" in row["source"]]
    assert evil["source"] == '\'=HYPERLINK("http://evil.example")'
    today = [row for row in rows if row["day"] == TODAY.isoformat() and row["source"] == "partner-feed"]
    assert today[0]["ai_share"] == "0.400000" and today[0]["images"] == "100"


# --- the page in the real api-server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(airflow_db, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui-trends")
    warehouse = f"sqlite:///{tmp / 'warehouse.db'}"
    seed_days(warehouse, today=date.today())
    with ui_api_server(tmp, warehouse) as base:
        yield base


def _token(base: str, user: str) -> dict:
    response = httpx.post(
        f"{base}/auth/token", json={"username": user, "password": PASSWORDS[user]}, timeout=30
    )
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_the_page_and_its_csv_are_behind_airflows_auth(server):
    url = f"{server}/image-audit/dags/{DAG_ID}/trends"
    for path in (url, url + ".csv"):
        anonymous = httpx.get(path, timeout=30)
        assert anonymous.status_code == 401 and "partner-feed" not in anonymous.text
        assert httpx.get(path, timeout=30, headers=_token(server, "outsider")).status_code == 403
    viewer = _token(server, "viewer")
    page = httpx.get(url, params={"days": 30}, timeout=30, headers=viewer)
    assert page.status_code == 200 and 'id="chart-ai-share"' in page.text and "partner-feed" in page.text
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    table = httpx.get(url + ".csv", params={"days": 30}, timeout=30, headers=viewer)
    assert table.status_code == 200 and table.headers["content-type"].startswith("text/csv")
    assert table.headers["content-disposition"].startswith('attachment; filename="audit-trends-')
    assert table.text.splitlines()[0] == ",".join(CSV_COLUMNS)
    assert httpx.get(url, params={"days": 0}, timeout=30, headers=viewer).status_code == 422


def test_the_api_lists_the_dag_tab(server):
    response = httpx.get(f"{server}/api/v2/plugins", timeout=30, headers=_token(server, "viewer"))
    (plugin,) = [p for p in response.json()["plugins"] if p["name"] == "image_audit"]
    (view,) = [v for v in plugin["external_views"] if v["destination"] == "dag"]
    assert {k: view[k] for k in TRENDS_VIEW} == TRENDS_VIEW


@pytest.mark.slow
@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_an_analyst_opens_the_dags_trends_tab(audit, warehouse_url, tmp_path):
    """A real run fills the model (its close_run), earlier days are seeded; the analyst logs in, opens the
    DAG and its "Audit trends" tab, and reads the charts and their tables."""
    from playwright.sync_api import expect

    chromium()
    audit.seed(12)
    assert audit.run(DAY).state == "success"
    seed_days(warehouse_url, 14, today=date.today() - timedelta(days=1))  # after the run's day (DAY)
    dag_page = f"/dags/{DAG_ID}"
    with ui_api_server(tmp_path, warehouse_url) as base, viewer_page(base, dag_page, 1000) as page:
        page.get_by_role("link", name="Audit trends", exact=True).click()
        page.wait_for_url(f"**{dag_page}/plugin/audit-trends*", wait_until="commit")
        frame = page.frame_locator("iframe")
        expect(frame.get_by_role("heading", level=1)).to_contain_text("Audit trends", timeout=60_000)
        expect(frame.locator("#chart-ai-share")).to_be_visible()
        expect(frame.locator("body")).to_contain_text("partner-feed")
        expect(frame.locator("body")).to_contain_text("40.0%")
        src = page.locator("iframe").get_attribute("src")
        assert src and src.endswith(f"/image-audit/dags/{quote(DAG_ID, safe='')}/trends")
        shot = tmp_path / "trends.png"
        page.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])
