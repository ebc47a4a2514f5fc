"""audit_results.mask_pixels: the AI pixels of each result's mask, stored with the result.

Revision ID: 0003
Revises: 0002

The report needs each mask's area (the export's ``mask_area``, the verdicts under ``partly_ai``): it
summed every result's ``mask_lengths`` JSON to get it, seconds at 100,000 images. The receiver now
stores the sum when it stores the result. This revision adds the column (nullable, no default: on both
databases an instant change of the catalog, no table rewrite) and back-fills the rows already there,
in the database (the JSON array summed by ``json_array_elements_text`` on PostgreSQL, ``json_each`` on
SQLite), in batches of :data:`BATCH` results in primary-key order, so no statement holds a whole
table's worth of work. A row the back-fill did not reach (there is none after this revision, but a
reader cannot know) stays NULL, and the report then sums its mask itself.

Like every revision it runs in the upgrade's one transaction: the receiver's writes to
``audit_results`` wait for the back-fill (4 to 5 s per 100,000 results, on SQLite and PostgreSQL);
upgrade between runs.
"""

from __future__ import annotations

import logging
import sqlite3

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("image_audit.warehouse.migrations")

#: Results back-filled per statement.
BATCH = 20_000

_SUM = {
    "postgresql": "(SELECT COALESCE(SUM(value::bigint), 0) "
    "FROM json_array_elements_text(audit_results.mask_lengths) AS value)",
    "sqlite": "(SELECT COALESCE(SUM(value), 0) FROM json_each(audit_results.mask_lengths))",
}


def upgrade() -> None:
    op.add_column("audit_results", sa.Column("mask_pixels", sa.Integer(), nullable=True))
    backfill(op.get_bind())


def backfill(conn: sa.Connection, batch: int = BATCH) -> int:
    """Set ``mask_pixels`` (the sum of ``mask_lengths``) on every result where it is NULL, ``batch``
    results (by scan id) per ``UPDATE``; returns the rows set."""
    pixels = _SUM[conn.dialect.name]
    after: str | None = None  # the last scan id done (None: none yet)
    total = 0
    while True:
        since = "" if after is None else "WHERE scan_id > :after "
        last = conn.execute(
            sa.text(f"SELECT scan_id FROM audit_results {since}ORDER BY scan_id LIMIT 1 OFFSET :skip"),
            {"after": after, "skip": batch - 1},
        ).scalar()
        where = ["mask_pixels IS NULL"]
        where += [] if after is None else ["scan_id > :after"]
        where += [] if last is None else ["scan_id <= :last"]  # None: the last, partial batch
        total += conn.execute(
            sa.text(f"UPDATE audit_results SET mask_pixels = {pixels} WHERE {' AND '.join(where)}"),
            {"after": after, "last": last},
        ).rowcount
        if last is None:
            break
        after = last
    if total:
        log.info("Back-filled audit_results.mask_pixels on %d results", total)
    return total


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite" and sqlite3.sqlite_version_info < (3, 35, 0):
        with op.batch_alter_table("audit_results") as batch:  # no DROP COLUMN before 3.35: a copy
            batch.drop_column("mask_pixels")
    else:
        op.drop_column("audit_results", "mask_pixels")
