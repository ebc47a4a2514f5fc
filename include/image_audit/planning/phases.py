"""The planning's phases: SQL in the warehouse decides the interval, in the temporary tables.

The catalog rows are copied and checked, earlier runs' leftovers and each image's latest attempt
gathered, every row given its ``Decision``, the caps applied and the admitted scans numbered into
batches. ``image_audit.planning.plan`` runs the phases (and the duplicate rounds) and writes what they
decided to ``audit_scans``.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import NamedTuple

from sqlalchemy import (
    Connection,
    Integer,
    Text,
    and_,
    bindparam,
    case,
    cast,
    false,
    func,
    literal,
    or_,
    select,
    true,
    update,
)

from copyleaks_provider.scan_ids import canonical_model, make_rejection_id, scan_id_stem
from image_audit.planning.catalog import (
    CatalogSpec,
    catalog_order,
    catalog_query,
    row_rejection,
    url_file_name,
)
from image_audit.planning.run import CREDITS_PER_IMAGE, PlanOptions, RunContext, RunPlan
from image_audit.planning.tables import (
    ADOPTIONS,
    ASKING,
    ATTEMPTS,
    SCRATCH,
    Decision,
    Origin,
    analyze,
    drop_tables,
    pages,
    plan_batch_ids,
    plan_catalog,
    plan_latest,
    plan_leftovers,
    plan_placed,
    plan_work,
    row_columns,
    update_rows,
)
from image_audit.planning.window import DEFERRED_BY_BUDGET, DEFERRED_BY_CREDITS, DEFERRED_BY_WINDOW
from image_audit.warehouse.engine import dialect_insert
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.schema import LEFTOVER_STATES, audit_archived_images, audit_batches, audit_scans

#: The SQLite functions planning registers on its connection: ``scan_id_stem``, and the stem of a
#: catalog row that passes the row check without anything to note (NULL for the others).
_SCAN_STEM_FUNCTION, _PLAIN_ROW_FUNCTION = "image_audit_scan_stem", "image_audit_plain_row_stem"


def _now() -> datetime:
    return datetime.now(UTC)


def register_scan_stem(conn: Connection) -> None:
    """SQLite: register ``scan_id_stem`` itself on ``conn`` as the function ``scan_stem`` calls."""
    if conn.dialect.name == "sqlite":
        driver = conn.connection.driver_connection
        driver.create_function(_SCAN_STEM_FUNCTION, 2, scan_id_stem, deterministic=True)


def scan_stem(conn: Connection, image_id, model: str):
    """``scan_id_stem(image_id, model)`` as SQL on ``conn`` (``model``: a full name), so an interval's
    scan ids take no round trips. SQLite calls the Python function (``register_scan_stem``);
    PostgreSQL hashes the same bytes in SQL, which the tests prove equal for any id and model."""
    if conn.dialect.name == "sqlite":
        return getattr(func, _SCAN_STEM_FUNCTION)(image_id, literal(model))
    text = func.convert_to(image_id + literal("\x1f" + model), "UTF8")
    return literal("ia") + func.left(func.encode(func.sha256(text), "hex"), 28)


def scan_id(conn: Connection, image_id, model: str, attempt):
    """``make_scan_id(image_id, model, attempt)`` as SQL on ``conn`` (``model``: a full name)."""
    return scan_stem(conn, image_id, model) + "-" + cast(attempt, Text)


def batch_id(run: RunContext, first_scan_id: str) -> str:
    """The id of a batch of ``run``: named after its first scan, so planning the run again names it
    the same."""
    digest = hashlib.sha256(f"{run.dag_id}\x1f{run.run_id}\x1f{first_scan_id}".encode()).hexdigest()
    return f"b{digest[:31]}"


class RowNote(NamedTuple):
    """What the row check found about a catalog row that is not plain: ``plan_catalog``'s columns."""

    pos: int
    scan_stem: str | None  # None for a rejected row
    id_key: str | None  # the trimmed image id
    named: str | None  # the URL's file name, for a row without one
    error: str | None  # why the row is rejected
    reject_id: str | None


class Planner:
    """One planning on its connection: what it was asked, its cap, and the phases that decide."""

    def __init__(self, conn: Connection, run: RunContext, options: PlanOptions):
        self.conn = conn
        self.run = run
        self.options = options
        self.model = canonical_model(options.model)
        self.sqlite = conn.dialect.name == "sqlite"
        self.plan = RunPlan()
        self.now = _now()

        # The k-th scan that asks for a credit and a submission (in planning order) is admitted iff
        # k <= cap, the tightest of the caps. Past it, the reason is the tightest cap, the credits ones
        # first on a tie: a longer window would not send the scan.
        def slots(limit: int | None, unit: int = 1) -> int | None:
            return None if limit is None else max(limit // unit, 0)

        caps = {
            "budget": slots(options.max_credits, CREDITS_PER_IMAGE),
            "credits": slots(options.credit_balance, CREDITS_PER_IMAGE),
            "window": slots(options.max_submissions),
        }
        limits = [(limit, name) for name, limit in caps.items() if limit is not None]
        self.cap, self.cap_name = min(limits, key=lambda item: item[0], default=(None, "window"))
        self.deferral = {
            "budget": f"{DEFERRED_BY_BUDGET} of {options.max_credits} credits is spent",
            "credits": f"{DEFERRED_BY_CREDITS}: {options.credit_balance} credits were available",
            "window": f"{DEFERRED_BY_WINDOW} of {options.max_submissions} submissions is full",
        }[self.cap_name]
        self.counts: dict[str, int] = {}

    def execute(self, statement, parameters=None):
        return self.conn.execute(statement, parameters)

    # --- the connection -------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Fresh temporary tables; on SQLite, the functions the phases call in SQL."""
        drop_tables(self.conn)  # left by a planning that died on this pooled connection
        SCRATCH.create_all(self.conn, checkfirst=False)
        if self.sqlite:
            register_scan_stem(self.conn)
            model = self.model

            def plain_row_stem(image_id, url, file_name) -> str | None:
                plain = self._note(0, image_id, url, file_name) is None
                return scan_id_stem(image_id, model) if plain else None

            driver = self.conn.connection.driver_connection
            driver.create_function(_PLAIN_ROW_FUNCTION, 3, plain_row_stem, deterministic=True)

    def release(self) -> None:
        """Drop the temporary tables. On SQLite the connection is closed instead: that deletes its
        temporary file at once, where dropping frees a large table page by page."""
        if self.conn.invalidated:
            return
        if self.sqlite:
            self.conn.invalidate()
        else:
            with self.conn.begin():
                drop_tables(self.conn)

    # --- the catalog: copied by SQL, checked by Python, duplicates decided by SQL ------------------
    def stage_catalog(self, spec: CatalogSpec) -> None:
        """Copy the run's catalog rows into ``plan_catalog`` in catalog order with their scan id stems,
        and note what the row check finds about the rows that are not plain."""
        options, run = self.options, self.run
        rows = catalog_query(
            spec,
            run.interval_start,
            run.interval_end,
            source_filter=options.source_filter,
            limit=options.limit,
        ).subquery()
        names = [column.name for column in row_columns()]
        catalog = plan_catalog.c
        to_check = select(catalog.pos, catalog.image_id, catalog.url, catalog.file_name)
        if self.sqlite:
            # Rowids follow the insert's order (no second sort), and SQLite runs each row's check in the
            # copy, through ``prepare``'s function: Python reads back only the rows that are not plain.
            stem = getattr(func, _PLAIN_ROW_FUNCTION)(rows.c.image_id, rows.c.url, rows.c.file_name)
            ordered = select(*(rows.c[name] for name in names), stem).order_by(*catalog_order(rows.c))
            copy = plan_catalog.insert().from_select([*names, "scan_stem"], ordered)
            to_check = to_check.where(catalog.scan_stem.is_(None))
        else:
            position = func.row_number().over(order_by=catalog_order(rows.c))
            stem = scan_stem(self.conn, rows.c.image_id, self.model)
            copy = plan_catalog.insert().from_select(
                ["pos", *names, "scan_stem"], select(position, *(rows.c[name] for name in names), stem)
            )
        self.execute(copy)
        analyze(self.conn, plan_catalog)
        for page in pages(self.conn, to_check, catalog.pos):
            notes = [note._asdict() for row in page if (note := self._note(*row))]
            update_rows(self.conn, plan_catalog, notes)

    def _note(self, pos: int, image_id, url, file_name) -> RowNote | None:
        """One catalog row through the hook's request rules: ``None`` for a plain row (valid, its id
        trimmed, a file name of its own), else what ``plan_catalog`` records about it."""
        reason = row_rejection(image_id, url, file_name)
        named = url_file_name(url) if url and not file_name else None
        if reason is not None:
            reject_id = make_rejection_id(self.model, str(image_id), str(url), str(file_name), reason)
            return RowNote(pos, None, None, named, reason, reject_id)
        id_key = str(image_id).strip()
        if id_key != image_id or named is not None:
            return RowNote(pos, scan_id_stem(image_id, self.model), id_key, named, None, None)
        return None

    # --- the decisions, in the warehouse ----------------------------------------------------------------
    def lock(self) -> None:
        """SQLite: take the write lock first, so no other writer gets in between what is read and written."""
        if self.sqlite:
            self.execute(update(audit_batches).where(audit_batches.c.batch_id.is_(None)).values(size=0))

    def _leftover(self):
        """Whether an ``audit_scans`` row is a leftover of another run: ``pending`` without a batch (a
        cap deferred it, or its run ended first), or ``timed_out`` (to retry)."""
        scans = audit_scans.c
        # ``ix_audit_scans_leftovers``' own condition, as literals (a planner matches a partial index by
        # its text), so the cost follows the leftovers, not the history of completed scans.
        states = scans.state.in_(
            bindparam("leftover_states", LEFTOVER_STATES, expanding=True, literal_execute=True)
        )
        unbatched = or_(scans.state == ScanState.TIMED_OUT.value, scans.batch_id.is_(None))
        return and_(states, unbatched, scans.run_id != self.run.run_id)

    def stage_leftovers(self) -> None:
        """``plan_leftovers``: the leftovers with the model, oldest first. A timed-out one without a
        file name takes its URL's, as a catalog row does."""
        scans = audit_scans.c
        order = (scans.created_at, scans.ingested_at, scans.image_id, scans.scan_id)
        names = [column.name for column in plan_leftovers.columns if column.name != "pos"]
        leftovers = select(func.row_number().over(order_by=order), *(scans[name] for name in names)).where(
            scans.model == self.model, self._leftover()
        )
        self.execute(plan_leftovers.insert().from_select(["pos", *names], leftovers))
        analyze(self.conn, plan_leftovers)
        leftover = plan_leftovers.c
        unnamed = select(leftover.pos, leftover.url).where(
            leftover.state == ScanState.TIMED_OUT.value,
            leftover.url != "",
            or_(leftover.file_name.is_(None), leftover.file_name == ""),
        )
        for page in pages(self.conn, unnamed, leftover.pos):
            named = [{"pos": pos, "file_name": url_file_name(url)} for pos, url in page]
            update_rows(self.conn, plan_leftovers, named)

    def record_latest(self) -> None:
        """``plan_latest``: the latest attempt (rejected rows aside: they never stand for a scan) of
        every image a leftover or a valid catalog row names, whether it has a batch, and whether it is a
        leftover."""
        scans, attempts = audit_scans.c, audit_scans.alias("attempts").c
        newest = select(func.max(attempts.attempt)).where(
            attempts.image_id == scans.image_id,
            attempts.model == self.model,
            attempts.state != ScanState.REJECTED.value,
        )
        is_leftover = case((self._leftover(), true()), else_=false())
        batched = case((scans.batch_id.is_(None), false()), else_=true())
        columns = [scans.image_id, scans.scan_id, scans.attempt, scans.state, batched, is_leftover]
        is_latest = and_(
            scans.model == self.model,
            scans.state != ScanState.REJECTED.value,
            scans.attempt == newest.scalar_subquery(),
        )
        catalog = plan_catalog.c
        leftover = plan_leftovers.c
        images = [
            select(*columns).join_from(plan_leftovers, audit_scans, scans.image_id == leftover.image_id),
            select(*columns)
            .join_from(plan_catalog, audit_scans, scans.image_id == catalog.image_id)
            .where(catalog.error.is_(None)),
        ]
        # an image whose scans were all archived (image_audit.maintenance.archive) stands as its archive
        # row says: scanned (or failed) at its latest attempt, never a leftover
        archived = audit_archived_images.c
        archived_images = (
            select(
                archived.image_id, archived.scan_id, archived.latest_attempt, archived.state, true(), false()
            )
            .join_from(plan_catalog, audit_archived_images, archived.image_id == catalog.image_id)
            .where(
                catalog.error.is_(None),
                archived.model == self.model,
                archived.state != ScanState.REJECTED.value,
            )
        )
        names = [column.name for column in plan_latest.columns]
        for latest_scans in [*(live.where(is_latest) for live in images), archived_images]:
            insert = dialect_insert(self.conn, plan_latest).from_select(names, latest_scans)
            self.execute(insert.on_conflict_do_nothing(index_elements=["image_id"]))
        analyze(self.conn, plan_latest)

    def decide(self) -> None:
        """``plan_work``: the ``Decision`` of each leftover and valid catalog row.

        A leftover that is its image's latest attempt is adopted (pending), retried (timed out), or
        exhausted at ``max_attempts``. A catalog row whose image has such a leftover is the leftover's
        to decide, unless it is exhausted and ``force_rescan`` retries it. Any other row is new,
        resumed (this run's own deferred scan), in progress, scanned or exhausted (both unless
        ``force_rescan``), or else retried.
        """
        options, latest = self.options, plan_latest.c
        leftover = plan_leftovers.c
        pending = leftover.state == ScanState.PENDING.value
        decision = case(
            (pending, Decision.ADOPT),
            (leftover.attempt >= options.max_attempts, Decision.EXHAUSTED),
            else_=Decision.RETRY,
        )
        adopted = case((pending, leftover.scan_id), else_=None)
        leftovers = select(
            literal(Origin.LEFTOVER, Integer), leftover.pos, decision, leftover.attempt + 1, adopted, false()
        ).join_from(
            plan_leftovers,
            plan_latest,
            and_(latest.image_id == leftover.image_id, latest.scan_id == leftover.scan_id),
        )
        columns = [column.name for column in plan_work.columns]
        self.execute(plan_work.insert().from_select(columns, leftovers))

        catalog, state = plan_catalog.c, latest.state
        exhausted = and_(state == ScanState.TIMED_OUT.value, latest.attempt >= options.max_attempts)
        forced = and_(latest.leftover == true(), exhausted) if options.force_rescan else false()
        undecided = or_(latest.image_id.is_(None), latest.leftover == false(), forced)
        resume = and_(state == ScanState.PENDING.value, latest.batched == false())
        whens = [
            (latest.image_id.is_(None), Decision.NEW),
            (resume, Decision.RESUME),
            (state.in_([ScanState.PENDING.value, ScanState.SUBMITTED.value]), Decision.IN_PROGRESS),
        ]
        if not options.force_rescan:
            done = [ScanState.COMPLETED.value, ScanState.FAILED.value, ScanState.REJECTED.value]
            whens.append((state.in_(done), Decision.SCANNED))
            whens.append((exhausted, Decision.EXHAUSTED))
        attempt = case((latest.image_id.is_(None), 1), else_=latest.attempt + 1)
        rows = (
            select(
                literal(Origin.CATALOG, Integer),
                catalog.pos,
                case(*whens, else_=Decision.RETRY),
                attempt,
                case((resume, latest.scan_id), else_=None),
                case((forced, true()), else_=false()),
            )
            .join_from(plan_catalog, plan_latest, latest.image_id == catalog.image_id, isouter=True)
            .where(catalog.error.is_(None), undecided)
        )
        self.execute(plan_work.insert().from_select(columns, rows))
        analyze(self.conn, plan_work)

    def admit(self):
        """The condition on ``plan_work`` of the rows admitted: the first ``cap`` that ask for a
        credit and a submission, in planning order (leftovers first)."""
        work = plan_work.c
        asks = work.decision.in_(ASKING)
        if self.cap is None:
            return asks
        if self.cap == 0:
            return false()
        edge = self.execute(
            select(work.origin, work.pos)
            .where(asks)
            .order_by(work.origin, work.pos)
            .offset(self.cap - 1)
            .limit(1)
        ).first()
        if edge is None:
            return asks
        last_origin, last_pos = edge
        return and_(
            asks, or_(work.origin < last_origin, and_(work.origin == last_origin, work.pos <= last_pos))
        )

    def count(self, admitted) -> None:
        """The plan's counters, and the counts that tell the writing what it may skip."""
        work, plan = plan_work.c, self.plan

        def total(*conditions):
            return func.coalesce(func.sum(case((and_(*conditions), 1), else_=0)), 0)

        from_catalog = work.origin == Origin.CATALOG
        counters = {
            "new": total(work.decision == Decision.NEW),
            # a catalog row's retry counts as decided; a leftover's once admitted (deferred, it waits)
            "retried": total(work.decision == Decision.RETRY, or_(from_catalog, admitted)),
            "resumed": total(work.decision.in_(ADOPTIONS), admitted),
            "deferred": total(work.decision.in_(ASKING), ~admitted),
            "deferred_attempts": total(work.decision.in_(ATTEMPTS), ~admitted),
            "waiting_leftovers": total(~from_catalog, work.decision == Decision.ADOPT, ~admitted),
            "exhausted": total(work.decision == Decision.EXHAUSTED),
            "forced": total(work.forced == true()),
            "in_progress": total(work.decision == Decision.IN_PROGRESS),
            "already_scanned": total(work.decision == Decision.SCANNED),
        }
        row = self.execute(select(*(value.label(key) for key, value in counters.items()))).one()
        self.counts = dict(row._mapping)
        for key in ("new", "retried", "resumed", "in_progress", "already_scanned"):
            setattr(plan, key, self.counts[key])
        plan.exhausted = self.counts["exhausted"] - self.counts["forced"]  # a forced one is retried
        setattr(plan, f"deferred_by_{self.cap_name}", self.counts["deferred"])
        plan.rejected = self.execute(
            select(func.count()).where(plan_catalog.c.error.is_not(None))
        ).scalar_one()

    def new_scan_id(self, origin: Origin):
        """The scan id a ``plan_work`` row of ``origin`` adopts, or writes for its next attempt."""
        work = plan_work.c
        if origin is Origin.LEFTOVER:
            attempt_id = scan_id(self.conn, plan_leftovers.c.image_id, self.model, work.attempt)
        else:
            attempt_id = plan_catalog.c.scan_stem + "-" + cast(work.attempt, Text)
        return case((work.adopted_id.is_not(None), work.adopted_id), else_=attempt_id)

    def place(self, admitted) -> None:
        """Number the admitted scans in planning order (``plan_placed``: batch k holds the numbers from
        k * ``batch_size``), and record each batch, named after its first scan."""
        work, size = plan_work.c, self.options.batch_size
        place_no = func.row_number().over(order_by=[work.origin, work.pos]) - 1
        self.execute(
            plan_placed.insert().from_select(
                ["place_no", "origin", "pos"], select(place_no, work.origin, work.pos).where(admitted)
            )
        )
        analyze(self.conn, plan_placed)
        placed, run = plan_placed.c, self.run
        for origin in Origin:
            source = origin.table
            heads = (
                select(placed.place_no, self.new_scan_id(origin))
                .join_from(plan_placed, plan_work, and_(work.origin == placed.origin, work.pos == placed.pos))
                .join(source, source.c.pos == work.pos)
                .where(placed.origin == origin, placed.place_no % size == 0)
            )
            for page in pages(self.conn, heads, placed.place_no):
                batches = [
                    {"batch_no": number // size, "batch_id": batch_id(run, first)} for number, first in page
                ]
                # A batch named after a scan that is not inserted (its id is taken, by a scan Copyleaks
                # refused) is named so again when the run plans again: the plan then adds to that batch.
                self.execute(
                    dialect_insert(self.conn, audit_batches)
                    .on_conflict_do_nothing(index_elements=["batch_id"]),
                    [
                        {"batch_id": batch["batch_id"], "dag_id": run.dag_id, "run_id": run.run_id,
                         "size": 0, "created_at": self.now}
                        for batch in batches
                    ],
                )  # fmt: skip
                self.execute(plan_batch_ids.insert(), batches)
        analyze(self.conn, plan_batch_ids)
