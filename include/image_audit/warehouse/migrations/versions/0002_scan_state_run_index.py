"""Index audit_scans (state, dag_id, run_id): the waiting scans of several runs from one range.

Revision ID: 0002
Revises: 0001

The trigger's shared poll counts the ``submitted`` scans of every waiting run in one statement
(``state = 'submitted' AND (dag_id = ? AND run_id = ? OR ...)``). With two or more runs of one DAG
waiting, SQLite would serve it from ``ix_audit_scans_run_state`` on ``dag_id`` alone, reading every scan
the DAG ever made at each poll; on ``(state, dag_id, run_id)`` it is an index-only range over the waiting
scans. The index replaces ``ix_audit_scans_state``, whose queries (planning's leftovers, the report's
backlog) use its first column alike, so a scan's writes maintain no more indexes than before.

On PostgreSQL the index is built in the upgrade's transaction (no ``CONCURRENTLY``): writes to
``audit_scans`` wait for the build; upgrade between runs.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_audit_scans_state_run", "audit_scans", ["state", "dag_id", "run_id"])
    op.drop_index("ix_audit_scans_state", table_name="audit_scans")


def downgrade() -> None:
    op.create_index("ix_audit_scans_state", "audit_scans", ["state"])
    op.drop_index("ix_audit_scans_state_run", table_name="audit_scans")
