"""OpenLineage datasets of the audit: the catalog table in; the scans/results tables and the report files out.

Emitted through Airflow's OpenLineage provider (its listener plugin, enabled by an ``[openlineage]``
transport): :class:`~image_audit.operators.submit.SubmitAuditBatchOperator` returns them from
``get_openlineage_facets_on_complete``; the report task (TaskFlow, which has no such method) records its
files through Airflow's hook lineage collector, which the provider reads for operators without datasets.

Tables follow the OpenLineage naming convention: PostgreSQL ``postgres://host:port`` with name
``database.schema.table``; SQLite (no convention there) ``sqlite://<absolute file path>`` with the table's
name. A namespace never carries credentials.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from image_audit.planning.catalog import CatalogSpec

if TYPE_CHECKING:
    from openlineage.client.event_v2 import Dataset

log = logging.getLogger(__name__)

#: The warehouse tables the submit task's scans end in (results arrive through the receiver).
SUBMIT_OUTPUT_TABLES = ("audit_scans", "audit_results")
#: The schema PostgreSQL puts unqualified tables in (the warehouse's own tables are unqualified).
POSTGRES_DEFAULT_SCHEMA = "public"


def warehouse_namespace(url: str) -> str:
    """The OpenLineage namespace of the warehouse at SQLAlchemy ``url`` (host:port, or the SQLite file)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return f"postgres://{parsed.host or 'localhost'}:{parsed.port or 5432}"
    if backend == "sqlite":
        return f"sqlite://{parsed.database or ':memory:'}"
    return f"{backend}://{parsed.host or ''}{f':{parsed.port}' if parsed.port else ''}"


def table_dataset(url: str, table: str, schema: str | None = None) -> Dataset:
    """The OpenLineage dataset of ``[schema.]table`` in the warehouse at ``url``."""
    from openlineage.client.event_v2 import Dataset

    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        name = f"{parsed.database}.{schema or POSTGRES_DEFAULT_SCHEMA}.{table}"
    else:
        name = f"{schema}.{table}" if schema else table
    return Dataset(namespace=warehouse_namespace(url), name=name)


def submit_datasets(url: str, catalog: CatalogSpec) -> tuple[list[Dataset], list[Dataset]]:
    """The submit task's (inputs, outputs): the catalog table; the scans and results tables."""
    return (
        [table_dataset(url, catalog.table, catalog.schema)],
        [table_dataset(url, table) for table in SUBMIT_OUTPUT_TABLES],
    )


def configured_catalog() -> CatalogSpec:
    """The deployment's catalog (the Airflow Variable ``image_audit_catalog``, as planning reads it)."""
    from airflow.sdk import Variable

    return CatalogSpec.from_dict(Variable.get("image_audit_catalog", default=None, deserialize_json=True))


def record_report_outputs(uris: list[str]) -> None:
    """Record the report files (``file:///...``, ``s3://bucket/key``) as the running task's outputs.

    Airflow's hook lineage collector keeps them for the OpenLineage listener (a no-op collector when no
    lineage reader is installed). Lineage never fails the report.
    """
    try:
        from airflow.sdk.lineage import get_hook_lineage_collector

        from image_audit.reporting.storage import as_storage_path

        collector = get_hook_lineage_collector()
        for uri in uris:
            collector.add_output_asset(context=as_storage_path(uri), uri=uri)
    except Exception as exc:
        log.warning("Report lineage not recorded: %s", exc)
