"""Initial schema: the warehouse as the releases before versioned migrations created it.

What their ``metadata.create_all`` created.

Revision ID: 0001
Revises: (none)

``image_catalog`` is created only when missing: it may be the data team's own table. Each table has a
function of its own (:data:`TABLES`), which adoption also calls for the tables a legacy warehouse never
got (``image_audit.warehouse.migrations``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def create_image_catalog() -> None:
    op.create_table(
        "image_catalog",
        sa.Column("image_id", sa.String(255), primary_key=True),
        sa.Column("url", sa.Text()),
        sa.Column("file_name", sa.String(255)),
        sa.Column("source", sa.String(255)),
        sa.Column("ingested_at", TZ, nullable=False),
        sa.Column("fetch_headers_ref", sa.String(255)),
    )
    op.create_index("ix_image_catalog_ingested_at", "image_catalog", ["ingested_at"])


def create_audit_batches() -> None:
    op.create_table(
        "audit_batches",
        sa.Column("batch_id", sa.String(64), primary_key=True),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_index("ix_audit_batches_run", "audit_batches", ["dag_id", "run_id"])


def create_audit_scans() -> None:
    op.create_table(
        "audit_scans",
        sa.Column("scan_id", sa.String(36), primary_key=True),
        sa.Column("image_id", sa.String(255), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("url", sa.Text()),
        sa.Column("file_name", sa.String(255)),
        sa.Column("source", sa.String(255)),
        sa.Column("ingested_at", TZ),
        sa.Column("fetch_headers_ref", sa.String(255)),
        sa.Column("batch_id", sa.String(64)),
        sa.Column("dag_id", sa.String(250)),
        sa.Column("run_id", sa.String(250)),
        sa.Column("data_interval_start", TZ),
        sa.Column("data_interval_end", TZ),
        sa.Column("sandbox", sa.Boolean(), nullable=False),
        sa.Column("expected_credits", sa.Integer(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("submitted_at", TZ),
        sa.Column("completed_at", TZ),
        sa.Column("last_error", sa.Text()),
    )
    op.create_index("ix_audit_scans_run_state", "audit_scans", ["dag_id", "run_id", "state"])
    op.create_index("ix_audit_scans_image_model", "audit_scans", ["image_id", "model"])
    op.create_index("ix_audit_scans_batch", "audit_scans", ["batch_id"])
    op.create_index("ix_audit_scans_state", "audit_scans", ["state"])


def create_audit_results() -> None:
    op.create_table(
        "audit_results",
        sa.Column("scan_id", sa.String(36), sa.ForeignKey("audit_scans.scan_id"), primary_key=True),
        sa.Column("ai", sa.Float(), nullable=False),
        sa.Column("human", sa.Float(), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("mask_starts", sa.JSON(), nullable=False),
        sa.Column("mask_lengths", sa.JSON(), nullable=False),
        sa.Column("image_metadata", sa.JSON()),
        sa.Column("actual_credits", sa.Integer()),
        sa.Column("expected_credits", sa.Integer()),
        sa.Column("developer_payload", sa.Text()),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("raw_body", sa.JSON(), nullable=False),
    )


def create_audit_failed_callbacks() -> None:
    op.create_table(
        "audit_failed_callbacks",
        sa.Column("scan_id", sa.String(36), sa.ForeignKey("audit_scans.scan_id"), primary_key=True),
        sa.Column("body_sha256", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("raw_body", sa.JSON(), nullable=False),
    )


def create_audit_reports() -> None:
    op.create_table(
        "audit_reports",
        sa.Column("dag_id", sa.String(250), primary_key=True),
        sa.Column("run_id", sa.String(250), primary_key=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("data_interval_start", TZ),
        sa.Column("data_interval_end", TZ),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("html_path", sa.Text()),
        sa.Column("csv_path", sa.Text()),
        sa.Column("parquet_path", sa.Text()),
    )


#: Every table of this revision and the function creating it (with its indexes), in creation order.
TABLES = {
    "image_catalog": create_image_catalog,
    "audit_batches": create_audit_batches,
    "audit_scans": create_audit_scans,
    "audit_results": create_audit_results,
    "audit_failed_callbacks": create_audit_failed_callbacks,
    "audit_reports": create_audit_reports,
}


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for table, create in TABLES.items():
        if table == "image_catalog" and table in existing:
            continue  # the data team's table (or one it shares with the demo): only read
        create()


def downgrade() -> None:
    for table in reversed(TABLES):
        if table != "image_catalog":  # it may not be ours: kept, with its rows
            op.drop_table(table)
