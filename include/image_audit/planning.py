"""Planning a run: which catalog images this run submits, which it rejects and why, and the batches.

Every decision is recorded in ``audit_scans`` before anything is sent, so a retried or rerun task
finds the same plan and never submits an image twice by accident:
- an image already scanned with the model is skipped (unless ``force_rescan``);
- a scan left ``pending`` without a batch (a cap deferred it, or its run ended before submitting it)
  is adopted by this run with the same scan id;
- a ``timed_out`` scan gets a new attempt (a new scan id), up to ``max_attempts``;
- a bad row is stored as ``rejected`` with its reason, so the report shows it.

Two caps bound what a run submits: ``max_credits`` (the credit budget) and ``max_submissions`` (how
many submissions fit the run's window at the account's request rate: ``image_audit.submission_window``).
A scan past either one stays ``pending`` without a batch, with the reason in ``last_error``, and the
next run takes it. Earlier runs' leftovers are planned before this interval's rows (oldest first), so a
backlog drains first in line instead of waiting behind every new night's ingestions.

Duplicates: a catalog row is rejected when an *accepted* row before it in catalog order
(``image_audit.catalog.catalog_order``) has the same image id (trimmed), "duplicate image id in this
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
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    Select,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    null,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from copyleaks_provider.scan_ids import canonical_model, make_rejection_id, make_scan_id
from image_audit.catalog import CatalogSpec, catalog_order, catalog_query, row_rejection, url_file_name
from image_audit.submission_window import DEFERRED_BY_BUDGET, DEFERRED_BY_WINDOW
from image_audit.warehouse.lifecycle import ScanState
from image_audit.warehouse.schema import TZ, audit_batches, audit_scans

log = logging.getLogger(__name__)

#: Credits Copyleaks charges for one image scan (``expectedCredits`` of the response).
CREDITS_PER_IMAGE = 1
#: Rows per round trip when Python reads or writes the temporary tables.
_PAGE = 5_000
#: SQLite's page cache for the phases that move a million rows (see ``_Planner.page_cache``).
_CACHE_KIB = 32 * 1024
#: The row-at-a-time planner's blocks (leftovers, catalog rows): within one, adoptions came last.
_LEFTOVER_BLOCK, _CATALOG_BLOCK = 1_000, 2_000
DUPLICATE_ID = "duplicate image id in this interval"
DUPLICATE_URL = "duplicate URL: same image as "


@dataclass(frozen=True)
class RunContext:
    dag_id: str
    run_id: str
    interval_start: datetime
    interval_end: datetime


@dataclass(frozen=True)
class PlanOptions:
    model: str
    sandbox: bool = False
    force_rescan: bool = False
    batch_size: int = 1000
    max_credits: int | None = None
    #: Submissions that fit this run's window (``submission_capacity``); None: no cap.
    max_submissions: int | None = None
    max_attempts: int = 3
    source_filter: str | None = None
    limit: int | None = None


@dataclass
class RunPlan:
    """What planning decided; small enough for XCom and the task log."""

    batch_ids: list[str] = field(default_factory=list)
    planned: int = 0
    new: int = 0
    resumed: int = 0
    retried: int = 0
    rejected: int = 0
    already_scanned: int = 0
    in_progress: int = 0
    deferred_by_budget: int = 0
    deferred_by_window: int = 0
    exhausted: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _now() -> datetime:
    return datetime.now(UTC)


# --- the temporary tables (per connection; never part of the warehouse schema) -------------------------
_SCRATCH = MetaData()


def _temporary(name: str, *columns, **options) -> Table:
    return Table(name, _SCRATCH, *columns, prefixes=["TEMPORARY"], **options)


def _key(name: str = "pos") -> Column:
    return Column(name, Integer, primary_key=True, autoincrement=False)


def _row_columns() -> list[Column]:
    return [
        Column("image_id", Text),
        Column("url", Text),
        Column("file_name", Text),
        Column("source", Text),
        Column("ingested_at", TZ),
        Column("fetch_headers_ref", Text),
    ]


#: The interval's catalog rows, copied by SQL (``pos``: catalog order, from 1) with their scan id
#: stems (``scan_key``: on SQLite only for the plain rows), and what Python found where a row is not
#: plain: the trimmed id (``id_key``, when it differs from the id), the file name taken from the URL
#: (``named``), the reason a row is rejected and its rejection id.
_catalog = _temporary(
    "plan_catalog",
    _key(),
    *_row_columns(),
    Column("scan_key", Text),
    Column("id_key", Text),
    Column("named", Text),
    Column("error", Text),
    Column("reject_id", Text),
)
#: Valid rows sharing their id or URL with another valid row: the duplicate rounds decide them.
_shared = _temporary(
    "plan_shared",
    _key(),
    Column("id_key", Text),
    Column("url", Text),
    Column("verdict", Text),
    Column("error", Text),
    Index("ix_plan_shared_id", "id_key", "pos"),
    Index("ix_plan_shared_url", "url", "pos"),
)
#: Earlier runs' leftovers, oldest first (``pos``, from 1).
_leftovers = _temporary(
    "plan_leftovers",
    _key(),
    Column("scan_id", Text),
    Column("attempt", Integer),
    Column("state", Text),
    Column("last_error", Text),
    *_row_columns(),
)
#: The latest attempt (not rejected) of each image planned, and whether it is a leftover.
_latest = _temporary(
    "plan_latest",
    Column("image_id", Text, primary_key=True),
    Column("scan_id", Text),
    Column("attempt", Integer),
    Column("state", Text),
    Column("batched", Boolean),
    Column("leftover", Boolean),
)
#: Every leftover (phase 0) and catalog row (phase 1) with something to do or count: its kind, the
#: attempt it writes, or the scan it adopts.
_work = _temporary(
    "plan_work",
    _key("phase"),
    _key(),
    Column("kind", Text),
    Column("attempt", Integer),
    Column("adopted_id", Text),
    Column("forced", Boolean),
    sqlite_with_rowid=False,  # looked up by its key a million times: no second lookup by rowid
)
#: The scans that fit the caps, in batch order.
_placed = _temporary("plan_placed", _key("place_no"), Column("phase", Integer), Column("pos", Integer))
_batch_ids = _temporary("plan_batch_ids", _key("batch_no"), Column("batch_id", Text))
_SOURCES = {0: _leftovers, 1: _catalog}

# kinds of plan_work rows
NEW, RETRY, ADOPT, RESUME = "new", "retry", "adopt", "resume"  # these take a credit and a submission
EXHAUSTED, IN_PROGRESS, SCANNED = "exhausted", "in_progress", "scanned"
_ADMITTED_KINDS = (NEW, RETRY, ADOPT, RESUME)
WON, LOST = "won", "lost"
#: The SQLite functions planning registers on its connection: scan id stems, and the stems of the
#: catalog rows that pass the checks without anything to note (NULL for the others).
_SCAN_KEY_FUNCTION, _ROW_KEY_FUNCTION = "image_audit_scan_key", "image_audit_plain_row_key"


def _insert(conn: Connection, table: Table):
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


class _Planner:
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
        self.drop_tables()  # left by a planning that died on this pooled connection
        _SCRATCH.create_all(self.conn, checkfirst=False)
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
                self.drop_tables()

    @contextlib.contextmanager
    def page_cache(self, schema: str) -> Iterator[None]:
        """SQLite: a bigger page cache for ``schema`` ("temp": the temporary tables; "main": while the
        scans are inserted, each new scan id landing at a random place of the primary key's index).
        With the default 2 MiB a million rows take twice as long. One at a time, each bounded, so memory
        stays flat; the default comes back afterwards."""
        if not self.sqlite:
            yield
            return
        default = self.conn.exec_driver_sql(f"PRAGMA {schema}.cache_size").scalar_one()
        self.conn.exec_driver_sql(f"PRAGMA {schema}.cache_size = -{_CACHE_KIB}")
        try:
            yield
        finally:
            self.conn.exec_driver_sql(f"PRAGMA {schema}.cache_size = {int(default)}")

    def drop_tables(self) -> None:
        schema = "temp" if self.sqlite else "pg_temp"
        for table in reversed(_SCRATCH.sorted_tables):
            self.conn.exec_driver_sql(f"DROP TABLE IF EXISTS {schema}.{table.name}")

    def _pages(self, query: Select, key) -> Iterator[list]:
        """``query``'s rows in pages, by ``key`` (its first column): Python holds one page at a time."""
        last = None
        while True:
            page = query.order_by(key).limit(_PAGE)
            if last is not None:
                page = page.where(key > last)
            rows = self.execute(page).all()
            if not rows:
                return
            yield rows
            last = rows[-1][0]

    def analyze(self, *tables: Table) -> None:
        """PostgreSQL: statistics for temporary tables just filled (autovacuum never sees them), so a
        million rows are joined by hash, not row by row."""
        if not self.sqlite:
            for table in tables:
                self.conn.exec_driver_sql(f"ANALYZE pg_temp.{table.name}")

    def _update_rows(self, table: Table, values: dict, rows: list[dict]) -> None:
        """``UPDATE table SET values WHERE pos = :p`` for each of ``rows`` (few: the exceptions)."""
        if rows:
            self.execute(update(table).where(table.c.pos == bindparam("p")).values(**values), rows)

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
        names = [c.name for c in _row_columns()]
        c = _catalog.c
        odd = select(c.pos, c.image_id, c.url, c.file_name)
        if self.sqlite:
            # Rowids follow the insert's order (no second sort), and SQLite runs each row's check in the
            # copy, through the function ``prepare`` registered: Python reads back only the odd rows.
            key = getattr(func, _ROW_KEY_FUNCTION)(rows.c.image_id, rows.c.url, rows.c.file_name)
            ordered = select(*(rows.c[n] for n in names), key).order_by(*catalog_order(rows.c))
            copy = _catalog.insert().from_select([*names, "scan_key"], ordered)
            odd = odd.where(c.scan_key.is_(None))
        else:
            position = func.row_number().over(order_by=catalog_order(rows.c))
            key = self.scan_key(rows.c.image_id)
            copy = _catalog.insert().from_select(
                ["pos", *names, "scan_key"], select(position, *(rows.c[n] for n in names), key)
            )
        self.execute(copy)
        self.analyze(_catalog)
        values = {
            "scan_key": bindparam("s"),
            "id_key": bindparam("k"),
            "named": bindparam("n"),
            "error": bindparam("e"),
            "reject_id": bindparam("r"),
        }
        for page in self._pages(odd, c.pos):
            self._update_rows(_catalog, values, [found for row in page if (found := self._check(*row))])

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

    def resolve_duplicates(self) -> None:
        """Reject every valid row that an earlier accepted row duplicates (see the module's rule).

        Only rows sharing an id or a URL take part, in rounds. A row is accepted once every earlier row
        it shares its id or URL with lost; rejected as a duplicate id once an earlier row with its id
        won, as a duplicate URL once an earlier row with its URL won and no earlier row with its id may
        still win. The earliest undecided row is always decided, and real duplicate sets take a round
        or two.
        """
        c = _catalog.c
        id_key = func.coalesce(c.id_key, c.image_id)
        valid = select(c.pos, id_key.label("id_key"), c.url).where(c.error.is_(None)).subquery()
        ids = select(valid.c.id_key).group_by(valid.c.id_key).having(func.count() > 1)
        urls = select(valid.c.url).group_by(valid.c.url).having(func.count() > 1)
        candidates = select(valid).where(or_(valid.c.id_key.in_(ids), valid.c.url.in_(urls)))
        if not self.execute(_shared.insert().from_select(["pos", "id_key", "url"], candidates)).rowcount:
            return
        self.analyze(_shared)
        s, e = _shared, _shared.alias("earlier")
        same_id, same_url = e.c.id_key == s.c.id_key, e.c.url == s.c.url
        undecided, open_, won = s.c.verdict.is_(None), e.c.verdict.is_(None), e.c.verdict == WON

        def before(*conditions):
            return exists().where(e.c.pos < s.c.pos, *conditions)

        url_winner = select(e.c.id_key).where(e.c.pos < s.c.pos, same_url, won).scalar_subquery()
        rounds = [
            {"verdict": WON, "when": [~before(same_id, or_(open_, won)), ~before(same_url, or_(open_, won))]},
            {"verdict": LOST, "error": DUPLICATE_ID, "when": [before(same_id, won)]},
            {
                "verdict": LOST,
                "error": literal(DUPLICATE_URL) + url_winner,
                "when": [before(same_url, won), ~before(same_id, open_)],
            },
        ]
        decided = True
        while decided:
            decided = False
            for step in rounds:
                values = {key: value for key, value in step.items() if key != "when"}
                statement = update(s).where(undecided, *step["when"]).values(**values)
                decided = bool(self.execute(statement).rowcount) or decided
        lost = select(s.c.pos, c.image_id, c.url, c.file_name, s.c.error).join_from(
            s, _catalog, c.pos == s.c.pos
        )
        values = {"error": bindparam("e"), "reject_id": bindparam("r")}
        for page in self._pages(lost.where(s.c.verdict == LOST), s.c.pos):
            rejected = [
                {
                    "p": pos,
                    "e": error,
                    "r": make_rejection_id(self.model, str(image_id), str(url), str(name), error),
                }
                for pos, image_id, url, name, error in page
            ]
            self._update_rows(_catalog, values, rejected)

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
        names = [c.name for c in _leftovers.columns if c.name != "pos"]
        leftovers = select(func.row_number().over(order_by=order), *(s[n] for n in names)).where(
            s.model == self.model, s.run_id != self.run.run_id, self._leftover(audit_scans)
        )
        self.execute(_leftovers.insert().from_select(["pos", *names], leftovers))
        self.analyze(_leftovers)
        c = _leftovers.c  # a retry without a file name takes its URL's, as a catalog row does
        unnamed = select(c.pos, c.url).where(
            c.state == ScanState.TIMED_OUT.value, c.url != "", or_(c.file_name.is_(None), c.file_name == "")
        )
        for page in self._pages(unnamed, c.pos):
            self._update_rows(
                _leftovers, {"file_name": bindparam("f")}, [{"p": p, "f": url_file_name(u)} for p, u in page]
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
        c = _catalog.c
        sources = [
            select(*columns).join_from(_leftovers, audit_scans, s.image_id == _leftovers.c.image_id),
            select(*columns)
            .join_from(_catalog, audit_scans, s.image_id == c.image_id)
            .where(c.error.is_(None)),
        ]
        for source in sources:
            insert = _insert(self.conn, _latest).from_select(
                [col.name for col in _latest.columns], source.where(latest)
            )
            self.execute(insert.on_conflict_do_nothing(index_elements=["image_id"]))
        self.analyze(_latest)

    def classify(self) -> None:
        """Each leftover and valid catalog row's kind, as the row-at-a-time planner decided it."""
        o, t = self.options, _latest.c
        l = _leftovers.c  # noqa: E741
        pending = l.state == ScanState.PENDING.value
        kind = case((pending, ADOPT), (l.attempt >= o.max_attempts, EXHAUSTED), else_=RETRY)
        adopted = case((pending, l.scan_id), else_=None)
        leftovers = select(literal(0), l.pos, kind, l.attempt + 1, adopted, false()).join_from(
            _leftovers, _latest, and_(t.image_id == l.image_id, t.scan_id == l.scan_id)
        )
        columns = [col.name for col in _work.columns]
        self.execute(_work.insert().from_select(columns, leftovers))

        c, state = _catalog.c, t.state
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
            .join_from(_catalog, _latest, t.image_id == c.image_id, isouter=True)
            .where(c.error.is_(None), undecided)
        )
        self.execute(_work.insert().from_select(columns, rows))
        self.analyze(_work)

    def admit(self):
        """Which rows get a credit and a submission: the first ``cap`` that ask, leftovers first."""
        w = _work.c
        asks = w.kind.in_(_ADMITTED_KINDS)
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
        w, plan = _work.c, self.plan

        def total(*conditions):
            return func.coalesce(func.sum(case((and_(*conditions), 1), else_=0)), 0)

        adoption = w.kind.in_([ADOPT, RESUME])
        counters = {
            "new": total(w.phase == 1, w.kind == NEW),
            "retried": total(w.kind == RETRY, or_(w.phase == 1, admitted)),
            "resumed": total(adoption, admitted),
            "deferred": total(w.kind.in_(_ADMITTED_KINDS), ~admitted),
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
        plan.rejected = self.execute(select(func.count()).where(_catalog.c.error.is_not(None))).scalar_one()

    def _new_scan_id(self, phase: int):
        """The scan id a row of ``plan_work`` writes or adopts."""
        w = _work.c
        if phase == 0:
            new = self.scan_id(_leftovers.c.image_id, w.attempt)
        else:
            new = _catalog.c.scan_key + "-" + cast(w.attempt, Text)
        return case((w.adopted_id.is_not(None), w.adopted_id), else_=new)

    def place(self, admitted) -> None:
        """Number the admitted scans in batch order, and name each batch after its first scan."""
        w, size = _work.c, self.options.batch_size
        order = [w.phase, w.pos]
        if self.counts["resumed"]:  # adoptions after the new attempts of their block
            block = case((w.phase == 0, (w.pos - 1) // _LEFTOVER_BLOCK), else_=(w.pos - 1) // _CATALOG_BLOCK)
            order = [w.phase, block, case((w.kind.in_([ADOPT, RESUME]), 1), else_=0), w.pos]
        place_no = func.row_number().over(order_by=order) - 1
        self.execute(
            _placed.insert().from_select(
                ["place_no", "phase", "pos"], select(place_no, w.phase, w.pos).where(admitted)
            )
        )
        self.analyze(_placed)
        p, run = _placed.c, self.run
        for phase, source in _SOURCES.items():
            heads = (
                select(p.place_no, self._new_scan_id(phase))
                .join_from(_placed, _work, and_(w.phase == p.phase, w.pos == p.pos))
                .join(source, source.c.pos == w.pos)
                .where(p.phase == phase, p.place_no % size == 0)
            )
            for page in self._pages(heads, p.place_no):
                batches = []
                for place_no, scan_id in page:
                    digest = hashlib.sha256(f"{run.dag_id}\x1f{run.run_id}\x1f{scan_id}".encode()).hexdigest()
                    batches.append({"batch_no": place_no // size, "batch_id": f"b{digest[:31]}"})
                # A batch named after a scan that is not inserted (its id is taken, by a scan Copyleaks
                # refused) is named so again when the run plans again: the plan then adds to that batch.
                self.execute(
                    _insert(self.conn, audit_batches).on_conflict_do_nothing(index_elements=["batch_id"]),
                    [
                        {"batch_id": b["batch_id"], "dag_id": run.dag_id, "run_id": run.run_id, "size": 0,
                         "created_at": self.now}
                        for b in batches
                    ],
                )  # fmt: skip
                self.execute(_batch_ids.insert(), batches)
        self.analyze(_batch_ids)

    # --- writing the decisions ----------------------------------------------------------------------------
    def _scans(self, source: Table, **values) -> list:
        """The columns of ``audit_scans`` rows written from ``source`` (a temporary table)."""
        run, o = self.run, self.options
        row = {
            "model": literal(self.model),
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
            "created_at": literal(self.now, TZ),
            "updated_at": literal(self.now, TZ),
            "last_error": null(),
            **values,
        }
        return [row[name].label(name) for name in self._scan_columns]

    _scan_columns = [c.name for c in audit_scans.columns if c.name not in ("submitted_at", "completed_at")]

    def _insert_scans(self, query) -> None:
        statement = _insert(self.conn, audit_scans).from_select(self._scan_columns, query)
        self.execute(statement.on_conflict_do_nothing(index_elements=["scan_id"]))

    def write(self, admitted) -> None:
        w, p, b, c = _work.c, _placed.c, _batch_ids.c, _catalog.c
        counts, size = self.counts, self.options.batch_size
        if self.plan.rejected:  # the catalog's bad rows, in catalog order
            rejected = self._scans(
                _catalog, scan_id=c.reject_id, image_id=func.coalesce(c.image_id, ""), attempt=literal(1),
                state=literal(ScanState.REJECTED.value), last_error=c.error,
                file_name=func.coalesce(c.named, c.file_name),
            )  # fmt: skip
            self._insert_scans(select(*rejected).where(c.error.is_not(None)).order_by(c.pos))
        for phase, source in _SOURCES.items():  # new attempts: in batch order, then the deferred ones
            new = {
                "scan_id": self._new_scan_id(phase),
                "image_id": source.c.image_id,
                "attempt": w.attempt,
                "state": literal(ScanState.PENDING.value),
            }
            if phase == 1:
                new["file_name"] = func.coalesce(c.named, c.file_name)
            rows = _work.join(source, and_(source.c.pos == w.pos, w.phase == phase))
            placed = rows.join(_placed, and_(p.phase == w.phase, p.pos == w.pos)).join(
                _batch_ids, b.batch_no == p.place_no // size
            )
            attempts = w.kind.in_([NEW, RETRY])
            self._insert_scans(
                select(*self._scans(source, **new, batch_id=b.batch_id))
                .select_from(placed)
                .where(attempts)
                .order_by(p.place_no)
            )
            if counts["deferred_new"]:
                deferred = self._scans(source, **new, last_error=literal(self.deferral))
                self._insert_scans(
                    select(*deferred).select_from(rows).where(attempts, ~admitted).order_by(w.pos)
                )
        a, run = audit_scans.c, self.run
        if counts["resumed"]:  # adoptions: into this run's batches, with their ids
            adoptions = (
                select(w.adopted_id, b.batch_id)
                .join_from(_work, _placed, and_(p.phase == w.phase, p.pos == w.pos))
                .join(_batch_ids, b.batch_no == p.place_no // size)
                .where(w.kind.in_([ADOPT, RESUME]))
                .subquery()
            )
            self.execute(
                update(audit_scans)
                .where(a.scan_id == adoptions.c.adopted_id, a.state == ScanState.PENDING.value)
                .values(
                    batch_id=adoptions.c.batch_id,
                    dag_id=run.dag_id,
                    run_id=run.run_id,
                    updated_at=self.now,
                    last_error=None,
                )
            )
        if counts["waiting"]:  # a leftover that still waits says which cap holds it back now
            waiting = select(w.adopted_id).where(w.phase == 0, w.kind == ADOPT, ~admitted)
            self.execute(
                update(audit_scans)
                .where(a.scan_id.in_(waiting), a.batch_id.is_(None))
                .where(or_(a.last_error.is_(None), a.last_error != self.deferral))
                .values(last_error=self.deferral, updated_at=self.now)
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
        planner = _Planner(conn, run, options)
        try:
            with conn.begin(), planner.page_cache("temp"):  # temporary tables only: no lock
                planner.prepare()
                planner.stage_catalog(spec)
                planner.resolve_duplicates()
            with conn.begin():  # every decision at once: earlier runs' leftovers first, then the catalog
                planner.lock()
                with planner.page_cache("temp"):
                    planner.stage_leftovers()
                    planner.record_latest()
                    planner.classify()
                    admitted = planner.admit()
                    planner.count(admitted)
                    planner.place(admitted)
                with planner.page_cache("main"):
                    planner.write(admitted)
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
