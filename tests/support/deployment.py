"""The wired deployment the DAG tests run against (a pytest plugin, registered by tests/conftest.py):
the emulator as Copyleaks, a receiver on the test's warehouse, and the Copyleaks connection to both."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from tests.support.emulator import copyleaks_connection
from tests.support.factories import DAG_ID, DAY


@pytest.fixture
def audit(warehouse_url, emulator, airflow_db, monkeypatch) -> Iterator[Audit]:
    """A wired deployment: the emulator as Copyleaks, a receiver on the test warehouse, the connection."""
    with wired_audit(warehouse_url, emulator, monkeypatch) as deployment:
        yield deployment


@contextlib.contextmanager
def wired_audit(
    warehouse_url: str, emulator, monkeypatch, *, receiver_warehouse_url: str | None = None
) -> Iterator[Audit]:
    """Start a receiver (with a random webhook secret) and point the Copyleaks connection at the
    emulator and it.

    ``receiver_warehouse_url``: the receiver's own way to the warehouse (e.g. through a TCP proxy).
    """
    from image_audit.warehouse.engine import get_engine
    from image_audit.webhook import create_warehouse_receiver_app
    from image_audit_dev.servers import BackgroundServer

    secret = secrets.token_urlsafe(16)
    app = create_warehouse_receiver_app(
        warehouse_url=receiver_warehouse_url or warehouse_url, webhook_secrets=[secret]
    )
    receiver = BackgroundServer(app)
    with receiver:
        connection = copyleaks_connection(emulator, receiver.url, secret, max_concurrency=8)
        monkeypatch.setenv("AIRFLOW_CONN_COPYLEAKS_DEFAULT", connection)
        yield Audit(get_engine(warehouse_url), emulator, receiver, secret)


class Audit:
    """Handles on a wired deployment: seed the catalog, run the DAG, read the warehouse."""

    def __init__(self, engine, emulator, receiver, secret: str):
        self.engine = engine
        self.emulator = emulator
        self.receiver = receiver  # stop()/start() it to restart on the same port
        self.secret = secret

    def seed(self, n: int, days: int = 1, bad_rows: bool = True) -> list[dict]:
        from image_audit_dev.sample_catalog import sample_catalog_rows, seed_catalog

        rows = sample_catalog_rows(f"{self.emulator.url}/samples", n, start=DAY, days=days, bad_rows=bad_rows)
        seed_catalog(self.engine, rows)
        return rows

    def run(self, day: datetime, **conf):
        """One DAG run auditing ``[day, day + 1)``; returns the finished DagRun."""
        from airflow.dag_processing.dagbag import DagBag

        dag = DagBag().get_dag(DAG_ID)
        logical = day + timedelta(days=1)  # the daily interval ending at `logical`
        return dag.test(logical_date=logical, run_conf=conf or None)

    @staticmethod
    def task_state(run, task_id: str) -> tuple[str, int]:
        """The state and the number of tries of the run's task ``task_id`` (one instance of it)."""
        [instance] = [ti for ti in run.get_task_instances() if ti.task_id == task_id]
        return instance.state, instance.try_number

    def scans(self) -> list[dict]:
        from sqlalchemy import select

        from image_audit.warehouse.schema import audit_scans

        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(audit_scans)).mappings()]

    def results(self) -> list[dict]:
        from sqlalchemy import select

        from image_audit.warehouse.schema import audit_results

        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(audit_results)).mappings()]

    def report(self, run_id: str) -> dict:
        from sqlalchemy import select

        from image_audit.warehouse.schema import audit_reports

        with self.engine.connect() as conn:
            row = conn.execute(select(audit_reports).where(audit_reports.c.run_id == run_id)).mappings().one()
        return dict(row)
