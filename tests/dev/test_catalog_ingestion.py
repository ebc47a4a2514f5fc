"""The example producer, ``dev/dags/catalog_ingestion.py``: its shape, and a run (``dag.test`` on SQLite)
that commits the rows it was asked for, stamped now, and updates the catalog's Asset."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from image_audit.planning.schedule import catalog_asset
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import image_catalog
from image_audit_dev.bundles import BUNDLES_ENV, DEV_DAGS, dag_bundle_config_list
from tests.support import ROOT

BASE = "http://emulator.test/samples"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DEV_DAGS))


def test_every_dev_dag_imports_and_the_producer_updates_the_catalog_asset(dagbag):
    assert dagbag.import_errors == {}
    assert {Path(d.fileloc).name for d in dagbag.dags.values()} == {"catalog_ingestion.py"}
    dag = dagbag.dags["catalog_ingestion"]
    assert dag.schedule is None and not dag.catchup
    [ingest] = dag.tasks
    assert ingest.task_id == "ingest" and ingest.outlets == [catalog_asset()]
    assert {"rows", "source", "samples_base_url"} <= set(dag.params)


def test_a_run_commits_its_rows_then_emits_the_asset_event(
    dagbag, sqlite_warehouse_url, airflow_db, monkeypatch
):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    # dev/dags as a bundle, as the demo and ./run cluster configure it: dag.test() runs a bundle's DAG
    monkeypatch.setenv(BUNDLES_ENV, dag_bundle_config_list(ROOT / "dags"))
    before = datetime.now(UTC)
    run = dagbag.dags["catalog_ingestion"].test(
        run_conf={"rows": 3, "source": "stock", "samples_base_url": BASE}
    )
    assert run.state == "success"
    with get_engine(sqlite_warehouse_url).connect() as conn:
        rows = [dict(r) for r in conn.execute(select(image_catalog)).mappings()]
    assert len(rows) == 3 and {r["source"] for r in rows} == {"stock"}
    [stamp] = {r["ingested_at"].replace(tzinfo=UTC) for r in rows}  # SQLite: naive, in UTC
    assert before <= stamp <= datetime.now(UTC)
    [prefix] = {r["image_id"].rsplit("-img-", 1)[0] for r in rows}
    assert prefix.startswith("ingest-")
    for row in rows:
        assert row["url"] == f"{BASE}/{row['file_name']}" and row["file_name"].startswith(row["image_id"])

    with create_session() as session:
        [extra] = session.scalars(
            select(AssetEvent.extra)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name == catalog_asset().name, AssetEvent.source_run_id == run.run_id)
        ).all()
    assert extra == {"batch": prefix.removeprefix("ingest-"), "rows": 3, "ingested_at": stamp.isoformat()}
