"""The Alembic environment of the warehouse revisions.

Run only through ``image_audit.warehouse.migrations`` (``python -m image_audit.warehouse``), which
passes the connection (in a transaction it owns) as ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from image_audit.warehouse.migrations import VERSION_TABLE
from image_audit.warehouse.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "the warehouse revisions run on a connection passed by image_audit.warehouse.migrations "
        "(python -m image_audit.warehouse upgrade), not from the alembic command line"
    )


def _ours(name, type_, _parent_names) -> bool:
    """Autogenerate compares the warehouse's tables only: its database may hold others (the Copyleaks
    account state, Airflow's metadata)."""
    return type_ != "table" or name in metadata.tables


context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    # SQLite alters a table by copying it: ``op.batch_alter_table`` does that, and autogenerate writes it.
    render_as_batch=connection.dialect.name == "sqlite",
    include_name=_ours,
    compare_type=True,
)

with context.begin_transaction():
    context.run_migrations()
