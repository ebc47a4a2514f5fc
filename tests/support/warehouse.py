"""Warehouses for the tests (a pytest plugin, registered by tests/conftest.py): throw-away databases on
SQLite and, when ``IMAGE_AUDIT_TEST_POSTGRES_URL`` is set, PostgreSQL; the test Airflow metadata database;
and the reads and writes tests make on a warehouse."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

POSTGRES_URL = os.environ.get("IMAGE_AUDIT_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("IMAGE_AUDIT_TEST_REDIS_URL")

requires_postgres = pytest.mark.skipif(
    not POSTGRES_URL, reason="set IMAGE_AUDIT_TEST_POSTGRES_URL to run the PostgreSQL tests"
)


def new_sqlite_url(tmp_path: Path) -> str:
    """A SQLite warehouse URL no other test uses (the file is created on first use)."""
    return f"sqlite:///{tmp_path / f'warehouse-{uuid.uuid4().hex[:8]}.db'}"


class PostgresDatabases:
    """Creates a throw-away database per test on the configured server, and drops it afterwards."""

    def __init__(self, admin_url: str):
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        self._admin_url = make_url(admin_url)
        self._admin = create_engine(
            self._admin_url.set(drivername="postgresql+psycopg2"), isolation_level="AUTOCOMMIT"
        )

    def create(self) -> str:
        from sqlalchemy import text

        name = f"image_audit_test_{uuid.uuid4().hex[:12]}"
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        return self._admin_url.set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        from image_audit.warehouse.engine import dispose_engines

        dispose_engines()
        name = make_url(url).database
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_databases():
    if not POSTGRES_URL:
        pytest.skip("set IMAGE_AUDIT_TEST_POSTGRES_URL to run the PostgreSQL tests")
    return PostgresDatabases(POSTGRES_URL)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, requires_postgres])])
def warehouse_url(request, tmp_path, monkeypatch):
    """An empty, migrated warehouse on SQLite and on PostgreSQL; also set as the configured warehouse."""
    from image_audit.warehouse.engine import dispose_engines, get_engine
    from image_audit.warehouse.schema import migrate

    if request.param == "sqlite":
        url = new_sqlite_url(tmp_path)
        cleanup = None
    else:
        databases = request.getfixturevalue("postgres_databases")
        url = databases.create()
        cleanup = databases.drop
    monkeypatch.setenv("AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE", url)
    migrate(get_engine(url))
    yield url
    if cleanup:
        cleanup(url)
    else:
        dispose_engines()


@pytest.fixture
def sqlite_warehouse_url(tmp_path, monkeypatch):
    """Just the SQLite warehouse, for tests whose subject is not the database."""
    from image_audit.warehouse.engine import get_engine
    from image_audit.warehouse.schema import migrate

    url = new_sqlite_url(tmp_path)
    monkeypatch.setenv("AIRFLOW_CONN_IMAGE_AUDIT_WAREHOUSE", url)
    migrate(get_engine(url))
    yield url
    get_engine(url).dispose()


@pytest.fixture(scope="session")
def airflow_db():
    """The tests' Airflow metadata database (SQLite in the temporary AIRFLOW_HOME), migrated once."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    return os.environ["AIRFLOW_HOME"]


# --- reading a warehouse --------------------------------------------------------------------------------
def scan_row(url: str, scan_id: str) -> dict:
    """The ``audit_scans`` row of ``scan_id`` (there must be one)."""
    from image_audit.warehouse.engine import get_engine
    from image_audit.warehouse.schema import audit_scans

    with get_engine(url).connect() as conn:
        return dict(
            conn.execute(select(audit_scans).where(audit_scans.c.scan_id == scan_id)).mappings().one()
        )


def failed_callbacks(url: str, scan_id: str | None = None) -> list[dict]:
    """The kept failed callbacks (of ``scan_id``, or all), oldest first."""
    from image_audit.warehouse.engine import get_engine
    from image_audit.warehouse.schema import audit_failed_callbacks

    query = select(audit_failed_callbacks).order_by(audit_failed_callbacks.c.received_at)
    if scan_id is not None:
        query = query.where(audit_failed_callbacks.c.scan_id == scan_id)
    with get_engine(url).connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def result_count(url: str) -> int:
    from image_audit.warehouse.engine import get_engine
    from image_audit.warehouse.schema import audit_results

    with get_engine(url).connect() as conn:
        return conn.execute(select(func.count()).select_from(audit_results)).scalar_one()


# --- storing callbacks as the receiver does ----------------------------------------------------------
def callback(scan_id: str, body: dict):
    """An authenticated, recognised callback of ``scan_id`` carrying ``body``."""
    from copyleaks_provider.models import WebhookBody
    from copyleaks_provider.webhooks.callbacks import Callback

    return Callback(scan_id, WebhookBody.model_validate(body), body)


def unrecognised(scan_id: str, raw, problem: str = "body: not a Copyleaks webhook"):
    """An authenticated callback whose body the receiver did not recognise."""
    from copyleaks_provider.webhooks.callbacks import Callback

    return Callback(scan_id, None, raw, problem=problem)


def store(url: str, callbacks: list) -> list:
    """``store_callbacks`` in one transaction, as the receiver's writer calls it; the outcomes."""
    from image_audit.warehouse.engine import create_async_warehouse_engine
    from image_audit.warehouse.results import store_callbacks

    async def go() -> list:
        engine = create_async_warehouse_engine(url, write_transactions=True)
        try:
            return await store_callbacks(engine, callbacks)
        finally:
            await engine.dispose()

    return asyncio.run(go())
