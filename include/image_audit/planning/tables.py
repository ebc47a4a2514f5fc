"""The planning's temporary tables, and how Python moves rows through them.

Per connection and never part of the warehouse schema: SQL fills them from the catalog and
``audit_scans`` (``image_audit.planning.phases``), Python reads and writes them in pages, only the rows
SQL cannot decide, so its memory does not grow with the interval.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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
from sqlalchemy.dialects import postgresql, sqlite

from image_audit.warehouse.schema import TZ

#: Rows per round trip when Python reads or writes the temporary tables.
_PAGE = 5_000
#: SQLite's page cache for the phases that move a million rows (see ``page_cache``).
_CACHE_KIB = 32 * 1024
SCRATCH = MetaData()


def _temporary(name: str, *columns, **options) -> Table:
    return Table(name, SCRATCH, *columns, prefixes=["TEMPORARY"], **options)


def _key(name: str = "pos") -> Column:
    return Column(name, Integer, primary_key=True, autoincrement=False)


def row_columns() -> list[Column]:
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
plan_catalog = _temporary(
    "plan_catalog",
    _key(),
    *row_columns(),
    Column("scan_key", Text),
    Column("id_key", Text),
    Column("named", Text),
    Column("error", Text),
    Column("reject_id", Text),
)
#: Valid rows sharing their id or URL with another valid row: the duplicate rounds decide them.
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
#: Every leftover (phase 0) and catalog row (phase 1) with something to do or count: its kind, the
#: attempt it writes, or the scan it adopts.
plan_work = _temporary(
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
plan_placed = _temporary("plan_placed", _key("place_no"), Column("phase", Integer), Column("pos", Integer))
plan_batch_ids = _temporary("plan_batch_ids", _key("batch_no"), Column("batch_id", Text))
SOURCES = {0: plan_leftovers, 1: plan_catalog}

# kinds of plan_work rows
NEW, RETRY, ADOPT, RESUME = "new", "retry", "adopt", "resume"  # these take a credit and a submission
EXHAUSTED, IN_PROGRESS, SCANNED = "exhausted", "in_progress", "scanned"
ADMITTED_KINDS = (NEW, RETRY, ADOPT, RESUME)
WON, LOST = "won", "lost"  # verdicts of plan_shared rows


def dialect_insert(conn: Connection, table: Table):
    """``INSERT`` in the connection's dialect, for its ``ON CONFLICT DO NOTHING``."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def drop_tables(conn: Connection) -> None:
    schema = "temp" if conn.dialect.name == "sqlite" else "pg_temp"
    for table in reversed(SCRATCH.sorted_tables):
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {schema}.{table.name}")


@contextlib.contextmanager
def page_cache(conn: Connection, schema: str) -> Iterator[None]:
    """SQLite: a bigger page cache for ``schema`` ("temp": the temporary tables; "main": while the
    scans are inserted, each new scan id landing at a random place of the primary key's index).
    With the default 2 MiB a million rows take twice as long. One at a time, each bounded, so memory
    stays flat; the default comes back afterwards."""
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
    """PostgreSQL: statistics for temporary tables just filled (autovacuum never sees them), so a
    million rows are joined by hash, not row by row."""
    if conn.dialect.name != "sqlite":
        for table in tables:
            conn.exec_driver_sql(f"ANALYZE pg_temp.{table.name}")


def update_rows(conn: Connection, table: Table, values: dict, rows: list[dict]) -> None:
    """``UPDATE table SET values WHERE pos = :p`` for each of ``rows`` (few: the exceptions)."""
    if rows:
        conn.execute(update(table).where(table.c.pos == bindparam("p")).values(**values), rows)
