"""The distributed topology, for real: scheduler, triggerer, dag-processor, api-server and a Celery worker
on this machine's PostgreSQL and Redis run ``image_catalog_audit`` triggered through the REST API, with
every callback arriving through the api-server plugin."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select

from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import audit_reports, audit_results, audit_scans
from image_audit_dev.cluster import LocalCluster
from image_audit_dev.sample_catalog import sample_catalog_rows, seed_catalog
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
    """300 images in batches of 10: 31 submit tasks, each a process of its own on the Celery worker,
    against an emulator that enforces Copyleaks' documented account limits (10 requests/s, 12 logins
    per 15 minutes). The whole run logs in once and keeps to the account's budget."""
    day = datetime(2026, 11, 20, tzinfo=UTC)
    engine = get_engine(cluster.warehouse_url)
    rows = sample_catalog_rows(f"{cluster.emulator_url}/samples", 300, start=day, bad_rows=True)
    seed_catalog(engine, rows)

    run_id = cluster.trigger_dag_run(
        "image_catalog_audit", (day + timedelta(days=1)).isoformat(), conf={"batch_size": 10}
    )
    assert cluster.wait_for_run("image_catalog_audit", run_id, timeout=600) == "success"

    with engine.connect() as conn:
        states = dict(
            conn.execute(select(audit_scans.c.state, func.count()).group_by(audit_scans.c.state)).all()
        )
        results = conn.execute(select(func.count()).select_from(audit_results)).scalar_one()
        report = conn.execute(
            select(audit_reports.c.summary).where(audit_reports.c.run_id == run_id)
        ).scalar_one()
    # 300 good images + 3 the emulator cannot scan (failed) + 4 rejected rows.
    assert states == {"completed": 300, "failed": 3, "rejected": 4}
    assert results == 300 and report["states"]["completed"] == 300
    # Every result and error reached the warehouse as a callback the api-server plugin acknowledged
    # (the connection's webhook_base_url is the api-server's /copyleaks-webhook).
    emulator = httpx.get(f"{cluster.emulator_url}/admin/state", timeout=5).json()
    assert emulator["webhooks_acknowledged"] == 303 and emulator["webhooks_failed"] == 0
    api_server_log = (cluster.home / "logs" / "airflow-apiserver.log").read_text()
    assert api_server_log.count("path=/copyleaks-webhook/callbacks/") >= 303
    # One account, one token, one budget: whatever number of task processes shared them.
    counters = ("logins", "login_429", "api_requests", "api_429", "peak_requests_per_second")
    print("\nemulator:", {name: emulator[name] for name in counters})
    assert emulator["logins"] == 1 and emulator["login_429"] == 0
    assert emulator["api_429"] <= 0.01 * emulator["api_requests"]
    assert emulator["peak_requests_per_second"] <= 10
