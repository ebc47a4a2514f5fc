"""The demo-like report rendered by Debian's headless Chromium: SVG charts and thumbnails drawn, not blank."""

from __future__ import annotations

import base64
import io
import zlib
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import numpy as np
import pytest
from fastapi import FastAPI, Response
from PIL import Image

from image_audit.reporting import build_run_report
from image_audit.warehouse.engine import get_engine
from image_audit_dev.screenshot import dump_dom, screenshot
from image_audit_dev.servers import BackgroundServer
from tests.support import browser
from tests.support.reports import DAG_ID, R2, demo_scans, image_png, insert_report_row, insert_report_scans

IMAGE_SIZE = (480, 360)
MISSING_IMAGE = "img-0007"


def _image_server() -> FastAPI:
    """Serves generated pictures; one of them is missing (404), so a placeholder is drawn."""
    app = FastAPI()

    @app.get("/img/{name}")
    def image(name: str) -> Response:
        image_id = name.removesuffix(".png")
        if image_id == MISSING_IMAGE:
            return Response(status_code=404)
        return Response(image_png(*IMAGE_SIZE, seed=zlib.crc32(name.encode())), media_type="image/png")

    return app


def seed_demo(engine, url_base: str) -> None:
    scans = demo_scans()
    scans[7].state, scans[7].ai, scans[7].error = "completed", 0.999, None  # the missing one is on top
    insert_report_scans(
        engine, scans, url_base=url_base, width=IMAGE_SIZE[0], height=IMAGE_SIZE[1], blobs=True
    )
    for days, share in enumerate([0.11, 0.14, 0.09, 0.16, 0.13, 0.18, 0.15][::-1], start=1):
        end = datetime(2026, 11, 22, tzinfo=UTC) - timedelta(days=days)
        summary = {
            "images": 110 + days,
            "completed": 100,
            "ai_generated": round(share * 100),
            "partly_ai": 12,
            "human": 88 - round(share * 100),
            "failed": 3,
            "timed_out": 1,
            "rejected": 4,
            "ai_share": share,
            "flagged_share": share + 0.12,
            "credits_actual": 104,
        }
        insert_report_row(engine, DAG_ID, f"scheduled__{end.isoformat()}", end, summary)


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[dict] = []
        self.charts: list[dict] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        if tag == "svg":
            self.charts.append(dict(attrs))


@pytest.fixture(scope="module")
def chromium() -> str:
    return browser.chromium()


def test_report_renders_in_headless_chromium(chromium, sqlite_warehouse_url, tmp_path):
    engine = get_engine(sqlite_warehouse_url)
    with BackgroundServer(_image_server()) as server:
        seed_demo(engine, server.url)
        report = build_run_report(engine, DAG_ID, R2, out_dir=tmp_path / "report")  # default HTTP fetch

    html_file = tmp_path / "report" / "report.html"  # Chromium opens the local file report.html_path names
    assert report.uris["html_path"] == f"file://{html_file}"
    dom = _Images()
    dom.feed(dump_dom(html_file))
    charts = [i for i in dom.charts if i.get("class") == "chart"]
    thumbnails = [i for i in dom.images if i.get("class") == "thumbnail"]
    assert {chart["id"] for chart in charts} == {
        f"chart-{key}"
        for key in ("states", "verdicts", "histogram", "by-source", "by-day", "trend", "source-trend")
    }
    assert len(charts) == 7 and len(thumbnails) == 12
    for chart in charts:  # inline SVG, parsed by the browser as such, with its accessible name
        assert chart["role"] == "img" and chart["aria-labelledby"].endswith("-desc")
        assert float(chart["width"]) > 50 and float(chart["height"]) > 50
    for image in thumbnails:
        assert image["src"].startswith(("data:image/png;base64,", "data:image/jpeg;base64,"))
        with Image.open(io.BytesIO(base64.b64decode(image["src"].split(",", 1)[1]))) as decoded:
            assert decoded.width > 50 and decoded.height > 50
    assert thumbnails[0]["alt"].startswith(MISSING_IMAGE)  # drawn as a placeholder, the report still built

    png = screenshot(html_file, tmp_path / "report.png", window=(1280, 2400))
    with Image.open(png) as shot:
        assert shot.size == (1280, 2400)
        pixels = np.asarray(shot.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20  # not a blank page
    # the red of the AI-generated bars and tints, and the green of the human ones, are on screen
    red = (pixels[..., 0] > 190) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    green = (pixels[..., 1] > 130) & (pixels[..., 0] < 60) & (pixels[..., 2] < 100)
    assert red.sum() > 500 and green.sum() > 500
