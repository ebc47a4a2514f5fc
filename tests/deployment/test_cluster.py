"""The distributed topology, for real: scheduler, triggerer, dag-processor, api-server and a Celery worker
on this machine's PostgreSQL and Redis run ``image_catalog_audit`` triggered through the REST API, with
every callback arriving through the api-server plugin, the warehouse as an Airflow connection, and the
report written to a bucket of a real S3 API on loopback (moto's server)."""

from __future__ import annotations

import io
import json
import sys
from datetime import UTC, datetime, timedelta

import boto3
import httpx
import pandas as pd
import pytest
from sqlalchemy import func, select

from image_audit.config import REPORTS_CONN_ID_ENV, REPORTS_URL_ENV
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import audit_reports, audit_results, audit_scans
from image_audit_dev.sample_catalog import sample_catalog_rows, seed_catalog
from image_audit_dev.servers import free_port, server_process
from tests.support.cluster import CLUSTER_TEST, running_cluster

pytestmark = CLUSTER_TEST


S3_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture
def s3_bucket():
    """A bucket on moto's S3 server (its own process, loopback); yields (client, bucket, endpoint)."""
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with server_process(command, port=port, health_path="/moto-api/", timeout=60) as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **S3_KEYS)
        client.create_bucket(Bucket="audit-reports")
        yield client, "audit-reports", endpoint


@pytest.fixture
def cluster(tmp_path, s3_bucket):
    """A cluster on databases of its own, reporting to the S3 bucket through an ``aws`` connection; its
    processes are stopped and its databases dropped even when the test fails (the logs stay under
    pytest's tmp_path for a post-mortem)."""
    _, bucket, endpoint = s3_bucket
    reports_connection = {
        "conn_type": "aws",
        "login": S3_KEYS["aws_access_key_id"],
        "password": S3_KEYS["aws_secret_access_key"],
        "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    with running_cluster(
        tmp_path,
        redis_db=7,
        prefix="ia_cluster",
        extra_env={
            REPORTS_URL_ENV: f"s3://{bucket}/nightly",
            REPORTS_CONN_ID_ENV: "audit_reports_s3",
            "AIRFLOW_CONN_AUDIT_REPORTS_S3": json.dumps(reports_connection),
        },
    ) as local:
        yield local


def test_the_real_scheduler_triggerer_and_celery_worker_run_the_audit(cluster, s3_bucket):
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
        report_row = conn.execute(select(audit_reports).where(audit_reports.c.run_id == run_id)).one()
    report = report_row.summary
    # 300 good images + 3 the emulator cannot scan (failed) + 4 rejected rows.
    assert states == {"completed": 300, "failed": 3, "rejected": 4}
    assert results == 300 and report["states"]["completed"] == 300
    # The report is in the bucket, where any host can read it: read it back through S3.
    client, bucket, _ = s3_bucket
    for uri in (report_row.html_path, report_row.csv_path, report_row.parquet_path):
        assert uri.startswith(f"s3://{bucket}/nightly/image_catalog_audit/"), uri
    key = report_row.html_path.removeprefix(f"s3://{bucket}/")
    assert run_id in client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    key = report_row.parquet_path.removeprefix(f"s3://{bucket}/")
    exported = pd.read_parquet(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read()))
    assert len(exported) == 307 and (exported["state"] == "completed").sum() == 300
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
