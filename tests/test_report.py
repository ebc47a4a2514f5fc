"""The run report against hand-computed aggregates of a fixed set of scans (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import io
import math
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sqlalchemy import func, select, update

from copyleaks_provider.models import decode_rle_mask
from image_audit.planning.window import DEFERRED_BY_BUDGET, DEFERRED_BY_WINDOW
from image_audit.reporting import RunReport, Thresholds, build_run_report, exports
from image_audit.reporting import report as report_module
from image_audit.reporting.backlog import backlog_summary, describe_backlog
from image_audit.reporting.exports import EXPORT_COLUMNS, redact_url
from image_audit.reporting.overlays import TINT_ALPHA, TINT_COLOR, overlay_thumbnail, scale_mask, tint
from image_audit.reporting.overlays import placeholder as make_placeholder
from image_audit.reporting.report import safe_run_id
from image_audit.reporting.verdicts import Verdict, verdict_of
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import audit_reports, audit_results, audit_scans
from tests.test_report_fixtures import (
    D1,
    D2,
    DAG_ID,
    EXPECTED,
    HEIGHT,
    R1,
    R2,
    WIDTH,
    Scan,
    image_png,
    insert_report_row,
    insert_scans,
    mask_for,
    r1_scans,
    r2_scans,
)

R0 = "scheduled__2026-11-20T00:00:00+00:00"
SVG = "{http://www.w3.org/2000/svg}"


class _Fetcher:
    """``fetch_image`` for the tests: generated PNGs by URL; image ``a`` is unreachable."""

    def __init__(self):
        self.urls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        if "/img/a.png" in url:
            raise ConnectionError("unreachable")
        return image_png(WIDTH, HEIGHT, seed=len(self.urls))


def _seed(engine) -> None:
    insert_scans(engine, r1_scans())
    insert_scans(engine, r2_scans())
    old = {"images": 5, "completed": 4, "ai_generated": 1, "partly_ai": 1, "human": 2, "failed": 1}
    insert_report_row(
        engine, DAG_ID, R0, datetime(2026, 11, 20, tzinfo=UTC), old | {"ai_share": 0.25, "flagged_share": 0.5}
    )
    insert_report_row(engine, "other_dag", "x", datetime(2026, 11, 21, tzinfo=UTC), {"ai_share": 0.9})
    insert_report_row(engine, DAG_ID, "later", datetime(2026, 11, 30, tzinfo=UTC), {"ai_share": 0.9})


@pytest.fixture
def reports(warehouse_url, tmp_path) -> tuple[RunReport, RunReport, _Fetcher]:
    engine = get_engine(warehouse_url)
    _seed(engine)
    first = build_run_report(engine, DAG_ID, R1, out_dir=tmp_path / "r1", fetch_image=_Fetcher())
    fetcher = _Fetcher()
    second = build_run_report(
        engine, DAG_ID, R2, out_dir=tmp_path / "r2", rolling_runs=3, top_n=3, fetch_image=fetcher
    )
    return first, second, fetcher


def test_states_verdicts_credits_and_histogram_match_hand_counts(reports):
    _, report, _ = reports
    summary = report.summary
    assert summary["states"] == EXPECTED["states"]
    assert summary["verdicts"] == EXPECTED["verdicts"]
    assert summary["images"] == EXPECTED["images"] == sum(summary["states"].values())
    assert summary["scan_rows"] == EXPECTED["scan_rows"]
    assert summary["rejected_rows"] == EXPECTED["rejected_rows"]
    assert summary["credits"] == EXPECTED["credits"]
    assert (summary["credits_expected"], summary["credits_actual"]) == (16, 12)
    counts = summary["histogram"]["counts"]
    assert len(counts) == 20
    assert {i: n for i, n in enumerate(counts) if n} == EXPECTED["histogram"]
    by_verdict = summary["histogram"]["by_verdict"]
    assert {i: n for i, n in enumerate(by_verdict["partly_ai"]) if n} == {
        2: 1,
        4: 1,
        10: 1,
        17: 1,
    }  # f, d, h, c
    assert {i: n for i, n in enumerate(by_verdict["human"]) if n} == {0: 1, 3: 1}  # g, e
    assert summary["ai_share"] == pytest.approx(4 / 10)
    assert summary["flagged_share"] == pytest.approx(8 / 10)
    ai_values = [0.95, 0.90, 0.8999, 0.20, 0.1999, 0.10, 0.0, 0.5, 0.97, 1.0]
    assert summary["mean_ai"] == pytest.approx(sum(ai_values) / 10)
    # the XCom-friendly scalars the DAG passes on
    assert (summary["completed"], summary["rejected"], summary["ai_generated"]) == (10, 3, 4)
    assert summary["data_interval_end"].startswith("2026-11-22T00:00:00")


def test_breakdowns_per_source_and_day(reports):
    _, report, _ = reports
    by_source = report.summary["by_source"]
    assert list(by_source) == ["shop", "blog", "(no source)"]  # most images first
    assert by_source["shop"] == {
        "images": 8, "completed": 5, "ai_generated": 3, "partly_ai": 2, "human": 0,
        "failed": 1, "timed_out": 0, "rejected": 1, "ai_share": pytest.approx(3 / 5),
    }  # fmt: skip
    assert by_source["blog"] == {
        "images": 6, "completed": 4, "ai_generated": 1, "partly_ai": 2, "human": 1,
        "failed": 0, "timed_out": 1, "rejected": 0, "ai_share": pytest.approx(1 / 4),
    }  # fmt: skip
    assert by_source["(no source)"] == {
        "images": 3, "completed": 1, "ai_generated": 0, "partly_ai": 0, "human": 1,
        "failed": 0, "timed_out": 0, "rejected": 2, "ai_share": 0.0,
    }  # fmt: skip
    by_day = report.summary["by_day"]
    # 23:30 UTC on the 20th stays the 20th whatever the database session's time zone
    assert list(by_day) == ["2026-11-20", "2026-11-21"]
    assert {
        k: by_day["2026-11-20"][k] for k in ("images", "completed", "ai_generated", "partly_ai", "human")
    } == {"images": 10, "completed": 5, "ai_generated": 2, "partly_ai": 2, "human": 1}
    assert {
        k: by_day["2026-11-21"][k] for k in ("images", "completed", "ai_generated", "partly_ai", "human")
    } == {"images": 7, "completed": 5, "ai_generated": 2, "partly_ai": 2, "human": 1}


def test_trend_rolling_view_and_report_rows(reports, warehouse_url):
    first, report, _ = reports
    assert first.summary["images"] == 2 and first.summary["ai_share"] == 1.0
    # rolling view: R0 (a report row without scans), R1, R2; each image counted once over the runs
    # (e timed out in R1 and completed in R2; "later" and "other_dag" are out of scope)
    assert report.summary["rolling"]["runs"] == 3
    assert report.summary["rolling"]["states"] == {
        "pending": 1, "submitted": 1, "completed": 11, "failed": 1, "timed_out": 1, "rejected": 3,
    }  # fmt: skip
    assert report.summary["rolling"]["verdicts"] == {"ai_generated": 5, "partly_ai": 4, "human": 2}
    html = report.html_path.read_text()
    trend_section = html[html.index("<h2>Last 3 runs</h2>") :]
    positions = [trend_section.index(f"<code>{run}</code>") for run in (R2, R1, R0)]
    assert positions == sorted(positions)  # newest first in the table
    assert "<code>later</code>" not in trend_section and "<code>x</code>" not in trend_section
    assert "25.0%" in trend_section and "100.0%" in trend_section and "40.0%" in trend_section
    engine = get_engine(warehouse_url)
    with engine.connect() as conn:
        row = conn.execute(
            select(audit_reports).where(audit_reports.c.dag_id == DAG_ID, audit_reports.c.run_id == R2)
        ).one()
    assert row.summary["verdicts"] == EXPECTED["verdicts"]
    # the row carries the files' URIs (file:// here; s3:// in tests/test_report_storage.py)
    assert (row.html_path, row.csv_path, row.parquet_path) == tuple(report.uris.values())
    assert row.html_path == f"file://{report.html_path.path}" and row.html_path.endswith("/r2/report.html")
    # rebuilding replaces the row, never adds one
    build_run_report(engine, DAG_ID, R2, out_dir=report.html_path.parent, top_n=0, fetch_image=_Fetcher())
    with engine.connect() as conn:
        count = conn.execute(
            select(func.count()).select_from(audit_reports).where(audit_reports.c.run_id == R2)
        ).scalar_one()
    assert count == 1


def test_exports_round_trip_one_row_per_image(reports):
    _, report, _ = reports
    with report.csv_path.open("rb") as csv_file, report.parquet_path.open("rb") as parquet_file:
        csv = pd.read_csv(csv_file, keep_default_na=False, na_values=[""], dtype={"image_id": str})
        parquet = pd.read_parquet(parquet_file)
    assert list(csv.columns) == list(parquet.columns) == EXPORT_COLUMNS
    assert len(csv) == len(parquet) == EXPECTED["images"]
    assert parquet["scan_id"].is_unique
    verdicts = parquet.dropna(subset=["verdict"]).set_index("image_id")["verdict"].to_dict()
    assert verdicts == EXPECTED["verdict_by_image"]
    by_id = parquet.set_index("scan_id")
    assert by_id.loc["h-2-r2", "attempts"] == 2 and by_id.loc["i-2-r2", "ai"] == 0.97
    assert by_id.loc["k-2-r2", "state"] == "timed_out" and "rej-dup-a" not in by_id.index
    assert by_id.loc["f-1-r2", "mask_area"] == 0.05
    assert by_id.loc["a-1-r2", "app_or_device"] == "app-0"
    assert str(parquet["ingested_at"].dtype) == "datetime64[us, UTC]"
    assert by_id.loc["d-1-r2", "ingested_at"] == pd.Timestamp(D1)
    assert not parquet["url"].str.contains("signature").any()  # query strings (signatures) dropped
    assert sorted(csv["scan_id"]) == sorted(parquet["scan_id"])
    assert csv.set_index("scan_id").loc["e-2-r2", "ai"] == 0.1999
    assert csv.set_index("scan_id").loc["j-1-r2", "last_error"].startswith("image too small")


class _Assets(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.images: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href", "xlink:href", "srcset", "poster", "data"):
            if attrs.get(name):
                self.urls.append((tag, name, attrs[name]))
        if tag == "img":
            self.images.append(attrs)


def svg_charts(html: str) -> dict[str, ElementTree.Element]:
    """The report's inline SVG charts by id, parsed as XML (each must be well-formed)."""
    blocks = re.findall(r'<svg class="chart".*?</svg>', html, flags=re.S)
    charts = {}
    for block in blocks:
        element = ElementTree.fromstring(block)  # noqa: S314 (the report under test, not untrusted)
        charts[element.get("id")] = element
    assert len(charts) == len(blocks), "chart ids are unique"
    return charts


def _svg_text(element: ElementTree.Element, tag: str) -> list[str]:
    return ["".join(e.itertext()) for e in element.iter(f"{SVG}{tag}")]


def test_html_is_self_contained_and_holds_no_secrets(reports):
    _, report, fetcher = reports
    html = report.html_path.read_text()
    parser = _Assets()
    parser.feed(html)
    assert parser.urls, "the report embeds its thumbnails"
    assert all(value.startswith("data:image/") for _, _, value in parser.urls), parser.urls
    assert "url(" not in html.split("</style>")[0].split("<style>")[1]  # no CSS assets either
    assert "<script" not in html and "<link" not in html
    thumbnails = [i for i in parser.images if i.get("class") == "thumbnail"]
    assert len(thumbnails) == 3
    charts = svg_charts(html)
    assert set(charts) == {
        f"chart-{key}" for key in ("states", "verdicts", "histogram", "by-source", "by-day", "trend")
    }
    for key, chart in charts.items():  # accessible: a role, a title and a description, referenced
        assert chart.get("role") == "img"
        assert chart.get("aria-labelledby") == f"{key}-title {key}-desc"
        assert chart.find(f"{SVG}title").get("id") == f"{key}-title" and _svg_text(chart, "title")[0]
        assert chart.find(f"{SVG}desc").get("id") == f"{key}-desc" and _svg_text(chart, "desc")[0]
        assert float(chart.get("width")) > 100 and float(chart.get("height")) > 100
        tags = {element.tag.removeprefix(SVG) for element in chart.iter()}
        assert not {"use", "image", "foreignObject", "script", "style", "a"} & tags  # no SVG assets either
        assert not any("href" in name for element in chart.iter() for name in element.attrib)
    for image in thumbnails:
        payload = base64.b64decode(image["src"].split(",", 1)[1])
        with Image.open(io.BytesIO(payload)) as decoded:
            assert decoded.width > 0 and decoded.height > 0
    # the top 3 by AI proportion, in order; a's image failed to fetch and shows a placeholder
    assert [t["alt"].split(" ")[0] for t in thumbnails] == EXPECTED["top3"]
    assert sorted(u.split("/img/")[1].split("?")[0] for u in fetcher.urls) == ["a.png", "i.png", "o.png"]
    assert html.count("image unavailable") == 1
    for secret in ("signature=", "secret-token", "dp-secret-never-rendered"):
        assert secret not in html
    for reason in ("missing image id", "duplicate image id in this interval", "image too small"):
        assert reason in html


def test_thresholds_are_configurable(warehouse_url, tmp_path):
    engine = get_engine(warehouse_url)
    insert_scans(engine, r2_scans())
    report = build_run_report(
        engine,
        DAG_ID,
        R2,
        out_dir=tmp_path,
        thresholds=Thresholds(ai_generated=0.95, partly_ai=0.5, min_mask_area=None),
        top_n=0,
    )
    # ai_generated: a .95, i .97, o 1.0; partly: b .90, c .8999, h .5; human: d .2, e .1999, f .1, g 0
    assert report.summary["verdicts"] == {"ai_generated": 3, "partly_ai": 3, "human": 4}
    assert report.summary["thresholds"] == {"ai_generated": 0.95, "partly_ai": 0.5, "min_mask_area": None}


def test_empty_run_still_reports(sqlite_warehouse_url, tmp_path):
    report = build_run_report(get_engine(sqlite_warehouse_url), DAG_ID, "manual__nothing", out_dir=tmp_path)
    assert report.summary["images"] == 0 and report.summary["ai_share"] is None
    assert "No completed images in this run." in report.html_path.read_text()
    with report.csv_path.open("rb") as csv_file, report.parquet_path.open("rb") as parquet_file:
        assert pd.read_parquet(parquet_file).columns.tolist() == EXPORT_COLUMNS
        assert pd.read_csv(csv_file).empty


def test_default_out_dir_is_per_dag_and_safe_run_id(sqlite_warehouse_url, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGE_AUDIT_REPORTS_DIR", str(tmp_path))
    run_id = "manual__2026-11-24T10:00:00+00:00"
    report = build_run_report(get_engine(sqlite_warehouse_url), DAG_ID, run_id)
    assert report.uris["html_path"] == f"file://{tmp_path / DAG_ID / safe_run_id(run_id) / 'report.html'}"
    assert (tmp_path / DAG_ID / safe_run_id(run_id) / "results.parquet").is_file()
    assert ":" not in safe_run_id(run_id) and "+" not in safe_run_id(run_id)
    assert safe_run_id(run_id) != safe_run_id(run_id.replace(":", "_"))
    assert safe_run_id("plain_run-1") == "plain_run-1"


@pytest.mark.parametrize(
    ("ai", "mask_area", "expected"),
    [
        (0.9, 0.9, Verdict.AI_GENERATED),
        (math.nextafter(0.9, 0), 0.9, Verdict.PARTLY_AI),
        (0.2, 0.2, Verdict.PARTLY_AI),
        (math.nextafter(0.2, 0), 0.0, Verdict.HUMAN),
        (0.01, 0.05, Verdict.PARTLY_AI),
        (0.01, math.nextafter(0.05, 0), Verdict.HUMAN),
    ],
)
def test_verdict_rule_edges(ai, mask_area, expected):
    assert verdict_of(ai, mask_area, Thresholds()) is expected


def test_thresholds_must_be_ordered():
    with pytest.raises(ValueError, match="partly_ai"):
        Thresholds(ai_generated=0.3, partly_ai=0.5)


def test_tint_changes_exactly_the_mask_pixels():
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    mask = mask_for(333, seed=11)
    out = np.asarray(tint(Image.fromarray(pixels, "RGB"), mask))
    expected = np.rint((1 - TINT_ALPHA) * pixels.astype(float) + TINT_ALPHA * np.array(TINT_COLOR))
    assert np.array_equal(out[mask], expected[mask].astype(np.uint8))
    assert np.array_equal(out[~mask], pixels[~mask])
    changed = (out != pixels).any(axis=2)
    assert np.array_equal(changed, mask)


def test_overlay_thumbnail_tints_the_decoded_mask(sqlite_warehouse_url):
    engine = get_engine(sqlite_warehouse_url)
    insert_scans(engine, r2_scans())
    with engine.connect() as conn:
        row = conn.execute(select(audit_results).where(audit_results.c.scan_id == "h-2-r2")).one()
    mask = decode_rle_mask(row.mask_starts, row.mask_lengths, row.height, row.width)
    assert mask.sum() == 1000  # ai 0.5 of 2,000 pixels
    png = image_png(WIDTH, HEIGHT, seed=3)
    original = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    thumbnail, drawn = overlay_thumbnail(png, mask)
    assert drawn and thumbnail.size == (WIDTH, HEIGHT)
    out = np.asarray(thumbnail)
    assert np.array_equal((out != original).any(axis=2), mask)
    placeholder, drawn = overlay_thumbnail(b"not an image", mask)
    assert not drawn and placeholder.size == (WIDTH, HEIGHT)
    untinted = np.asarray(make_placeholder((WIDTH, HEIGHT)))
    assert np.array_equal((np.asarray(placeholder) != untinted).any(axis=2), mask)


def test_large_masks_are_scaled_to_the_thumbnail_keeping_small_regions():
    mask = np.zeros((800, 1000), dtype=bool)
    mask[100:103, 200:203] = True  # 9 pixels: far less than one thumbnail cell
    mask[400:800, 500:1000] = True
    png = image_png(1000, 800, seed=5)
    thumbnail, drawn = overlay_thumbnail(png, mask)
    assert drawn and thumbnail.size == (360, 288)
    scaled = scale_mask(mask, (360, 288))
    assert scaled[36:38, 72:74].any()  # the tiny region stays visible
    assert scaled[150:, 181:].all() and not scaled[:30].any()
    base = np.asarray(overlay_thumbnail(png, np.zeros_like(mask))[0])
    assert np.array_equal((np.asarray(thumbnail) != base).any(axis=2), scaled)


def test_redact_url_drops_credentials_and_query():
    assert redact_url("https://user:pw@cdn.example.com:8443/a/b.png?X-Amz-Signature=abc#f") == (
        "https://cdn.example.com:8443/a/b.png"
    )
    assert redact_url(None) is None


def test_plain_urls_are_redacted_as_urlsplit_does():
    urls = [
        "https://cdn.example.com/catalog/img-1.jpg?sig=abc",
        "https://cdn.example.com/a/b.png#frag?x",
        "https://cdn.example.com",
        "https://cdn.example.com?x=1",
        "https://cdn.example.com//double/slash.png",
        "http://Cdn.Example.com/Upper.png?x",  # a host urlsplit lower-cases
        "HTTPS://cdn.example.com/a.png",
        "https://user:pw@cdn.example.com:8443/a.png?X-Amz-Signature=abc",
        "https://cdn.example.com:0/a.png",
        "https://[::1]:8080/a.png",
        " https://cdn.example.com/lead.png",
        "https://cdn.example.com/tab\there.png",
        "https://cdn.example.com/space here.png?q",
        "ftp://files.example.com/pic.jpg",
        "not a url",
        "",
        None,
    ]
    assert exports._redacted_url_array(urls).to_pylist() == [redact_url(url) for url in urls]
    plain = ["https://cdn.example.com/catalog/img-1.jpg?sig=abc", None, "https://cdn.example.com/a.png"]
    assert exports._redacted_url_array(plain).to_pylist() == [redact_url(url) for url in plain]


def test_mask_pixels_sum_each_masks_lengths():
    masks = [None, "[]", "[5]", "[1, 2, 3]", "[1,2,3]", None, "[ 7 ]", "[100000, 1]"]
    assert exports.mask_pixels(masks) == [None, 0, 5, 6, 6, None, 7, 100001]
    assert exports.mask_pixels(masks, batch=2) == exports.mask_pixels(masks)
    # anything but a plain array of integers goes through json, as the database summed it
    assert exports.mask_pixels(["[1, 2]", "[1.5, 2]", "[-1, 4]"]) == [3, 3.5, 3]
    assert exports.mask_pixels([None, None]) == [None, None]


def _export_chunk(rows: list[dict]) -> dict[str, list]:
    """Rows as ``aggregates.iter_image_rows`` gives them (SQLite's timestamps as text)."""
    defaults = {
        "image_id": "img",
        "scan_id": "s",
        "attempt": 1,
        "attempts": 1,
        "state": "completed",
        "verdict": "human",
        "ai": 0.0,
        "human": 1.0,
        "mask_pixels": None,
        "mask_lengths": "[]",
        "width": 50,
        "height": 40,
        "model": "ai-image-1-ultra-01-09-2025",
        "source": "shop",
        "file_name": "a.png",
        "url": "https://cdn.example.com/a.png?sig=1",
        "ingested_at": "2026-11-20 23:30:00.000000",
        "ingest_day": "2026-11-20",
        "submitted_at": "2026-11-22 01:00:00.250000",
        "received_at": "2026-11-22 01:05:00",
        "actual_credits": 1,
        "expected_credits": 1,
        "sandbox": False,
        "issued_by": None,
        "app_or_device": None,
        "last_error": None,
        "run_id": R2,
    }
    full = [defaults | row for row in rows]
    return {name: [row[name] for row in full] for name in defaults}


def test_export_csv_is_what_pandas_wrote(tmp_path):
    """The CSV is written by Arrow (or ``csv`` when a value needs quoting) yet reads byte for byte as
    ``DataFrame.to_csv`` of the same rows wrote it before."""
    failed = {"state": "failed", "verdict": None, "ai": None, "human": None, "mask_lengths": None}
    no_result = {"width": None, "height": None, "received_at": None, "actual_credits": None}
    plain = _export_chunk(
        [
            {"scan_id": "s1", "ai": 1.0, "human": 0.0, "mask_lengths": "[2000]", "sandbox": True},
            {"scan_id": "s2", "ai": 0.1 + 0.2, "human": 1e-05, "mask_lengths": "[1, 2, 3]", "issued_by": "C"},
            {"scan_id": "s3", **failed, **no_result, "last_error": "gone"},
            {"scan_id": "s4", "url": "https://u:p@Host.example.com:8443/x.png?sig=2", "source": None},
        ]
    )
    quoted = _export_chunk(
        [
            {"scan_id": "s5", "last_error": 'bad, "quoted"\nreason', "file_name": "a,b.png"},
            {"scan_id": "s6", "ai": 0.5, "mask_lengths": "[1.5, 2]", "url": None},
        ]
    )
    stored = _export_chunk(  # rows whose mask_pixels was stored: their lengths are not read
        [
            {"scan_id": "s7", "mask_pixels": 1000, "mask_lengths": None},
            {"scan_id": "s8", "mask_pixels": 0, "mask_lengths": None},
        ]
    )
    csv_file, parquet_file = tmp_path / "r.csv", tmp_path / "r.parquet"
    assert exports.write_exports([plain, quoted, stored], csv_file, parquet_file) == 8
    frame = pd.read_parquet(parquet_file)
    assert list(frame.columns) == EXPORT_COLUMNS
    assert frame["mask_area"].tolist()[:2] == [1.0, 6 / 2000] and math.isnan(frame["mask_area"][2])
    assert frame["mask_area"].tolist()[5:] == [3.5 / 2000, 0.5, 0.0]
    assert frame["url"].tolist()[3] == "https://host.example.com:8443/x.png"
    for column in ("attempt", "attempts", "width", "height", "actual_credits", "expected_credits"):
        frame[column] = frame[column].astype("Int64")
    frame["sandbox"] = frame["sandbox"].astype("boolean")
    expected = frame.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
    assert csv_file.read_text() == expected


def _bars(chart: ElementTree.Element) -> list[tuple[str, float, float]]:
    """Each bar of a chart: its tooltip, width and height."""
    return [
        ("".join(r.find(f"{SVG}title").itertext()), float(r.get("width")), float(r.get("height")))
        for r in chart.iter(f"{SVG}rect")
        if r.find(f"{SVG}title") is not None
    ]


def test_svg_charts_draw_the_reports_figures(reports):
    """The inline charts show the summary's figures: one bar per count, lengths in proportion (to the
    0.1 px the coordinates are written with)."""
    _, report, _ = reports
    summary = report.summary
    charts = svg_charts(report.html_path.read_text())

    states = {tip.split(": ")[0]: (int(tip.split(": ")[1]), w) for tip, w, _ in _bars(charts["chart-states"])}
    assert {k: v[0] for k, v in states.items()} == {
        k.replace("_", " "): n for k, n in EXPECTED["states"].items()
    }
    assert states["completed"][1] == pytest.approx(10 * states["failed"][1], rel=0.01)
    assert states["pending"][1] == pytest.approx(states["failed"][1], rel=0.01)
    verdicts = {tip: w for tip, w, _ in _bars(charts["chart-verdicts"])}
    assert set(verdicts) == {"AI-generated: 4", "Partly AI: 4", "Human: 2"}
    assert verdicts["Human: 2"] == pytest.approx(verdicts["AI-generated: 4"] / 2, rel=0.01)

    buckets: dict[int, int] = {}
    heights: dict[int, float] = {}
    for tip, _, height in _bars(charts["chart-histogram"]):  # "AI proportion 95\u2013100%: AI-generated 3"
        span, figure = tip.removeprefix("AI proportion ").split(": ")
        index = int(span.split("\u2013")[0]) // 5
        buckets[index] = buckets.get(index, 0) + int(figure.rsplit(" ", 1)[1])
        heights[index] = heights.get(index, 0.0) + height
    assert (
        buckets == EXPECTED["histogram"] == {i: n for i, n in enumerate(summary["histogram"]["counts"]) if n}
    )
    assert heights[19] == pytest.approx(3 * heights[0], rel=0.01)
    desc = _svg_text(charts["chart-histogram"], "desc")[0]
    assert "partly AI ≥ 0.2" in desc and "AI-generated ≥ 0.9" in desc

    per_source: dict[str, int] = {}
    for tip, _, _ in _bars(charts["chart-by-source"]):  # "shop: Partly AI 2"
        name, part = tip.rsplit(": ", 1)
        per_source[name] = per_source.get(name, 0) + int(part.rsplit(" ", 1)[1])
    assert per_source == {name: row["images"] for name, row in summary["by_source"].items()}
    per_day = {tip.rsplit(": ", 1)[0] for tip, _, _ in _bars(charts["chart-by-day"])}
    assert per_day == set(summary["by_day"])

    points = ["".join(c.itertext()) for c in charts["chart-trend"].iter(f"{SVG}circle") if len(c)]
    assert f"AI-generated {summary['ai_share'] * 100:.1f}%" in points[-1]  # the current run, last
    assert any("AI-generated 25.0%" in point for point in points)  # R0's stored share


def test_only_the_masks_shown_are_decoded(sqlite_warehouse_url, tmp_path, monkeypatch):
    engine = get_engine(sqlite_warehouse_url)
    insert_scans(engine, r2_scans())
    decoded = []

    def decode(starts, lengths, height, width):
        decoded.append((len(starts), height, width))
        return decode_rle_mask(starts, lengths, height, width)

    monkeypatch.setattr(report_module, "decode_rle_mask", decode)
    report = build_run_report(engine, DAG_ID, R2, out_dir=tmp_path, top_n=3, fetch_image=_Fetcher())
    assert len(decoded) == 3 and report.summary["completed"] == 10


def _report_files(report: RunReport) -> dict:
    """What a report wrote, but its generation time: the summary, the CSV, the Parquet rows, the HTML."""
    html = re.sub(r"generated [^<]* UTC", "generated (time) UTC", report.html_path.read_text())
    summary = {key: value for key, value in report.summary.items() if key != "generated_at"}
    return {
        "summary": summary,
        "csv": report.csv_path.read_text(),
        "parquet": report.parquet_path.read_bytes(),
        "html": html,
    }


def test_results_stored_without_mask_pixels_report_the_same(warehouse_url, tmp_path):
    """Results stored before ``mask_pixels`` existed (NULL, not back-filled) have their masks summed
    instead: the report, its exports and its thumbnails are those of the stored counts."""
    engine = get_engine(warehouse_url)
    _seed(engine)

    def build(name: str) -> dict:
        report = build_run_report(
            engine, DAG_ID, R2, out_dir=tmp_path / name, rolling_runs=3, top_n=3, fetch_image=_Fetcher()
        )
        return _report_files(report)

    stored = build("stored")
    with engine.connect() as conn:
        r = audit_results.c
        pixels = dict(conn.execute(select(r.scan_id, r.mask_pixels)).all())
        assert pixels and None not in pixels.values()
    some = sorted(pixels)[::2]
    with engine.begin() as conn:
        conn.execute(update(audit_results).where(r.scan_id.in_(some)).values(mask_pixels=None))
    assert build("some-null") == stored
    with engine.begin() as conn:
        conn.execute(update(audit_results).values(mask_pixels=None))
    assert build("all-null") == stored
    mask_area = pd.read_parquet(io.BytesIO(stored["parquet"]))["mask_area"]
    assert mask_area.notna().sum() == stored["summary"]["completed"]

    # A stored count is read instead of the mask: zero pixels stored, zero area reported.
    with engine.begin() as conn:
        conn.execute(update(audit_results).values(mask_pixels=0))
    zeroed = build("zero")
    frame = pd.read_parquet(io.BytesIO(zeroed["parquet"])).set_index("image_id")
    assert frame["mask_area"].dropna().eq(0.0).all() and frame["mask_area"].notna().sum() == len(
        mask_area.dropna()
    )
    assert frame.loc["f", "verdict"] == "human"  # its 5 % mask made it partly AI
    assert zeroed["summary"]["verdicts"]["partly_ai"] == stored["summary"]["verdicts"]["partly_ai"] - 1


def test_run_without_results_and_explicit_interval(sqlite_warehouse_url, tmp_path):
    engine = get_engine(sqlite_warehouse_url)
    insert_scans(engine, [s for s in r2_scans() if s.state in ("rejected", "failed")])
    interval = (datetime(2026, 11, 21, tzinfo=UTC), datetime(2026, 11, 22, tzinfo=UTC))
    report = build_run_report(engine, DAG_ID, R2, out_dir=tmp_path, data_interval=interval)
    # l, the two rows without an id, and a (its only row here is the duplicate rejection)
    assert report.summary["states"]["rejected"] == 4 and report.summary["states"]["failed"] == 1
    assert report.summary["verdicts"] == {"ai_generated": 0, "partly_ai": 0, "human": 0}
    assert report.summary["by_source"]["shop"]["rejected"] == 2
    assert report.summary["data_interval_start"] == "2026-11-21T00:00:00+00:00"
    assert "None: every image was scanned." not in report.html_path.read_text()


def test_a_mask_that_does_not_fit_never_fails_the_report(sqlite_warehouse_url, tmp_path):
    engine = get_engine(sqlite_warehouse_url)
    insert_scans(engine, r2_scans())
    with engine.begin() as conn:
        conn.execute(
            audit_results.update()
            .where(audit_results.c.scan_id == "o-1-r2")
            .values(mask_starts=[1999], mask_lengths=[5], mask_pixels=5)
        )
    report = build_run_report(engine, DAG_ID, R2, out_dir=tmp_path, top_n=2, fetch_image=_Fetcher())
    assert report.html_path.read_text().count('class="thumbnail"') == 2


# --- the backlog: scans waiting for later runs --------------------------------------------------------


def _seed_backlog(engine) -> None:
    """R2's scans (``n`` is pending, released unsent) plus scans the caps deferred, in R1 and R2."""
    window = f"{DEFERRED_BY_WINDOW} of 201139 submissions is full"
    budget = f"{DEFERRED_BY_BUDGET} of 100 credits is spent"
    insert_scans(engine, r2_scans())
    insert_scans(
        engine,
        [
            *[Scan(f"w{i}", "shop", D1, "pending", error=window, run_id=R1) for i in range(3)],
            *[Scan(f"v{i}", "blog", D2, "pending", error=window) for i in range(4)],
            Scan("b0", "shop", D1, "pending", error=budget, run_id=R1),
            Scan("b1", "shop", D2, "pending", error=budget),
            Scan("in-batch", "shop", D2, "pending"),  # being submitted: not waiting
            Scan("elsewhere", "shop", D2, "pending", error=window),  # another DAG's
        ],
    )
    with engine.begin() as conn:
        conn.execute(
            update(audit_scans).where(audit_scans.c.scan_id == "in-batch-1-r2").values(batch_id="b1")
        )
        conn.execute(
            update(audit_scans).where(audit_scans.c.scan_id == "elsewhere-1-r2").values(dag_id="other_dag")
        )


def test_backlog_and_when_it_clears_at_the_accounts_rate(warehouse_url, tmp_path):
    engine = get_engine(warehouse_url)
    _seed_backlog(engine)
    report = build_run_report(
        engine, DAG_ID, R2, out_dir=tmp_path, top_n=0, requests_per_second=10, window_minutes=360
    )
    backlog = report.summary["backlog"]
    assert backlog == {
        "scans": 10,
        "by_reason": {"window": 7, "budget": 2, "unsent": 1},
        "requests_per_second": 10,
        "window_minutes": 360,
        "run_capacity": 201_139,
        "submission_minutes": 1,
        "runs_to_clear": 1,
    }
    assert report.summary["backlog_scans"] == 10
    html = report.html_path.read_text()
    section = html[html.index('<section class="backlog"') :].split("</section>")[0]
    assert "<strong>10 images</strong>" in section
    assert "At 10 requests/s that is about 1 minute of submission" in section
    assert "within the next run&#39;s window (360 minutes, up to 201,139 submissions)" in section
    assert "Those the credit budget held back go only as far as later runs' budgets allow" in (
        section.replace("&#39;", "'")
    )
    table = section[section.index("<table") :]
    rows = [(label, table.index(label)) for label in ("submission window", "credit budget", "run ending")]
    assert [label for label, _ in sorted(rows, key=lambda r: r[1])] == [label for label, _ in rows]
    assert html.index('id="backlog"') < html.index("<h2>Scan outcomes</h2>")

    # a short window: 5 submissions a run, so two runs; a rebuild without the rate keeps the recorded one
    short = build_run_report(
        engine, DAG_ID, R2, out_dir=tmp_path, top_n=0, requests_per_second=10, window_minutes=0.01
    )
    assert (short.summary["backlog"]["run_capacity"], short.summary["backlog"]["runs_to_clear"]) == (5, 2)
    assert "the windows of the next 2 runs (0.01 minutes, up to 5 submissions each)" in (
        short.html_path.read_text()
    )
    rebuilt = build_run_report(engine, DAG_ID, R2, out_dir=tmp_path, top_n=0)
    assert rebuilt.summary["backlog"] == short.summary["backlog"]


def test_no_backlog_no_section(warehouse_url, tmp_path):
    engine = get_engine(warehouse_url)
    insert_scans(engine, [s for s in r2_scans() if s.state != "pending"])
    report = build_run_report(
        engine, DAG_ID, R2, out_dir=tmp_path, top_n=0, requests_per_second=10, window_minutes=360
    )
    assert report.summary["backlog_scans"] == 0
    assert report.summary["backlog"]["by_reason"] == {"window": 0, "budget": 0, "unsent": 0}
    html = report.html_path.read_text()
    assert "Waiting for later runs" not in html and 'class="backlog"' not in html


def test_backlog_estimates_without_a_window_a_limit_or_a_rate():
    by_reason = {"window": 12_000, "budget": 0, "unsent": 400}
    hours = backlog_summary(by_reason, 10, None)
    assert (hours["submission_minutes"], hours["runs_to_clear"], hours["run_capacity"]) == (23, 1, None)
    assert describe_backlog(hours) == (
        "At 10 requests/s that is about 23 minutes of submission; "
        "the next run submits them all (it has no submission window)."
    )
    slow = backlog_summary(by_reason, 0.5, 360)  # 10,056 a run
    assert slow["runs_to_clear"] == 2 and describe_backlog(slow).startswith(
        "At 0.5 requests/s that is about 7.4 hours of submission, i.e. the windows of the next 2 runs"
    )
    unlimited = backlog_summary(by_reason, 0, 360)
    assert unlimited["run_capacity"] is None and unlimited["runs_to_clear"] == 1
    assert describe_backlog(unlimited) == "The account has no request limit: the next run submits them all."
    unknown = backlog_summary(by_reason, None, 360)
    assert unknown["runs_to_clear"] is None and describe_backlog(unknown) == ""
    closed = backlog_summary(by_reason, 10, 0)
    assert closed["runs_to_clear"] is None and "submits none" in describe_backlog(closed)
    budgeted = backlog_summary({"window": 0, "budget": 400, "unsent": 0}, 10, 360)
    assert describe_backlog(budgeted).endswith("go only as far as later runs' budgets allow.")
