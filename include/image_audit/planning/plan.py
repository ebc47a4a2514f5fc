"""Planning a run: which catalog images this run submits, which it rejects and why, and the batches.

Every decision is recorded in ``audit_scans`` before anything is sent, so a retried or rerun task
finds the same plan and never submits an image twice by accident:
- an image already scanned with the model is skipped (unless ``force_rescan``);
- a scan left ``pending`` without a batch (a cap deferred it, or its run ended before submitting it)
  is adopted by this run with the same scan id;
- a ``timed_out`` scan gets a new attempt (a new scan id) while its attempt is below ``max_attempts``;
- a bad row is stored as ``rejected`` with its reason, so the report shows it.

Two caps bound what a run submits: ``max_credits`` (the credit budget) and ``max_submissions`` (how
many submissions fit the run's window at the account's request rate: ``image_audit.planning.window``).
A scan past either one stays ``pending`` without a batch, with the reason in ``last_error``, and the
next run takes it. Planning order is earlier runs' leftovers (oldest first), then this interval's rows
in catalog order, so a backlog drains first instead of waiting behind every new night's ingestions;
the caps admit, and the batches (``batch_size`` scans each) fill, in that order.

Duplicates: a catalog row is rejected when an *accepted* row before it in catalog order
(``image_audit.planning.catalog.catalog_order``) has the same image id (trimmed), "duplicate image id
in this interval", or else the same URL, "duplicate URL: same image as <that row's id>". So the first
valid row of a duplicate set wins, and a row that only collides with rejected rows is accepted.

The planning is set-based, so its memory does not grow with the interval: SQL copies the interval's
rows into temporary tables (``image_audit.planning.tables``) and decides in the warehouse
(``image_audit.planning.phases``, ``image_audit.planning.duplicates``); only the row check and the few
rows it rejects or notes go through Python. This module runs the phases and writes the decisions, in
one transaction.
"""

from __future__ import annotations

import logging

from sqlalchemy import Boolean, Connection, Engine, Table, and_, func, literal, null, or_, select, update

from image_audit.planning.catalog import MAX_TEXT, CatalogSpec
from image_audit.planning.duplicates import resolve_duplicates
from image_audit.planning.phases import Planner
from image_audit.planning.run import CREDITS_PER_IMAGE, PlanOptions, RunContext, RunPlan
from image_audit.planning.tables import (
    ADOPTIONS,
    ATTEMPTS,
    Decision,
    Origin,
    page_cache,
    plan_batch_ids,
    plan_catalog,
    plan_placed,
    plan_work,
)
from image_audit.planning.watermark import WatermarkClaim, WatermarkMoved
from image_audit.warehouse.engine import dialect_insert
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.schema import TZ, audit_batches, audit_scans

__all__ = ["PlanOptions", "RunContext", "RunPlan", "plan_run"]

log = logging.getLogger(__name__)
#: What the plan writes of an ``audit_scans`` row (the rest is the submission's and the result's).
_SCAN_COLUMNS = [c.name for c in audit_scans.columns if c.name not in ("submitted_at", "completed_at")]
#: Plans of one run, at most: each one after the first follows another run's claim on the watermark.
_CLAIM_ATTEMPTS = 5


def _scans(planner: Planner, source: Table, **values) -> list:
    """The columns of the ``audit_scans`` rows written from ``source`` (a temporary table)."""
    run, options = planner.run, planner.options
    row = {
        "model": literal(planner.model),
        "url": source.c.url,
        "file_name": source.c.file_name,
        "source": func.substr(source.c.source, 1, MAX_TEXT),
        "ingested_at": source.c.ingested_at,
        "fetch_headers_ref": source.c.fetch_headers_ref,
        "batch_id": null(),
        "dag_id": literal(run.dag_id),
        "run_id": literal(run.run_id),
        "data_interval_start": literal(run.interval_start, TZ),
        "data_interval_end": literal(run.interval_end, TZ),
        "sandbox": literal(options.sandbox, Boolean),
        "expected_credits": literal(CREDITS_PER_IMAGE),
        "created_at": literal(planner.now, TZ),
        "updated_at": literal(planner.now, TZ),
        "last_error": null(),
        **values,
    }
    return [row[name].label(name) for name in _SCAN_COLUMNS]


def _insert_scans(planner: Planner, query) -> None:
    """Insert ``query``'s scans; a scan id already recorded keeps its row."""
    statement = dialect_insert(planner.conn, audit_scans).from_select(_SCAN_COLUMNS, query)
    planner.execute(statement.on_conflict_do_nothing(index_elements=["scan_id"]))


def _write_decisions(planner: Planner, admitted) -> None:
    """The plan's rows in ``audit_scans``: the rejected rows; the new attempts, batched or deferred with
    the cap's reason; the adopted scans, moved into this run's batches; the reason a leftover still
    waits."""
    work, placed, batch, catalog = plan_work.c, plan_placed.c, plan_batch_ids.c, plan_catalog.c
    counts, size = planner.counts, planner.options.batch_size
    if planner.plan.rejected:  # the catalog's bad rows, in catalog order
        rejected = _scans(
            planner, plan_catalog, scan_id=catalog.reject_id,
            image_id=func.substr(func.coalesce(catalog.image_id, ""), 1, MAX_TEXT),
            attempt=literal(1), state=literal(ScanState.REJECTED.value), last_error=catalog.error,
            file_name=func.substr(func.coalesce(catalog.named, catalog.file_name), 1, MAX_TEXT),
        )  # fmt: skip
        _insert_scans(planner, select(*rejected).where(catalog.error.is_not(None)).order_by(catalog.pos))
    for origin in Origin:  # new attempts: in batch order, then the deferred ones
        source = origin.table
        new = {
            "scan_id": planner.new_scan_id(origin),
            "image_id": source.c.image_id,
            "attempt": work.attempt,
            "state": literal(ScanState.PENDING.value),
        }
        if origin is Origin.CATALOG:
            new["file_name"] = func.coalesce(catalog.named, catalog.file_name)
        rows = plan_work.join(source, and_(source.c.pos == work.pos, work.origin == origin))
        batched = rows.join(plan_placed, and_(placed.origin == work.origin, placed.pos == work.pos)).join(
            plan_batch_ids, batch.batch_no == placed.place_no // size
        )
        attempts = work.decision.in_(ATTEMPTS)
        _insert_scans(
            planner,
            select(*_scans(planner, source, **new, batch_id=batch.batch_id))
            .select_from(batched)
            .where(attempts)
            .order_by(placed.place_no),
        )
        if counts["deferred_attempts"]:
            deferred = _scans(planner, source, **new, last_error=literal(planner.deferral))
            _insert_scans(
                planner, select(*deferred).select_from(rows).where(attempts, ~admitted).order_by(work.pos)
            )
    scans, run = audit_scans.c, planner.run
    if counts["resumed"]:  # adoptions: into this run's batches, with their ids
        adoptions = (
            select(work.adopted_id, batch.batch_id)
            .join_from(plan_work, plan_placed, and_(placed.origin == work.origin, placed.pos == work.pos))
            .join(plan_batch_ids, batch.batch_no == placed.place_no // size)
            .where(work.decision.in_(ADOPTIONS))
            .subquery()
        )
        planner.execute(
            update(audit_scans)
            .where(scans.scan_id == adoptions.c.adopted_id, scans.state == ScanState.PENDING.value)
            .values(
                batch_id=adoptions.c.batch_id,
                dag_id=run.dag_id,
                run_id=run.run_id,
                updated_at=planner.now,
                last_error=None,
            )
        )
    if counts["waiting_leftovers"]:  # a leftover that still waits says which cap holds it back now
        waiting = select(work.adopted_id).where(
            work.origin == Origin.LEFTOVER, work.decision == Decision.ADOPT, ~admitted
        )
        planner.execute(
            update(audit_scans)
            .where(scans.scan_id.in_(waiting), scans.batch_id.is_(None))
            .where(or_(scans.last_error.is_(None), scans.last_error != planner.deferral))
            .values(last_error=planner.deferral, updated_at=planner.now)
        )


def _record_batches(conn: Connection, run: RunContext, plan: RunPlan) -> None:
    """Record the sizes of the run's batches, and put in ``plan`` every batch of the run with scans still
    to submit (a plan again after a crash keeps the batches not fully submitted) and their count."""
    batches, scans = audit_batches.c, audit_scans.c
    this_run = (batches.dag_id == run.dag_id) & (batches.run_id == run.run_id)
    size = select(func.count()).where(scans.batch_id == batches.batch_id).scalar_subquery()
    conn.execute(update(audit_batches).where(this_run).values(size=size))
    unfinished = (
        select(scans.batch_id, func.count())
        .where(
            scans.dag_id == run.dag_id,
            scans.run_id == run.run_id,
            scans.state == ScanState.PENDING.value,
            scans.batch_id.is_not(None),
        )
        .group_by(scans.batch_id)
    )
    pending = dict(conn.execute(unfinished).tuples().all())
    plan.batch_ids = sorted(pending)
    plan.planned = sum(pending.values())


def plan_run(engine: Engine, spec: CatalogSpec, run: RunContext, options: PlanOptions) -> RunPlan:
    """Decide every row of the run's catalog interval and every earlier run's leftover, record the
    decisions in ``audit_scans`` and the batches in ``audit_batches``, and return the plan.

    With ``options.follow_watermark`` the interval is claimed from the catalog's watermark with the
    decisions (``image_audit.planning.watermark``); when another run claimed first, the run is planned
    again from where that one's claim ends."""
    claim = WatermarkClaim.of(spec, run, options) if options.follow_watermark else None
    for attempt in range(1, _CLAIM_ATTEMPTS + 1):
        try:
            return _plan(engine, spec, run, options, claim)
        except WatermarkMoved as moved:
            if attempt == _CLAIM_ATTEMPTS:
                raise
            log.info("Planning run %s again: %s", run.run_id, moved)
    raise AssertionError("unreachable")


def _plan(
    engine: Engine, spec: CatalogSpec, run: RunContext, options: PlanOptions, claim: WatermarkClaim | None
) -> RunPlan:
    """One planning of ``run``; with ``claim``, of the interval it claims from the watermark."""
    with engine.connect() as conn:
        if claim is not None:
            run = claim.interval(conn)
        planner = Planner(conn, run, options)
        try:
            with conn.begin(), page_cache(conn, "temp"):  # temporary tables only: no lock
                planner.prepare()
                planner.stage_catalog(spec)
                resolve_duplicates(conn, planner.model)
            with conn.begin():  # every decision at once: earlier runs' leftovers first, then the catalog
                planner.lock()
                if claim is not None:  # the interval, claimed with the decisions or not at all
                    claim.take(conn, run)
                with page_cache(conn, "temp"):
                    planner.stage_leftovers()
                    planner.record_latest()
                    planner.decide()
                    admitted = planner.admit()
                    planner.count(admitted)
                    planner.place(admitted)
                with page_cache(conn, "main"):
                    _write_decisions(planner, admitted)
                _record_batches(conn, run, planner.plan)
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
    if plan.deferred_by_credits:
        log.warning(
            "%d scans wait for credits: the account had %d credits for this run",
            plan.deferred_by_credits,
            options.credit_balance,
        )
    return plan
