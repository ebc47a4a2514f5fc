"""The planning's phases: SQL in the warehouse decides the interval, in the temporary tables.

The catalog rows are copied and checked, duplicates decided, earlier runs' leftovers and each image's
latest attempt gathered, every row classified, the caps applied and the admitted scans numbered into
batches; ``image_audit.planning`` runs the phases, and writes what they decided to ``audit_scans``.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from sqlalchemy import (
    Connection,
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

from copyleaks_provider.scan_ids import canonical_model, make_rejection_id, make_scan_id
from image_audit.planning.catalog import (
    CatalogSpec,
    catalog_order,
    catalog_query,
    row_rejection,
    url_file_name,
)
from image_audit.planning.tables import (
    ADMITTED_KINDS,
    ADOPT,
    EXHAUSTED,
    IN_PROGRESS,
    NEW,
    RESUME,
    RETRY,
    SCANNED,
    SCRATCH,
    SOURCES,
    analyze,
    dialect_insert,
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
from image_audit.planning.types import CREDITS_PER_IMAGE, PlanOptions, RunContext, RunPlan
from image_audit.planning.window import DEFERRED_BY_BUDGET, DEFERRED_BY_WINDOW
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.schema import audit_batches, audit_scans

#: The row-at-a-time planner's blocks (leftovers, catalog rows): within one, adoptions came last.
_LEFTOVER_BLOCK, _CATALOG_BLOCK = 1_000, 2_000
#: The SQLite functions planning registers on its connection: scan id stems, and the stems of the
#: catalog rows that pass the checks without anything to note (NULL for the others).
_SCAN_KEY_FUNCTION, _ROW_KEY_FUNCTION = "image_audit_scan_key", "image_audit_plain_row_key"


def _now() -> datetime:
    return datetime.now(UTC)


class Planner:
    """One planning on its connection: what it was asked, its caps, and the phases that decide."""

    def __init__(self, conn: Connection, run: RunContext, options: PlanOptions):
        self.conn = conn
        self.run = run
        self.options = options
        self.model = canonical_model(options.model)
        self.sqlite = conn.dialect.name == "sqlite"
        self.plan = RunPlan()
        self.now = _now()
        # The k-th scan that asks for a credit and a submission gets them iff k <= cap; past the cap the
        # reason is the budget when it is the tighter cap (a longer window would not send it).
        budget = None if options.max_credits is None else max(options.max_credits // CREDITS_PER_IMAGE, 0)
        window = None if options.max_submissions is None else max(options.max_submissions, 0)
        self.cap = min((c for c in (budget, window) if c is not None), default=None)
        self.by_budget = budget is not None and (window is None or budget <= window)
        if self.by_budget:
            self.deferral = f"{DEFERRED_BY_BUDGET} of {options.max_credits} credits is spent"
        else:
            self.deferral = f"{DEFERRED_BY_WINDOW} of {options.max_submissions} submissions is full"
        self.counts: dict[str, int] = {}

    def execute(self, statement, parameters=None):
        return self.conn.execute(statement, parameters)

    # --- the connection -------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Temporary tables, and scan ids in SQL, checked against ``make_scan_id``."""
        drop_tables(self.conn)  # left by a planning that died on this pooled connection
        SCRATCH.create_all(self.conn, checkfirst=False)
        if self.sqlite:
            model = self.model

            def scan_key(image_id) -> str:
                return "ia" + hashlib.sha256(f"{image_id}\x1f{model}".encode()).hexdigest()[:28]

            def plain_row_key(image_id, url, file_name) -> str | None:
                return scan_key(image_id) if self._check(0, image_id, url, file_name) is None else None

            driver = self.conn.connection.driver_connection
            driver.create_function(_SCAN_KEY_FUNCTION, 1, scan_key, deterministic=True)
            driver.create_function(_ROW_KEY_FUNCTION, 3, plain_row_key, deterministic=True)
        probe = "probe \u00e9 1"
        in_sql = self.execute(select(self.scan_id(literal(probe), literal(7)))).scalar_one()
        if in_sql != make_scan_id(probe, self.model, 7):
            raise RuntimeError(f"planning's scan ids differ from make_scan_id's ({in_sql}): update them")

    def scan_key(self, image_id):
        """The stem of ``make_scan_id(image_id, model, n)`` (the id is the stem, "-" and ``n``) in SQL:
        a million a night, without round trips. PostgreSQL hashes; SQLite calls ``prepare``'s function."""
        if self.sqlite:
            return getattr(func, _SCAN_KEY_FUNCTION)(image_id)
        text = func.convert_to(image_id + literal("\x1f" + self.model), "UTF8")
        return literal("ia") + func.left(func.encode(func.sha256(text), "hex"), 28)

    def scan_id(self, image_id, attempt):
        return self.scan_key(image_id) + "-" + cast(attempt, Text)

    def release(self) -> None:
        """Drop the temporary tables. SQLite frees a dropped table page by page (a second a million
        rows), so there the connection is closed instead, which deletes its temporary file at once."""
        if self.conn.invalidated:
            return
        if self.sqlite:
            self.conn.invalidate()
        else:
            with self.conn.begin():
                drop_tables(self.conn)

    # --- the catalog: copied by SQL, checked by Python, duplicates decided by SQL ------------------
    def stage_catalog(self, spec: CatalogSpec) -> None:
        options, run = self.options, self.run
        rows = catalog_query(
            spec,
            run.interval_start,
            run.interval_end,
            source_filter=options.source_filter,
            limit=options.limit,
        ).subquery()
        names = [c.name for c in row_columns()]
        c = plan_catalog.c
        odd = select(c.pos, c.image_id, c.url, c.file_name)
        if self.sqlite:
            # Rowids follow the insert's order (no second sort), and SQLite runs each row's check in the
            # copy, through the function ``prepare`` registered: Python reads back only the odd rows.
            key = getattr(func, _ROW_KEY_FUNCTION)(rows.c.image_id, rows.c.url, rows.c.file_name)
            ordered = select(*(rows.c[n] for n in names), key).order_by(*catalog_order(rows.c))
            copy = plan_catalog.insert().from_select([*names, "scan_key"], ordered)
            odd = odd.where(c.scan_key.is_(None))
        else:
            position = func.row_number().over(order_by=catalog_order(rows.c))
            key = self.scan_key(rows.c.image_id)
            copy = plan_catalog.insert().from_select(
                ["pos", *names, "scan_key"], select(position, *(rows.c[n] for n in names), key)
            )
        self.execute(copy)
        analyze(self.conn, plan_catalog)
        values = {
            "scan_key": bindparam("s"),
            "id_key": bindparam("k"),
            "named": bindparam("n"),
            "error": bindparam("e"),
            "reject_id": bindparam("r"),
        }
        for page in pages(self.conn, odd, c.pos):
            update_rows(
                self.conn, plan_catalog, values, [found for row in page if (found := self._check(*row))]
            )

    def _check(self, pos: int, image_id, url, file_name) -> dict | None:
        """One catalog row through the hook's request rules: what is not the plain case about it."""
        reason = row_rejection(image_id, url, file_name)
        named = url_file_name(url) if url and not file_name else None
        if reason is not None:
            rejection = make_rejection_id(self.model, str(image_id), str(url), str(file_name), reason)
            return {"p": pos, "s": None, "k": None, "n": named, "e": reason, "r": rejection}
        id_key = str(image_id).strip()
        if id_key != image_id or named is not None:
            key = make_scan_id(str(image_id), self.model, 1)[:-2]
            return {"p": pos, "s": key, "k": id_key, "n": named, "e": None, "r": None}
        return None

    # --- the decisions, in the warehouse ----------------------------------------------------------------
    def lock(self) -> None:
        """SQLite: take the write lock first, so no other writer gets in between what is read and written."""
        if self.sqlite:
            self.execute(update(audit_batches).where(audit_batches.c.batch_id.is_(None)).values(size=0))

    def _leftover(self, scans) -> object:
        pending = and_(scans.c.state == ScanState.PENDING.value, scans.c.batch_id.is_(None))
        return or_(pending, scans.c.state == ScanState.TIMED_OUT.value)

    def stage_leftovers(self) -> None:
        """Scans earlier runs left behind: unbatched ``pending`` ones, and ``timed_out`` ones to retry."""
        s = audit_scans.c
        order = (s.created_at, s.ingested_at, s.image_id, s.scan_id)
        names = [c.name for c in plan_leftovers.columns if c.name != "pos"]
        leftovers = select(func.row_number().over(order_by=order), *(s[n] for n in names)).where(
            s.model == self.model, s.run_id != self.run.run_id, self._leftover(audit_scans)
        )
        self.execute(plan_leftovers.insert().from_select(["pos", *names], leftovers))
        analyze(self.conn, plan_leftovers)
        c = plan_leftovers.c  # a retry without a file name takes its URL's, as a catalog row does
        unnamed = select(c.pos, c.url).where(
            c.state == ScanState.TIMED_OUT.value, c.url != "", or_(c.file_name.is_(None), c.file_name == "")
        )
        for page in pages(self.conn, unnamed, c.pos):
            update_rows(
                self.conn,
                plan_leftovers,
                {"file_name": bindparam("f")},
                [{"p": p, "f": url_file_name(u)} for p, u in page],
            )

    def record_latest(self) -> None:
        """The latest attempt (rejected ones aside) of every image a leftover or a valid row names."""
        s, a = audit_scans.c, audit_scans.alias("attempts").c
        newest = select(func.max(a.attempt)).where(
            a.image_id == s.image_id, a.model == self.model, a.state != ScanState.REJECTED.value
        )
        leftover = case(
            (and_(s.run_id != self.run.run_id, self._leftover(audit_scans)), true()), else_=false()
        )
        batched = case((s.batch_id.is_(None), false()), else_=true())
        columns = [s.image_id, s.scan_id, s.attempt, s.state, batched, leftover]
        latest = and_(
            s.model == self.model, s.state != ScanState.REJECTED.value, s.attempt == newest.scalar_subquery()
        )
        c = plan_catalog.c
        sources = [
            select(*columns).join_from(plan_leftovers, audit_scans, s.image_id == plan_leftovers.c.image_id),
            select(*columns)
            .join_from(plan_catalog, audit_scans, s.image_id == c.image_id)
            .where(c.error.is_(None)),
        ]
        for source in sources:
            insert = dialect_insert(self.conn, plan_latest).from_select(
                [col.name for col in plan_latest.columns], source.where(latest)
            )
            self.execute(insert.on_conflict_do_nothing(index_elements=["image_id"]))
        analyze(self.conn, plan_latest)

    def classify(self) -> None:
        """Each leftover and valid catalog row's kind, as the row-at-a-time planner decided it."""
        o, t = self.options, plan_latest.c
        l = plan_leftovers.c  # noqa: E741
        pending = l.state == ScanState.PENDING.value
        kind = case((pending, ADOPT), (l.attempt >= o.max_attempts, EXHAUSTED), else_=RETRY)
        adopted = case((pending, l.scan_id), else_=None)
        leftovers = select(literal(0), l.pos, kind, l.attempt + 1, adopted, false()).join_from(
            plan_leftovers, plan_latest, and_(t.image_id == l.image_id, t.scan_id == l.scan_id)
        )
        columns = [col.name for col in plan_work.columns]
        self.execute(plan_work.insert().from_select(columns, leftovers))

        c, state = plan_catalog.c, t.state
        # a leftover image was decided above, unless it is exhausted and forced: then its row retries it
        forced = and_(t.leftover == true(), state == ScanState.TIMED_OUT.value, t.attempt >= o.max_attempts)
        forced = forced if o.force_rescan else false()
        undecided = or_(t.image_id.is_(None), t.leftover == false(), forced)
        resume = and_(state == ScanState.PENDING.value, t.batched == false())
        whens = [
            (t.image_id.is_(None), NEW),
            (resume, RESUME),
            (state.in_([ScanState.PENDING.value, ScanState.SUBMITTED.value]), IN_PROGRESS),
        ]
        if not o.force_rescan:
            done = [ScanState.COMPLETED.value, ScanState.FAILED.value, ScanState.REJECTED.value]
            whens.append((state.in_(done), SCANNED))
            whens.append((and_(state == ScanState.TIMED_OUT.value, t.attempt >= o.max_attempts), EXHAUSTED))
        attempt = case((t.image_id.is_(None), 1), else_=t.attempt + 1)
        rows = (
            select(
                literal(1),
                c.pos,
                case(*whens, else_=RETRY),
                attempt,
                case((resume, t.scan_id), else_=None),
                case((forced, true()), else_=false()),
            )
            .join_from(plan_catalog, plan_latest, t.image_id == c.image_id, isouter=True)
            .where(c.error.is_(None), undecided)
        )
        self.execute(plan_work.insert().from_select(columns, rows))
        analyze(self.conn, plan_work)

    def admit(self):
        """Which rows get a credit and a submission: the first ``cap`` that ask, leftovers first."""
        w = plan_work.c
        asks = w.kind.in_(ADMITTED_KINDS)
        if self.cap is None:
            return asks
        if self.cap == 0:
            return false()
        edge = self.execute(
            select(w.phase, w.pos).where(asks).order_by(w.phase, w.pos).offset(self.cap - 1).limit(1)
        ).first()
        if edge is None:
            return asks
        return and_(asks, or_(w.phase < edge.phase, and_(w.phase == edge.phase, w.pos <= edge.pos)))

    def count(self, admitted) -> None:
        """The plan's counters, and what the writing may skip."""
        w, plan = plan_work.c, self.plan

        def total(*conditions):
            return func.coalesce(func.sum(case((and_(*conditions), 1), else_=0)), 0)

        adoption = w.kind.in_([ADOPT, RESUME])
        counters = {
            "new": total(w.phase == 1, w.kind == NEW),
            "retried": total(w.kind == RETRY, or_(w.phase == 1, admitted)),
            "resumed": total(adoption, admitted),
            "deferred": total(w.kind.in_(ADMITTED_KINDS), ~admitted),
            "deferred_new": total(w.kind.in_([NEW, RETRY]), ~admitted),
            "waiting": total(w.phase == 0, w.kind == ADOPT, ~admitted),
            "exhausted": total(w.kind == EXHAUSTED),
            "forced": total(w.forced == true()),
            "in_progress": total(w.kind == IN_PROGRESS),
            "already_scanned": total(w.kind == SCANNED),
        }
        row = self.execute(select(*(value.label(key) for key, value in counters.items()))).one()
        self.counts = dict(row._mapping)
        for key in ("new", "retried", "resumed", "in_progress", "already_scanned"):
            setattr(plan, key, self.counts[key])
        plan.exhausted = self.counts["exhausted"] - self.counts["forced"]
        setattr(
            plan, "deferred_by_budget" if self.by_budget else "deferred_by_window", self.counts["deferred"]
        )
        plan.rejected = self.execute(
            select(func.count()).where(plan_catalog.c.error.is_not(None))
        ).scalar_one()

    def new_scan_id(self, phase: int):
        """The scan id a row of ``plan_work`` writes or adopts."""
        w = plan_work.c
        if phase == 0:
            new = self.scan_id(plan_leftovers.c.image_id, w.attempt)
        else:
            new = plan_catalog.c.scan_key + "-" + cast(w.attempt, Text)
        return case((w.adopted_id.is_not(None), w.adopted_id), else_=new)

    def place(self, admitted) -> None:
        """Number the admitted scans in batch order, and name each batch after its first scan."""
        w, size = plan_work.c, self.options.batch_size
        order = [w.phase, w.pos]
        if self.counts["resumed"]:  # adoptions after the new attempts of their block
            block = case((w.phase == 0, (w.pos - 1) // _LEFTOVER_BLOCK), else_=(w.pos - 1) // _CATALOG_BLOCK)
            order = [w.phase, block, case((w.kind.in_([ADOPT, RESUME]), 1), else_=0), w.pos]
        place_no = func.row_number().over(order_by=order) - 1
        self.execute(
            plan_placed.insert().from_select(
                ["place_no", "phase", "pos"], select(place_no, w.phase, w.pos).where(admitted)
            )
        )
        analyze(self.conn, plan_placed)
        p, run = plan_placed.c, self.run
        for phase, source in SOURCES.items():
            heads = (
                select(p.place_no, self.new_scan_id(phase))
                .join_from(plan_placed, plan_work, and_(w.phase == p.phase, w.pos == p.pos))
                .join(source, source.c.pos == w.pos)
                .where(p.phase == phase, p.place_no % size == 0)
            )
            for page in pages(self.conn, heads, p.place_no):
                batches = []
                for place_no, scan_id in page:
                    digest = hashlib.sha256(f"{run.dag_id}\x1f{run.run_id}\x1f{scan_id}".encode()).hexdigest()
                    batches.append({"batch_no": place_no // size, "batch_id": f"b{digest[:31]}"})
                # A batch named after a scan that is not inserted (its id is taken, by a scan Copyleaks
                # refused) is named so again when the run plans again: the plan then adds to that batch.
                self.execute(
                    dialect_insert(self.conn, audit_batches)
                    .on_conflict_do_nothing(index_elements=["batch_id"]),
                    [
                        {"batch_id": b["batch_id"], "dag_id": run.dag_id, "run_id": run.run_id, "size": 0,
                         "created_at": self.now}
                        for b in batches
                    ],
                )  # fmt: skip
                self.execute(plan_batch_ids.insert(), batches)
        analyze(self.conn, plan_batch_ids)
