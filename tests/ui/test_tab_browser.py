"""What an analyst does in a browser: log in to Airflow, open a finished audit run, click "Audit report".

Debian's headless chromium driven by Playwright against a real ``airflow api-server`` (the plugin, the
SimpleAuthManager with a password) on the warehouse of a real run of the DAG. The tab must show that
run's report, inside the Airflow UI, from the plugin's page. ``IMAGE_AUDIT_UI_SCREENSHOT=<file.png>``
keeps the screenshot (the README's picture is made so).
"""

from __future__ import annotations

import os
import re
import shutil
from urllib.parse import quote

import pytest

from tests.support.api_server import ui_api_server
from tests.support.browser import chromium, viewer_page
from tests.support.factories import DAY

pytestmark = pytest.mark.slow
SCREENSHOT_ENV = "IMAGE_AUDIT_UI_SCREENSHOT"


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_an_analyst_logs_in_and_reads_the_runs_report_in_its_tab(audit, warehouse_url, tmp_path):
    from playwright.sync_api import expect

    chromium()
    audit.seed(12)
    run = audit.run(DAY)
    assert run.state == "success"
    images = audit.report(run.run_id)["summary"]["images"]
    run_page = f"/dags/image_catalog_audit/runs/{quote(run.run_id, safe='')}"
    with ui_api_server(tmp_path, warehouse_url) as base, viewer_page(base, run_page) as page:
        page.get_by_role("link", name="Audit report", exact=True).click()
        page.wait_for_url(re.compile(r".*/runs/[^/]+/plugin/audit-report$"), wait_until="commit")
        frame = page.frame_locator("iframe")
        # The run's own report, served by the plugin's page inside the UI
        expect(frame.get_by_role("heading", level=1)).to_contain_text("Image audit", timeout=60_000)
        expect(frame.locator("body")).to_contain_text(run.run_id)
        expect(frame.locator("body")).to_contain_text(f"{images}")
        src = page.locator("iframe").get_attribute("src")
        assert src and src.endswith(f"/image-audit/runs/image_catalog_audit/{quote(run.run_id, safe='')}")
        shot = tmp_path / "ui-tab.png"
        page.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000  # a page drawn, not a blank one
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])
