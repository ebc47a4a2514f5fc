"""Archiving: results older than a set age leave the per-scan tables for Parquet files in the reports
store, and the analytics model stays whole.

An image (an image key and model, as ``image_audit.warehouse.analytics`` groups scans) is archived
when every one of its scans is settled (completed, failed or rejected: never one planning may take up
again) and was last updated before the cut-off. All its scans go at once, one day of last updates per
transaction, oldest first:

1. the model is brought up to date once (``refresh_changed``), so each image's standing includes every
   scan (a settled scan older than the cut-off changes no more), and each day holds the model's lock;
2. its scans, their results and their failed callbacks are written to Parquet under
   ``<reports base>/archive/<day>/<archived at>/`` (``audit_scans``, ``audit_results``,
   ``audit_failed_callbacks``; JSON columns as JSON text), published whole before anything is deleted;
3. ``audit_archived_images`` gets the image's standing and latest attempt (planning then knows it was
   scanned, and numbers a forced re-audit after it), ``audit_archived_days`` the day's scan attempts
   (``audit_daily`` keeps counting them), and the rows are deleted from the per-scan tables.

The model's rows are not touched, and a later recompute gives them again from what is left and the
archive's tables. A failure leaves the day's rows where they were (its files may stay, unreferenced).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    Float,
    Integer,
    and_,
    case,
    delete,
    func,
    literal,
    select,
    tuple_,
)

from image_audit.reporting.storage import reports_base, staged, uri
from image_audit.warehouse.analytics import (
    image_key,
    keys_of_scans,
    lock,
    refresh_changed,
    refresh_keys,
    scan_attempts,
    scans_of_keys,
    stage_keys,
)
from image_audit.warehouse.engine import as_utc, dialect_insert
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.schema import (
    TZ,
    audit_archived_days,
    audit_archived_images,
    audit_failed_callbacks,
    audit_results,
    audit_scans,
    image_standing,
)

log = logging.getLogger(__name__)

#: The states in which a scan is settled: nothing the pipeline does changes it any more.
SETTLED_STATES = [ScanState.COMPLETED.value, ScanState.FAILED.value, ScanState.REJECTED.value]
#: The shortest age that may be archived: the model's refresh must have read every scan archived.
MINIMUM_AGE = timedelta(days=1)
ARCHIVE_DIR = "archive"
#: Rows read and written at a time: a day's archive streams through in bounded memory.
ROWS_PER_CHUNK = 5_000


@dataclass
class ArchiveResult:
    """What one archiving did: images, scans, results and failed callbacks archived, and the files."""

    images: int = 0
    scans: int = 0
    results: int = 0
    failed_callbacks: int = 0
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "images": self.images,
            "scans": self.scans,
            "results": self.results,
            "failed_callbacks": self.failed_callbacks,
            "files": len(self.files),
        }


def archive_results(
    engine: Engine, older_than: timedelta, *, now: datetime | None = None, base=None
) -> ArchiveResult:
    """Archive every image whose scans are all settled and were last updated more than ``older_than``
    ago; ``base``: where the files go (default: the reports store's base)."""
    if older_than < MINIMUM_AGE:
        raise ValueError(f"archive only results older than {MINIMUM_AGE}, not {older_than}")
    moment = now or datetime.now(UTC)
    cutoff = moment - older_than
    base = base if base is not None else reports_base()
    stamp = moment.strftime("%Y%m%dT%H%M%SZ")
    done = ArchiveResult()
    scan = audit_scans.c
    settled = and_(scan.state.in_(SETTLED_STATES), scan.updated_at < cutoff)
    with engine.begin() as conn:
        refresh_changed(conn)
    day = None
    while True:  # from one day with a settled scan to the next (the updated_at index finds each)
        with engine.connect() as conn:
            later = [] if day is None else [scan.updated_at >= day]
            first = conn.execute(select(func.min(scan.updated_at)).where(settled, *later)).scalar()
        if first is None:
            break
        day = as_utc(first).replace(hour=0, minute=0, second=0, microsecond=0)
        until = min(day + timedelta(days=1), cutoff)
        with engine.begin() as conn:
            folder = base / ARCHIVE_DIR / day.date().isoformat() / stamp
            _archive_day(conn, day, until, cutoff, folder, moment, done)
        day = until
    log.info("Archived %s", done.as_dict())
    return done


def _archive_day(
    conn, since: datetime, until: datetime, cutoff: datetime, folder, moment: datetime, done: ArchiveResult
) -> None:
    """Archive, in ``conn``'s transaction, the archivable images with a scan last updated in
    [``since``, ``until``)."""
    lock(conn)  # the model's lock for the transaction: no recompute runs meanwhile
    scan, key = audit_scans.c, refresh_keys.c
    stage_keys(
        conn, keys_of_scans(scan.updated_at >= since, scan.updated_at < until, scan.state.in_(SETTLED_STATES))
    )
    every = scans_of_keys().c
    kept = select(image_key(every), every.model).where(
        (every.updated_at >= cutoff) | every.state.not_in(SETTLED_STATES)
    )
    conn.execute(delete(refresh_keys).where(tuple_(key.image_id, key.model).in_(kept)))
    images = conn.execute(select(func.count()).select_from(refresh_keys)).scalar_one()
    if not images:
        return
    scan_ids = select(scans_of_keys().c.scan_id)
    archived = {}
    for table in (audit_scans, audit_results, audit_failed_callbacks):
        target = folder / f"{table.name}.parquet"
        rows = conn.execute(
            select(table).where(table.c.scan_id.in_(scan_ids)).execution_options(yield_per=ROWS_PER_CHUNK)
        )
        archived[table.name] = 0
        schema = pa.schema([(column.name, _arrow_type(column)) for column in table.columns])
        with staged(target) as path, pq.ParquetWriter(path, schema) as writer:
            for chunk in rows.mappings().partitions():
                writer.write_table(_arrow(table, chunk, schema))
                archived[table.name] += len(chunk)
        done.files.append(uri(target))
    _keep_history(conn, uri(folder / f"{audit_scans.name}.parquet"), moment)
    for table in (audit_failed_callbacks, audit_results, audit_scans):
        conn.execute(delete(table).where(table.c.scan_id.in_(scan_ids)))
    done.images += images
    done.scans += archived[audit_scans.name]
    done.results += archived[audit_results.name]
    done.failed_callbacks += archived[audit_failed_callbacks.name]


def _keep_history(conn, archive_uri: str, archived_at: datetime) -> None:
    """Record what the staged images' scans add to the model before they are deleted: each image's
    standing and latest attempt, and each day's scan attempts."""
    days = scan_attempts(conn.dialect.name, scans_of_keys()).subquery("attempts")
    counts = ("scans", "results", "expected_credits", "actual_credits")
    tallies = (
        conn.execute(
            select(
                days.c.ingest_day,
                days.c.source,
                days.c.model,
                *(func.sum(days.c[n]).label(n) for n in counts),
            ).group_by(days.c.ingest_day, days.c.source, days.c.model)
        )
        .mappings()
        .all()
    )
    for tally in tallies:
        insert = dialect_insert(conn, audit_archived_days).values(**tally)
        added = {n: audit_archived_days.c[n] + insert.excluded[n] for n in counts}
        conn.execute(
            insert.on_conflict_do_update(index_elements=["ingest_day", "source", "model"], set_=added)
        )

    every = scans_of_keys().c
    attempt = case((every.state != ScanState.REJECTED.value, every.attempt), else_=None)
    latest = (
        select(image_key(every).label("image_id"), every.model, func.max(attempt).label("attempt"))
        .group_by(image_key(every), every.model)
        .subquery("latest")
    )
    earlier_table = audit_archived_images.alias("earlier")
    stand, earlier = image_standing.c, earlier_table.c
    names = [column.name for column in image_standing.columns]
    rows = (
        select(
            *(stand[name] for name in names),
            func.coalesce(latest.c.attempt, earlier.latest_attempt, 0),
            literal(archived_at, TZ),
            literal(archive_uri),
        )
        .join_from(
            image_standing, latest, and_(latest.c.image_id == stand.image_id, latest.c.model == stand.model)
        )
        .outerjoin(
            earlier_table,
            and_(earlier.image_id == stand.image_id, earlier.model == stand.model),
        )
    )
    columns = [*names, "latest_attempt", "archived_at", "archive_uri"]
    insert = dialect_insert(conn, audit_archived_images).from_select(columns, rows)
    replaced = {name: insert.excluded[name] for name in columns if name not in ("image_id", "model")}
    conn.execute(insert.on_conflict_do_update(index_elements=["image_id", "model"], set_=replaced))


def _arrow_type(column) -> pa.DataType:
    kind = column.type
    if isinstance(kind, JSON):
        return pa.string()
    if isinstance(kind, DateTime):
        return pa.timestamp("us", tz="UTC")
    if isinstance(kind, Boolean):
        return pa.bool_()
    if isinstance(kind, Integer):
        return pa.int64()
    if isinstance(kind, Float):
        return pa.float64()
    return pa.string()


def _arrow(table, rows, schema: pa.Schema) -> pa.Table:
    """``rows`` of ``table`` as an Arrow table of ``schema``: timestamps in UTC, JSON as its text."""
    arrays = []
    for column in table.columns:
        values = [row[column.name] for row in rows]
        if isinstance(column.type, JSON):
            values = [None if value is None else json.dumps(value) for value in values]
        elif isinstance(column.type, DateTime):
            values = [None if value is None else as_utc(value) for value in values]
        arrays.append(pa.array(values, _arrow_type(column)))
    return pa.Table.from_arrays(arrays, schema=schema)
