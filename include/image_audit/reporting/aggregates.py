"""The warehouse side of a report: every number is a SQL ``GROUP BY``; pandas only reshapes small results.

An image can have several scans in a run (a timed-out attempt, then a new one; a catalog row rejected as a
duplicate of a valid one). :func:`resolved_images` keeps one row per image: its latest completed scan,
else its latest scan that was not a rejection, else its rejection. A report resolves them once, into a
temporary table (:func:`materialized_images`) that every other query reads.

Masks are never decoded here, nor read for their area: a result stores its mask's AI pixels
(``audit_results.mask_pixels``, the sum of the lengths, written with the result). Only a result stored
before that column existed and not back-filled (``mask_pixels`` NULL) has its lengths summed: in the
database where a verdict needs its area (below ``partly_ai``) and for the thumbnails' candidates, by the
export itself (``exports.mask_pixels``) otherwise. The few masks a report draws are read by
:func:`load_masks`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import (
    Column,
    Connection,
    Float,
    FromClause,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    text,
    type_coerce,
    union_all,
)

from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.schema import audit_results, audit_scans
from image_audit.warehouse.verdicts import (
    Thresholds,
    Verdict,
    mask_area_sql,
    utc_day_sql,
    verdict_sql,
)

#: Buckets of the AI-proportion histogram: [0, 0.05), [0.05, 0.10), ... [0.95, 1.0].
HISTOGRAM_BINS = 20
STATES = [s.value for s in ScanState]
VERDICTS = [v.value for v in Verdict]
#: States in which a scan was sent to Copyleaks, so its credits count as expected.
SENT_STATES = [
    ScanState.SUBMITTED.value,
    ScanState.COMPLETED.value,
    ScanState.FAILED.value,
    ScanState.TIMED_OUT.value,
]
ISSUE_STATES = [ScanState.REJECTED.value, ScanState.FAILED.value, ScanState.TIMED_OUT.value]
NO_SOURCE = "(no source)"
NO_DAY = "(unknown)"


@dataclass(frozen=True)
class Scope:
    """The runs a query covers: one run for the run report, the last N runs for the rolling view."""

    dag_id: str
    run_ids: tuple[str, ...]

    @classmethod
    def run(cls, dag_id: str, run_id: str) -> Scope:
        return cls(dag_id, (run_id,))

    def where(self):
        return and_(audit_scans.c.dag_id == self.dag_id, audit_scans.c.run_id.in_(self.run_ids))


# --- dialect-specific expressions -------------------------------------------------------------------


def _floor(expression, dialect: str):
    # CAST truncates on SQLite (the values are >= 0, so it floors) but rounds on PostgreSQL.
    return cast(func.floor(expression) if dialect == "postgresql" else expression, Integer)


def _histogram_bin(ai, dialect: str):
    return case((ai >= 1.0, HISTOGRAM_BINS - 1), else_=_floor(ai * HISTOGRAM_BINS, dialect))


# --- the one-row-per-image subquery ----------------------------------------------------------------


def _image_key():
    """What makes scans the same image: the image id (rows without one are each an image of their own)."""
    scan = audit_scans.c
    return case((func.trim(scan.image_id) == "", scan.scan_id), else_=scan.image_id)


def _preference():
    """0: a completed scan, 1: another that was sent or is waiting, 2: a rejection (the report shows
    an image's lowest, then its latest attempt, last update, highest scan id)."""
    scan = audit_scans.c
    return case(
        (scan.state == ScanState.COMPLETED.value, 0), (scan.state != ScanState.REJECTED.value, 1), else_=2
    )


def _ranked(scope: Scope, dialect: str):
    """The scope's scans that the report shows, one per image (``rank`` 1), with the image's attempts;
    it carries the few scan columns the images need (no join back).

    PostgreSQL ranks them with a window function. SQLite's window functions are slow, so there one
    ``GROUP BY`` picks each image's scan: the row holding the ``max()`` of a text key that sorts as the
    window's order (SQLite takes the bare columns of an aggregate query from the row holding its single
    ``max()``).
    """
    scan = audit_scans.c
    image_key = _image_key()
    attempts = func.sum(case((scan.state != ScanState.REJECTED.value, 1), else_=0))
    columns = [scan.scan_id, scan.image_id, scan.state, scan.source, scan.ingested_at]
    if dialect != "postgresql":
        # the preference turned best-highest (2, 1, 0) and the attempt zero-padded, updated_at's text,
        # scan_id: char(1) separators sort below every character, so a shorter updated_at sorts first
        # as in the column's own (text) order
        separator = func.char(1)
        choice = (
            func.printf("%d%010d", 2 - _preference(), scan.attempt)
            .op("||")(separator)
            .op("||")(type_coerce(scan.updated_at, String))
            .op("||")(separator)
            .op("||")(scan.scan_id)
        )
        return (
            select(
                *columns,
                literal(1).label("rank"),
                attempts.label("attempts"),
                func.max(choice).label("choice"),
            )
            .where(scope.where())
            .group_by(image_key)
            .subquery("ranked")
        )
    order = [_preference(), scan.attempt.desc(), scan.updated_at.desc(), scan.scan_id.desc()]
    return (
        select(
            *columns,
            func.row_number().over(partition_by=image_key, order_by=order).label("rank"),
            attempts.over(partition_by=image_key).label("attempts"),
        )
        .where(scope.where())
        .subquery("ranked")
    )


def resolved_images(scope: Scope, thresholds: Thresholds, dialect: str):
    """One row per image of ``scope`` (see the module docstring) with its verdict: the columns of
    :data:`report_images`.

    The verdict reads the mask only below ``thresholds.partly_ai`` (``CASE`` evaluates lazily).
    """
    ranked = _ranked(scope, dialect)
    ranked_scan, result = ranked.c, audit_results.c
    completed = and_(ranked_scan.state == ScanState.COMPLETED.value, result.scan_id.is_not(None))
    query = (
        select(
            ranked_scan.scan_id,
            ranked_scan.image_id,
            ranked_scan.attempts,
            ranked_scan.state,
            verdict_sql(completed, result.ai, mask_area_sql(dialect), thresholds).label("verdict"),
            result.ai,
            ranked_scan.source,
            utc_day_sql(ranked_scan.ingested_at, dialect).label("ingest_day"),
        )
        .select_from(ranked.outerjoin(audit_results, result.scan_id == ranked_scan.scan_id))
        .where(ranked_scan.rank == 1)
    )
    return query.subquery("images")


# --- the report's images, resolved once -----------------------------------------------------------

#: The images of a report's scope with their verdicts, resolved once per report into a temporary table
#: of its connection: the aggregates, the thumbnails, the issues and the export read it rather than
#: each ranking the scans and reading the masks again.
report_images = Table(
    "image_audit_report_images",
    MetaData(),
    Column("scan_id", String(36), nullable=False),
    Column("image_id", String(255), nullable=False),
    Column("attempts", Integer),
    Column("state", String(16), nullable=False),
    Column("verdict", String(16)),
    Column("ai", Float),
    Column("source", String(255)),
    Column("ingest_day", String(16)),
    # the export's order: read in it, the wide rows the export joins are never sorted
    Index("ix_image_audit_report_images_order", "image_id", "scan_id"),
    prefixes=["TEMPORARY"],
)


@contextmanager
def materialized_images(conn: Connection, scope: Scope, thresholds: Thresholds) -> Iterator[Table]:
    """:data:`report_images` filled with ``scope``'s images, for the length of the block.

    Created inside the connection's transaction: a failure rolls it back with the transaction.
    """
    images = resolved_images(scope, thresholds, conn.dialect.name)
    names = [column.name for column in report_images.columns]
    report_images.create(conn)
    conn.execute(report_images.insert().from_select(names, select(*[images.c[name] for name in names])))
    if conn.dialect.name == "postgresql":  # a temporary table has no statistics until analyzed
        conn.execute(text(f"ANALYZE {report_images.name}"))
    yield report_images
    report_images.drop(conn)


# --- aggregates ---------------------------------------------------------------------------------------


def outcome_cube(conn: Connection, images: FromClause) -> pd.DataFrame:
    """Images per (state, verdict, source, ingest day), with the sum of their AI proportions.

    ``images``: :data:`report_images`, or :func:`resolved_images` of another scope. Small whatever the
    run's size (states x verdicts x sources x days); every breakdown is cut from it.
    """
    image = images.c
    query = select(
        image.state,
        image.verdict,
        image.source,
        image.ingest_day,
        func.count().label("images"),
        func.coalesce(func.sum(image.ai), 0.0).label("ai_sum"),
    ).group_by(image.state, image.verdict, image.source, image.ingest_day)
    frame = pd.DataFrame(
        conn.execute(query).all(), columns=["state", "verdict", "source", "day", "images", "ai_sum"]
    )
    frame["source"] = frame["source"].fillna(NO_SOURCE).astype(str)
    frame["day"] = frame["day"].fillna(NO_DAY).astype(str)
    frame["images"] = frame["images"].astype("int64")
    frame["ai_sum"] = frame["ai_sum"].astype("float64")
    return frame


def ai_histogram(conn: Connection, images: FromClause) -> dict[str, list[int]]:
    """Completed images per AI-proportion bucket (``HISTOGRAM_BINS`` equal buckets over [0, 1]), per verdict.

    Per verdict because the mask rule can make an image under ``partly_ai`` partly AI.
    """
    bucket = _histogram_bin(images.c.ai, conn.dialect.name).label("bucket")
    query = (
        select(bucket, images.c.verdict, func.count())
        .where(images.c.state == ScanState.COMPLETED.value, images.c.ai.is_not(None))
        .group_by(bucket, images.c.verdict)
    )
    counts = {verdict: [0] * HISTOGRAM_BINS for verdict in VERDICTS}
    for index, verdict, count in conn.execute(query):
        counts[verdict][min(max(int(index), 0), HISTOGRAM_BINS - 1)] += int(count)
    return counts


def credits(conn: Connection, scope: Scope) -> dict:
    """Credits over every scan of the scope (each attempt costs, so nothing is deduplicated here)."""
    scan, result = audit_scans.c, audit_results.c
    query = (
        select(
            func.count().label("scan_rows"),
            func.sum(case((scan.state == ScanState.REJECTED.value, 1), else_=0)).label("rejected_rows"),
            func.sum(case((scan.state.in_(SENT_STATES), 1), else_=0)).label("sent"),
            func.sum(case((scan.state.in_(SENT_STATES), scan.expected_credits), else_=0)).label("expected"),
            func.sum(result.actual_credits).label("actual"),
            func.sum(result.expected_credits).label("copyleaks_expected"),
            func.count(result.scan_id).label("results"),
            func.sum(case((and_(scan.sandbox, scan.state.in_(SENT_STATES)), 1), else_=0)).label("sandbox"),
        )
        .select_from(audit_scans.outerjoin(audit_results, result.scan_id == scan.scan_id))
        .where(scope.where())
    )
    row = conn.execute(query).one()._mapping
    return {key: int(value or 0) for key, value in row.items()}


def _issues(scope: Scope, images: FromClause):
    """Rejected rows (all of them), and images whose outcome is failed or timed out: their scans."""
    scan = audit_scans.c
    outcomes = select(images.c.scan_id).where(
        images.c.state.in_([ScanState.FAILED.value, ScanState.TIMED_OUT.value])
    )
    rejected = select(scan.scan_id).where(scope.where(), scan.state == ScanState.REJECTED.value)
    ids = union_all(outcomes, rejected).subquery("issue_ids")
    return audit_scans.join(ids, ids.c.scan_id == scan.scan_id)


def issue_reasons(conn: Connection, scope: Scope, images: FromClause, limit: int = 25) -> pd.DataFrame:
    """The most frequent (state, reason) pairs among the issues."""
    scan = audit_scans.c
    query = (
        select(scan.state, scan.last_error, func.count().label("rows"))
        .select_from(_issues(scope, images))
        .group_by(scan.state, scan.last_error)
        .order_by(func.count().desc(), scan.state, scan.last_error)
        .limit(limit)
    )
    return pd.DataFrame(conn.execute(query).all(), columns=["state", "reason", "rows"])


def issue_rows(
    conn: Connection, scope: Scope, images: FromClause, limit: int = 200
) -> tuple[pd.DataFrame, int]:
    """Up to ``limit`` issue rows (failed and timed out first), and how many there are in all."""
    source = _issues(scope, images)
    scan = audit_scans.c
    total = conn.execute(select(func.count()).select_from(source)).scalar_one()
    order = case(
        (scan.state == ScanState.FAILED.value, 0), (scan.state == ScanState.TIMED_OUT.value, 1), else_=2
    )
    columns = [
        scan.state,
        scan.image_id,
        scan.scan_id,
        scan.attempt,
        scan.source,
        scan.file_name,
        scan.url,
        scan.ingested_at,
    ]
    query = (
        select(*columns, scan.last_error.label("reason"))
        .select_from(source)
        .order_by(order, scan.image_id, scan.scan_id)
        .limit(limit)
    )
    result = conn.execute(query)
    return pd.DataFrame(result.all(), columns=list(result.keys())), int(total)


def most_ai_images(conn: Connection, images: FromClause, limit: int) -> pd.DataFrame:
    """The ``limit`` completed images with the highest AI proportion (no masks).

    The mask area only breaks ties, so it is read for the candidates alone: the images whose AI
    proportion reaches the ``limit``-th highest (and any without one).
    """
    image, scan, result = images.c, audit_scans.c, audit_results.c
    completed = image.state == ScanState.COMPLETED.value
    threshold = (
        select(image.ai)
        .where(completed, image.ai.is_not(None))
        .order_by(image.ai.desc())
        .limit(1)
        .offset(limit - 1)
        .scalar_subquery()
    )
    mask_area = mask_area_sql(conn.dialect.name)
    query: Select = (
        select(
            image.image_id,
            image.scan_id,
            image.ai,
            mask_area.label("mask_area"),
            image.verdict,
            result.width,
            result.height,
            scan.source,
            scan.file_name,
            scan.url,
            scan.ingested_at,
            scan.model,
        )
        .select_from(
            images.join(audit_scans, scan.scan_id == image.scan_id).outerjoin(
                audit_results, result.scan_id == image.scan_id
            )
        )
        .where(completed, or_(image.ai.is_(None), threshold.is_(None), image.ai >= threshold))
        .order_by(image.ai.desc(), mask_area.desc(), image.image_id)
        .limit(limit)
    )
    rows = conn.execute(query).mappings().all()
    return pd.DataFrame([dict(row) for row in rows])


def load_masks(conn: Connection, scan_ids: Sequence[str]) -> dict[str, tuple[list[int], list[int]]]:
    """The RLE masks of a few scans (the thumbnails'), by scan id."""
    if not scan_ids:
        return {}
    result = audit_results.c
    query = select(result.scan_id, result.mask_starts, result.mask_lengths).where(
        result.scan_id.in_(list(scan_ids))
    )
    return {scan_id: (starts, lengths) for scan_id, starts, lengths in conn.execute(query)}


def iter_image_rows(
    conn: Connection, images: FromClause, chunk_size: int = 5_000
) -> Iterator[dict[str, np.ndarray]]:
    """Every image of ``images`` (:data:`report_images`), in chunks of columns (object arrays).

    As the export needs them: the mask's stored ``mask_pixels``, and its ``lengths`` as JSON text only
    where that is NULL (``exports.mask_pixels`` sums them), the metadata fields read by the database,
    timestamps as UTC text (``YYYY-MM-DD HH:MM:SS.ffffff``); values as the driver gives them (SQLite's
    booleans as 0/1).
    """
    image, scan, result = images.c, audit_scans.c, audit_results.c
    postgres = conn.dialect.name == "postgresql"

    def raw(column):
        # as text, which the export parses all at once (cheaper than psycopg2 building datetimes)
        if postgres:
            return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD HH24:MI:SS.US")
        return type_coerce(column, Text)  # SQLite stores UTC wall time as this text

    columns = [
        scan.image_id,
        scan.scan_id,
        scan.attempt,
        image.attempts,
        scan.state,
        image.verdict,
        result.ai,
        result.human,
        result.mask_pixels,
        case((result.mask_pixels.is_(None), cast(result.mask_lengths, Text)), else_=None).label(
            "mask_lengths"
        ),
        result.width,
        result.height,
        scan.model,
        scan.source,
        scan.file_name,
        scan.url,
        raw(scan.ingested_at).label("ingested_at"),
        image.ingest_day,
        raw(scan.submitted_at).label("submitted_at"),
        raw(result.received_at).label("received_at"),
        result.actual_credits,
        scan.expected_credits,
        scan.sandbox,
        result.image_metadata["issuedBy"].as_string().label("issued_by"),
        result.image_metadata["appOrDeviceUsed"].as_string().label("app_or_device"),
        scan.last_error,
        scan.run_id,
    ]
    query = (
        select(*columns)
        .select_from(
            images.join(audit_scans, scan.scan_id == image.scan_id).outerjoin(
                audit_results, result.scan_id == image.scan_id
            )
        )
        .order_by(image.image_id, image.scan_id)
    )
    names = [column.key for column in query.selected_columns]
    for part in _driver_rows(conn, query, chunk_size):
        # columns by numpy's transpose (object arrays, which Arrow converts faster than lists)
        yield dict(zip(names, np.array(part, dtype=object).T, strict=True))


def _driver_rows(conn: Connection, query, chunk_size: int) -> Iterator[list[tuple]]:
    """``query``'s rows as the driver gives them, ``chunk_size`` at a time, on ``conn``'s transaction (its
    temporary tables in sight); on PostgreSQL from a server-side cursor, so memory stays flat.

    SQLAlchemy's row objects are skipped (they cost as much as the query, and the export types every
    column itself). The query's parameters are constants of the code (JSON paths): it is compiled with
    them inline.
    """
    sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    driver = conn.connection.driver_connection
    postgres = conn.dialect.name == "postgresql"
    cursor = driver.cursor(name="image_audit_report_export") if postgres else driver.cursor()
    try:  # a consumer that stops early still closes the cursor (SQLite locks the table till then)
        cursor.execute(sql)
        while part := cursor.fetchmany(chunk_size):
            yield part
    finally:
        cursor.close()


def data_interval(conn: Connection, scope: Scope):
    """The run's data interval as its scans recorded it (the latest, when adopted scans carry older ones)."""
    scan = audit_scans.c
    return conn.execute(
        select(func.max(scan.data_interval_start), func.max(scan.data_interval_end)).where(scope.where())
    ).one()


# --- reshaping the cube (pandas) ----------------------------------------------------------------------


def state_counts(cube: pd.DataFrame) -> dict[str, int]:
    counts = cube.groupby("state")["images"].sum() if len(cube) else pd.Series(dtype="int64")
    return {state: int(counts.get(state, 0)) for state in STATES}


def verdict_counts(cube: pd.DataFrame) -> dict[str, int]:
    done = cube[cube["state"] == ScanState.COMPLETED.value]
    counts = done.groupby("verdict")["images"].sum() if len(done) else pd.Series(dtype="int64")
    return {verdict: int(counts.get(verdict, 0)) for verdict in VERDICTS}


def breakdown(cube: pd.DataFrame, by: str) -> pd.DataFrame:
    """Images per ``by`` (``source`` or ``day``): outcome, verdict and AI-share columns, one row each."""
    columns = ["images", *STATES, *VERDICTS, "ai_sum"]
    if cube.empty:
        return pd.DataFrame(columns=[*columns, "ai_share", "mean_ai"]).rename_axis(by)
    per_state = cube.pivot_table(index=by, columns="state", values="images", aggfunc="sum", fill_value=0)
    done = cube[cube["state"] == ScanState.COMPLETED.value]
    per_verdict = done.pivot_table(index=by, columns="verdict", values="images", aggfunc="sum", fill_value=0)
    table = pd.DataFrame(index=per_state.index)
    table["images"] = per_state.sum(axis=1)
    for state in STATES:
        table[state] = per_state.get(state, 0)
    per_verdict = per_verdict.reindex(table.index, fill_value=0)
    for verdict in VERDICTS:
        table[verdict] = per_verdict.get(verdict, 0)
    table["ai_sum"] = done.groupby(by)["ai_sum"].sum().reindex(table.index, fill_value=0.0)
    table = table.fillna(0)
    for column in ["images", *STATES, *VERDICTS]:
        table[column] = table[column].astype("int64")
    completed = table[ScanState.COMPLETED.value].where(table[ScanState.COMPLETED.value] > 0)
    table["ai_share"] = table[Verdict.AI_GENERATED.value] / completed
    table["mean_ai"] = table["ai_sum"] / completed
    order = table.sort_index()
    if by != "day":
        order = order.sort_values("images", ascending=False, kind="stable")
    return order.rename_axis(by)
