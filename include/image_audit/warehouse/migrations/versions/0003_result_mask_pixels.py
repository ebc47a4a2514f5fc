"""audit_results.mask_pixels: the AI pixels of each result's mask, stored with the result.

Revision ID: 0003
Revises: 0002

The report reads each mask's area (the export's ``mask_area``, the verdicts under ``partly_ai``) from
this column, which the receiver writes with the result, instead of summing ``mask_lengths``. The column
is added nullable, without a default (no table rewrite on either database), and back-filled in the
database, :data:`BATCH` results per statement in primary-key order; a row left NULL has its mask summed
by the report itself.

Like every revision it runs in the upgrade's one transaction: the receiver's writes to
``audit_results`` wait for the back-fill; upgrade between runs.
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
