"""The per-image exports of a run: a CSV and a Parquet file with the same rows and columns.

Rows are streamed from the warehouse in chunks and appended, so a run of any size exports in bounded
memory. URLs are exported without credentials or query strings (a pre-signed URL's signature is a
credential, and reports travel).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import pyarrow as pa
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
_TIMESTAMPS = [f.name for f in EXPORT_SCHEMA if pa.types.is_timestamp(f.type)]
_INTEGERS = [f.name for f in EXPORT_SCHEMA if pa.types.is_integer(f.type)]


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


def _metadata_field(value, key: str):
    return value.get(key) if isinstance(value, dict) else None


def to_export_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Warehouse rows (``aggregates.iter_image_rows``) in the export's shape and types."""
    frame = rows.copy()
    metadata = frame.pop("image_metadata")
    frame["issued_by"] = metadata.map(lambda m: _metadata_field(m, "issuedBy"))
    frame["app_or_device"] = metadata.map(lambda m: _metadata_field(m, "appOrDeviceUsed"))
    frame["url"] = frame["url"].map(redact_url)
    for column in _TIMESTAMPS:
        stamps = pd.to_datetime(frame[column], utc=True, format="ISO8601")
        frame[column] = stamps.astype("datetime64[us, UTC]")
    for column in _INTEGERS:
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    for column in ("ai", "human", "mask_area"):
        frame[column] = pd.to_numeric(frame[column]).astype("float64")
    frame["sandbox"] = frame["sandbox"].astype("boolean")
    return frame[EXPORT_COLUMNS]


def write_exports(chunks: Iterable[pd.DataFrame], csv_file: Path, parquet_file: Path) -> int:
    """Write every chunk to both local files; rows written.

    The files are the report's staging files (``storage.staged``), published whole once this returns.
    """
    rows = 0
    with pq.ParquetWriter(parquet_file, EXPORT_SCHEMA) as parquet, open(csv_file, "w", newline="") as csv:
        header = True
        for chunk in chunks:
            frame = to_export_frame(chunk)
            frame.to_csv(csv, index=False, header=header, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
            header = False
            parquet.write_table(pa.Table.from_pandas(frame, schema=EXPORT_SCHEMA, preserve_index=False))
            rows += len(frame)
        if header:  # no rows: still a CSV with the header
            pd.DataFrame(columns=EXPORT_COLUMNS).to_csv(csv, index=False)
    return rows
