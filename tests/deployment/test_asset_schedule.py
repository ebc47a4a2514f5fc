"""The audit's schedule on the real scheduler: the catalog's Asset starts the audit, each run audits the
rows since the catalog's watermark, a backfill audits its day, and the nightly run with no new rows
audits nothing; every catalog row is planned by exactly one run.

One local cluster (scheduler, dag-processor, triggerer, api-server, Celery worker on PostgreSQL and Redis)
with ``dev/dags`` as a second DAG bundle, so ``catalog_ingestion`` (the example producer) is deployed
beside ``image_catalog_audit``:

(a) a ``catalog_ingestion`` run adds 5 rows and updates the Asset; the scheduler starts an
    ``asset_triggered`` audit run by itself, which plans exactly those rows;
(b) a second ingestion (3 rows) starts a second asset-triggered run, which plans exactly the new rows;
(c) a past day's rows (seeded directly) are audited by a backfill of that day, created through the
    REST API (``POST /api/v2/backfills``), beside (a) and (b);
(d) the nightly run: the scheduler creates a ``scheduled`` run when the DAG's next run is due
    (``dag.next_dagrun_create_after`` in Airflow's metadata database, which the scheduler polls); the
    test moves that due time to now rather than wait for 00:00 UTC. The scheduler then creates the real
    nightly run (its type, data interval and DAG code as at midnight, ``run_after`` now), which finds
    no row since the watermark and plans nothing. The cluster's start also has the scheduler create the
    latest missed nightly run (``catchup=False``): it plans nothing of the test's rows either.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, text

from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import audit_run_intervals, audit_scans, image_catalog
from image_audit_dev.cluster import LocalCluster
from image_audit_dev.sample_catalog import sample_catalog_rows, seed_catalog
from tests.support.cluster import CLUSTER_TEST, running_cluster
from tests.support.polling import wait_for

pytestmark = CLUSTER_TEST

DAG_ID = "image_catalog_audit"
PRODUCER = "catalog_ingestion"
PAST_DAY = datetime(2026, 11, 20, tzinfo=UTC)  # before any watermark run's first start: the backfill's
RUN_TIMEOUT = 240  # a run of a few images takes well under a minute; the machine may be busy


@pytest.fixture
def cluster(tmp_path):
    """A cluster with dev/dags deployed, on databases of its own; stopped and its databases dropped even
    when the test fails (the logs stay under tmp_path)."""
    with running_cluster(tmp_path, redis_db=5, prefix="ia_asset", dev_dags=True) as local:
        yield local


def _runs(metadata, run_type: str) -> list[dict]:
    """The audit DAG's runs of ``run_type``, oldest first."""
    query = text(
        "SELECT run_id, state, run_after, data_interval_start, data_interval_end FROM dag_run "
        "WHERE dag_id = :dag_id AND run_type = :run_type ORDER BY run_after, id"
    )
    with metadata.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query, {"dag_id": DAG_ID, "run_type": run_type})]


def _planned(warehouse) -> dict[str, list[str]]:
    """The image ids each audit run planned (its ``audit_scans`` rows), by run id."""
    planned: dict[str, list[str]] = {}
    with warehouse.connect() as conn:
        rows = conn.execute(
            select(audit_scans.c.run_id, audit_scans.c.image_id).where(audit_scans.c.dag_id == DAG_ID)
        )
        for run_id, image_id in rows:
            planned.setdefault(run_id, []).append(image_id)
    return planned


def _claims(warehouse) -> dict[str, tuple[datetime, datetime]]:
    """The interval each watermark run claimed, by run id."""
    columns = audit_run_intervals.c
    with warehouse.connect() as conn:
        rows = conn.execute(
            select(columns.run_id, columns.interval_start, columns.interval_end).where(
                columns.dag_id == DAG_ID
            )
        )
        return {run_id: (start, end) for run_id, start, end in rows}


def _catalog_ids(warehouse) -> set[str]:
    with warehouse.connect() as conn:
        return set(conn.execute(select(image_catalog.c.image_id)).scalars())


def _ingest(cluster: LocalCluster, warehouse, rows: int) -> set[str]:
    """Run ``catalog_ingestion`` for ``rows`` rows (through the REST API); the ids of the rows it added."""
    before = _catalog_ids(warehouse)
    run_id = cluster.trigger_dag_run(PRODUCER, None, conf={"rows": rows})
    assert cluster.wait_for_run(PRODUCER, run_id, timeout=RUN_TIMEOUT, poll=0.5) == "success"
    added = _catalog_ids(warehouse) - before
    assert len(added) == rows, added
    return added


def _new_run(metadata, run_type: str, known: int) -> dict:
    """The audit run of ``run_type`` after the first ``known`` ones, once the scheduler has created it."""
    return wait_for(
        lambda: (runs := _runs(metadata, run_type))[known:] and runs[known],
        f"a new {run_type} run of {DAG_ID}",
        timeout=120,
        interval=0.5,
    )


def _backfill(cluster: LocalCluster, day: datetime) -> dict:
    """A backfill of ``day`` (one daily run, its data interval ``[day, day + 1)``) through the REST API."""
    wait_for(lambda: cluster._get(f"/api/v2/dags/{DAG_ID}"), f"{DAG_ID} parsed", timeout=120, interval=1)
    body = {"dag_id": DAG_ID, "from_date": day.isoformat(), "to_date": day.isoformat(), "max_active_runs": 1}
    response = httpx.post(f"{cluster.api_url}/api/v2/backfills", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def _make_nightly_due(metadata, known: int):
    """Until the scheduler has created the next nightly run: set its due time to now (the scheduler
    creates a ``scheduled`` run once ``next_dagrun_create_after`` has passed); that run, or None."""
    runs = _runs(metadata, "scheduled")
    if len(runs) > known:
        return runs[known]
    with metadata.begin() as conn:
        conn.execute(
            text("UPDATE dag SET next_dagrun_create_after = now() WHERE dag_id = :dag_id"), {"dag_id": DAG_ID}
        )
    return None


def test_the_catalog_asset_starts_audits_of_exactly_the_new_rows(cluster):
    began = time.monotonic()
    warehouse = get_engine(cluster.warehouse_url)
    metadata = get_engine(cluster.metadata_url)  # Airflow's own tables: read, and (d) the due time

    # (c), started first so that it runs beside (a) and (b): a past day's rows and a backfill of the day.
    past = sample_catalog_rows(f"{cluster.emulator_url}/samples", 4, start=PAST_DAY, bad_rows=False)
    for row in past:
        row["image_id"], row["url"] = f"past-{row['image_id']}", row["url"].replace("/img-", "/past-img-")
    seed_catalog(warehouse, past)
    backfill = _backfill(cluster, PAST_DAY)
    assert backfill["dag_id"] == DAG_ID

    # The latest missed nightly run (catchup=False), created as soon as the DAG is parsed.
    startup_nightly = _new_run(metadata, "scheduled", 0)

    # (a) The producer's run updates the Asset; the scheduler starts the audit.
    first_rows = _ingest(cluster, warehouse, 5)
    first = _new_run(metadata, "asset_triggered", 0)
    # Its plan claims [watermark, its run_after) before the next ingestion's rows land.
    wait_for(
        lambda: first["run_id"] in _claims(warehouse), "the first asset run's claim", timeout=RUN_TIMEOUT
    )

    # (b) A second ingestion: a second asset-triggered run.
    second_rows = _ingest(cluster, warehouse, 3)
    second = _new_run(metadata, "asset_triggered", 1)
    wait_for(
        lambda: second["run_id"] in _claims(warehouse), "the second asset run's claim", timeout=RUN_TIMEOUT
    )

    # (d) The nightly run, due now rather than at 00:00 UTC: no row since the watermark.
    nightly = wait_for(lambda: _make_nightly_due(metadata, 1), "the nightly run", timeout=120, interval=2)
    assert nightly["run_after"] > startup_nightly["run_after"]

    [backfilled] = wait_for(
        lambda: _runs(metadata, "backfill"), "the backfill's run", timeout=120, interval=0.5
    )
    for run in (startup_nightly, first, second, backfilled, nightly):
        assert cluster.wait_for_run(DAG_ID, run["run_id"], timeout=RUN_TIMEOUT, poll=0.5) == "success", run
    took = time.monotonic() - began

    planned, claims = _planned(warehouse), _claims(warehouse)
    # (a), (b): each asset-triggered run planned exactly its ingestion's rows, none of the other's.
    assert len(_runs(metadata, "asset_triggered")) == 2
    assert sorted(planned[first["run_id"]]) == sorted(first_rows)
    assert sorted(planned[second["run_id"]]) == sorted(second_rows)
    # ... from the watermark: the second run's claim starts where the first one's ended.
    assert claims[second["run_id"]][0] == claims[first["run_id"]][1]
    # (c) The backfill planned its day's rows, over its own interval, and claimed nothing.
    assert (backfilled["data_interval_start"], backfilled["data_interval_end"]) == (
        PAST_DAY,
        PAST_DAY + timedelta(days=1),
    )
    assert sorted(planned[backfilled["run_id"]]) == sorted(r["image_id"] for r in past)
    assert backfilled["run_id"] not in claims
    # (d) Both nightly runs planned nothing; the one due now claimed from the watermark to its run_after.
    assert nightly["run_id"] not in planned and startup_nightly["run_id"] not in planned
    assert claims[nightly["run_id"]] == (claims[second["run_id"]][1], nightly["run_after"])
    # Across all: every catalog row planned exactly once, by one of these runs, and completed.
    per_image = Counter(image_id for ids in planned.values() for image_id in ids)
    assert set(per_image) == _catalog_ids(warehouse) and set(per_image.values()) == {1}
    assert set(planned) == {first["run_id"], second["run_id"], backfilled["run_id"]}
    with warehouse.connect() as conn:
        states = Counter(conn.execute(select(audit_scans.c.state)).scalars())
    assert states == {"completed": len(per_image)}, states
    print(f"\nasset schedule cluster test: {took:.0f} s from the healthy cluster to the last run's end")
