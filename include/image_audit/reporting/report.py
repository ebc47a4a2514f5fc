"""``build_run_report``: the analysts' report of one DAG run (HTML, CSV, Parquet and the warehouse row)."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd
from airflow.sdk import ObjectStoragePath
from sqlalchemy import Connection, Engine, func, select

from copyleaks_provider.models import MAX_IMAGE_PIXELS, check_rle_bounds, decode_rle_mask
from image_audit.reporting import aggregates, charts
from image_audit.reporting.aggregates import HISTOGRAM_BINS, Scope
from image_audit.reporting.backlog import backlog_by_reason, backlog_summary, describe_backlog
from image_audit.reporting.exports import EXPORT_COLUMNS, redact_url, write_exports
from image_audit.reporting.fetch import http_fetcher
from image_audit.reporting.overlays import (
    THUMBNAIL_SIZE,
    overlay_thumbnail,
    placeholder,
    thumbnail_size,
    to_data_uri,
)
from image_audit.reporting.render import render_report
from image_audit.reporting.storage import as_storage_path, reports_base, staged, uri
from image_audit.warehouse.engine import dialect_insert
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.schema import audit_reports
from image_audit.warehouse.verdicts import VERDICT_LABELS, Thresholds, Verdict

log = logging.getLogger(__name__)

HTML_NAME, CSV_NAME, PARQUET_NAME = "report.html", "results.csv", "results.parquet"
#: Rows of the issues table in the HTML (all of them are in the CSV and the warehouse).
ISSUE_ROWS_SHOWN = 200
#: Sources and days kept in the stored summary (the HTML and the exports have them all).
SUMMARY_GROUPS = 31
#: The sources the "Last N runs" section follows run by run (those with the most images over the runs).
SOURCES_PER_RUN_TREND = 6
FETCH_WORKERS = 4
#: The time all of a report's thumbnails may take to fetch; an image not fetched by then is a placeholder.
THUMBNAILS_FETCH_SECONDS = 60.0
#: What the thumbnail of a stored result that cannot be drawn (shape, mask) says instead.
INVALID_RESULT_TEXT = "result data invalid"


@dataclass
class RunReport:
    """A built report. Its files are ``ObjectStoragePath``s (``read_text()``, ``open()`` on any store);
    :attr:`uris` are what the ``audit_reports`` row and the Asset event carry."""

    dag_id: str
    run_id: str
    summary: dict
    html_path: ObjectStoragePath
    csv_path: ObjectStoragePath
    parquet_path: ObjectStoragePath

    @property
    def uris(self) -> dict[str, str]:
        """The files' URIs (``file:///...``, ``s3://bucket/...``) by the row's column names."""
        return {
            "html_path": uri(self.html_path),
            "csv_path": uri(self.csv_path),
            "parquet_path": uri(self.parquet_path),
        }


@dataclass(frozen=True)
class AccountBalance:
    """The Copyleaks account's credit balance when the run was planned and when its report is written,
    and Copyleaks' usage history of those days (used less refunded; None: not readable)."""

    before: int
    after: int
    usage_history: int | None = None

    def reconciled(self, reported: int) -> dict:
        """What the account spent, against the credits the run's scans report (``actualCredits``):
        ``unreconciled`` when they differ (another run or user of the account, or a charge no scan
        reported)."""
        spent = self.before - self.after
        return {
            "before": self.before,
            "after": self.after,
            "spent": spent,
            "usage_history": self.usage_history,
            "reported_by_scans": reported,
            "unreconciled": spent != reported,
        }


@dataclass
class _Thumbnail:
    image_id: str
    scan_id: str
    ai: float
    mask_area: float | None
    verdict: str
    source: str | None
    file_name: str | None
    url: str | None
    width: int
    height: int
    data_uri: str = ""
    drawn: bool = False
    #: The stored result cannot be drawn (a shape over Copyleaks' maximum, a mask outside its image).
    result_invalid: bool = False
    display_size: tuple[int, int] = field(default=(0, 0))


def safe_run_id(run_id: str) -> str:
    """A directory name for ``run_id`` (``manual__2026-11-24T10:00:00+00:00`` has ``:`` and ``+``)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._") or "run"
    if safe != run_id:
        safe = f"{safe[:180]}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"
    return safe


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 6) if whole else None


def _iso(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


def _clean(value):
    """JSON-able scalars (numpy and NaN free)."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


def _group_summary(table: pd.DataFrame) -> dict:
    keep = ["images", "completed", *aggregates.VERDICTS, "failed", "timed_out", "rejected"]
    return {
        str(name): {key: int(row[key]) for key in keep} | {"ai_share": _clean(row["ai_share"])}
        for name, row in table.head(SUMMARY_GROUPS).iterrows()
    }


def _summary(scope, states, verdicts, histogram, credit, by_source, by_day, thresholds, interval) -> dict:
    completed = states[ScanState.COMPLETED.value]
    flagged = verdicts[Verdict.AI_GENERATED.value] + verdicts[Verdict.PARTLY_AI.value]
    ai_sum = float(by_source["ai_sum"].sum()) if len(by_source) else 0.0
    return {
        "dag_id": scope.dag_id,
        "run_id": scope.run_ids[0],
        "data_interval_start": _iso(interval[0]),
        "data_interval_end": _iso(interval[1]),
        "generated_at": datetime.now(UTC).isoformat(),
        "images": sum(states.values()),
        **{state: count for state, count in states.items()},
        **verdicts,
        "ai_share": _ratio(verdicts[Verdict.AI_GENERATED.value], completed),
        "flagged_share": _ratio(flagged, completed),
        "mean_ai": _ratio(ai_sum, completed),
        "scan_rows": credit["scan_rows"],
        "rejected_rows": credit["rejected_rows"],
        "credits_expected": credit["expected"],
        "credits_actual": credit["actual"],
        "states": states,
        "verdicts": verdicts,
        "thresholds": thresholds.as_dict(),
        "credits": {
            "expected": credit["expected"],
            "actual": credit["actual"],
            "copyleaks_expected": credit["copyleaks_expected"],
            "sent": credit["sent"],
            "results": credit["results"],
            "sandbox_scans": credit["sandbox"],
        },
        "histogram": {
            "bins": HISTOGRAM_BINS,
            "counts": [sum(column) for column in zip(*histogram.values(), strict=True)],
            "by_verdict": histogram,
        },
        "by_source": _group_summary(by_source),
        "by_day": _group_summary(by_day),
    }


def _stored_window(conn: Connection, dag_id: str, run_id: str) -> tuple[float | None, float | None]:
    """The rate and window an earlier build of this run's report recorded (for a rebuild without them)."""
    reports = audit_reports.c
    stored = conn.execute(
        select(reports.summary).where(reports.dag_id == dag_id, reports.run_id == run_id)
    ).scalar()
    recorded = (stored or {}).get("backlog") or {}
    return recorded.get("requests_per_second"), recorded.get("window_minutes")


# --- earlier runs -------------------------------------------------------------------------------------


def _earlier_reports(conn: Connection, dag_id: str, run_id: str, until, limit: int) -> list[dict]:
    """Up to ``limit`` earlier reports of the DAG by data interval (else report time), oldest first."""
    if limit <= 0:
        return []
    reports = audit_reports.c
    when = func.coalesce(reports.data_interval_end, reports.created_at)
    query = select(reports.run_id, reports.summary, reports.data_interval_end, reports.created_at).where(
        reports.dag_id == dag_id, reports.run_id != run_id
    )
    if until is not None:
        query = query.where(when <= until)
    query = query.order_by(when.desc(), reports.run_id.desc()).limit(limit)
    rows = [dict(row) for row in conn.execute(query).mappings()]
    return rows[::-1]


def _trend_frame(earlier: list[dict], summary: dict) -> pd.DataFrame:
    records = []
    for row in [*earlier, {"run_id": summary["run_id"], "summary": summary, "current": True}]:
        run_summary = row["summary"] or {}
        when = run_summary.get("data_interval_end") or _iso(
            row.get("data_interval_end") or row.get("created_at")
        )
        records.append(
            {
                "run_id": row["run_id"],
                "current": bool(row.get("current")),
                "when": pd.to_datetime(when, utc=True) if when else pd.NaT,
                "images": run_summary.get("images"),
                "completed": run_summary.get("completed"),
                **{verdict: run_summary.get(verdict) for verdict in aggregates.VERDICTS},
                "issues": sum(run_summary.get(state) or 0 for state in aggregates.ISSUE_STATES),
                "ai_share": run_summary.get("ai_share"),
                "flagged_share": run_summary.get("flagged_share"),
                "credits_actual": run_summary.get("credits_actual"),
                "credits_expected": run_summary.get("credits_expected"),
            }
        )
    frame = pd.DataFrame.from_records(records)
    days = frame["when"].dt.strftime("%Y-%m-%d")
    frame["label"] = days if days.is_unique else frame["when"].dt.strftime("%m-%d %H:%M")
    frame["label"] = frame["label"].fillna(frame["run_id"].str.slice(0, 16))
    for column in ("ai_share", "flagged_share"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _source_trend_frame(earlier: list[dict], summary: dict, labels: list[str]) -> pd.DataFrame:
    """Per run (rows: ``labels``, oldest first) and source (columns: the ``SOURCES_PER_RUN_TREND`` with
    the most images over the runs), the AI share and the completed images, from the reports' stored
    summaries (``by_source``): ``<source>`` and ``<source> completed`` columns."""
    runs = [*((row["summary"] or {}) for row in earlier), summary]
    shares: dict[str, dict] = {}
    completed: dict[str, dict] = {}
    images: dict[str, int] = {}
    for label, run in zip(labels, runs, strict=True):
        for source, figures in (run.get("by_source") or {}).items():
            shares.setdefault(source, {})[label] = figures.get("ai_share")
            completed.setdefault(source, {})[label] = figures.get("completed")
            images[source] = images.get(source, 0) + (figures.get("images") or 0)
    sources = sorted(images, key=lambda s: (-images[s], s))[:SOURCES_PER_RUN_TREND]
    frame = pd.DataFrame(index=pd.Index(labels, name="run"))
    for source in sources:
        frame[source] = pd.to_numeric(pd.Series(shares[source]).reindex(labels), errors="coerce")
        frame[f"{source} completed"] = pd.Series(completed[source]).reindex(labels)
    frame.attrs["sources"] = sources
    return frame


# --- thumbnails ---------------------------------------------------------------------------------------


def _top_images(conn, images, top_n) -> tuple[list[_Thumbnail], dict]:
    """The thumbnails' images and their masks (the only masks the report decodes)."""
    top = aggregates.most_ai_images(conn, images, top_n) if top_n > 0 else pd.DataFrame()
    if top.empty:
        return [], {}
    masks = aggregates.load_masks(conn, top["scan_id"].tolist())
    items = [
        _Thumbnail(
            image_id=row.image_id,
            scan_id=row.scan_id,
            ai=float(row.ai),
            mask_area=_clean(row.mask_area),
            verdict=row.verdict,
            source=row.source,
            file_name=row.file_name,
            url=row.url,
            width=int(row.width),
            height=int(row.height),
        )
        for row in top.itertuples()
    ]
    return items, masks


def _invalid_result(item: _Thumbnail, runs: tuple[list[int], list[int]]) -> str | None:
    """Why ``item``'s stored result cannot be drawn, None when it can: checked before anything is fetched
    or decoded, as a result stored unvalidated may claim any shape and any run (decoding a 60000x45000
    one would ask for 10 GiB)."""
    width, height = item.width, item.height
    if width <= 0 or height <= 0 or width * height > MAX_IMAGE_PIXELS:
        return f"shape {width}x{height} is outside Copyleaks' 1 to {MAX_IMAGE_PIXELS} pixels"
    starts, lengths = runs
    try:
        check_rle_bounds(starts, lengths, width * height)
        if min(starts, default=0) < 0 or min(lengths, default=0) < 0:
            return "the mask has a negative run"
    except (TypeError, ValueError) as exc:
        return f"the mask does not fit its image ({exc})"
    return None


def _fetch_images(items: list[_Thumbnail], fetch_image, deadline_seconds: float) -> dict[str, bytes]:
    """The images of ``items`` fetched within ``deadline_seconds`` in all, by scan id (one without a URL,
    that failed or was late is missing)."""

    def fetch(item: _Thumbnail) -> bytes | None:
        try:
            return fetch_image(item.url)
        except Exception as exc:  # a missing image never fails the report: it shows a placeholder
            log.warning("Could not fetch image %s for the report (%s)", item.image_id, type(exc).__name__)
            return None

    pool = ThreadPoolExecutor(max_workers=FETCH_WORKERS, thread_name_prefix="report-fetch")
    try:
        futures = {item.scan_id: pool.submit(fetch, item) for item in items if item.url}
        done, late = wait(futures.values(), timeout=deadline_seconds)
    finally:
        # fetches still running end by their own deadline, unwaited; those not started never start
        pool.shutdown(wait=False, cancel_futures=True)
    if late:
        log.warning(
            "%d images not fetched within the report's %s s: placeholders", len(late), deadline_seconds
        )
    return {scan_id: future.result() for scan_id, future in futures.items() if future in done}


def _draw_thumbnails(
    items: list[_Thumbnail], masks: dict, fetch_image, deadline_seconds: float = THUMBNAILS_FETCH_SECONDS
) -> list[_Thumbnail]:
    """Fetch each image and tint its mask over it: a placeholder when it is not fetched in time, one
    saying so when its stored result cannot be drawn (one scan's data never fails the report)."""
    for item in items:
        problem = _invalid_result(item, masks.get(item.scan_id, ([], [])))
        if problem is not None:
            log.warning("Thumbnail of scan %s not drawn: %s", item.scan_id, problem)
            item.result_invalid = True
    images = _fetch_images([item for item in items if not item.result_invalid], fetch_image, deadline_seconds)
    for item in items:
        valid_shape = item.width > 0 and item.height > 0
        item.display_size = thumbnail_size(item.width, item.height) if valid_shape else (THUMBNAIL_SIZE,) * 2
        picture = None
        if not item.result_invalid:
            starts, lengths = masks.get(item.scan_id, ([], []))
            try:
                mask = decode_rle_mask(starts, lengths, item.height, item.width)
            except (MemoryError, TypeError, ValueError) as exc:
                log.warning("Thumbnail of scan %s not drawn: %s", item.scan_id, type(exc).__name__)
                item.result_invalid = True
            else:
                picture, item.drawn = overlay_thumbnail(images.get(item.scan_id), mask)
        if picture is None:
            picture = placeholder(item.display_size, INVALID_RESULT_TEXT)
        item.data_uri = to_data_uri(picture)
        item.url = redact_url(item.url)
    return items


# --- the resolved images: aggregates, then the export -------------------------------------------------


@dataclass
class _RunAggregates:
    """What the report reads of its resolved images (besides the export)."""

    cube: pd.DataFrame
    histogram: dict
    reasons: pd.DataFrame
    issues: pd.DataFrame
    issue_total: int
    top: list[_Thumbnail]
    masks: dict


def _resolve_aggregate_export(
    engine: Engine,
    scope: Scope,
    thresholds: Thresholds,
    top_n: int,
    aggregated: Future,
    csv_file,
    parquet_file,
) -> int:
    """On a connection of its own: resolve the scope's images once, set ``aggregated`` to their
    aggregates, then write the export from them; the rows exported."""
    try:
        with engine.connect() as conn, aggregates.materialized_images(conn, scope, thresholds) as images:
            try:
                issues, issue_total = aggregates.issue_rows(conn, scope, images, ISSUE_ROWS_SHOWN)
                top, masks = _top_images(conn, images, top_n)
                aggregated.set_result(
                    _RunAggregates(
                        cube=aggregates.outcome_cube(conn, images),
                        histogram=aggregates.ai_histogram(conn, images),
                        reasons=aggregates.issue_reasons(conn, scope, images),
                        issues=issues,
                        issue_total=issue_total,
                        top=top,
                        masks=masks,
                    )
                )
            except BaseException as exc:
                aggregated.set_exception(exc)
                raise
            return write_exports(aggregates.iter_image_rows(conn, images), csv_file, parquet_file)
    except BaseException as exc:
        if not aggregated.done():  # failed resolving (or connecting): the report's thread waits for it
            aggregated.set_exception(exc)
        raise


# --- warehouse row ------------------------------------------------------------------------------------


def _upsert_report(conn: Connection, row: dict) -> None:
    statement = dialect_insert(conn, audit_reports).values(**row)
    updates = {k: statement.excluded[k] for k in row if k not in ("dag_id", "run_id")}
    conn.execute(statement.on_conflict_do_update(index_elements=["dag_id", "run_id"], set_=updates))


# --- the HTML -----------------------------------------------------------------------------------------


def _render(
    *, scope, thresholds, interval, backlog, cube, histogram, credit, reasons, issues, issue_total,
    thumbnails, top_n, earlier, rolling, files, account_balance=None,
) -> tuple[str, dict]:  # fmt: skip
    """The report's HTML and its summary, from what the warehouse said (no database needed)."""
    states = aggregates.state_counts(cube)
    verdicts = aggregates.verdict_counts(cube)
    by_source = aggregates.breakdown(cube, "source")
    by_day = aggregates.breakdown(cube, "day")
    summary = _summary(scope, states, verdicts, histogram, credit, by_source, by_day, thresholds, interval)
    summary["backlog_scans"] = backlog["scans"]
    summary["backlog"] = backlog
    if account_balance is not None:
        summary["credits"]["balance"] = account_balance.reconciled(summary["credits"]["actual"])
    if rolling:
        summary["rolling"] = rolling
    trend = _trend_frame(earlier, summary)
    source_trend = _source_trend_frame(earlier, summary, trend["label"].tolist())
    sources = source_trend.attrs["sources"]

    issues["url"] = issues["url"].map(redact_url)
    ingested = pd.to_datetime(issues["ingested_at"], utc=True, format="ISO8601").dt.strftime("%Y-%m-%d %H:%M")
    issues["ingested_at"] = ingested.astype(object).where(ingested.notna(), None)
    context = {
        "summary": summary,
        "thresholds": thresholds,
        "rules": thresholds.describe(),
        "states": states,
        "verdicts": verdicts,
        "verdict_labels": {v.value: label for v, label in VERDICT_LABELS.items()},
        "state_colors": charts.STATE_COLORS,
        "verdict_colors": charts.VERDICT_COLORS,
        "by_source": by_source,
        "by_day": by_day,
        "reasons": reasons,
        "issues": issues,
        "issue_total": issue_total,
        "thumbnails": thumbnails,
        "top_n": top_n,
        "trend": trend,
        "source_trend": source_trend,
        "trend_sources": sources,
        "rolling": rolling,
        "backlog": backlog,
        "backlog_eta": describe_backlog(backlog),
        "files": files,
        "export_columns": EXPORT_COLUMNS,
        "charts": {
            "states": charts.counts_chart(
                states, charts.STATE_COLORS, key="states", title="Images per scan state"
            ),
            "verdicts": charts.counts_chart(
                verdicts,
                charts.VERDICT_COLORS,
                {v.value: label for v, label in VERDICT_LABELS.items()},
                key="verdicts",
                title="Verdicts of the completed images",
            ),
            "histogram": charts.histogram_chart(histogram, thresholds),
            "by_source": charts.verdict_breakdown_chart(by_source, "source", key="by-source")
            if len(by_source)
            else None,
            "by_day": charts.verdict_breakdown_chart(by_day, "ingestion day", key="by-day")
            if len(by_day)
            else None,
            "trend": charts.trend_chart(trend) if len(trend) > 1 else None,
            "source_trend": charts.share_lines_chart(
                source_trend.index.tolist(),
                [
                    (source, color, [None if pd.isna(v) else float(v) for v in source_trend[source]])
                    for source, color in charts.source_colors(sources).items()
                ],
                key="source-trend",
                title="AI share per run, by source",
            )
            if len(trend) > 1 and sources
            else None,
        },
    }
    return render_report(context), summary


# --- the report ---------------------------------------------------------------------------------------


def build_run_report(
    engine: Engine,
    dag_id: str,
    run_id: str,
    *,
    out_dir: str | os.PathLike[str] | ObjectStoragePath | None = None,
    thresholds: Thresholds = Thresholds(),
    rolling_runs: int = 10,
    top_n: int = 12,
    fetch_image: Callable[[str], bytes] | None = None,
    fetch_deadline_seconds: float = THUMBNAILS_FETCH_SECONDS,
    data_interval: tuple[datetime, datetime] | None = None,
    requests_per_second: float | None = None,
    window_minutes: float | None = None,
    account_balance: AccountBalance | None = None,
) -> RunReport:
    """Aggregate one run, write its HTML report, CSV and Parquet, and upsert its ``audit_reports`` row.

    Rebuilding a run's report replaces its files and row. ``fetch_image(url)`` gets the thumbnails' images
    (default: :func:`~image_audit.reporting.fetch.http_fetcher`, a vetted HTTP GET with a deadline per
    image); all of them get ``fetch_deadline_seconds``, and an image that fails or is not fetched by then
    shows a placeholder with the mask: the report never fails for it. A stored result that cannot be
    drawn (a shape over Copyleaks' maximum, a mask outside its image) is never decoded: its thumbnail says
    so.
    ``data_interval`` defaults to the one the run's scans recorded (none for a run without scans).
    ``requests_per_second`` (the account's rate, 0: no limit) and ``window_minutes`` (the run's
    submission window, None: none) say when the DAG's backlog clears; both None: the values an earlier
    build of this run's report recorded, if any. ``account_balance``: the account's credits before and
    after the run, reconciled in the report with what its scans report.
    ``out_dir`` (a local path, a URL or an ``ObjectStoragePath``) defaults to
    ``<IMAGE_AUDIT_REPORTS_URL>/<dag_id>/<run id made file-safe>`` (see ``image_audit.reporting.storage``).
    The run's images are resolved once into a temporary table of one of the report's two connections
    (on PostgreSQL the warehouse role needs the TEMPORARY privilege, which every role has by default);
    the other reads, meanwhile, what needs no resolved image.
    """
    if out_dir is None:
        out_dir = reports_base() / dag_id / safe_run_id(run_id)
    out_dir = as_storage_path(out_dir)
    html_path, csv_path, parquet_path = out_dir / HTML_NAME, out_dir / CSV_NAME, out_dir / PARQUET_NAME
    scope = Scope.run(dag_id, run_id)
    fetch_image = fetch_image or http_fetcher()

    # One connection (the side thread's) resolves the run's images once
    # (aggregates.materialized_images), reads every aggregate of them, hands those over, then streams
    # the export on it. Meanwhile this thread reads what needs no resolved image (credits, the
    # backlog, earlier reports) on a second connection, and then draws the thumbnails and the HTML
    # beside the export. Both connections close before the staged files are published (uploaded, for
    # an object store).
    aggregated: Future = Future()
    with (
        staged(csv_path) as csv_file,
        staged(parquet_path) as parquet_file,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="report-export") as exporter,
    ):
        export = exporter.submit(
            _resolve_aggregate_export, engine, scope, thresholds, top_n, aggregated, csv_file, parquet_file
        )
        try:
            with engine.connect() as conn:
                interval = tuple(data_interval or aggregates.data_interval(conn, scope))
                if requests_per_second is None and window_minutes is None:
                    requests_per_second, window_minutes = _stored_window(conn, dag_id, run_id)
                backlog = backlog_summary(
                    backlog_by_reason(conn, dag_id), requests_per_second, window_minutes
                )
                credit = aggregates.credits(conn, scope)
                until = interval[1] or datetime.now(UTC)
                earlier = _earlier_reports(conn, dag_id, run_id, until, rolling_runs - 1)
                rolling = None
                if earlier:
                    rolling_scope = Scope(dag_id, (*[row["run_id"] for row in earlier], run_id))
                    rolling_images = aggregates.resolved_images(rolling_scope, thresholds, conn.dialect.name)
                    rolling_cube = aggregates.outcome_cube(conn, rolling_images)
                    rolling = {
                        "runs": len(rolling_scope.run_ids),
                        "states": aggregates.state_counts(rolling_cube),
                        "verdicts": aggregates.verdict_counts(rolling_cube),
                    }
            run_aggregates = aggregated.result()
            thumbnails = _draw_thumbnails(
                run_aggregates.top, run_aggregates.masks, fetch_image, fetch_deadline_seconds
            )
            html, summary = _render(
                scope=scope,
                thresholds=thresholds,
                interval=interval,
                backlog=backlog,
                cube=run_aggregates.cube,
                histogram=run_aggregates.histogram,
                credit=credit,
                reasons=run_aggregates.reasons,
                issues=run_aggregates.issues,
                issue_total=run_aggregates.issue_total,
                thumbnails=thumbnails,
                top_n=top_n,
                earlier=earlier,
                rolling=rolling,
                files={"csv": csv_path.name, "parquet": parquet_path.name},
                account_balance=account_balance,
            )
        except BaseException:
            export.cancel()  # not started yet: never starts; else it ends, and nothing is published
            raise
        exported = export.result()
    if exported != summary["images"]:  # both read the same resolved images: never, unless a bug
        log.warning("Exported %d images, counted %d: results arrived meanwhile", exported, summary["images"])
    with staged(html_path) as html_file:
        html_file.write_text(html, encoding="utf-8")
    report = RunReport(dag_id, run_id, summary, html_path, csv_path, parquet_path)

    with engine.begin() as conn:
        _upsert_report(
            conn,
            {
                "dag_id": dag_id,
                "run_id": run_id,
                "created_at": datetime.now(UTC),
                "data_interval_start": interval[0],
                "data_interval_end": interval[1],
                "summary": summary,
                **report.uris,
            },
        )
    log.info("Report of %s/%s: %d images, written to %s", dag_id, run_id, summary["images"], uri(out_dir))
    return report
