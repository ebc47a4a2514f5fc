"""The run report against hand-computed aggregates of a fixed set of scans (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import io
import re
from datetime import UTC, datetime
from html.parser import HTMLParser

import pandas as pd
import pytest
from PIL import Image
from sqlalchemy import func, select, update

from copyleaks_provider.models import decode_rle_mask
from image_audit.reporting import RunReport, Thresholds, build_run_report
from image_audit.reporting import report as report_module
from image_audit.reporting.exports import EXPORT_COLUMNS
from image_audit.reporting.render import DASH
from image_audit.reporting.report import safe_run_id
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import audit_reports, audit_results
from tests.support.reports import (
    D1,
    DAG_ID,
    EXPECTED,
    R0,
    R1,
    R2,
    SVG,
    ImageFetcher,
    insert_report_scans,
    r2_scans,
    seed_reported_runs,
    svg_charts,
    svg_text,
)


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
    # the per-source view: each run's AI share per source, from the reports' stored summaries, newest first
    by_source = trend_section[trend_section.index(">By source</h3>") :]
    header = re.search(r"<tr><th>Interval end</th>(.*?)</tr>", by_source).group(1)
    assert re.findall(r'<th class="n">(.*?)</th>', header) == ["shop", "blog", "(no source)"]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr><td>.*?</tr>", by_source)]
    assert rows[0] == ["2026-11-22", "60.0% (5)", "25.0% (4)", "0.0% (1)"]  # R2: its summary's by_source
    assert rows[-1] == ["2026-11-20", DASH, DASH, DASH]  # R0's stored summary has none
    assert len(rows) == 3
    lines = svg_charts(html)["chart-source-trend"]
    assert {"shop", "blog", "(no source)"} <= set(svg_text(lines, "text"))
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
    build_run_report(engine, DAG_ID, R2, out_dir=report.html_path.parent, top_n=0, fetch_image=ImageFetcher())
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
        f"chart-{key}"
        for key in ("states", "verdicts", "histogram", "by-source", "by-day", "trend", "source-trend")
    }
    for key, chart in charts.items():  # accessible: a role, a title and a description, referenced
        assert chart.get("role") == "img"
        assert chart.get("aria-labelledby") == f"{key}-title {key}-desc"
        assert chart.find(f"{SVG}title").get("id") == f"{key}-title" and svg_text(chart, "title")[0]
        assert chart.find(f"{SVG}desc").get("id") == f"{key}-desc" and svg_text(chart, "desc")[0]
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
    insert_report_scans(engine, r2_scans())
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


def test_only_the_masks_shown_are_decoded(sqlite_warehouse_url, tmp_path, monkeypatch):
    engine = get_engine(sqlite_warehouse_url)
    insert_report_scans(engine, r2_scans())
    decoded = []

    def decode(starts, lengths, height, width):
        decoded.append((len(starts), height, width))
        return decode_rle_mask(starts, lengths, height, width)

    monkeypatch.setattr(report_module, "decode_rle_mask", decode)
    report = build_run_report(engine, DAG_ID, R2, out_dir=tmp_path, top_n=3, fetch_image=ImageFetcher())
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
    seed_reported_runs(engine)

    def build(name: str) -> dict:
        report = build_run_report(
            engine, DAG_ID, R2, out_dir=tmp_path / name, rolling_runs=3, top_n=3, fetch_image=ImageFetcher()
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
    insert_report_scans(engine, [s for s in r2_scans() if s.state in ("rejected", "failed")])
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
    insert_report_scans(engine, r2_scans())
    with engine.begin() as conn:
        conn.execute(
            audit_results.update()
            .where(audit_results.c.scan_id == "o-1-r2")
            .values(mask_starts=[1999], mask_lengths=[5], mask_pixels=5)
        )
    report = build_run_report(engine, DAG_ID, R2, out_dir=tmp_path, top_n=2, fetch_image=ImageFetcher())
    assert report.html_path.read_text().count('class="thumbnail"') == 2
