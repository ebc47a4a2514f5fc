"""catalog_ingestion: the demo's example producer of the catalog's Asset (not deployed: ``dev/dags`` is a
bundle of the demo and of ``./run cluster`` only).

One task adds sample catalog rows (``image_audit_dev.sample_catalog``, images served by the Copyleaks
emulator) to the warehouse's catalog table, stamped ``ingested_at`` = now (UTC), commits them, and then
updates the catalog's Asset (``image_audit.planning.schedule.catalog_asset``), which starts an
``image_catalog_audit`` run that audits those rows.

A real producer does the same two things in that order: it lands its rows with their ingestion time
and, once they are committed, updates the Asset: by listing it in its task's ``outlets`` as here (the
event is emitted when the task succeeds), or, outside Airflow, by posting an asset event through
Airflow's REST API (``POST /api/v2/assets/events``).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

from airflow.sdk import DAG, Param, get_current_context, task

from image_audit.config import DEFAULT_WAREHOUSE_CONN_ID
from image_audit.planning.schedule import catalog_asset

log = logging.getLogger(__name__)

DAG_ID = "catalog_ingestion"
CATALOG_ASSET = catalog_asset()

with DAG(
    dag_id=DAG_ID,
    description="Example producer: add sample rows to the image catalog, then update its Asset",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["image-audit", "example"],
    doc_md=__doc__,
    params={
        "rows": Param(20, type="integer", minimum=1, maximum=100_000, description="Catalog rows to add"),
        "source": Param(
            None, type=["null", "string"], description="The rows' source (null: the sample catalog's mix)"
        ),
        "samples_base_url": Param(
            None,
            type=["null", "string"],
            description="The images' base URL (null: the Copyleaks connection's API URL + /samples, the "
            "emulator's sample images)",
        ),
    },
):

    @task(outlets=[CATALOG_ASSET])
    def ingest() -> dict:
        """Insert the rows and commit them; the Asset event follows when the task succeeds."""
        from image_audit.config import warehouse_url
        from image_audit.warehouse.engine import get_engine
        from image_audit.warehouse.migrations import require_current
        from image_audit_dev.sample_catalog import sample_catalog_rows, seed_catalog

        context = get_current_context()
        params = context["params"]
        engine = get_engine(warehouse_url(DEFAULT_WAREHOUSE_CONN_ID))
        require_current(engine, create_empty=True)
        # The rows' ids (and image names) are the run's: a retried task inserts none twice.
        batch = hashlib.sha256(context["run_id"].encode()).hexdigest()[:8]
        now = datetime.now(UTC)
        rows = sample_catalog_rows(
            params["samples_base_url"] or f"{_emulator_url()}/samples",
            params["rows"],
            start=now,
            bad_rows=False,
            seed=int(batch, 16),
        )
        for row in rows:
            row["image_id"] = f"ingest-{batch}-{row['image_id']}"
            row["file_name"] = f"ingest-{batch}-{row['file_name']}"
            row["url"] = row["url"].rsplit("/", 1)[0] + "/" + row["file_name"]
            row["ingested_at"] = now
            if params["source"]:
                row["source"] = params["source"]
        inserted = seed_catalog(engine, rows)  # committed when it returns
        log.info("Added %d catalog rows (batch %s) ingested at %s", inserted, batch, now.isoformat())
        summary = {"batch": batch, "rows": inserted, "ingested_at": now.isoformat()}
        context["outlet_events"][CATALOG_ASSET].extra = summary
        return summary

    ingest()


def _emulator_url() -> str:
    """The Copyleaks connection's API URL: the emulator's, in the demo and ``./run cluster``."""
    from airflow.sdk import BaseHook

    from copyleaks_provider.settings import DEFAULT_CONN_ID, CopyleaksSettings

    return CopyleaksSettings.from_connection(BaseHook.get_connection(DEFAULT_CONN_ID)).api_url.rstrip("/")
