"""A night's cost against the warehouse's history: the same 10,000-image night planned, polled, closed
and reported on an empty warehouse and on one holding 10,000,000 earlier scans, side by side.

The history is what earlier nights leave: catalog rows, completed scans with their results, and the
analytics model over them (recomputed once, as the migration's back-fill does), spread over the 100
days before the night. It is generated in the database by SQL (a recursive CTE on SQLite,
``generate_series`` on PostgreSQL). The night runs the pipeline's own code: ``plan_run``, the submit
task's state change, the trigger's poll query, the receiver's ``store_callbacks`` with the emulator's
detection bodies, ``close_run``'s steps, ``build_run_report``, and the trends page (read and rendered).
Each step runs on both warehouses before the next (the report's builds alternating between them), the
order of the two alternating from night to night.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from bench.callbacks import MODEL
from bench.common import postgres_admin_url, report, warehouse
from image_audit.warehouse.engine import get_engine

DAG_ID = "bench_history"
START = datetime(2026, 11, 20, tzinfo=UTC)
#: Nights measured on each warehouse, one after the other (START, START + 1 day, ...): each step's figure
#: is its median over them.
NIGHTS = 3
HISTORY_DAYS = 100
SOURCES = ("partner-feed", "user-uploads", "stock", "marketing", "archive")
#: A step of the night may take this much longer with the history than without it.
TARGET_RATIO = 1.2
#: The trends page's target, with the history in the model.
TRENDS_TARGET_SECONDS = 1.0
POLLS = 21
REPORT_BUILDS = 3
#: A small night run first on a warehouse of its own, so neither measured night pays first-use costs.
WARM_UP_NIGHT = 200
#: The report's target: its build time grows by at most 10% with the history.
REPORT_TARGET_RATIO = 1.1


def _history_sql(dialect: str, count: int) -> list[str]:
    """Statements that add ``count`` earlier images (catalog row, completed scan, result) to the tables."""
    start = START - timedelta(days=HISTORY_DAYS)
    per_day = -(-count // HISTORY_DAYS)
    day = f"((g.n - 1) / {per_day})"
    if dialect == "postgresql":
        rows = f"FROM generate_series(1, {count}) AS g(n)"
        ident = "'h-' || lpad(g.n::text, 9, '0')"
        first = f"TIMESTAMPTZ '{start.isoformat()}'"
        when = f"({first} + {day} * INTERVAL '1 day' + (g.n % 86400) * INTERVAL '1 second')"
        done = f"({first} + ({day} + 1) * INTERVAL '1 day')"
        run = f"'scheduled__' || to_char({done}, 'YYYY-MM-DD')"
    else:
        numbers = f"WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {count})"
        rows = f"FROM ({numbers} SELECT n FROM g) AS g"
        ident = "'h-' || substr('000000000' || g.n, -9, 9)"
        first = f"'{start.strftime('%Y-%m-%d %H:%M:%S')}'"
        when = (
            f"(datetime({first}, '+' || {day} || ' days', '+' || (g.n % 86400) || ' seconds') || '.000000')"
        )
        done = f"(datetime({first}, '+' || ({day} + 1) || ' days') || '.000000')"
        run = f"'scheduled__' || substr({done}, 1, 10)"
    sources = " ".join(f"WHEN {i} THEN '{name}'" for i, name in enumerate(SOURCES))
    source = f"CASE g.n % {len(SOURCES)} {sources} END"
    url = f"'https://cdn.example.com/h/' || {ident} || '.jpg'"
    ai = "((g.n * 37) % 100) / 100.0"
    return [
        "INSERT INTO image_catalog (image_id, url, file_name, source, ingested_at) "
        f"SELECT {ident}, {url}, {ident} || '.jpg', {source}, {when} {rows}",
        "INSERT INTO audit_scans (scan_id, image_id, model, attempt, state, url, file_name, source, "
        "ingested_at, batch_id, dag_id, run_id, sandbox, expected_credits, created_at, updated_at, "
        "submitted_at, completed_at) "
        f"SELECT {ident} || '-1', {ident}, '{MODEL}', 1, 'completed', {url}, {ident} || '.jpg', {source}, "
        f"{when}, 'hb-' || (g.n / 500), '{DAG_ID}', {run}, false, 1, {done}, {done}, {done}, {done} {rows}",
        "INSERT INTO audit_results (scan_id, ai, human, model, width, height, mask_starts, mask_lengths, "
        "actual_credits, expected_credits, received_at, raw_body, mask_pixels) "
        f"SELECT {ident} || '-1', {ai}, 1 - {ai}, '{MODEL}', 640, 480, '[]', '[]', 1, 1, {done}, '{{}}', 0 "
        f"{rows}",
    ]


def seed_history(url: str, count: int) -> dict:
    """Add ``count`` earlier images to the (migrated) warehouse at ``url`` and build the model over
    them; returns the seconds each part took."""
    from image_audit.warehouse.analytics import refresh_all

    engine = get_engine(url)
    started = time.perf_counter()
    if count:
        with engine.begin() as conn:
            for statement in _history_sql(engine.dialect.name, count):
                conn.execute(text(statement))
    seeded = time.perf_counter()
    _analyze(engine)
    with engine.begin() as conn:
        refresh_all(conn)
    _analyze(engine)
    return {
        "seed_seconds": round(seeded - started, 1),
        "model_seconds": round(time.perf_counter() - seeded, 1),
    }


def _analyze(engine) -> None:
    """The statistics a live warehouse keeps (autovacuum on PostgreSQL, ``ANALYZE`` on SQLite), and on
    SQLite the write-ahead log checkpointed, as it is long after the history was written (else the
    first connection the night closes copies the seeding's pages into the database)."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def run_id(night: int) -> str:
    return f"scheduled__{(START + timedelta(days=night + 1)).date()}T00:00:00+00:00"


def seed_night(url: str, count: int, night: int = 0) -> None:
    """Night ``night``'s ``count`` catalog rows, ingested in its day (START + ``night`` days)."""
    day = START + timedelta(days=night)
    from image_audit.warehouse.schema import image_catalog

    rows = [
        {
            "image_id": f"n{night}-{i:07d}",
            "url": f"https://cdn.example.com/catalog/img-{i % 64:05d}.jpg?n={i}",
            "file_name": f"img-{i % 64:05d}.jpg",
            "source": SOURCES[i % len(SOURCES)],
            "ingested_at": day + timedelta(seconds=86_400 * (i + 0.5) / count),
        }
        for i in range(count)
    ]
    with get_engine(url).begin() as conn:
        conn.execute(image_catalog.insert(), rows)


async def _deliver(url: str, scan_ids: list[str]) -> None:
    """The night's webhooks (the emulator's detection bodies), stored by the receiver's code."""
    from copyleaks_emulator.detector import decode, detect
    from copyleaks_emulator.samples import sample_image
    from copyleaks_provider.models import WebhookBody
    from copyleaks_provider.webhooks.callbacks import Callback
    from image_audit.warehouse.engine import create_async_warehouse_engine
    from image_audit.warehouse.results import store_callbacks

    images = [decode(sample_image(f"img-{i:05d}.jpg")[0]) for i in range(64)]
    engine = create_async_warehouse_engine(url, write_transactions=True)
    try:
        for offset in range(0, len(scan_ids), 2_000):
            callbacks = []
            for k, scan_id in enumerate(scan_ids[offset : offset + 2_000]):
                raw = detect(images[(offset + k) % 64], scan_id, model=MODEL)
                callbacks.append(Callback(scan_id, WebhookBody.model_validate(raw), raw))
            await store_callbacks(engine, callbacks)
    finally:
        await engine.dispose()


async def _polls(url: str, run: str) -> list[float]:
    """The trigger's poll of the run (``waiting_counts_by_run``), ``POLLS`` times."""
    from image_audit.warehouse.engine import create_async_warehouse_engine
    from image_audit.warehouse.progress import waiting_counts_by_run

    engine = create_async_warehouse_engine(url)
    seconds = []
    try:
        for _ in range(POLLS):
            started = time.perf_counter()
            await waiting_counts_by_run(engine, [(DAG_ID, run)])
            seconds.append(time.perf_counter() - started)
    finally:
        await engine.dispose()
    return seconds


def run_night(urls: list[str], out_dir: Path, night: int = 0) -> dict[str, dict]:
    """Night ``night`` through the pipeline's code on each warehouse of ``urls``, side by side: each step
    runs on every warehouse before the next step starts, and the report's builds alternate between them,
    so a noisy moment on the machine falls on both. Returns each warehouse's seconds per step."""
    from sqlalchemy import select, update

    from bench.report import _fetcher
    from image_audit.notifications.changes import run_changes
    from image_audit.planning import PlanOptions, RunContext, plan_run
    from image_audit.planning.catalog import CatalogSpec
    from image_audit.reporting import build_run_report
    from image_audit.ui.trends import read_trends, render_trends
    from image_audit.warehouse.analytics import LATE_COMMIT_MARGIN, refresh_changed
    from image_audit.warehouse.lifecycle import ScanState
    from image_audit.warehouse.progress import mark_timed_out, release_unsubmitted
    from image_audit.warehouse.scans import record_transitions
    from image_audit.warehouse.schema import analytics_refresh, audit_scans

    figures: dict[str, dict] = {url: {} for url in urls}
    scan_ids: dict[str, list[str]] = {}
    day, night_run = START + timedelta(days=night), run_id(night)

    for url in urls:
        started = time.perf_counter()
        plan = plan_run(
            get_engine(url),
            CatalogSpec(),
            RunContext(DAG_ID, night_run, day, day + timedelta(days=1)),
            PlanOptions(model=MODEL),
        )
        figures[url]["plan"] = time.perf_counter() - started
        figures[url]["planned"] = plan.planned

    for url in urls:
        with get_engine(url).connect() as conn:
            scan = audit_scans.c
            of_run = select(scan.scan_id).where(scan.dag_id == DAG_ID, scan.run_id == night_run)
            scan_ids[url] = list(conn.execute(of_run).scalars())
        submitted = [(scan_id, ScanState.SUBMITTED, None) for scan_id in scan_ids[url]]
        record_transitions(get_engine(url), submitted)
    for url in urls:
        figures[url]["poll"] = statistics.median(asyncio.run(_polls(url, night_run)))

    for url in urls:
        started = time.perf_counter()
        asyncio.run(_deliver(url, scan_ids[url]))
        figures[url]["store results"] = time.perf_counter() - started

    for url in urls:
        engine = get_engine(url)
        started = time.perf_counter()
        release_unsubmitted(engine, DAG_ID, night_run)
        mark_timed_out(engine, DAG_ID, night_run, "the run ended before its result arrived")
        with engine.begin() as conn:
            refresh_changed(conn)
            run_changes(conn, DAG_ID, night_run, {"alert_change_points": 10})
        figures[url]["close_run"] = time.perf_counter() - started

    builds: dict[str, list[float]] = {url: [] for url in urls}
    for _ in range(REPORT_BUILDS):  # a rebuild writes the same report: the median is the night's figure
        for url in urls:
            started = time.perf_counter()
            built = build_run_report(
                get_engine(url), DAG_ID, night_run, out_dir=str(out_dir), fetch_image=_fetcher()
            )
            builds[url].append(time.perf_counter() - started)
            figures[url]["completed"] = built.summary["completed"]
    for url in urls:
        figures[url]["report"] = statistics.median(builds[url])

    for url in urls:
        started = time.perf_counter()
        with get_engine(url).connect() as conn:
            trends = read_trends(conn, days=90, today=day.date() + timedelta(days=1))
        render_trends(DAG_ID, trends, 90)
        figures[url]["trends page"] = time.perf_counter() - started

    # The next night comes a day later: its close_run re-reads only scans written in the model's
    # late-commit margin before it, never this night's, which minutes on this clock would re-read.
    for url in urls:
        with get_engine(url).begin() as conn:
            read = datetime.now(UTC) + LATE_COMMIT_MARGIN
            conn.execute(update(analytics_refresh).values(scans_updated_before=read))
    return figures


STEPS = ("plan", "poll", "store results", "close_run", "report", "trends page")


def main(history: int = 10_000_000, night: int = 10_000, backends: list[str] | None = None) -> dict:
    """``backends``: the warehouses to measure (default: SQLite, and PostgreSQL when its URL is set)."""
    available = ["sqlite"] + (["postgres"] if postgres_admin_url() else [])
    if backends is None:
        backends = available
    elif missing := sorted(set(backends) - set(available)):
        raise SystemExit(f"no {', '.join(missing)} warehouse to measure: set IMAGE_AUDIT_BENCH_POSTGRES_URL")
    figures: dict = {
        "night": f"{night} images",
        "history": f"{history} earlier scans over {HISTORY_DAYS} days",
    }
    targets = []
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        for backend in backends:
            with warehouse(backend, Path(tmp)) as empty, warehouse(backend, Path(tmp)) as full:
                seeded = seed_history(full, history)
                seed_history(empty, 0)
                with warehouse(backend, Path(tmp)) as warm_up:  # first-use costs (imports, caches)
                    seed_night(warm_up, WARM_UP_NIGHT)
                    run_night([warm_up], Path(tmp) / f"{backend}-warm-up")
                nights: dict[str, list[dict]] = {empty: [], full: []}
                for k in range(NIGHTS):  # side by side, the order alternating from night to night
                    order = [empty, full] if k % 2 == 0 else [full, empty]
                    for url in order:
                        seed_night(url, night, k)
                        _analyze(get_engine(url))
                    for url, figures_of_night in run_night(order, Path(tmp) / f"{backend}-{k}", k).items():
                        nights[url].append(figures_of_night)
                without, with_history = (
                    {step: statistics.median(n[step] for n in nights[url]) for step in (*STEPS, "completed")}
                    for url in (empty, full)
                )
            figures[f"{backend} history"] = (
                f"seeded in {seeded['seed_seconds']} s, model built in {seeded['model_seconds']} s"
            )
            for step in STEPS:
                ratio = with_history[step] / without[step] if without[step] else float("inf")
                figures[f"{backend} {step}"] = (
                    f"{with_history[step]:.3f} s with the history, {without[step]:.3f} s without: "
                    f"{ratio:.2f}x"
                )
                if step in ("plan", "poll", "close_run", "report"):
                    bound = REPORT_TARGET_RATIO if step == "report" else TARGET_RATIO
                    targets.append((f"{backend} {step} within {bound}x", ratio <= bound))
            targets.append(
                (
                    f"{backend} trends page (90 days read and rendered) < {TRENDS_TARGET_SECONDS:g} s "
                    "with the history",
                    with_history["trends page"] < TRENDS_TARGET_SECONDS,
                )
            )
            figures[f"{backend} completed"] = f"{with_history['completed']} / {without['completed']}"
    if "postgres" not in available:
        print("  (PostgreSQL figures skipped: set IMAGE_AUDIT_BENCH_POSTGRES_URL)")
    return report("history", figures, targets)


def _cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=10_000_000, help="earlier scans in the warehouse")
    parser.add_argument("--night", type=int, default=10_000, help="images of the night")
    parser.add_argument(
        "--backend", action="append", choices=["sqlite", "postgres"], help="only this warehouse (repeatable)"
    )
    args = parser.parse_args()
    main(args.history, args.night, args.backend)


if __name__ == "__main__":
    _cli()
