"""Headless Chromium (Debian's) driven by Playwright, logged in to the Airflow UI as the browser tests'
viewer."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from image_audit_dev.screenshot import ChromiumNotFoundError, find_chromium
from tests.support.api_server import PASSWORDS


def chromium() -> str:
    """The Chromium binary; without one a test skips, or fails under CI (``./run test`` installs it)."""
    try:
        return find_chromium()
    except ChromiumNotFoundError:
        message = "Debian's chromium is needed: apt-get install -y chromium, or set IMAGE_AUDIT_CHROMIUM"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI always runs the browser tests)")
        pytest.skip(f"{message}; the browser tests run where chromium is found")


@contextlib.contextmanager
def viewer_page(base: str, path: str, height: int = 900) -> Iterator:
    """A browser page on the api-server at ``base``, logged in as "viewer" through Airflow's login form
    (which ``path`` sends an anonymous browser to) and back on ``path``."""
    from playwright.sync_api import sync_playwright

    binary = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.goto(base + path)
            page.get_by_label("Username").fill("viewer")
            page.get_by_label("Password").fill(PASSWORDS["viewer"])
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"**{path}*", timeout=60_000)
            yield page
        finally:
            browser.close()
