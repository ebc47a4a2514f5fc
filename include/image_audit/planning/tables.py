"""The planning's temporary tables, and how Python moves rows through them.

Per connection and never part of the warehouse schema: SQL fills them from the catalog and
``audit_scans`` (``image_audit.planning.phases``), Python reads and writes them in pages, only the rows
SQL cannot decide, so its memory does not grow with the interval.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from enum import IntEnum, StrEnum

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    Select,
    Table,
    Text,
    bindparam,
    update,
)

from image_audit.warehouse.schema import TZ

#: Rows per round trip when Python reads or writes the temporary tables.
_PAGE = 5_000
#: SQLite's page cache for the phases that move a whole interval (see ``page_cache``).
_CACHE_KIB = 32 * 1024
SCRATCH = MetaData()


def _temporary(name: str, *columns, **options) -> Table:
    return Table(name, SCRATCH, *columns, prefixes=["TEMPORARY"], **options)


def _key(name: str = "pos") -> Column:
    return Column(name, Integer, primary_key=True, autoincrement=False)


def row_columns() -> list[Column]:
    """A catalog row's columns, as ``catalog_query`` labels them."""
    return [
        Column("image_id", Text),
        Column("url", Text),
        Column("file_name", Text),
        Column("source", Text),
        Column("ingested_at", TZ),
        Column("fetch_headers_ref", Text),
    ]


#: The interval's catalog rows, copied by SQL (``pos``: catalog order, from 1) with their scan id stems
#: (``scan_stem``; on SQLite only for the plain rows), and what the row check found where a row is not
#: plain: the trimmed id (``id_key``, when it differs from the id), the file name taken from the URL
#: (``named``), the reason a row is rejected and its rejection id.
plan_catalog = _temporary(
    "plan_catalog",
    _key(),
    *row_columns(),
    Column("scan_stem", Text),
    Column("id_key", Text),
    Column("named", Text),
    Column("error", Text),
    Column("reject_id", Text),
)
#: Valid rows sharing their id or URL with another valid row: the duplicate rounds give each a verdict.
plan_shared = _temporary(
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
plan_leftovers = _temporary(
    "plan_leftovers",
    _key(),
    Column("scan_id", Text),
    Column("attempt", Integer),
    Column("state", Text),
    Column("last_error", Text),
    *row_columns(),
)
#: The latest attempt (not rejected) of each image planned, and whether it is a leftover.
plan_latest = _temporary(
    "plan_latest",
    Column("image_id", Text, primary_key=True),
    Column("scan_id", Text),
    Column("attempt", Integer),
    Column("state", Text),
    Column("batched", Boolean),
    Column("leftover", Boolean),
)
#: Every leftover and valid catalog row with something to do or count (``origin``, ``pos``: its row in
#: ``origin.table``): its ``Decision``, the attempt it writes, or the scan it adopts.
plan_work = _temporary(
    "plan_work",
    _key("origin"),
    _key(),
    Column("decision", Text),
    Column("attempt", Integer),
    Column("adopted_id", Text),
    Column("forced", Boolean),
    sqlite_with_rowid=False,  # looked up by its key for every row: no second lookup by rowid
)
#: The scans that fit the caps, in planning order (``place_no``, from 0).
plan_placed = _temporary("plan_placed", _key("place_no"), Column("origin", Integer), Column("pos", Integer))
#: This run's batches by number (``place_no // batch_size``).
plan_batch_ids = _temporary("plan_batch_ids", _key("batch_no"), Column("batch_id", Text))


class Origin(IntEnum):
    """Where a row of ``plan_work`` comes from. Planning order is by origin, then ``pos``: earlier runs'
    leftovers (oldest first) before this interval's rows (in catalog order), so a backlog drains first."""

    LEFTOVER = 0
    CATALOG = 1

    @property
    def table(self) -> Table:
        """The temporary table holding the rows of this origin."""
        return plan_leftovers if self is Origin.LEFTOVER else plan_catalog


class Decision(StrEnum):
    """What planning does with a leftover or a valid catalog row (``plan_work.decision``)."""

    NEW = "new"  # attempt 1 of an image never scanned with the model
    RETRY = "retry"  # the image's next attempt, with a new scan id
    ADOPT = "adopt"  # an earlier run's pending scan without a batch, taken with its id
    RESUME = "resume"  # this run's own pending scan without a batch (a cap deferred it), taken with its id
    IN_PROGRESS = "in_progress"  # a scan being submitted or awaiting its result: nothing to do
    SCANNED = "scanned"  # scanned already (completed or failed): skipped unless force_rescan
    EXHAUSTED = "exhausted"  # its attempt max_attempts timed out: skipped unless force_rescan


#: The decisions that take a credit and a submission, so the caps count them.
ASKING = (Decision.NEW, Decision.RETRY, Decision.ADOPT, Decision.RESUME)
#: The decisions that write a new scan row (the others write nothing or take an existing scan).
ATTEMPTS = (Decision.NEW, Decision.RETRY)
ADOPTIONS = (Decision.ADOPT, Decision.RESUME)


class Verdict(StrEnum):
    """A ``plan_shared`` row's verdict in the duplicate rounds."""

    WON = "won"
    LOST = "lost"


def drop_tables(conn: Connection) -> None:
    """Drop the temporary tables that exist on ``conn``."""
    schema = "temp" if conn.dialect.name == "sqlite" else "pg_temp"
    for table in reversed(SCRATCH.sorted_tables):
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {schema}.{table.name}")


@contextlib.contextmanager
def page_cache(conn: Connection, schema: str) -> Iterator[None]:
    """SQLite: a bigger page cache for ``schema`` while a phase moves a whole interval ("temp": the
    temporary tables; "main": inserting the scans, whose ids land all over the primary key's index).
    Bounded, one schema at a time, and the default comes back afterwards, so memory stays flat."""
    if conn.dialect.name != "sqlite":
        yield
        return
    default = conn.exec_driver_sql(f"PRAGMA {schema}.cache_size").scalar_one()
    conn.exec_driver_sql(f"PRAGMA {schema}.cache_size = -{_CACHE_KIB}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA {schema}.cache_size = {int(default)}")


def pages(conn: Connection, query: Select, key) -> Iterator[list]:
    """``query``'s rows in pages, by ``key`` (its first column): Python holds one page at a time."""
    last = None
    while True:
        page = query.order_by(key).limit(_PAGE)
        if last is not None:
            page = page.where(key > last)
        rows = conn.execute(page).all()
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def analyze(conn: Connection, *tables: Table) -> None:
    """PostgreSQL: statistics for temporary tables just filled (autovacuum never sees them), so large
    intervals are joined by hash, not row by row."""
    if conn.dialect.name != "sqlite":
        for table in tables:
            conn.exec_driver_sql(f"ANALYZE pg_temp.{table.name}")


def update_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, object]]) -> None:
    """Set the columns each of ``rows`` names (column name -> value) in the row of ``table`` at its
    ``pos``. For the few rows Python decides: the exceptions, never a whole interval."""
    if not rows:
        return
    columns = [name for name in rows[0] if name != "pos"]
    # bound as "<column>_": SQLAlchemy reserves a column's own name for its VALUES and SET clauses
    statement = update(table).where(table.c.pos == bindparam("pos_"))
    statement = statement.values({name: bindparam(f"{name}_") for name in columns})
    conn.execute(statement, [{f"{name}_": value for name, value in row.items()} for row in rows])
