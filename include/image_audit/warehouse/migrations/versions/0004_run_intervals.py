"""audit_run_intervals: the catalog interval each run that follows the catalog's watermark claimed.

Revision ID: 0004
Revises: 0003

A run started by the catalog's Asset, or the nightly one, has no interval of its own: its plan claims
the rows ingested since the catalog's watermark and records the claim here, in the transaction of its
decisions (``image_audit.planning.watermark``). A new table: nothing existing is rewritten or locked.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "audit_run_intervals",
        sa.Column("dag_id", sa.String(250), primary_key=True),
        sa.Column("run_id", sa.String(250), primary_key=True),
        sa.Column("catalog", sa.String(255), nullable=False),
        sa.Column("interval_start", TZ, nullable=False),
        sa.Column("interval_end", TZ, nullable=False),
        sa.Column("advances_watermark", sa.Boolean(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_index("ix_audit_run_intervals_catalog_end", "audit_run_intervals", ["catalog", "interval_end"])


def downgrade() -> None:
    op.drop_index("ix_audit_run_intervals_catalog_end", table_name="audit_run_intervals")
    op.drop_table("audit_run_intervals")
