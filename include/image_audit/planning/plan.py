"""Planning a run: which catalog images this run submits, which it rejects and why, and the batches.

Every decision is recorded in ``audit_scans`` before anything is sent, so a retried or rerun task
finds the same plan and never submits an image twice by accident:
- an image already scanned with the model is skipped (unless ``force_rescan``);
- a scan left ``pending`` without a batch (a cap deferred it, or its run ended before submitting it)
  is adopted by this run with the same scan id;
- a ``timed_out`` scan gets a new attempt (a new scan id), up to ``max_attempts``;
- a bad row is stored as ``rejected`` with its reason, so the report shows it.

Two caps bound what a run submits: ``max_credits`` (the credit budget) and ``max_submissions`` (how
many submissions fit the run's window at the account's request rate: ``image_audit.planning.window``).
A scan past either one stays ``pending`` without a batch, with the reason in ``last_error``, and the
next run takes it. Earlier runs' leftovers are planned before this interval's rows (oldest first), so a
backlog drains first in line instead of waiting behind every new night's ingestions.

Duplicates: a catalog row is rejected when an *accepted* row before it in catalog order
(``image_audit.planning.catalog.catalog_order``) has the same image id (trimmed), "duplicate image id in this
interval", or else the same URL, "duplicate URL: same image as <that row's id>". So the first valid row
of a duplicate set wins, and a row that only collides with rejected rows is accepted.

The planning is set-based, so its memory does not grow with the interval: SQL copies the interval's
rows into temporary tables; only what needs Python goes through it, the hook's request rules for each
row (on SQLite called by SQLite during the copy, through a function registered on the connection; on
PostgreSQL in pages of rows) and the few rows they reject or note; scan ids are hashed in SQL (by a
registered function on SQLite), checked against ``make_scan_id``. SQL in the warehouse decides the
rest (duplicates, earlier attempts, leftovers, the caps, batches) with ``INSERT ... SELECT``,
anti-joins and window functions, on PostgreSQL and SQLite alike, and writes it in one transaction.
Batches fill in planning order: leftovers, then catalog rows; within each block of 1,000 leftovers
(2,000 catalog rows) the scans adopted with their ids come after the new attempts, the order of the
row-at-a-time planner this one replaced (``tests/planning_reference.py``), so a scan lands in the same
batch.

The modules: ``planning_types`` (what a planning is asked and answers), ``planning_tables`` (the
temporary tables, paged through by Python), ``planning_duplicates`` (the duplicate rounds) and
``planning_phases`` (the SQL deciding the rest); this one runs them and writes the decisions.
"""

from __future__ import annotations

import logging

from sqlalchemy import Boolean, Connection, Engine, Table, and_, func, literal, null, or_, select, update

from image_audit.planning.catalog import CatalogSpec
from image_audit.planning.duplicates import DUPLICATE_ID, DUPLICATE_URL, resolve_duplicates
from image_audit.planning.phases import Planner
from image_audit.planning.tables import (
    ADOPT,
    NEW,
    RESUME,
    RETRY,
    SOURCES,
    dialect_insert,
    page_cache,
    plan_batch_ids,
    plan_catalog,
    plan_placed,
    plan_work,
)
from image_audit.planning.types import CREDITS_PER_IMAGE, PlanOptions, RunContext, RunPlan
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.schema import TZ, audit_batches, audit_scans

__all__ = [
    "CREDITS_PER_IMAGE",
    "DUPLICATE_ID",
    "DUPLICATE_URL",
    "PlanOptions",
    "RunContext",
    "RunPlan",
    "finish",
    "plan_run",
]

log = logging.getLogger(__name__)
#: What the plan writes of an ``audit_scans`` row (the rest is the submission's and the result's).
_SCAN_COLUMNS = [c.name for c in audit_scans.columns if c.name not in ("submitted_at", "completed_at")]


def _scans(planner: Planner, source: Table, **values) -> list:
    """The columns of ``audit_scans`` rows written from ``source`` (a temporary table)."""
    run, o = planner.run, planner.options
    row = {
        "model": literal(planner.model),
        "url": source.c.url,
        "file_name": source.c.file_name,
        "source": source.c.source,
        "ingested_at": source.c.ingested_at,
        "fetch_headers_ref": source.c.fetch_headers_ref,
        "batch_id": null(),
        "dag_id": literal(run.dag_id),
        "run_id": literal(run.run_id),
        "data_interval_start": literal(run.interval_start, TZ),
        "data_interval_end": literal(run.interval_end, TZ),
        "sandbox": literal(o.sandbox, Boolean),
        "expected_credits": literal(CREDITS_PER_IMAGE),
        "created_at": literal(planner.now, TZ),
        "updated_at": literal(planner.now, TZ),
        "last_error": null(),
        **values,
    }
    return [row[name].label(name) for name in _SCAN_COLUMNS]


def _insert_scans(planner: Planner, query) -> None:
    statement = dialect_insert(planner.conn, audit_scans).from_select(_SCAN_COLUMNS, query)
    planner.execute(statement.on_conflict_do_nothing(index_elements=["scan_id"]))


def _write_decisions(planner: Planner, admitted) -> None:
    """The plan's rows in ``audit_scans``: the rejected rows, the new attempts, the adoptions."""
    w, p, b, c = plan_work.c, plan_placed.c, plan_batch_ids.c, plan_catalog.c
    counts, size = planner.counts, planner.options.batch_size
    if planner.plan.rejected:  # the catalog's bad rows, in catalog order
        rejected = _scans(
            planner, plan_catalog, scan_id=c.reject_id, image_id=func.coalesce(c.image_id, ""),
            attempt=literal(1), state=literal(ScanState.REJECTED.value), last_error=c.error,
            file_name=func.coalesce(c.named, c.file_name),
        )  # fmt: skip
        _insert_scans(planner, select(*rejected).where(c.error.is_not(None)).order_by(c.pos))
    for phase, source in SOURCES.items():  # new attempts: in batch order, then the deferred ones
        new = {
            "scan_id": planner.new_scan_id(phase),
            "image_id": source.c.image_id,
            "attempt": w.attempt,
            "state": literal(ScanState.PENDING.value),
        }
        if phase == 1:
            new["file_name"] = func.coalesce(c.named, c.file_name)
        rows = plan_work.join(source, and_(source.c.pos == w.pos, w.phase == phase))
        placed = rows.join(plan_placed, and_(p.phase == w.phase, p.pos == w.pos)).join(
            plan_batch_ids, b.batch_no == p.place_no // size
        )
        attempts = w.kind.in_([NEW, RETRY])
        _insert_scans(
            planner,
            select(*_scans(planner, source, **new, batch_id=b.batch_id))
            .select_from(placed)
            .where(attempts)
            .order_by(p.place_no),
        )
        if counts["deferred_new"]:
            deferred = _scans(planner, source, **new, last_error=literal(planner.deferral))
            _insert_scans(
                planner, select(*deferred).select_from(rows).where(attempts, ~admitted).order_by(w.pos)
            )
    a, run = audit_scans.c, planner.run
    if counts["resumed"]:  # adoptions: into this run's batches, with their ids
        adoptions = (
            select(w.adopted_id, b.batch_id)
            .join_from(plan_work, plan_placed, and_(p.phase == w.phase, p.pos == w.pos))
            .join(plan_batch_ids, b.batch_no == p.place_no // size)
            .where(w.kind.in_([ADOPT, RESUME]))
            .subquery()
        )
        planner.execute(
            update(audit_scans)
            .where(a.scan_id == adoptions.c.adopted_id, a.state == ScanState.PENDING.value)
            .values(
                batch_id=adoptions.c.batch_id,
                dag_id=run.dag_id,
                run_id=run.run_id,
                updated_at=planner.now,
                last_error=None,
            )
        )
    if counts["waiting"]:  # a leftover that still waits says which cap holds it back now
        waiting = select(w.adopted_id).where(w.phase == 0, w.kind == ADOPT, ~admitted)
        planner.execute(
            update(audit_scans)
            .where(a.scan_id.in_(waiting), a.batch_id.is_(None))
            .where(or_(a.last_error.is_(None), a.last_error != planner.deferral))
            .values(last_error=planner.deferral, updated_at=planner.now)
        )


def finish(conn: Connection, run: RunContext, plan: RunPlan) -> None:
    """Record the batches' sizes, and list every batch of this run with scans still to submit."""
    this_run = (audit_batches.c.dag_id == run.dag_id) & (audit_batches.c.run_id == run.run_id)
    batch_size = (
        select(func.count()).where(audit_scans.c.batch_id == audit_batches.c.batch_id).scalar_subquery()
    )
    conn.execute(update(audit_batches).where(this_run).values(size=batch_size))
    # Batches of this run not yet fully submitted (a rerun of planning after a crash) are kept too.
    unfinished = (
        select(audit_scans.c.batch_id, func.count())
        .where(
            audit_scans.c.dag_id == run.dag_id,
            audit_scans.c.run_id == run.run_id,
            audit_scans.c.state == ScanState.PENDING.value,
            audit_scans.c.batch_id.is_not(None),
        )
        .group_by(audit_scans.c.batch_id)
    )
    pending = dict(conn.execute(unfinished).tuples().all())
    plan.batch_ids = sorted(pending)
    plan.planned = sum(pending.values())


def plan_run(engine: Engine, spec: CatalogSpec, run: RunContext, options: PlanOptions) -> RunPlan:
    """Read the run's catalog interval, record every decision, and return the batches to submit."""
    with engine.connect() as conn:
        planner = Planner(conn, run, options)
        try:
            with conn.begin(), page_cache(conn, "temp"):  # temporary tables only: no lock
                planner.prepare()
                planner.stage_catalog(spec)
                resolve_duplicates(conn, planner.model)
            with conn.begin():  # every decision at once: earlier runs' leftovers first, then the catalog
                planner.lock()
                with page_cache(conn, "temp"):
                    planner.stage_leftovers()
                    planner.record_latest()
                    planner.classify()
                    admitted = planner.admit()
                    planner.count(admitted)
                    planner.place(admitted)
                with page_cache(conn, "main"):
                    _write_decisions(planner, admitted)
                finish(conn, run, planner.plan)
        finally:
            planner.release()
    plan = planner.plan
    summary = {key: value for key, value in plan.as_dict().items() if key != "batch_ids"}
    log.info("Planned run %s into %d batches: %s", run.run_id, len(plan.batch_ids), summary)
    if plan.deferred_by_window:
        log.warning(
            "%d scans wait for a later run: the run's submission window holds %d submissions",
            plan.deferred_by_window,
            options.max_submissions,
        )
    if plan.deferred_by_budget:
        log.warning(
            "%d scans wait for a later run: the run's budget is %d credits",
            plan.deferred_by_budget,
            options.max_credits,
        )
    return plan
