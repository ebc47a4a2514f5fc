"""The warehouse side of a report: every number is a SQL ``GROUP BY``; pandas only reshapes small results.

An image can have several scans in a run (a timed-out attempt, then a new one; a catalog row rejected as a
duplicate of a valid one). :func:`resolved_images` keeps one row per image: its latest completed scan,
else its latest scan that was not a rejection, else its rejection. Masks are never read here, only their
area (summed inside the database); the few masks a report draws are read by :func:`load_masks`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import (
    Connection,
    Float,
    Integer,
    Select,
    and_,
    case,
    cast,
    func,
    literal_column,
    or_,
    select,
)

from image_audit.reporting.verdicts import Thresholds, Verdict, verdict_sql
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.schema import audit_results, audit_scans

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


def _mask_pixels(dialect: str):
    """Number of AI pixels of ``audit_results.mask_lengths``: the sum of the JSON list, in the database."""
    if dialect == "postgresql":
        sql = (
            "(SELECT COALESCE(SUM(value::bigint), 0) "
            "FROM json_array_elements_text(audit_results.mask_lengths) AS value)"
        )
    else:
        sql = "(SELECT COALESCE(SUM(value), 0) FROM json_each(audit_results.mask_lengths))"
    return literal_column(sql, type_=Integer)


def _utc_day(column, dialect: str):
    """``YYYY-MM-DD`` of a timestamp in UTC (SQLite stores UTC wall time as text)."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.substr(column, 1, 10)


def _floor(expression, dialect: str):
    # CAST truncates on SQLite (the values are >= 0, so it floors) but rounds on PostgreSQL.
    return cast(func.floor(expression) if dialect == "postgresql" else expression, Integer)


def _histogram_bin(ai, dialect: str):
    return case((ai >= 1.0, HISTOGRAM_BINS - 1), else_=_floor(ai * HISTOGRAM_BINS, dialect))


# --- the one-row-per-image subquery ----------------------------------------------------------------


def _ranked(scope: Scope):
    s = audit_scans.c
    image_key = case(
        (func.trim(s.image_id) == "", s.scan_id), else_=s.image_id
    )  # rows without an id: each its own
    preference = case(
        (s.state == ScanState.COMPLETED.value, 0), (s.state != ScanState.REJECTED.value, 1), else_=2
    )
    return (
        select(
            s.scan_id.label("ranked_scan_id"),
            func.row_number()
            .over(
                partition_by=image_key,
                order_by=[preference, s.attempt.desc(), s.updated_at.desc(), s.scan_id.desc()],
            )
            .label("rank"),
            func.sum(case((s.state != ScanState.REJECTED.value, 1), else_=0))
            .over(partition_by=image_key)
            .label("attempts"),
        )
        .where(scope.where())
        .subquery("ranked")
    )


def resolved_images(scope: Scope, thresholds: Thresholds, dialect: str):
    """One row per image of ``scope`` (see the module docstring), with its verdict and mask area."""
    ranked = _ranked(scope)
    s, r = audit_scans.c, audit_results.c
    completed = and_(s.state == ScanState.COMPLETED.value, r.scan_id.is_not(None))
    pixels = cast(r.width, Float) * r.height
    mask_area = case(
        (and_(r.scan_id.is_not(None), pixels > 0), cast(_mask_pixels(dialect), Float) / pixels), else_=None
    )
    query = (
        select(
            s.image_id,
            s.scan_id,
            s.attempt,
            ranked.c.attempts,
            s.state,
            verdict_sql(completed, r.ai, mask_area, thresholds).label("verdict"),
            r.ai,
            r.human,
            mask_area.label("mask_area"),
            r.width,
            r.height,
            s.model,
            s.source,
            s.file_name,
            s.url,
            s.ingested_at,
            _utc_day(s.ingested_at, dialect).label("ingest_day"),
            s.submitted_at,
            r.received_at,
            r.actual_credits,
            s.expected_credits,
            s.sandbox,
            r.image_metadata,
            s.last_error,
            s.run_id,
        )
        .select_from(
            ranked.join(audit_scans, s.scan_id == ranked.c.ranked_scan_id).outerjoin(
                audit_results, r.scan_id == s.scan_id
            )
        )
        .where(ranked.c.rank == 1)
    )
    return query.subquery("images")


# --- aggregates ---------------------------------------------------------------------------------------


def outcome_cube(conn: Connection, scope: Scope, thresholds: Thresholds) -> pd.DataFrame:
    """Images per (state, verdict, source, ingest day), with the sum of their AI proportions.

    Small whatever the run's size (states x verdicts x sources x days); every breakdown is cut from it.
    """
    images = resolved_images(scope, thresholds, conn.dialect.name)
    c = images.c
    query = select(
        c.state,
        c.verdict,
        c.source,
        c.ingest_day,
        func.count().label("images"),
        func.coalesce(func.sum(c.ai), 0.0).label("ai_sum"),
    ).group_by(c.state, c.verdict, c.source, c.ingest_day)
    frame = pd.DataFrame(
        conn.execute(query).all(), columns=["state", "verdict", "source", "day", "images", "ai_sum"]
    )
    frame["source"] = frame["source"].fillna(NO_SOURCE).astype(str)
    frame["day"] = frame["day"].fillna(NO_DAY).astype(str)
    frame["images"] = frame["images"].astype("int64")
    frame["ai_sum"] = frame["ai_sum"].astype("float64")
    return frame


def ai_histogram(conn: Connection, scope: Scope, thresholds: Thresholds) -> dict[str, list[int]]:
    """Completed images per AI-proportion bucket (``HISTOGRAM_BINS`` equal buckets over [0, 1]), per verdict.

    Per verdict because the mask rule can make an image under ``partly_ai`` partly AI.
    """
    images = resolved_images(scope, thresholds, conn.dialect.name)
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
    s, r = audit_scans.c, audit_results.c
    query = (
        select(
            func.count().label("scan_rows"),
            func.sum(case((s.state == ScanState.REJECTED.value, 1), else_=0)).label("rejected_rows"),
            func.sum(case((s.state.in_(SENT_STATES), 1), else_=0)).label("sent"),
            func.sum(case((s.state.in_(SENT_STATES), s.expected_credits), else_=0)).label("expected"),
            func.sum(r.actual_credits).label("actual"),
            func.sum(r.expected_credits).label("copyleaks_expected"),
            func.count(r.scan_id).label("results"),
            func.sum(case((and_(s.sandbox, s.state.in_(SENT_STATES)), 1), else_=0)).label("sandbox"),
        )
        .select_from(audit_scans.outerjoin(audit_results, r.scan_id == s.scan_id))
        .where(scope.where())
    )
    row = conn.execute(query).one()._mapping
    return {key: int(value or 0) for key, value in row.items()}


def _issues(scope: Scope):
    """Rejected rows (all of them), and images whose outcome is failed or timed out."""
    ranked = _ranked(scope)
    s = audit_scans.c
    condition = or_(
        s.state == ScanState.REJECTED.value,
        and_(ranked.c.rank == 1, s.state.in_([ScanState.FAILED.value, ScanState.TIMED_OUT.value])),
    )
    source = ranked.join(audit_scans, s.scan_id == ranked.c.ranked_scan_id)
    return source, condition


def issue_reasons(conn: Connection, scope: Scope, limit: int = 25) -> pd.DataFrame:
    """The most frequent (state, reason) pairs among the issues."""
    source, condition = _issues(scope)
    s = audit_scans.c
    query = (
        select(s.state, s.last_error, func.count().label("rows"))
        .select_from(source)
        .where(condition)
        .group_by(s.state, s.last_error)
        .order_by(func.count().desc(), s.state, s.last_error)
        .limit(limit)
    )
    return pd.DataFrame(conn.execute(query).all(), columns=["state", "reason", "rows"])


def issue_rows(conn: Connection, scope: Scope, limit: int = 200) -> tuple[pd.DataFrame, int]:
    """Up to ``limit`` issue rows (failed and timed out first), and how many there are in all."""
    source, condition = _issues(scope)
    s = audit_scans.c
    total = conn.execute(select(func.count()).select_from(source).where(condition)).scalar_one()
    order = case((s.state == ScanState.FAILED.value, 0), (s.state == ScanState.TIMED_OUT.value, 1), else_=2)
    columns = [s.state, s.image_id, s.scan_id, s.attempt, s.source, s.file_name, s.url, s.ingested_at]
    query = (
        select(*columns, s.last_error.label("reason"))
        .select_from(source)
        .where(condition)
        .order_by(order, s.image_id, s.scan_id)
        .limit(limit)
    )
    result = conn.execute(query)
    return pd.DataFrame(result.all(), columns=list(result.keys())), int(total)


def most_ai_images(conn: Connection, scope: Scope, thresholds: Thresholds, limit: int) -> pd.DataFrame:
    """The ``limit`` completed images with the highest AI proportion (no masks)."""
    images = resolved_images(scope, thresholds, conn.dialect.name)
    c = images.c
    query: Select = (
        select(
            c.image_id,
            c.scan_id,
            c.ai,
            c.mask_area,
            c.verdict,
            c.width,
            c.height,
            c.source,
            c.file_name,
            c.url,
            c.ingested_at,
            c.model,
        )
        .where(c.state == ScanState.COMPLETED.value)
        .order_by(c.ai.desc(), c.mask_area.desc(), c.image_id)
        .limit(limit)
    )
    rows = conn.execute(query).mappings().all()
    return pd.DataFrame([dict(row) for row in rows])


def load_masks(conn: Connection, scan_ids: Sequence[str]) -> dict[str, tuple[list[int], list[int]]]:
    """The RLE masks of a few scans (the thumbnails'), by scan id."""
    if not scan_ids:
        return {}
    r = audit_results.c
    query = select(r.scan_id, r.mask_starts, r.mask_lengths).where(r.scan_id.in_(list(scan_ids)))
    return {scan_id: (starts, lengths) for scan_id, starts, lengths in conn.execute(query)}


def iter_image_rows(
    conn: Connection, scope: Scope, thresholds: Thresholds, chunk_size: int = 20_000
) -> Iterator[pd.DataFrame]:
    """Every image of the scope, in chunks (a server-side cursor on PostgreSQL)."""
    images = resolved_images(scope, thresholds, conn.dialect.name)
    query = select(images).order_by(images.c.image_id, images.c.scan_id)
    result = conn.execution_options(stream_results=True, yield_per=chunk_size).execute(query)
    columns = list(result.keys())
    for part in result.partitions():
        yield pd.DataFrame([tuple(row) for row in part], columns=columns)


def data_interval(conn: Connection, scope: Scope):
    """The run's data interval as its scans recorded it (the latest, when adopted scans carry older ones)."""
    s = audit_scans.c
    return conn.execute(
        select(func.max(s.data_interval_start), func.max(s.data_interval_end)).where(scope.where())
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
