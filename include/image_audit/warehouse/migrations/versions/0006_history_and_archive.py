"""A night's cost independent of history, and the archive's tables.

Revision ID: 0006
Revises: 0005

Two indexes on ``audit_scans``: ``ix_audit_scans_ingested`` (the analytics model reads the scans of a
day by a range of ``ingested_at``), and ``ix_audit_scans_leftovers``, partial on the states planning
takes up again (pending, timed out), so finding earlier runs' leftovers reads them alone. Two tables
for the archive (``image_audit.maintenance.archive``): ``audit_archived_images`` (each archived image's
standing and latest attempt) and ``audit_archived_days`` (the archived scan attempts per day, which
``audit_daily`` keeps counting). Nothing is archived by the upgrade: the new tables start empty.

On PostgreSQL the indexes are built in the upgrade's transaction (no ``CONCURRENTLY``): writes to
``audit_scans`` wait for the build; upgrade between runs.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
LEFTOVER_STATES_SQL = "state IN ('pending', 'timed_out')"


def upgrade() -> None:
    op.create_index("ix_audit_scans_ingested", "audit_scans", ["ingested_at"])
    op.create_index(
        "ix_audit_scans_leftovers",
        "audit_scans",
        ["model", "created_at"],
        sqlite_where=sa.text(LEFTOVER_STATES_SQL),
        postgresql_where=sa.text(LEFTOVER_STATES_SQL),
    )
    op.create_table(
        "audit_archived_days",
        sa.Column("ingest_day", sa.String(10), primary_key=True),
        sa.Column("source", sa.String(255), primary_key=True),
        sa.Column("model", sa.String(64), primary_key=True),
        *(
            sa.Column(name, sa.Integer(), nullable=False)
            for name in ("scans", "results", "expected_credits", "actual_credits")
        ),
    )
    op.create_table(
        "audit_archived_images",
        sa.Column("image_id", sa.String(255), primary_key=True),
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("scan_id", sa.String(36), nullable=False),
        sa.Column("dag_id", sa.String(250)),
        sa.Column("run_id", sa.String(250)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("verdict", sa.String(16)),
        sa.Column("ai", sa.Float()),
        sa.Column("mask_share", sa.Float()),
        sa.Column("issued_by", sa.Text()),
        sa.Column("issued_time", sa.Text()),
        sa.Column("app_or_device_used", sa.Text()),
        sa.Column("source", sa.String(255)),
        sa.Column("ingest_day", sa.String(10)),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_audited_at", TZ, nullable=False),
        sa.Column("last_audited_at", TZ, nullable=False),
        sa.Column("completed_at", TZ),
        sa.Column("last_error", sa.Text()),
        sa.Column("latest_attempt", sa.Integer(), nullable=False),
        sa.Column("archived_at", TZ, nullable=False),
        sa.Column("archive_uri", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_archived_images")
    op.drop_table("audit_archived_days")
    op.drop_index("ix_audit_scans_leftovers", table_name="audit_scans")
    op.drop_index("ix_audit_scans_ingested", table_name="audit_scans")
