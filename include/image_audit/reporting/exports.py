"""The per-image exports of a run: a CSV and a Parquet file with the same rows and columns.

Rows are streamed from the warehouse in chunks and appended column by column through Arrow, so a run of
any size exports in bounded memory; the CSV is formatted as ``DataFrame.to_csv`` formats it (but for the
formulas below). URLs are exported without credentials or query strings (a pre-signed URL's signature is
a credential, and reports travel).

Catalog data comes from whoever uploaded the images. In the CSV a text cell a spreadsheet would run as a
formula (first character ``= + - @``, tab, CR or NUL: OWASP's "CSV Injection") is prefixed with ``'`` and
quoted, and so is any cell with a carriage return; the Parquet file (read typed) keeps the raw values.
"""

from __future__ import annotations

import io
import json
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

#: The export's columns, in order, with their Parquet types.
EXPORT_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("scan_id", pa.string()),
        ("attempt", pa.int64()),
        ("attempts", pa.int64()),
        ("state", pa.string()),
        ("verdict", pa.string()),
        ("ai", pa.float64()),
        ("human", pa.float64()),
        ("mask_area", pa.float64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("model", pa.string()),
        ("source", pa.string()),
        ("file_name", pa.string()),
        ("url", pa.string()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
        ("ingest_day", pa.string()),
        ("submitted_at", pa.timestamp("us", tz="UTC")),
        ("received_at", pa.timestamp("us", tz="UTC")),
        ("actual_credits", pa.int64()),
        ("expected_credits", pa.int64()),
        ("sandbox", pa.bool_()),
        ("issued_by", pa.string()),
        ("app_or_device", pa.string()),
        ("last_error", pa.string()),
        ("run_id", pa.string()),
    ]
)
EXPORT_COLUMNS = EXPORT_SCHEMA.names
_UTC_MICROS = pa.timestamp("us", tz="UTC")
#: Rows of each Parquet row group.
ROW_GROUP_ROWS = 20_000
_LIST_TO_SPACES = bytes.maketrans(b"[],", b"   ")
#: A URL ``redact_url`` leaves as ``scheme://host/path``: lower-case scheme and host, no user info,
#: no port; group ``url`` is the redacted URL (the query and fragment after it are dropped). RE2
#: syntax, for Arrow's ``pc.extract_regex`` (the whole text: ``\A`` to ``\z``).
_PLAIN_URL_RE2 = r"\A(?P<url>[a-z][a-z0-9+.-]*://[a-z0-9._~-]+(?:/[^?#\t\r\n]*)?)(?:[?#][^\t\r\n]*)?\z"
#: The first characters that make a text cell a formula in a spreadsheet: OWASP's ``= + - @``, tab and
#: carriage return (and NUL, ASVS 1.2.10).
FORMULA_STARTS = "=+-@\t\r\x00"
_FORMULA_STARTS = pa.array(list(FORMULA_STARTS), pa.string())
#: A text cell the CSV quotes (beside formulas): one with a comma, quote or line break. RE2.
_QUOTED_RE2 = r'[,"\n\r]'
#: The export's text columns, whose cells may be formulas.
_TEXT_COLUMNS = frozenset(field.name for field in EXPORT_SCHEMA if pa.types.is_string(field.type))


def inert_cell(text: str) -> str:
    """One text cell as a CSV of the project holds it: a formula (``FORMULA_STARTS``) prefixed with ``'``."""
    return "'" + text if text[:1] in FORMULA_STARTS and text else text


def redact_url(url: str | None) -> str | None:
    """``url`` without user info, query string or fragment (``None`` for a missing one, NaN included)."""
    if not isinstance(url, str) or not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def mask_pixels(masks: list, batch: int = 5_000) -> list[int | None]:
    """AI pixels of each RLE mask given as its ``lengths`` JSON text (``None``: no result, or one whose
    ``mask_pixels`` was stored): their sum.

    One vectorized parse of all the numbers per ``batch`` of masks (cheaper than summing JSON arrays in
    the database); any text that is not a plain JSON array of integers goes through ``json``.
    """
    texts = [text for text in masks if text is not None]
    sums: list = []
    for offset in range(0, len(texts), batch):
        sums += _sum_lists(texts[offset : offset + batch])
    found = iter(sums)
    return [None if text is None else next(found) for text in masks]


def _sum_lists(texts: list[str]) -> list:
    joined = "".join(texts).encode("utf-8").translate(_LIST_TO_SPACES)
    if not joined.translate(None, b"0123456789 "):  # digits and separators only
        counts = np.fromiter(
            (text.count(",") + (len(text.strip()) > 2) for text in texts), dtype=np.int64, count=len(texts)
        )
        values = np.fromstring(joined, dtype=np.int64, sep=" ")
        if len(values) == counts.sum():
            sums = np.zeros(len(texts), dtype=np.int64)
            listed = counts > 0
            if listed.any():
                sums[listed] = np.add.reduceat(values, (np.cumsum(counts) - counts)[listed])
            return sums.tolist()
    return [_json_sum(text) for text in texts]


def _json_sum(text: str):
    return sum(json.loads(text))


def _timestamps(values: list) -> pa.Array:
    """Timestamps as ``aggregates.iter_image_rows`` reads them on both databases (UTC text,
    ``YYYY-MM-DD HH:MM:SS[.ffffff]``; else any ISO 8601) as UTC microseconds."""
    array = pa.array(values, type=pa.string(), from_pandas=True)
    try:
        return pc.cast(pc.cast(array, pa.timestamp("us")), _UTC_MICROS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        stamps = pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="ISO8601")
        return pa.array(stamps.astype("datetime64[us, UTC]"), type=_UTC_MICROS, from_pandas=True)


def to_export_columns(chunk: dict[str, Sequence]) -> dict[str, pa.Array]:
    """Warehouse rows (``aggregates.iter_image_rows``: object arrays, or lists, by column) as the export's
    typed columns."""
    columns = dict(chunk)
    stored, texts = columns.pop("mask_pixels"), columns.pop("mask_lengths")
    if any(text is not None for text in texts):  # results stored without mask_pixels: sum their lengths
        stored = [
            count if count is not None else text_sum
            for count, text_sum in zip(stored, mask_pixels(texts), strict=True)
        ]
    arrays = {}
    for field in EXPORT_SCHEMA:
        if field.name == "mask_area":
            arrays["mask_area"] = _mask_area(stored, columns["width"], columns["height"])
        elif field.name == "url":
            arrays["url"] = _redacted_url_array(columns["url"])
        elif pa.types.is_timestamp(field.type):
            arrays[field.name] = _timestamps(columns[field.name])
        elif pa.types.is_boolean(field.type):  # SQLite's 0/1, or the driver's booleans
            arrays[field.name] = pc.cast(pa.array(columns[field.name], from_pandas=True), pa.bool_())
        else:
            arrays[field.name] = pa.array(columns[field.name], type=field.type, from_pandas=True)
    return arrays


def _mask_area(pixels: list, widths: list, heights: list) -> pa.Array:
    """``pixels / (float(width) * height)``, null without pixels or a positive area (the same IEEE
    operations as Python's, column by column)."""
    area = pc.multiply(pa.array(widths, pa.float64()), pa.array(heights, pa.float64()))
    ratio = pc.divide(pa.array(pixels, pa.float64()), area)
    return pc.if_else(pc.fill_null(pc.greater(area, 0.0), False), ratio, pa.scalar(None, pa.float64()))


def _redacted_url_array(urls: list) -> pa.Array:
    """``redact_url`` of each URL: plain ones (``_PLAIN_URL_RE2``) by one vectorized regex, the rest
    one by one."""
    array = pa.array(urls, pa.string(), from_pandas=True)
    plain = pc.extract_regex(array, _PLAIN_URL_RE2)
    redacted = pc.struct_field(plain, [0])
    unmatched = pc.and_(pc.is_null(redacted), pc.is_valid(array))
    if pc.any(unmatched).as_py():
        indices = pc.indices_nonzero(unmatched).to_pylist()
        fixed = pa.array([redact_url(urls[i]) for i in indices], pa.string())
        values = redacted.to_pylist()
        for i, value in zip(indices, fixed.to_pylist(), strict=True):
            values[i] = value
        return pa.array(values, pa.string())
    return redacted


def _csv_timestamps(array: pa.Array) -> pa.Array:
    """UTC timestamps as ``2026-11-20T00:00:00.432000Z`` (by Arrow casts: faster than ``strftime``)."""
    text = pc.cast(pc.cast(array, pa.timestamp("us")), pa.string())  # "2026-11-20 00:00:00.432000"
    return pc.binary_join_element_wise(pc.replace_substring(text, " ", "T", max_replacements=1), "Z", "")


def _csv_column(array: pa.Array) -> pa.Array:
    """A column as ``DataFrame.to_csv`` formats it: floats by ``repr``, booleans as ``True``/``False``."""
    if pa.types.is_timestamp(array.type):
        return _csv_timestamps(array)
    if pa.types.is_boolean(array.type):
        return pc.if_else(array, "True", "False")
    if pa.types.is_floating(array.type):
        values = array.to_pylist()
        if array.null_count == 0:
            return pa.array(list(map(float.__repr__, values)), pa.string())
        return pa.array([None if value is None else repr(value) for value in values], pa.string())
    return array


def _write_csv(arrays: dict[str, pa.Array], out: BinaryIO) -> None:
    """Append the rows to the CSV: by Arrow's writer (fast) unless a cell needs quoting or is a formula,
    then joined by Arrow compute with those cells fixed (``_csv_safe_text``)."""
    columns = [_csv_column(arrays[name]) for name in EXPORT_COLUMNS]
    formulas = [_formula_cells(arrays[name]) if name in _TEXT_COLUMNS else None for name in EXPORT_COLUMNS]
    if not any(found is not None and pc.any(found).as_py() for found in formulas):
        try:
            table = pa.Table.from_arrays(columns, names=EXPORT_COLUMNS)
            buffer = io.BytesIO()
            pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(include_header=False, quoting_style="none"))
        except pa.ArrowInvalid:  # a comma, quote or line break in a value
            pass
        else:
            out.write(buffer.getbuffer())
            return
    cells = [
        pc.cast(column, pa.string()) if found is None else _csv_safe_text(column, found)
        for column, found in zip(columns, formulas, strict=True)
    ]
    lines = pc.binary_join_element_wise(*cells, ",", null_handling="replace")
    if len(lines):
        whole = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(lines)], pa.int32()), lines), "\n")
        out.write(whole[0].as_buffer())
        out.write(b"\n")


def _formula_cells(column: pa.Array) -> pa.Array:
    """Whether each text cell starts as a formula (false for a null one)."""
    return pc.is_in(pc.utf8_slice_codeunits(column, 0, 1), value_set=_FORMULA_STARTS)


def _csv_safe_text(column: pa.Array, formulas: pa.Array) -> pa.Array:
    """A text column's cells as the CSV holds them: a formula prefixed with ``'``; it, and a cell with a
    comma, quote or line break, quoted (RFC 4180: ``"`` doubled). Only the cells that need it are fixed."""
    fixed = pc.or_(formulas, pc.fill_null(pc.match_substring_regex(column, _QUOTED_RE2), False))
    if not pc.any(fixed).as_py():
        return column
    cells = pc.filter(column, fixed)
    cells = pc.if_else(pc.filter(formulas, fixed), pc.binary_join_element_wise("'", cells, ""), cells)
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(cells, '"', '""'), '"', "")
    return pc.replace_with_mask(column, fixed, quoted)


def _prefetched(chunks: Iterable[dict[str, Sequence]], depth: int = 2) -> Iterator[dict[str, Sequence]]:
    """``chunks``, read ahead by a thread of their own (at most ``depth`` waiting): the database's
    driver fetches the next chunk (mostly without the GIL) while this one is converted and written.

    The reader closes ``chunks`` (its cursor) in its own thread, also when the consumer stops early.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        iterator = iter(chunks)
        try:
            for chunk in iterator:
                if not put((chunk, None)):
                    break
            else:
                put((done, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((done, exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=read, name="report-export-read", daemon=True)
    reader.start()
    try:
        while True:
            chunk, error = ready.get()
            if error is not None:
                raise error
            if chunk is done:
                return
            yield chunk
    finally:
        stop.set()
        reader.join()


def write_exports(chunks: Iterable[dict[str, Sequence]], csv_file: Path, parquet_file: Path) -> int:
    """Write every chunk to both local files; rows written.

    The files are the report's staging files (``storage.staged``), published whole once this returns.
    Small chunks keep the memory flat; the Parquet file still gets row groups of ``ROW_GROUP_ROWS``.
    The chunks are read ahead by a thread of their own (``_prefetched``).
    """
    rows = 0
    pending: list[pa.Table] = []
    with pq.ParquetWriter(parquet_file, EXPORT_SCHEMA) as parquet, open(csv_file, "wb") as csv_out:
        csv_out.write((",".join(EXPORT_COLUMNS) + "\n").encode("utf-8"))
        for chunk in _prefetched(chunks):
            arrays = to_export_columns(chunk)
            _write_csv(arrays, csv_out)
            pending.append(pa.Table.from_arrays(list(arrays.values()), schema=EXPORT_SCHEMA))
            rows += pending[-1].num_rows
            if sum(table.num_rows for table in pending) >= ROW_GROUP_ROWS:
                parquet.write_table(pa.concat_tables(pending))
                pending = []
        if pending:
            parquet.write_table(pa.concat_tables(pending))
    return rows
