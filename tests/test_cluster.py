"""The distributed topology, for real: scheduler, triggerer, dag-processor, api-server and a Celery worker
on this machine's PostgreSQL and Redis run ``image_catalog_audit`` triggered through the REST API, with
every callback arriving through the api-server plugin."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select

from image_audit.cluster import LocalCluster
from image_audit.sample_catalog import sample_catalog_rows, seed_catalog
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import audit_reports, audit_results, audit_scans
from tests.conftest import POSTGRES_URL, REDIS_URL

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (POSTGRES_URL and REDIS_URL),
        reason="set IMAGE_AUDIT_TEST_POSTGRES_URL and IMAGE_AUDIT_TEST_REDIS_URL to run the cluster test",
    ),
]


@pytest.fixture
def cluster(tmp_path):
    """A cluster on databases of its own; its processes are stopped and its databases dropped even
    when the test fails (the logs stay under pytest's tmp_path for a post-mortem)."""
    redis = (REDIS_URL or "").rsplit("/", 1)[0] + "/7"  # a Redis database of its own
    local = LocalCluster(
        postgres_url=POSTGRES_URL, redis_url=redis, home=tmp_path, name=f"ia_cluster_{uuid.uuid4().hex[:8]}"
    )
    try:
        with local:
            yield local
    finally:
        local.drop_databases()


def test_the_real_scheduler_triggerer_and_celery_worker_run_the_audit(cluster):
    day = datetime(2026, 11, 20, tzinfo=UTC)
    engine = get_engine(cluster.warehouse_url)
    rows = sample_catalog_rows(f"{cluster.emulator_url}/samples", 30, start=day, bad_rows=True)
    seed_catalog(engine, rows)

    run_id = cluster.trigger_dag_run(
        "image_catalog_audit", (day + timedelta(days=1)).isoformat(), conf={"batch_size": 10}
    )
    assert cluster.wait_for_run("image_catalog_audit", run_id, timeout=300) == "success"

    with engine.connect() as conn:
        states = dict(
            conn.execute(select(audit_scans.c.state, func.count()).group_by(audit_scans.c.state)).all()
        )
        results = conn.execute(select(func.count()).select_from(audit_results)).scalar_one()
        report = conn.execute(
            select(audit_reports.c.summary).where(audit_reports.c.run_id == run_id)
        ).scalar_one()
    # 30 good images + 3 the emulator cannot scan (failed) + 4 rejected rows.
    assert states == {"completed": 30, "failed": 3, "rejected": 4}
    assert results == 30 and report["states"]["completed"] == 30
    # Every result and error reached the warehouse as a callback the api-server plugin acknowledged
    # (the connection's webhook_base_url is the api-server's /copyleaks-webhook).
    emulator = httpx.get(f"{cluster.emulator_url}/admin/state", timeout=5).json()
    assert emulator["webhooks_acknowledged"] == 33 and emulator["webhooks_failed"] == 0
    api_server_log = (cluster.home / "logs" / "airflow-apiserver.log").read_text()
    assert api_server_log.count("path=/copyleaks-webhook/callbacks/") >= 33
