"""Reports on object storage: a run's report written to ``s3://bucket/prefix`` through Airflow's
ObjectStoragePath and an ``aws`` connection, against a real S3 API (moto's server, in a process of its own,
on loopback), and read back over HTTP with boto3."""

from __future__ import annotations

import io
import json
import sys
import uuid

import boto3
import pandas as pd
import pytest
from sqlalchemy import select

from image_audit.config import REPORTS_CONN_ID_ENV, REPORTS_URL_ENV
from image_audit.reporting import build_run_report
from image_audit.reporting.exports import EXPORT_COLUMNS
from image_audit.reporting.report import safe_run_id
from image_audit.warehouse.engine import get_engine
from image_audit.warehouse.schema import audit_reports
from image_audit_dev.servers import free_port, server_process
from tests.support.reports import (
    DAG_ID,
    EXPECTED,
    HEIGHT,
    R2,
    WIDTH,
    image_png,
    insert_report_scans,
    r2_scans,
)

REGION = "us-east-1"
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on a free loopback port (``python -m moto.server``), for the module."""
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with server_process(command, port=port, health_path="/moto-api/", timeout=60) as url:
        yield url


@pytest.fixture
def s3_reports(s3_endpoint, monkeypatch):
    """A fresh bucket, an ``aws`` connection to the server from the environment, and the reports URL set
    to ``s3://<bucket>/prefix``; yields (boto3 client, bucket)."""
    bucket = f"reports-{uuid.uuid4().hex[:12]}"
    # a connection id of its own: Airflow caches a store's filesystem per (protocol, connection id)
    conn_id = f"reports_s3_{uuid.uuid4().hex[:8]}"
    connection = {
        "conn_type": "aws",
        "login": KEYS["aws_access_key_id"],
        "password": KEYS["aws_secret_access_key"],
        "extra": {"endpoint_url": s3_endpoint, "region_name": REGION},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
    monkeypatch.setenv(REPORTS_URL_ENV, f"s3://{bucket}/prefix")
    monkeypatch.setenv(REPORTS_CONN_ID_ENV, conn_id)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name=REGION, **KEYS)
    client.create_bucket(Bucket=bucket)
    return client, bucket


def _fetch(url: str) -> bytes:
    return image_png(WIDTH, HEIGHT, seed=len(url))


def _keys(client, bucket: str) -> list[str]:
    listing = client.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_report_written_to_s3_and_the_row_carries_s3_uris(s3_reports, warehouse_url):
    client, bucket = s3_reports
    engine = get_engine(warehouse_url)
    insert_report_scans(engine, r2_scans())

    report = build_run_report(engine, DAG_ID, R2, top_n=3, fetch_image=_fetch)

    prefix = f"prefix/{DAG_ID}/{safe_run_id(R2)}"
    # the three files, under their final keys only: nothing is staged under a temporary key
    assert _keys(client, bucket) == [
        f"{prefix}/report.html",
        f"{prefix}/results.csv",
        f"{prefix}/results.parquet",
    ]

    html = client.get_object(Bucket=bucket, Key=f"{prefix}/report.html")
    assert html["ContentType"] == "text/html"  # opens in a browser from the bucket
    text = html["Body"].read().decode()
    assert R2 in text and text.count('class="thumbnail"') == 3
    assert "<code>results.csv</code>" in text  # the exports it names are beside it, as on disk

    body = client.get_object(Bucket=bucket, Key=f"{prefix}/results.csv")["Body"].read()
    csv = pd.read_csv(io.BytesIO(body), dtype={"image_id": str})
    parquet = pd.read_parquet(
        io.BytesIO(client.get_object(Bucket=bucket, Key=f"{prefix}/results.parquet")["Body"].read())
    )
    assert len(csv) == len(parquet) == EXPECTED["images"] == report.summary["images"]
    assert list(csv.columns) == list(parquet.columns) == EXPORT_COLUMNS
    assert sorted(csv["scan_id"]) == sorted(parquet["scan_id"])
    verdicts = parquet.dropna(subset=["verdict"]).set_index("image_id")["verdict"].to_dict()
    assert verdicts == EXPECTED["verdict_by_image"]

    # the row (and the Asset event, from report.uris) name the objects, without the connection id
    expected = {name: f"s3://{bucket}/{prefix}/{file}" for name, file in [
        ("html_path", "report.html"), ("csv_path", "results.csv"), ("parquet_path", "results.parquet"),
    ]}  # fmt: skip
    assert report.uris == expected
    with engine.connect() as conn:
        row = conn.execute(
            select(audit_reports).where(audit_reports.c.dag_id == DAG_ID, audit_reports.c.run_id == R2)
        ).one()
    assert {
        "html_path": row.html_path,
        "csv_path": row.csv_path,
        "parquet_path": row.parquet_path,
    } == expected

    # the report's paths read back through ObjectStoragePath and the connection, like any store
    assert report.html_path.read_text() == text
    with report.parquet_path.open("rb") as stored:
        assert len(pd.read_parquet(stored)) == EXPECTED["images"]


def test_a_report_that_fails_while_exporting_publishes_nothing(s3_reports, sqlite_warehouse_url, monkeypatch):
    client, bucket = s3_reports
    engine = get_engine(sqlite_warehouse_url)
    insert_report_scans(engine, r2_scans())

    def failing_exports(chunks, csv_file, parquet_file):
        csv_file.write_text("image_id\npartial\n")  # half written when the warehouse goes away
        raise ConnectionError("warehouse gone")

    monkeypatch.setattr("image_audit.reporting.report.write_exports", failing_exports)
    with pytest.raises(ConnectionError):
        build_run_report(engine, DAG_ID, R2, top_n=0)
    assert _keys(client, bucket) == []  # no partial CSV, no HTML pointing at missing exports
    with engine.connect() as conn:
        assert conn.execute(select(audit_reports)).all() == []
