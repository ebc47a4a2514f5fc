"""image_standing and audit_daily: the documented analytics model, back-filled from the scans stored.

Revision ID: 0005
Revises: 0004

Two new tables, which each run keeps current as it closes (``image_audit.warehouse.analytics``;
docs/analytics.md), the mark of how far they have read (``analytics_refresh``), and an index on
``audit_scans.updated_at`` (the scans changed since). The upgrade fills the tables from every scan and
result already stored, with the report's default verdict thresholds, in the upgrade's one transaction.
The back-fill runs this code's recompute (:func:`image_audit.warehouse.analytics.refresh_all`): it reads
the tables at this revision, so a later revision changing them must back-fill with its own SQL.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

log = logging.getLogger("image_audit.warehouse.migrations")

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "image_standing",
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
    )
    op.create_index("ix_image_standing_day_source", "image_standing", ["ingest_day", "source"])
    op.create_table(
        "audit_daily",
        sa.Column("ingest_day", sa.String(10), primary_key=True),
        sa.Column("source", sa.String(255), primary_key=True),
        sa.Column("model", sa.String(64), primary_key=True),
        *(
            sa.Column(name, sa.Integer(), nullable=False)
            for name in ("images", "completed", "ai_generated", "partly_ai", "human")
        ),
        sa.Column("ai_share", sa.Float()),
        sa.Column("mean_ai", sa.Float()),
        *(
            sa.Column(name, sa.Integer(), nullable=False)
            for name in ("failed", "timed_out", "rejected", "in_flight", "scans", "results")
        ),
        sa.Column("expected_credits", sa.Integer(), nullable=False),
        sa.Column("actual_credits", sa.Integer(), nullable=False),
    )
    op.create_table(
        "analytics_refresh",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("scans_updated_before", TZ, nullable=False),
        sa.Column("refreshed_at", TZ, nullable=False),
    )
    op.create_index("ix_audit_scans_updated", "audit_scans", ["updated_at"])
    backfill(op.get_bind())


def backfill(conn: sa.Connection) -> tuple[int, int]:
    """Fill both tables from the scans and results stored; returns (standing rows, daily rows)."""
    from image_audit.warehouse.analytics import refresh_all

    images, days = refresh_all(conn, archive=False)  # the archive's tables come at 0006, empty
    if images:
        log.info("Back-filled the analytics model: %d images, %d daily rows", images, days)
    return images, days


def downgrade() -> None:
    op.drop_index("ix_audit_scans_updated", table_name="audit_scans")
    op.drop_table("analytics_refresh")
    op.drop_table("audit_daily")
    op.drop_index("ix_image_standing_day_source", table_name="image_standing")
    op.drop_table("image_standing")
